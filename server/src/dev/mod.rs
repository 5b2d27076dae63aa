//! `corekv dev`: a whole cluster on loopback with one command. It writes a registry file,
//! starts one `corekv serve` process per node (their logs go to files beside the data), waits
//! until every shard has a leader, prints how to connect, and stops every node on Ctrl-C.
//!
//! A node that exits while the cluster runs (a crash, or a `kill -9` to try failover) is
//! reported and left down; the others keep serving. `corekv dev restart N` and `corekv dev
//! stop N`, from another terminal, reach the running `corekv dev` through its control socket
//! (`DIR/dev.sock`).
//!
//! Before it writes anything, `corekv dev` takes the directory's lock (`DIR/dev.lock`), so a
//! second one in the same directory stops with one line instead of rewriting the running
//! cluster's registry; and on a directory that holds a cluster it keeps that cluster's shape:
//! asked for another, it refuses (a key's shard depends on the shard count, so starting the
//! data under another count would hide keys) and says how to start it or start afresh.

pub mod certs;
mod control;
mod nodes;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corekv_types::ids::ShardId;
use corekv_types::registry::Registry;

pub use control::{send, Request};
use nodes::Nodes;

/// How long the nodes get to elect every shard's leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The lock a running `corekv dev` holds in its directory.
const LOCK_FILE: &str = "dev.lock";

/// The registry file in the dev directory.
const REGISTRY_FILE: &str = "corekv.toml";

/// Shape and ports when neither the flags nor an existing cluster say.
const DEFAULT_NODES: u32 = 3;
const DEFAULT_SHARDS: u32 = 2;
const DEFAULT_BASE_PORT: u16 = 7100;

/// What `corekv dev` was asked for. `None`: keep what the directory's cluster has, else the
/// default (3 nodes, 2 shards, ports from 7100).
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Nodes to run.
    pub nodes: Option<u32>,
    /// Shards per node.
    pub shards: Option<u32>,
    /// Directory for the registry file, data and logs.
    pub dir: PathBuf,
    /// First client port; see [`registry_text`] for the layout.
    pub base_port: Option<u16>,
    /// Remove existing data first.
    pub clean: bool,
    /// TLS on every port, with a throwaway CA and certificates in `DIR/tls` (kept for a
    /// cluster that has them).
    pub tls: bool,
    /// Users and roles (implies `tls`): `DIR/auth.toml`, where user `dev` (the client
    /// certificate's) may do everything.
    pub auth: bool,
}

/// The `[auth]` section of a dev cluster's registry.
const AUTH_SECTION: &str = "\n[auth]\npolicy = \"auth.toml\"\n";

/// A dev cluster's first policy file.
const DEV_POLICY: &str =
    "# Users and roles of this dev cluster (see the README, \"Users, roles and permissions\").
# Edit, then send the nodes SIGHUP (pkill -HUP -f 'corekv serve') to put it in force.

