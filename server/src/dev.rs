//! `corekv dev`: a whole cluster on loopback with one command. It writes a registry file,
//! starts one `corekv serve` process per node (their logs go to files beside the data), waits
//! until every shard has a leader, prints how to connect, and stops every node on Ctrl-C (or
//! when one of them dies).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corekv_client::registry::Registry;

/// How long the nodes get to elect every shard's leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a node gets to stop cleanly after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `corekv dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Nodes to run.
    pub nodes: u32,
    /// Shards per node.
    pub shards: u32,
    /// Directory for the registry file, data and logs.
    pub dir: PathBuf,
    /// First client port; see [`registry_text`] for the layout.
    pub base_port: u16,
    /// Remove existing data first.
    pub clean: bool,
}

/// The registry of a dev cluster: node `i` (from 1) gets client ports from
/// `base + stride*(i-1)`, peer ports from `base + 100 + stride*(i-1)` and HTTP port
/// `base + 200 + (i-1)`, where the stride is at least the shard count.
pub fn registry_text(nodes: u32, shards: u32, base: u16) -> String {
    let stride = shards.max(10);
    let mut text = format!("cluster = \"dev\"\nshards = {shards}\n");
    for i in 0..nodes {
        let base = base as u32;
        text.push_str(&format!(
            "\n[[node]]\nid = {}\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nhttp_port = {}\n",
            i + 1,
            base + stride * i,
            base + 100.max(stride * nodes) + stride * i,
            base + 2 * 100.max(stride * nodes) + i,
        ));
    }
    text
}

