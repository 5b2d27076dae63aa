//! The `corekv` commands as a user runs them: `corekv dev` from start to Ctrl-C, and `corekv
//! serve` refusing bad configuration with one clear line and the documented exit status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{block_on, corekv_bin, dev_base, wait_exit};
use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig};

// Shows: `corekv dev` writes a registry, starts the nodes, says when every shard has a leader,
// serves reads and writes through that registry, and on Ctrl-C stops every node and exits 0.
#[test]
fn dev_cluster_starts_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let base = dev_base(3, 2);
    let mut dev = Command::new(corekv_bin())
        .args(["dev", "--nodes", "3", "--shards", "2", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut printed = String::new();
    loop {
        let line = lines.next().expect("corekv dev printed its ready line").unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("every shard has a leader") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not ready: {printed}");
    }
    let registry_path = dir.path().canonicalize().unwrap().join("corekv.toml");
    // The rest of the instructions follow the ready line.
    for _ in 0..3 {
        printed.push_str(&lines.next().unwrap().unwrap());
        printed.push('\n');
    }
    assert!(
        printed.contains(&format!("export COREKV_REGISTRY={}", registry_path.display())),
        "{printed}"
    );

    let client = Client::connect(ClientConfig::new(Registry::load(&registry_path).unwrap()));
    block_on(async {
        client.put("dev-key", "dev-value").await.unwrap();
        assert_eq!(client.get("dev-key").await.unwrap().unwrap().value, b"dev-value");
    });

    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(dev.id() as libc::pid_t, libc::SIGINT);
    }
    let status = wait_exit(&mut dev, Duration::from_secs(30));
    assert!(status.success(), "corekv dev exited with {status}");
    // No node process of this dev cluster is left (matched by its data directory; a port
    // check could hit another test's cluster that took the freed port).
    let dir_text = dir.path().display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" serve ") && c.contains(&dir_text))
        .collect();
    assert!(left.is_empty(), "node processes left after corekv dev stopped: {left:?}");
}

/// Runs `corekv serve` with `registry` text and returns (exit code, stderr).
fn serve_with(registry: &str, node_id: &str, data_dir: &std::path::Path) -> (i32, String) {
    serve_with_args(registry, node_id, data_dir, &[])
}

/// [`serve_with`], with extra `serve` arguments.
fn serve_with_args(
    registry: &str,
    node_id: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corekv.toml");
    std::fs::write(&path, registry).unwrap();
    common::serve_until_exit(&path, node_id, data_dir, extra)
}

const ONE_NODE: &str = "cluster = \"c\"\nshards = 1\n\n[[node]]\nid = 1\nhost = \"127.0.0.1\"\nclient_port = PORT\npeer_port = PEER\nhttp_port = HTTP\n";

fn one_node(base: u16) -> String {
    ONE_NODE
        .replace("PORT", &base.to_string())
        .replace("PEER", &(base + 1).to_string())
        .replace("HTTP", &(base + 2).to_string())
}

// Shows: bad configuration is refused before anything starts, with exit status 2 and one
// line that names the file and the problem.
#[test]
fn serve_refuses_bad_configuration() {
    let data = tempfile::tempdir().unwrap();
    let cases = [
        (
            one_node(9_000).replace("shards = 1", "shards = 1\nreplicas = 3"),
            "1",
            "unknown field `replicas`",
        ),
        (one_node(9_000).replace("shards = 1", "shards = 0"), "1", "shards = 0"),
        (one_node(9_000), "7", "node id 7 is not in the registry"),
        (
            format!(
                "{}{}",
                one_node(9_000),
                one_node(9_100).split("[[node]]").nth(1).map(|n| format!("[[node]]{n}")).unwrap()
            ),
            "1",
            "duplicate node id 1",
        ),
    ];
    for (registry, node, expected) in cases {
        let (code, stderr) = serve_with(&registry, node, data.path());
        assert_eq!(code, 2, "exit status for {expected:?}: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
    for (cpus, expected) in [
        ("1-x", "'x' in the CPU list '1-x' is not a CPU number"),
        ("0,0", "CPU 0 appears twice"),
        ("1000", "CPU 1000 is not one this process may run on"),
    ] {
        let (code, stderr) = serve_with_args(&one_node(9_000), "1", data.path(), &["--cpus", cpus]);
        assert_eq!(code, 2, "exit status for --cpus {cpus}: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
    for flag in ["--snapshot-entries", "--snapshot-log-mib", "--snapshot-write-mib"] {
        let (code, stderr) = serve_with_args(&one_node(9_000), "1", data.path(), &[flag, "0"]);
        assert_eq!(code, 2, "exit status for {flag} 0: {stderr}");
        assert!(stderr.contains("--snapshot-write-mib must be at least 1"), "{stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
}

// Shows: a port already in use and a data directory locked by another node are start-up
// failures with exit status 1 and a message naming them.
#[test]
fn serve_reports_start_up_failures() {
    let data = tempfile::tempdir().unwrap();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    // Client port taken by someone else.
    let registry = ONE_NODE
        .replace("PORT", &port.to_string())
        .replace("PEER", &(dev_base(1, 1) + 1).to_string())
        .replace("HTTP", &(dev_base(1, 1) + 2).to_string());
    let (code, stderr) = serve_with(&registry, "1", data.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen for clients on 127.0.0.1:{port}")), "{stderr}");

    // Data directory locked by a running node.
    let base = dev_base(1, 1);
    let registry = one_node(base);
    let path = data.path().join("corekv.toml");
    std::fs::write(&path, &registry).unwrap();
    let mut running = common::spawn_serve(&path, "1", &data.path().join("node"), &[], false);
    let started = Instant::now();
    while !data.path().join("node").join("LOCK").exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "node did not create its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stderr) = serve_with(&one_node(dev_base(1, 1)), "1", &data.path().join("node"));
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is in use by another corekv process"), "{stderr}");
}

// Shows: `--cpus` pins the shard executors to the CPUs named (here the last CPU this process
// may use; without the flag shard 0 would sit on the first), and the node serves.
#[test]
fn serve_pins_executors_to_the_cpus_given() {
    let allowed: Vec<usize> = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| corekv_server::runtime::parse_cpu_list(list.trim()).unwrap())
        .unwrap();
    let last = *allowed.iter().max().unwrap();
    let cluster = common::TestCluster::start_with(1, 2, &["--cpus", &last.to_string()]);
    block_on(async {
        cluster.client().put("pinned", "yes").await.unwrap();
    });
    let pid = cluster.pid(1).unwrap();
    let mut executors = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        if !name.starts_with("shard-") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(path.join("status")) else { continue };
        let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
        assert_eq!(
            cpus.trim(),
            last.to_string(),
            "thread {} of shard executor {name}",
            path.display()
        );
        executors += 1;
    }
    assert!(executors >= 2, "found {executors} executor threads");
}
