//! A node's TLS: the configurations of its three kinds of connection, built from the
//! registry's `[tls]` files (with the command line's overrides), and reloaded from the same
//! files on SIGHUP.
//!
//! - clients (client ports and HTTP): the node's certificate; client certificates checked
//!   against the CA, required or optional as the registry says;
//! - peers coming in: the peer certificate; a peer certificate required, checked against the
//!   peer CA, and (after the hello) checked to name the node the hello claims to be;
//! - peers going out: the peer certificate shown, the peer's checked to name the node dialed.
//!
//! A reload builds all three anew and swaps them in whole, or keeps the old ones and says why:
//! connections already open keep the session they have; new ones use the new files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use corekv_types::ids::NodeId;
use corekv_types::registry::{ClientCerts, NodeTlsFiles, Registry, TlsSettings, TlsVersion};
use corekv_types::tls;
use rustls::{ClientConfig, ServerConfig};

/// Per-node replacements for the registry's `[tls]` paths (`corekv serve --tls-*`).
#[derive(Debug, Clone, Default)]
pub struct TlsOverrides {
    /// `--tls-ca`.
    pub ca: Option<PathBuf>,
    /// `--tls-cert`.
    pub cert: Option<PathBuf>,
    /// `--tls-key`.
    pub key: Option<PathBuf>,
    /// `--peer-tls-ca`.
    pub peer_ca: Option<PathBuf>,
    /// `--peer-tls-cert`.
    pub peer_cert: Option<PathBuf>,
    /// `--peer-tls-key`.
    pub peer_key: Option<PathBuf>,
}

impl TlsOverrides {
    /// Whether any path was given.
    pub fn any(&self) -> bool {
        [&self.ca, &self.cert, &self.key, &self.peer_ca, &self.peer_cert, &self.peer_key]
            .iter()
            .any(|p| p.is_some())
    }

    fn apply(&self, files: &mut NodeTlsFiles) {
        let pairs = [
            (&self.ca, &mut files.ca),
            (&self.cert, &mut files.cert),
            (&self.key, &mut files.key),
            (&self.peer_ca, &mut files.peer_ca),
            (&self.peer_cert, &mut files.peer_cert),
            (&self.peer_key, &mut files.peer_key),
        ];
        for (given, path) in pairs {
            if let Some(given) = given {
                *path = given.clone();
            }
        }
    }
}

/// Node `node`'s TLS from the registry's `[tls]` and the command line's overrides, its files
/// read and checked; `None` without `[tls]`. Overrides without `[tls]` in the registry are
/// refused: the other nodes and the clients would speak plaintext to this one.
pub fn node_tls(
    registry: &Registry,
    overrides: &TlsOverrides,
    node: NodeId,
) -> Result<Option<Arc<NodeTls>>, String> {
    let host = registry.node(node).map_or("", |n| n.host.as_str());
    match &registry.tls {
        Some(settings) => {
            NodeTls::load(settings, overrides, node, host).map(|tls| Some(Arc::new(tls)))
        }
        None if overrides.any() => Err("TLS paths given on the command line, but the registry \
             file has no [tls] section: every node and client reads TLS from the registry, so \
             add it there"
            .to_string()),
        None => Ok(None),
    }
}

/// The configurations in use.
#[derive(Debug)]
pub struct TlsConfigs {
    /// Client ports and HTTP.
    pub clients: Arc<ServerConfig>,
    /// Peer ports.
    pub peers_in: Arc<ServerConfig>,
    /// Dialing peers.
    pub peers_out: Arc<ClientConfig>,
    /// When the certificates in use expire (Unix seconds): the clients' and the peers'.
    pub expiry: [(&'static str, i64); 2],
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeTls {
    node: NodeId,
    host: String,
    files: NodeTlsFiles,
    client_certs: ClientCerts,
    min_version: TlsVersion,
    current: RwLock<Arc<TlsConfigs>>,
}

impl NodeTls {
    /// Node `node`'s TLS from the registry's section and the command line's overrides, its
    /// files read and checked: the peer certificate must name the node
    /// ([`tls::node_name`]), the client one the host clients reach it at.
    pub fn load(
        settings: &TlsSettings,
        overrides: &TlsOverrides,
        node: NodeId,
        host: &str,
    ) -> Result<NodeTls, String> {
        let mut files = settings.for_node(node);
        overrides.apply(&mut files);
        let configs = build(&files, settings.client_certs, settings.min_version, node, host)?;
        Ok(NodeTls {
            node,
            host: host.to_string(),
            files,
            client_certs: settings.client_certs,
            min_version: settings.min_version,
            current: RwLock::new(Arc::new(configs)),
        })
    }

    /// The configurations in use now.
    pub fn configs(&self) -> Arc<TlsConfigs> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads every file again and, when all of them are good, uses them for new connections.
    pub fn reload(&self) -> Result<(), String> {
        let configs =
            build(&self.files, self.client_certs, self.min_version, self.node, &self.host)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(configs);
        Ok(())
    }
}

fn build(
    files: &NodeTlsFiles,
    client_certs: ClientCerts,
    min: TlsVersion,
    node: NodeId,
    host: &str,
) -> Result<TlsConfigs, String> {
    let leaf = |path: &Path| -> Result<_, String> {
        tls::read_certs(path)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: empty", path.display()))
    };
    let (peer_cert, client_cert) = (leaf(&files.peer_cert)?, leaf(&files.cert)?);
    tls::cert_names(&peer_cert, &tls::node_name(node)).map_err(|e| {
        format!("{}: {e}: peers could not tell it is node {node}", files.peer_cert.display())
    })?;
    tls::cert_names(&client_cert, host)
        .map_err(|e| format!("{}: {e}: clients reach this node at {host}", files.cert.display()))?;
    let expires = |cert: &[u8], path: &Path| {
        tls::not_after(cert).map_err(|e| format!("{}: {e}", path.display()))
    };
    let expiry = [
        ("clients", expires(&client_cert, &files.cert)?),
        ("peers", expires(&peer_cert, &files.peer_cert)?),
    ];
    let clients = tls::server_config(&files.ca, &files.cert, &files.key, client_certs, min)?;
    let peers_in = tls::server_config(
        &files.peer_ca,
        &files.peer_cert,
        &files.peer_key,
        ClientCerts::Required,
        min,
    )?;
    let peers_out =
        tls::client_config(&files.peer_ca, Some((&files.peer_cert, &files.peer_key)), min)?;
    Ok(TlsConfigs {
        clients: Arc::new(clients),
        peers_in: Arc::new(peers_in),
        peers_out: Arc::new(peers_out),
        expiry,
    })
}