/// Runs the dev cluster until Ctrl-C.
pub fn run(options: DevOptions) -> anyhow::Result<()> {
    if options.nodes == 0 || options.shards == 0 {
        bail!("--nodes and --shards must be at least 1");
    }
    if options.clean && options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("removing {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.dir.display()))?;
    let registry_path = dir.join("corekv.toml");
    let text = registry_text(options.nodes, options.shards, options.base_port);
    let registry = Registry::parse(&text, &registry_path.display().to_string())?;
    check_ports_free(&registry)?;
    std::fs::write(&registry_path, &text)
        .with_context(|| format!("writing {}", registry_path.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let exe = std::env::current_exe().context("finding the corekv binary")?;
    let mut children = Vec::new();
    let allowed = crate::runtime::allowed_cpus();
    for (i, node) in registry.nodes.iter().enumerate() {
        let cpus = node_cpus(&allowed, i, options.shards as usize);
        match spawn_node(&exe, &registry_path, &dir, node.id, &cpus) {
            Ok(child) => children.push((node.id, child)),
            Err(error) => {
                stop_all(&mut children);
                return Err(error);
            }
        }
    }
    println!(
        "corekv dev: started {} nodes x {} shards in {}",
        options.nodes,
        options.shards,
        dir.display()
    );
    if let Err(error) = wait_for_leaders(&registry, &mut children, &stop) {
        stop_all(&mut children);
        return Err(error.context(format!("node logs are in {}", dir.display())));
    }
    print_ready(&registry, &registry_path, &dir);
    let outcome = supervise(&mut children, &stop);
    // Whoever started us may have stopped reading our output (a closed pipe): a failed
    // write must not keep the nodes from being stopped.
    let _ = writeln!(std::io::stdout(), "corekv dev: stopping the nodes");
    stop_all(&mut children);
    outcome
}

fn check_ports_free(registry: &Registry) -> anyhow::Result<()> {
    for node in &registry.nodes {
        let mut ports: Vec<u32> = Vec::new();
        for s in 0..registry.shards {
            ports.push(node.client_port as u32 + s);
            ports.push(node.peer_port as u32 + s);
        }
        ports.push(node.http_port as u32);
        for port in ports {
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_err() {
                bail!("port {port} on 127.0.0.1 is in use (another corekv dev?); pick other ports with --base-port");
            }
        }
    }
    Ok(())
}

/// The CPUs the `index`-th node (from 0) of a dev cluster pins its `shards` executors to: the
/// nodes share the machine, so each starts where the one before it ended, wrapping round
/// `allowed`. Left to itself every node would put shard 0 on the first CPU: with one shard,
/// all the executors would share one core while the others idled.
pub fn node_cpus(allowed: &[usize], index: usize, shards: usize) -> Vec<usize> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let n = allowed.len();
    (0..shards.min(n)).map(|k| allowed[(index * shards + k) % n]).collect()
}

fn spawn_node(
    exe: &Path,
    registry: &Path,
    dir: &Path,
    id: u64,
    cpus: &[usize],
) -> anyhow::Result<Child> {
    let log_path = dir.join(format!("node-{id}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let err = log.try_clone().context("duplicating the log file")?;
    Command::new(exe)
        .arg("serve")
        .arg("--registry")
        .arg(registry)
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--data-dir")
        .arg(dir.join(format!("node-{id}")))
        .args(cpu_args(cpus))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting node {id}"))
}

/// `--cpus LIST` for `cpus`, or nothing when there are none (the node then uses them all).
fn cpu_args(cpus: &[usize]) -> Vec<String> {
    if cpus.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    vec!["--cpus".to_string(), list.join(",")]
}

/// Whether every shard has a leader that its replicas agree on, as the nodes' `/status`
/// report it.
fn all_leaders_elected(registry: &Registry) -> bool {
    let mut leaders = vec![None; registry.shards as usize];
    for node in &registry.nodes {
        let Ok((200, body)) =
            crate::http::get(&node.http_addr(), "/status", Duration::from_secs(1))
        else {
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
    children: &mut [(u64, Child)],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !all_leaders_elected(registry) {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("node {id} exited during start-up ({status})");
            }
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
    println!("  corekvctl put hello world");
    println!("  corekvctl get hello");
    println!("  corekvctl status");
    println!();
    for node in &registry.nodes {
        println!(
            "  node {}: clients {}-{}, http http://{}/status, log {}",
            node.id,
            node.client_addr(0),
            node.client_port as u32 + registry.shards - 1,
            node.http_addr(),
            dir.join(format!("node-{}.log", node.id)).display()
        );
    }
    println!();
    println!("Press Ctrl-C to stop the cluster.");
}

fn supervise(children: &mut [(u64, Child)], stop: &AtomicBool) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("node {id} exited ({status}); see its log");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// SIGTERM to every node, then SIGKILL to any that has not stopped after [`STOP_TIMEOUT`].
fn stop_all(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        // SAFETY: sending a signal to a child process we started and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "corekv dev: node {id} did not stop in time; killing it"
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: the nodes of a dev cluster start on different CPUs, so one shard per node on two
    // CPUs does not put every executor on the first; with as many shards as CPUs each node
    // uses them all; and the list never names a CPU twice.
    #[test]
    fn nodes_spread_over_the_cpus() {
        let two = [0, 1];
        let one_shard: Vec<_> = (0..3).map(|i| node_cpus(&two, i, 1)).collect();
        assert_eq!(one_shard, [vec![0], vec![1], vec![0]]);
        assert_eq!(node_cpus(&two, 2, 2), [0, 1]);
        assert_eq!(node_cpus(&two, 1, 5), [1, 0], "more shards than CPUs: each CPU once");
        let sixteen: Vec<usize> = (0..16).collect();
        assert_eq!(node_cpus(&sixteen, 2, 2), [4, 5]);
        assert_eq!(node_cpus(&[2, 5, 7, 9], 1, 3), [9, 2, 5]);
        assert!(node_cpus(&[], 0, 2).is_empty());
        assert_eq!(cpu_args(&[3, 1]), ["--cpus", "3,1"]);
        assert!(cpu_args(&[]).is_empty());
    }
}
