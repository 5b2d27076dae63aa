//! The static registry file (DESIGN.md §3): which nodes make up the cluster, how many shards
//! each runs, and where each listens. Every node and every client reads the same file, with the
//! same rules: unknown keys are errors, and every inconsistency is refused with one clear line
//! that names the file.
//!
//! ```
//! use corekv_types::ids::{NodeId, ShardId};
//! use corekv_types::registry::Registry;
//! let registry = Registry::parse(r#"
//!     cluster = "local"
//!     shards = 2
//!     [[node]]
//!     id = 1
//!     host = "127.0.0.1"
//!     client_port = 7100
//!     peer_port = 7200
//!     http_port = 7300
//! "#, "corekv.toml").unwrap();
//! assert_eq!(registry.node(NodeId(1)).unwrap().client_addr(ShardId(1)), "127.0.0.1:7101");
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids::{NodeId, ShardId};

/// Longest cluster name (it is written into every WAL segment header).
pub const CLUSTER_NAME_BYTES_MAX: usize = 256;

/// Most shards per node: each shard needs a core, a raft group and two ports.
pub const SHARDS_MAX: u32 = 1024;

/// The one line both ends of a client connection give when the client's registry file names
/// another shard count than the cluster runs: placement would send keys to the wrong shards.
pub fn shard_count_mismatch(cluster: u32, client: u32) -> String {
    format!(
        "shard count mismatch: this cluster has {cluster} shards, the client's registry file \
         says {client}; use the registry file the nodes use"
    )
}

/// Why a registry file was refused: one line, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RegistryError {
    /// The file (or the name given to [`Registry::parse`]).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique, greater than 0; also the node's raft id.
    pub id: NodeId,
    /// Host name or IP address the node is reached at.
    pub host: String,
    /// Shard `s` serves clients on `client_port + s`.
    pub client_port: u16,
    /// Shard `s` exchanges raft messages on `peer_port + s`.
    pub peer_port: u16,
    /// `/health`, `/status` and `/metrics`.
    pub http_port: u16,
    /// Optional: shard `s` speaks the Redis protocol (RESP) on `resp_port + s`.
    #[serde(default)]
    pub resp_port: Option<u16>,
}

impl Node {
    /// The node's `[[node]]` table, as a registry file holds it (with a blank line before).
    pub fn to_toml(&self) -> String {
        let resp = self.resp_port.map(|port| format!("resp_port = {port}\n")).unwrap_or_default();
        format!(
            "\n[[node]]\nid = {}\nhost = {}\nclient_port = {}\npeer_port = {}\nhttp_port = {}\n{resp}",
            self.id,
            toml_string(&self.host),
            self.client_port,
            self.peer_port,
            self.http_port
        )
    }

    /// `host:port` of shard `shard`'s RESP port, when the node has one.
    pub fn resp_addr(&self, shard: ShardId) -> Option<String> {
        self.resp_port.map(|port| format!("{}:{}", self.host, port as u32 + shard.get()))
    }

    /// `host:port` of shard `shard`'s client port.
    pub fn client_addr(&self, shard: ShardId) -> String {
        format!("{}:{}", self.host, self.client_port as u32 + shard.get())
    }

    /// `host:port` of shard `shard`'s peer port.
    pub fn peer_addr(&self, shard: ShardId) -> String {
        format!("{}:{}", self.host, self.peer_port as u32 + shard.get())
    }

    /// `host:port` of the HTTP endpoint.
    pub fn http_addr(&self) -> String {
        format!("{}:{}", self.host, self.http_port)
    }
}

/// A validated registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Cluster name, checked on every peer and client handshake.
    pub cluster: String,
    /// Raft groups per node.
    pub shards: u32,
    /// The nodes, in file order.
    #[serde(rename = "node", default)]
    pub nodes: Vec<Node>,
    /// How much watch history each shard keeps (the optional `[watch]` section).
    #[serde(default)]
    pub watch: WatchSettings,
    /// TLS on every port (the optional `[tls]` section); plaintext without it.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Users, roles and permissions (the optional `[auth]` section); every client may do
    /// everything without it.
    #[serde(default)]
    pub auth: Option<AuthSettings>,
}