[[role]]
name = \"everything\"
write = [\"\"]
admin = true

[[user]]
name = \"dev\"
roles = [\"everything\"]
";

/// The folder of a dev cluster's certificates.
const TLS_DIR: &str = "tls";

/// The user name of the client certificate `corekv dev --tls` makes.
pub const DEV_USER: &str = "dev";

/// The `[tls]` section of a dev cluster's registry.
const TLS_SECTION: &str =
    "\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/node-{id}.pem\"\nkey = \"tls/node-{id}-key.pem\"\n";

/// Makes `DIR/tls`'s CA, node and client certificates, unless the CA is already there.
fn make_certs(dir: &Path, registry: &Registry) -> anyhow::Result<()> {
    let tls = dir.join(TLS_DIR);
    let names = ["ca".to_string(), "client".into(), "client-key".into()].into_iter().chain(
        registry
            .nodes
            .iter()
            .flat_map(|n| [format!("node-{}", n.id), format!("node-{}-key", n.id)]),
    );
    let complete = names.map(|name| tls.join(format!("{name}.pem"))).all(|p| p.exists());
    if complete {
        return Ok(());
    }
    std::fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
    let ca = certs::Authority::new("corekv dev CA").context("making the dev CA")?;
    std::fs::write(tls.join("ca.pem"), ca.cert_pem()).context("writing the dev CA")?;
    for node in &registry.nodes {
        let issued = ca.node(node.id, &[node.host.as_str(), "localhost"], None)?;
        issued.write(&tls, &format!("node-{}", node.id)).context("writing a node certificate")?;
    }
    ca.client(DEV_USER, None)?.write(&tls, "client").context("writing the client certificate")?;
    Ok(())
}

/// What the dev tools use to reach a TLS dev cluster: its CA, and the client certificate.
fn client_tls(
    dir: &Path,
    registry: &Registry,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(settings) = &registry.tls else { return Ok(None) };
    let tls = dir.join(TLS_DIR);
    let config = corekv_types::tls::client_config(
        &settings.ca,
        Some((&tls.join("client.pem"), &tls.join("client-key.pem"))),
        settings.min_version,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(config)))
}

/// `corekv dev` refused to start: another one runs in the directory, or the directory holds a
/// cluster of another shape. `corekv dev` exits with status 2 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DevRefusal(pub String);

/// The registry of a dev cluster: node `i` (from 1) gets client ports from
/// `base + stride*(i-1)`, peer ports from `base + 100 + stride*(i-1)` and HTTP port
/// `base + 200 + (i-1)` and Redis (RESP) ports from `base + 300 + stride*(i-1)`, where the
/// stride is at least the shard count (and each block at least `stride * nodes`).
pub fn registry_text(nodes: u32, shards: u32, base: u16) -> String {
    let stride = shards.max(10);
    let block = 100.max(stride * nodes);
    let mut text = format!("cluster = \"dev\"\nshards = {shards}\n");
    for i in 0..nodes {
        let base = base as u32;
        text.push_str(&format!(
            "\n[[node]]\nid = {}\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nhttp_port = {}\nresp_port = {}\n",
            i + 1,
            base + stride * i,
            base + block + stride * i,
            base + 2 * block + i,
            base + 3 * block + stride * i,
        ));
    }
    text
}

/// Runs the dev cluster until Ctrl-C.
pub fn run(options: DevOptions) -> anyhow::Result<()> {
    if options.nodes == Some(0) || options.shards == Some(0) {
        bail!(DevRefusal("--nodes and --shards must be at least 1".to_string()));
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.dir.display()))?;
    let _lock = lock_dev_dir(&dir)?;
    if options.clean {
        clean(&dir)?;
    }
    let (registry_path, registry) = prepare_registry(&dir, &options)?;
    if registry.tls.is_some() {
        make_certs(&dir, &registry)?;
    }
    let http_tls = client_tls(&dir, &registry)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let exe = std::env::current_exe().context("finding the corekv binary")?;
    let allowed = crate::runtime::allowed_cpus();
    // Node `i` in id order prefers to lead the shards `s` with `s mod N = i`.
    let mut ids: Vec<u64> = registry.nodes.iter().map(|node| node.id.get()).collect();
    ids.sort_unstable();
    let cpus = dev_cpus(&allowed, ids.len(), registry.shards as usize);
    let ids = ids.into_iter().zip(cpus);
    let mut nodes = Nodes::new(exe, registry_path.clone(), dir.clone(), ids);
    nodes.start_all()?;
    println!(
        "corekv dev: started {} nodes x {} shards in {}",
        registry.nodes.len(),
        registry.shards,
        dir.display()
    );
    if let Err(error) = wait_for_leaders(&registry, &mut nodes, &stop, http_tls) {
        nodes.stop_all();
        return Err(error.context(format!("node logs are in {}", dir.display())));
    }
    // Without the socket the cluster still runs; only `corekv dev restart/stop` cannot reach it.
    let control = control::Control::listen(&dir)
        .map_err(|error| eprintln!("corekv dev: {error:#}; `corekv dev restart` will not work"))
        .ok();
    print_ready(&registry, &registry_path, &dir);
    supervise(&mut nodes, control.as_ref(), &dir, &stop);
    // Whoever started us may have stopped reading our output (a closed pipe): a failed
    // write must not keep the nodes from being stopped.
    let _ = writeln!(std::io::stdout(), "corekv dev: stopping the nodes");
    nodes.stop_all();
    Ok(())
}

/// Takes `DIR/dev.lock`, or refuses with one line when another `corekv dev` holds it — or
/// when a node of an earlier dev cluster still runs on the directory's data.
fn lock_dev_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let Some(lock) = crate::data_dir::try_lock(&dir.join(LOCK_FILE))? else {
        bail!(DevRefusal(format!(
            "a dev cluster is already running in {} (another corekv dev holds {}); stop it with \
             Ctrl-C, or pick another --dir",
            dir.display(),
            dir.join(LOCK_FILE).display()
        )));
    };
    for (id, data) in node_data_dirs(dir)? {
        if crate::data_dir::is_locked(&data) {
            bail!(DevRefusal(format!(
                "node {id} of an earlier dev cluster is still running on {} (its corekv dev \
                 died); stop that process first",
                data.display()
            )));
        }
    }
    Ok(lock)
}