/// The optional `[auth]` section: every request is checked against the user's roles, the
/// user being named by its client certificate or a bearer token (see `auth`). It needs
/// `[tls]`: neither must cross the network in plaintext.
///
/// ```toml
/// [auth]
/// policy = "auth.toml"   # users and roles, relative to the registry file; reloaded on SIGHUP
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The policy file.
    pub policy: PathBuf,
}

/// The optional `[tls]` section: with it, every port of every node speaks TLS only (client,
/// peer and HTTP), peers authenticate each other with their certificates, and a plaintext
/// client is refused. Paths are relative to the registry file's folder; `{id}` in a
/// certificate or key path is the node's id, so one file serves every node.
///
/// ```toml
/// [tls]
/// ca = "tls/ca.pem"                # trusted for client certificates; clients trust it for nodes
/// cert = "tls/node-{id}.pem"       # each node's certificate (client and HTTP ports)
/// key = "tls/node-{id}-key.pem"
/// peer_ca = "tls/ca.pem"           # optional: the peer ports' CA, certificate and key,
/// peer_cert = "tls/node-{id}.pem"  # when other than the client ports'
/// peer_key = "tls/node-{id}-key.pem"
/// client_certs = "required"        # or "optional"
/// min_version = "1.3"              # or "1.2"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificates (PEM) client certificates are checked against; clients check nodes
    /// against it unless told another.
    pub ca: PathBuf,
    /// The node's certificate chain (PEM), leaf first; `{id}` is the node id.
    pub cert: String,
    /// The node's private key (PEM); `{id}` is the node id.
    pub key: String,
    /// CA certificates peers are checked against; `ca` when absent.
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
    /// The certificate the node shows its peers (both ways); `cert` when absent.
    #[serde(default)]
    pub peer_cert: Option<String>,
    /// The key of `peer_cert`; `key` when absent.
    #[serde(default)]
    pub peer_key: Option<String>,
    /// Whether clients must show a certificate (one they show is checked either way).
    #[serde(default)]
    pub client_certs: ClientCerts,
    /// The oldest TLS version spoken.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// Whether a client must show a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// A client without a certificate is refused.
    #[default]
    Required,
    /// A client may come without one (for bearer tokens); one it shows is still checked.
    Optional,
}

/// The oldest TLS version a node or client speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

/// The TLS files one node uses, `{id}` filled in (see [`TlsSettings::for_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTlsFiles {
    /// CA for client certificates.
    pub ca: PathBuf,
    /// Certificate for the client and HTTP ports.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// CA for peers' certificates.
    pub peer_ca: PathBuf,
    /// Certificate shown to peers.
    pub peer_cert: PathBuf,
    /// Its key.
    pub peer_key: PathBuf,
}

impl TlsSettings {
    /// Node `id`'s files.
    pub fn for_node(&self, id: NodeId) -> NodeTlsFiles {
        let fill = |template: &str| PathBuf::from(template.replace("{id}", &id.to_string()));
        NodeTlsFiles {
            ca: self.ca.clone(),
            cert: fill(&self.cert),
            key: fill(&self.key),
            peer_ca: self.peer_ca.clone().unwrap_or_else(|| self.ca.clone()),
            peer_cert: fill(self.peer_cert.as_deref().unwrap_or(&self.cert)),
            peer_key: fill(self.peer_key.as_deref().unwrap_or(&self.key)),
        }
    }

    /// Makes every relative path relative to `folder` (the registry file's).
    fn resolve(&mut self, folder: &Path) {
        let join = |path: &str| {
            if Path::new(path).is_absolute() {
                path.to_string()
            } else {
                folder.join(path).display().to_string()
            }
        };
        self.ca = PathBuf::from(join(&self.ca.display().to_string()));
        self.peer_ca = self.peer_ca.as_ref().map(|p| PathBuf::from(join(&p.display().to_string())));
        self.cert = join(&self.cert);
        self.key = join(&self.key);
        self.peer_cert = self.peer_cert.as_deref().map(join);
        self.peer_key = self.peer_key.as_deref().map(join);
    }

    fn validate(&self) -> Result<(), String> {
        let paths = [
            ("ca", Some(self.ca.display().to_string())),
            ("cert", Some(self.cert.clone())),
            ("key", Some(self.key.clone())),
            ("peer_ca", self.peer_ca.as_ref().map(|p| p.display().to_string())),
            ("peer_cert", self.peer_cert.clone()),
            ("peer_key", self.peer_key.clone()),
        ];
        for (name, path) in paths {
            if path.is_some_and(|p| p.trim().is_empty()) {
                return Err(format!("[tls] {name} is empty"));
            }
        }
        Ok(())
    }
}