/// Removes everything in the dev directory but its lock.
fn clean(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// `(id, DIR/node-N)` for every node data directory in the dev directory.
fn node_data_dirs(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    crate::data_dir::numbered_folders(dir, "node-")
}

/// The registry to run: the directory's own when it holds a cluster (which must have the
/// shape asked for, if one was), else a new one; written to `DIR/corekv.toml` when it
/// changed. Checks that the ports are free.
fn prepare_registry(dir: &Path, options: &DevOptions) -> anyhow::Result<(PathBuf, Registry)> {
    let path = dir.join(REGISTRY_FILE);
    let data = node_data_dirs(dir)?;
    let existing = if path.exists() && !data.is_empty() {
        Some(Registry::load(&path).map_err(|e| {
            DevRefusal(format!("{e}; fix it, or start afresh with --clean (removes the data)"))
        })?)
    } else {
        None
    };
    let nodes =
        options.nodes.or(existing.as_ref().map(|r| r.nodes.len() as u32)).unwrap_or(DEFAULT_NODES);
    let shards = options.shards.or(existing.as_ref().map(|r| r.shards)).unwrap_or(DEFAULT_SHARDS);
    let base = options
        .base_port
        .or(existing.as_ref().and_then(|r| r.nodes.first()).map(|n| n.client_port))
        .unwrap_or(DEFAULT_BASE_PORT);
    check_shape(dir, existing.as_ref(), &data, nodes, shards)?;
    let mut text = registry_text(nodes, shards, base);
    let auth = options.auth || existing.as_ref().is_some_and(|r| r.auth.is_some());
    if auth || options.tls || existing.as_ref().is_some_and(|r| r.tls.is_some()) {
        text.push_str(TLS_SECTION);
    }
    if auth {
        text.push_str(AUTH_SECTION);
        let policy = dir.join("auth.toml");
        if !policy.exists() {
            std::fs::write(&policy, DEV_POLICY)
                .with_context(|| format!("writing {}", policy.display()))?;
        }
    }
    let mut registry = Registry::parse(&text, &path.display().to_string())?;
    registry.paths_relative_to(dir);
    check_ports_free(&registry)?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((path, registry))
}

/// Refuses a shape (`nodes` × `shards`) other than the one the directory's data has.
fn check_shape(
    dir: &Path,
    existing: Option<&Registry>,
    data: &[(u64, PathBuf)],
    nodes: u32,
    shards: u32,
) -> anyhow::Result<()> {
    let refuse = |holds: String| {
        DevRefusal(format!(
            "{} holds {holds}, not {nodes} nodes x {shards} shards: start it as it is with \
             `corekv dev --dir {}`, or start afresh with --clean (removes the data)",
            dir.display(),
            dir.display()
        ))
    };
    if let Some(existing) = existing {
        if existing.nodes.len() as u32 != nodes || existing.shards != shards {
            bail!(refuse(format!(
                "a cluster of {} nodes x {} shards",
                existing.nodes.len(),
                existing.shards
            )));
        }
    }
    if let Some((id, _)) = data.iter().find(|(id, _)| *id > nodes as u64) {
        bail!(refuse(format!("data of node {id}")));
    }
    for (id, path) in data {
        let expected = crate::data_dir::Identity::new("dev", shards);
        if let Err(error) = crate::data_dir::check(path, &expected) {
            match error.downcast::<crate::data_dir::ShapeMismatch>() {
                Ok(mismatch) => bail!(refuse(format!("node {id}'s data ({})", mismatch.what))),
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

fn check_ports_free(registry: &Registry) -> anyhow::Result<()> {
    for node in &registry.nodes {
        let mut ports: Vec<u32> = Vec::new();
        for s in 0..registry.shards {
            ports.push(node.client_port as u32 + s);
            ports.push(node.peer_port as u32 + s);
            ports.extend(node.resp_port.map(|port| port as u32 + s));
        }
        ports.push(node.http_port as u32);
        for port in ports {
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_err() {
                bail!(DevRefusal(format!(
                    "port {port} on 127.0.0.1 is in use (another corekv dev?); pick other ports \
                     with --base-port"
                )));
            }
        }
    }
    Ok(())
}

/// The CPUs each node of a dev cluster of `nodes` nodes pins its `shards` executors to (shard
/// `s` on the `s mod len`-th of its list). The nodes share the machine, so the executors are
/// dealt out together: first each shard's preferred leader's (the `s mod nodes`-th node,
/// DESIGN.md §4), each to the CPU with the fewest leaders, then the rest node by node, each to
/// the CPU with the fewest replicas of its shard; ties go to the CPU with the fewest
/// executors, then to the first in `allowed`, and a node never puts two executors on one CPU
/// while it has one it does not use. With CPUs to spare every executor gets its own. On a
/// smaller machine the leaders still run on different CPUs, and a shard's replicas too where
/// they can, so a write does not wait for its leader and followers to take turns on one core
/// while another idles (with the nodes laid out one after another, on two CPUs, every
/// replica of a shard shared one CPU: puts at one in flight ran at three quarters of the
/// rate).
pub fn dev_cpus(allowed: &[usize], nodes: usize, shards: usize) -> Vec<Vec<usize>> {
    let n = allowed.len();
    // Shards beyond the CPUs share the CPUs of those below them (`s mod len`).
    let per_node = shards.min(n);
    let mut layout: Vec<Vec<Option<usize>>> = vec![vec![None; per_node]; nodes];
    if n == 0 || nodes == 0 {
        return vec![Vec::new(); nodes];
    }
    let mut load = vec![0usize; n];
    let mut leaders = vec![0usize; n];
    let mut replicas = vec![vec![0usize; n]; per_node];
    let leaders_first = (0..per_node).map(|k| (k % nodes, k));
    let rest = (0..nodes).flat_map(|node| (0..per_node).map(move |k| (node, k)));
    for (i, (node, k)) in leaders_first.chain(rest).enumerate() {
        if layout[node][k].is_some() {
            continue;
        }
        let leader = i < per_node;
        let used: Vec<usize> = layout[node].iter().flatten().copied().collect();
        let Some(cpu) = (0..n).filter(|c| !used.contains(c)).min_by_key(|&c| {
            let first = if leader { leaders[c] } else { replicas[k][c] };
            (first, load[c], c)
        }) else {
            continue;
        };
        layout[node][k] = Some(cpu);
        load[cpu] += 1;
        replicas[k][cpu] += 1;
        if leader {
            leaders[cpu] += 1;
        }
    }
    layout
        .into_iter()
        .map(|cpus| cpus.into_iter().flatten().map(|c| allowed[c]).collect())
        .collect()
}

/// Whether every shard has a leader that its replicas agree on, as the nodes' `/status`
/// report it.
fn all_leaders_elected(registry: &Registry, tls: &Option<Arc<rustls::ClientConfig>>) -> bool {
    let mut leaders = vec![None; registry.shards as usize];
    for node in &registry.nodes {
        let Ok((200, body)) = crate::http::get_with(
            &node.http_addr(),
            "/status",
            Duration::from_secs(1),
            tls.clone(),
        ) else {
            return false;
        };
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
        let Some(shards) = status["shards"].as_array() else { return false };
        for (i, shard) in shards.iter().enumerate() {
            let leader = shard["leader_id"].as_u64().unwrap_or(0);
            if leader == 0 || i >= leaders.len() || leaders[i].is_some_and(|l| l != leader) {
                return false;
            }
            leaders[i] = Some(leader);
        }
    }
    leaders.iter().all(Option::is_some)
}

fn wait_for_leaders(
    registry: &Registry,
    nodes: &mut Nodes,
    stop: &AtomicBool,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !all_leaders_elected(registry, &tls) {
        if let Some((id, status)) = nodes.reap_exited() {
            let said = nodes::last_log_line(&nodes.log_path(id))
                .map(|line| format!(": {line}"))
                .unwrap_or_default();
            bail!("node {id} exited during start-up ({status}){said}");
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted before the cluster was ready");
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("not every shard elected a leader within {}s", READY_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn print_ready(registry: &Registry, registry_path: &Path, dir: &Path) {
    println!("corekv dev: every shard has a leader. Connect with:");
    println!();
    println!("  export COREKV_REGISTRY={}", registry_path.display());
    let tls = dir.join(TLS_DIR);
    if registry.tls.is_some() {
        // corekvctl trusts the registry's CA; the certificate says who the client is.
        println!("  export COREKV_CERT={}", tls.join("client.pem").display());
        println!("  export COREKV_CERT_KEY={}", tls.join("client-key.pem").display());
    }
    println!("  corekvctl put hello world");
    println!("  corekvctl get hello");
    println!("  corekvctl status");
    if let Some(resp) = registry.nodes.first().and_then(|n| n.resp_port) {
        let tls = if registry.tls.is_some() { " --tls" } else { "" };
        println!("  redis-cli -c -p {resp}{tls} set hello world");
    }
    println!();
    if registry.tls.is_some() {
        println!(
            "  curl --cacert {} --cert {} --key {} https://{}/status",
            tls.join("ca.pem").display(),
            tls.join("client.pem").display(),
            tls.join("client-key.pem").display(),
            registry.nodes.first().map(|n| n.http_addr()).unwrap_or_default()
        );
        println!();
        println!(
            "Every port speaks TLS only (CA and certificates in {}; the client certificate is \
             user {DEV_USER:?}).",
            tls.display()
        );
        if registry.auth.is_some() {
            println!(
                "Every request is checked against the users and roles of {} (edit it, then \
                 `pkill -HUP -f 'corekv serve'`).",
                dir.join("auth.toml").display()
            );
        }
        println!();
    }
    let scheme = if registry.tls.is_some() { "https" } else { "http" };
    for node in &registry.nodes {
        println!(
            "  node {}: clients {}-{}, http {scheme}://{}/status, log {}",
            node.id,
            node.client_addr(ShardId(0)),
            node.client_port as u32 + registry.shards - 1,
            node.http_addr(),
            dir.join(format!("node-{}.log", node.id)).display()
        );
    }
    println!();
    println!(
        "A node that stops is left down while the others serve; `corekv dev stop N` and \
         `corekv dev restart N --dir {}` stop and start one.",
        dir.display()
    );
    println!("Press Ctrl-C to stop the cluster.");
}

/// Until Ctrl-C: reports nodes that exit (the others keep serving) and serves the control
/// socket's restart and stop requests.
fn supervise(nodes: &mut Nodes, control: Option<&control::Control>, dir: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        while let Some((id, status)) = nodes.reap_exited() {
            let said = nodes::last_log_line(&nodes.log_path(id))
                .map(|line| format!("; its log ends: {line}"))
                .unwrap_or_default();
            // Output may go to a closed pipe: nothing to do about it but go on supervising.
            let _ = writeln!(
                std::io::stdout(),
                "corekv dev: node {id} exited ({status}); the other nodes keep serving{said}\n\
                 corekv dev: restart it with: corekv dev restart {id} --dir {}",
                dir.display()
            );
        }
        if let Some(control) = control {
            control.serve_pending(|request| {
                let outcome = match request {
                    Request::Restart(id) => nodes.restart(id),
                    Request::Stop(id) => nodes.stop(id),
                };
                if let Ok(done) = &outcome {
                    let _ = writeln!(std::io::stdout(), "corekv dev: {done}");
                }
                outcome
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: the executors of a dev cluster are spread over the CPUs: each its own where there
    // are enough; on two CPUs the two shards' leaders on different ones and each shard's
    // replicas not all on one; one shard per node on two CPUs does not put every executor on
    // the first; a node never names a CPU twice.
    #[test]
    fn nodes_spread_over_the_cpus() {
        let two = [0, 1];
        assert_eq!(dev_cpus(&two, 3, 1), [vec![0], vec![1], vec![0]]);
        let layout = dev_cpus(&two, 3, 2);
        assert_eq!(layout, [vec![0, 1], vec![0, 1], vec![1, 0]]);
        assert_ne!(layout[0][0], layout[1][1], "the leaders of shards 0 and 1 share a CPU");
        for shard in 0..2 {
            let on: Vec<usize> = layout.iter().map(|cpus| cpus[shard]).collect();
            assert!(on.contains(&0) && on.contains(&1), "shard {shard}'s replicas on one CPU");
        }
        assert_eq!(dev_cpus(&two, 3, 5)[1], [0, 1], "more shards than CPUs: each CPU once");
        let sixteen: Vec<usize> = (0..16).collect();
        let mut all: Vec<usize> = dev_cpus(&sixteen, 3, 2).concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "every executor on a CPU of its own");
        for cpus in dev_cpus(&[2, 5, 7, 9], 3, 3) {
            assert_eq!(cpus.len(), 3);
            assert!(cpus.iter().all(|c| [2, 5, 7, 9].contains(c)));
            assert!((1..3).all(|i| !cpus[..i].contains(&cpus[i])), "a CPU twice: {cpus:?}");
        }
        assert!(dev_cpus(&[], 3, 2).iter().all(Vec::is_empty));
        assert_eq!(nodes::cpu_args(&[3, 1]), ["--cpus", "3,1"]);
        assert!(nodes::cpu_args(&[]).is_empty());
    }
}