/// The optional `[watch]` section: how much watch history every shard keeps, so a watcher
/// that reconnects from an old cursor finds its changes. A shard keeps at least the newest
/// `history_min_entries` raft entries, `history_min_mib` MiB of history and the last
/// `history_min_minutes` minutes of it, and never more than `history_max_mib` MiB (the
/// oldest goes first).
///
/// ```toml
/// [watch]
/// history_min_entries = 100000
/// history_min_mib = 64
/// history_min_minutes = 5
/// history_max_mib = 1024
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// Keep at least this many raft entries of history.
    pub history_min_entries: u64,
    /// Keep at least this many MiB of history.
    pub history_min_mib: u64,
    /// Keep at least this many minutes of history.
    pub history_min_minutes: u64,
    /// Never keep more than this many MiB of history per shard.
    pub history_max_mib: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            history_min_entries: 100_000,
            history_min_mib: 64,
            history_min_minutes: 5,
            history_max_mib: 1024,
        }
    }
}

impl Registry {
    /// Reads and validates the registry file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError {
            path: path.display().to_string(),
            reason: format!("cannot read registry file: {e}"),
        })?;
        let mut registry = Self::parse(&text, &path.display().to_string())?;
        registry.paths_relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(registry)
    }

    /// Makes the file paths the registry names (`[tls]`) relative to `folder` (the registry
    /// file's; [`Registry::load`] does it), leaving absolute ones be.
    pub fn paths_relative_to(&mut self, folder: &Path) {
        if let Some(tls) = &mut self.tls {
            tls.resolve(folder);
        }
        if let Some(auth) = &mut self.auth {
            if auth.policy.is_relative() {
                auth.policy = folder.join(&auth.policy);
            }
        }
    }

    /// Parses and validates registry text; `path` is used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, RegistryError> {
        let fail = |reason: String| RegistryError { path: path.to_string(), reason };
        let registry: Registry = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (with a source excerpt); keep it to one.
            let message = e.message().trim().to_string();
            match e.span().map(|span| line_of(text, span.start)) {
                Some(line) => fail(format!("line {line}: {message}")),
                None => fail(message),
            }
        })?;
        registry.validate().map_err(fail)?;
        Ok(registry)
    }

    fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() {
            return Err("cluster name is empty".to_string());
        }
        if self.cluster.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(format!("cluster name is over {CLUSTER_NAME_BYTES_MAX} bytes"));
        }
        if self.shards == 0 {
            return Err("shards = 0: every node needs at least one shard".to_string());
        }
        if self.shards > SHARDS_MAX {
            return Err(format!("shards = {} is over the maximum of {SHARDS_MAX}", self.shards));
        }
        if self.nodes.is_empty() {
            return Err("no [[node]] entries".to_string());
        }
        let watch = &self.watch;
        if watch.history_min_mib > watch.history_max_mib {
            return Err(format!(
                "[watch] history_min_mib = {} is over history_max_mib = {}",
                watch.history_min_mib, watch.history_max_mib
            ));
        }
        if watch.history_max_mib == 0 || watch.history_max_mib > 1 << 30 {
            return Err(format!(
                "[watch] history_max_mib = {} must be from 1 to {}",
                watch.history_max_mib,
                1u64 << 30
            ));
        }
        if watch.history_min_minutes > 1 << 30 {
            return Err(format!(
                "[watch] history_min_minutes = {} is too large",
                watch.history_min_minutes
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.auth.is_some() && self.tls.is_none() {
            return Err("[auth] needs [tls]: certificates and tokens name users, and neither \
                        may cross the network in plaintext"
                .to_string());
        }
        let mut ids = HashSet::new();
        for node in &self.nodes {
            if node.id == NodeId::NONE {
                return Err("node id 0: ids must be greater than 0".to_string());
            }
            if !ids.insert(node.id) {
                return Err(format!("duplicate node id {}", node.id));
            }
            if node.host.trim().is_empty() {
                return Err(format!("node {}: host is empty", node.id));
            }
            let mut bases = vec![("client_port", node.client_port), ("peer_port", node.peer_port)];
            bases.extend(node.resp_port.map(|port| ("resp_port", port)));
            for (name, base) in bases {
                if base == 0 || base as u32 + self.shards - 1 > u16::MAX as u32 {
                    return Err(format!(
                        "node {}: {name} {base} + {} shards does not fit in 1..=65535",
                        node.id, self.shards
                    ));
                }
            }
            if node.http_port == 0 {
                return Err(format!("node {}: http_port 0", node.id));
            }
        }
        self.check_ports()
    }

    /// Ports used on one host must not overlap: each shard needs its own client and peer port.
    fn check_ports(&self) -> Result<(), String> {
        let mut by_host: BTreeMap<&str, Vec<(u32, u32, String)>> = BTreeMap::new();
        for node in &self.nodes {
            let ranges = by_host.entry(node.host.as_str()).or_default();
            let n = self.shards;
            ranges.push((
                node.client_port as u32,
                node.client_port as u32 + n,
                format!("node {} client ports", node.id),
            ));
            ranges.push((
                node.peer_port as u32,
                node.peer_port as u32 + n,
                format!("node {} peer ports", node.id),
            ));
            ranges.push((
                node.http_port as u32,
                node.http_port as u32 + 1,
                format!("node {} http port", node.id),
            ));
            if let Some(port) = node.resp_port {
                ranges.push((port as u32, port as u32 + n, format!("node {} resp ports", node.id)));
            }
        }
        for (host, ranges) in by_host {
            for (i, a) in ranges.iter().enumerate() {
                for b in &ranges[i + 1..] {
                    if a.0 < b.1 && b.0 < a.1 {
                        return Err(format!(
                            "duplicate port on {host}: {} ({}-{}) overlap {} ({}-{})",
                            a.2,
                            a.0,
                            a.1 - 1,
                            b.2,
                            b.0,
                            b.1 - 1
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node ids, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids
    }

    /// The node shard `shard` prefers as its leader: the `shard mod N`-th node by ascending id
    /// (DESIGN.md §4), so leaders spread across nodes.
    pub fn preferred_leader(&self, shard: ShardId) -> NodeId {
        let ids = self.node_ids();
        ids[shard.get() as usize % ids.len()]
    }
}

/// `s` as a TOML basic string, quoted and escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "local"
shards = 2

[[node]]
id = 1
host = "127.0.0.1"
client_port = 7100
peer_port = 7200
http_port = 7300

[[node]]
id = 2
host = "127.0.0.1"
client_port = 7110
peer_port = 7210
http_port = 7310
"#;

    // Shows: a valid file loads, and addresses follow the port rules.
    #[test]
    fn loads_valid_file() {
        let r = Registry::parse(GOOD, "r.toml").unwrap();
        assert_eq!((r.cluster.as_str(), r.shards, r.nodes.len()), ("local", 2, 2));
        assert_eq!(r.node(NodeId(2)).unwrap().peer_addr(ShardId(1)), "127.0.0.1:7211");
        assert_eq!(r.preferred_leader(ShardId(0)), NodeId(1));
        assert_eq!(r.preferred_leader(ShardId(1)), NodeId(2));
        assert_eq!(r.preferred_leader(ShardId(2)), NodeId(1));
    }

    // Shows: a node's `[[node]]` table reads back as the same node, and a host with quotes,
    // backslashes or control characters is escaped (TOML reads it back as written).
    #[test]
    fn node_tables_read_back() {
        let r = Registry::parse(GOOD, "r.toml").unwrap();
        let text: String = "cluster = \"local\"\nshards = 2\n".to_string()
            + &r.nodes.iter().map(Node::to_toml).collect::<String>();
        assert_eq!(Registry::parse(&text, "again.toml").unwrap(), r);
        #[derive(serde::Deserialize)]
        struct Host {
            host: String,
        }
        let odd = "a\"b\\c\nd\u{1}é";
        let back: Host = toml::from_str(&format!("host = {}", toml_string(odd))).unwrap();
        assert_eq!(back.host, odd);
    }

    fn error_for(text: &str) -> String {
        Registry::parse(text, "r.toml").unwrap_err().to_string()
    }

    // Shows: each kind of mistake gets its own one-line message naming the file.
    #[test]
    fn refuses_bad_files() {
        let cases = [
            (GOOD.replace("shards = 2", "shards = 2\nreplicas = 3"), "unknown field `replicas`"),
            (
                GOOD.replace("http_port = 7300", "http_port = 7300\nzone = \"a\""),
                "unknown field `zone`",
            ),
            (GOOD.replace("id = 2", "id = 1"), "duplicate node id 1"),
            (GOOD.replace("shards = 2", "shards = 0"), "shards = 0"),
            (
                GOOD.replace("client_port = 7110", "client_port = 7101"),
                "duplicate port on 127.0.0.1",
            ),
            (GOOD.replace("http_port = 7310", "http_port = 7200"), "duplicate port"),
            (GOOD.replace("id = 2", "id = 0"), "node id 0"),
            (GOOD.replace("cluster = \"local\"", "cluster = \"\""), "cluster name is empty"),
            (GOOD.replace("client_port = 7100", "client_port = 65535"), "does not fit"),
            (GOOD.replace("shards = 2", "shards = \"two\""), "line 3"),
            ("cluster = \"x\"\nshards = 1\n".to_string(), "no [[node]] entries"),
        ];
        for (text, expected) in cases {
            let message = error_for(&text);
            assert!(message.starts_with("r.toml: "), "{message}");
            assert!(message.contains(expected), "expected {expected:?} in {message:?}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
    }

    // Shows: the same ports on different hosts are fine.
    #[test]
    fn same_ports_on_different_hosts() {
        let text = GOOD.replace("client_port = 7110", "client_port = 7100")
            .replace("peer_port = 7210", "peer_port = 7200")
            .replace("http_port = 7310", "http_port = 7300")
            .replacen("host = \"127.0.0.1\"\nclient_port = 7100\npeer_port = 7200\nhttp_port = 7300\n\n[[node]]\nid = 2\nhost = \"127.0.0.1\"", "host = \"127.0.0.1\"\nclient_port = 7100\npeer_port = 7200\nhttp_port = 7300\n\n[[node]]\nid = 2\nhost = \"127.0.0.2\"", 1);
        let r = Registry::parse(&text, "r.toml").unwrap();
        assert_eq!(r.node(NodeId(2)).unwrap().host, "127.0.0.2");
    }

    // Shows: the [tls] section reads with its defaults, `{id}` fills in per node, paths are
    // made relative to the registry file's folder, and an unknown TLS version is refused.
    #[test]
    fn tls_section() {
        let text = format!(
            "{GOOD}\n[tls]\nca = \"ca.pem\"\ncert = \"n{{id}}.pem\"\nkey = \"/k/n{{id}}.key\"\n"
        );
        let dir = std::env::temp_dir().join(format!("corekv-registry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.toml"), &text).unwrap();
        let r = Registry::load(dir.join("r.toml")).unwrap();
        let tls = r.tls.as_ref().unwrap();
        assert_eq!((tls.client_certs, tls.min_version), (ClientCerts::Required, TlsVersion::Tls13));
        let files = tls.for_node(NodeId(2));
        assert_eq!(files.ca, dir.join("ca.pem"));
        assert_eq!(files.cert, dir.join("n2.pem"));
        assert_eq!(files.key, PathBuf::from("/k/n2.key"));
        assert_eq!((files.peer_ca, files.peer_cert), (dir.join("ca.pem"), dir.join("n2.pem")));
        std::fs::remove_dir_all(&dir).unwrap();
        let parsed = Registry::parse(
            &text.replace("key =", "min_version = \"1.2\"\nclient_certs = \"optional\"\nkey ="),
            "r.toml",
        )
        .unwrap();
        let tls = parsed.tls.unwrap();
        assert_eq!((tls.client_certs, tls.min_version), (ClientCerts::Optional, TlsVersion::Tls12));
        let message = error_for(&text.replace("key =", "min_version = \"1.1\"\nkey ="));
        assert!(message.contains("min_version") || message.contains("1.1"), "{message}");
        let message = error_for(&text.replace("cert = \"n{id}.pem\"", "cert = \" \""));
        assert!(message.contains("[tls] cert is empty"), "{message}");
    }

    // Shows: a missing file is reported with its path.
    #[test]
    fn missing_file() {
        let e = Registry::load("/nonexistent/corekv.toml").unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/corekv.toml: cannot read registry file"));
    }
}
