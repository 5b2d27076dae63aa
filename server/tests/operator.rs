//! What an operator and a new user run into, with real processes: data written under another
//! cluster shape is refused, `/health` tells the truth, a client with the wrong registry
//! learns it at once, and `corekv dev` survives a dead node and a second `corekv dev`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::dev::{dev_client, node_pid, Dev};
use common::{block_on, corekv_bin, dev_base, log_tail, TestCluster};
use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig, Error};

/// `corekv serve` for node `id` of `cluster` with the registry at `registry`: exit code and
/// stderr (the node must exit by itself within 20 s).
fn serve_exit(cluster: &TestCluster, id: u64, registry: &std::path::Path) -> (i32, String) {
    common::serve_until_exit(registry, &id.to_string(), &cluster.data_dir(id), &[])
}

// Shows: a node whose data was written with 4 shards refuses a registry that says 2 (which
// would hide most keys), and one that names another cluster, with exit status 2 and one line
// naming the data directory and both values; with the right registry again, every key is
// there.
#[test]
fn a_node_refuses_data_written_under_another_shape() {
    let mut cluster = TestCluster::start(3, 4);
    let client = cluster.client();
    block_on(async {
        for i in 0..10 {
            client.put(format!("key-{i}"), format!("value-{i}")).await.unwrap();
        }
    });
    for id in 1..=3 {
        cluster.stop(id);
    }
    let text = std::fs::read_to_string(&cluster.registry_path).unwrap();
    let two_shards = cluster.dir.path().join("two-shards.toml");
    std::fs::write(&two_shards, text.replace("shards = 4", "shards = 2")).unwrap();
    let renamed = cluster.dir.path().join("renamed.toml");
    let name_line = format!("cluster = \"{}\"", cluster.registry.cluster);
    std::fs::write(&renamed, text.replace(&name_line, "cluster = \"other\"")).unwrap();
    for id in 1..=3 {
        let (code, err) = serve_exit(&cluster, id, &two_shards);
        let dir = cluster.data_dir(id).display().to_string();
        assert_eq!(code, 2, "node {id}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(&dir), "names the data directory: {err}");
        assert!(err.contains("written with 4 shards") && err.contains("shards = 2"), "{err}");
    }
    let (code, err) = serve_exit(&cluster, 1, &renamed);
    assert_eq!(code, 2, "{err}");
    let named = format!("cluster {:?}", cluster.registry.cluster);
    assert!(err.contains(&named) && err.contains("\"other\""), "{err}");
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leaders(Duration::from_secs(30));
    block_on(async {
        for i in 0..10 {
            let entry = client.get(format!("key-{i}")).await.unwrap();
            assert_eq!(entry.map(|e| e.value), Some(format!("value-{i}").into_bytes()));
        }
    });
}

/// Node `id`'s `/health`: status code and body.
fn health(cluster: &TestCluster, id: u64) -> (u16, String) {
    cluster.http(id, "/health").unwrap_or((0, String::new()))
}

// Shows: /health is 503, with the reason per shard, on a node that cannot serve — alone of
// three (no quorum), or cut off because every peer refuses it — and /status's "serving"
// agrees; once a majority is back, 200 again.
#[test]
fn health_is_503_on_a_node_that_cannot_serve() {
    let mut cluster = TestCluster::start(3, 2);
    // A new cluster's followers count as serving once they have caught up with their leader.
    cluster.wait_until(Duration::from_secs(10), "every node to say 200", || {
        (1..=3).all(|id| health(&cluster, id).0 == 200)
    });
    cluster.kill(2);
    cluster.kill(3);
    // Within an election timeout, each shard says why: node 1 leads shard 0 and no longer
    // hears a quorum; shard 1's leader was node 2, gone quiet. Then, once node 1 has stepped
    // down and campaigns, both say that no leader is known.
    let mut reasons = Vec::new();
    cluster.wait_until(Duration::from_secs(10), "node 1 alone: no leader known on both", || {
        let (code, body) = health(&cluster, 1);
        if code == 503 {
            reasons.extend(body.lines().map(str::to_string));
        }
        code == 503 && body.lines().filter(|l| l.contains("no leader known")).count() == 2
    });
    for line in &reasons {
        let why = ["no leader known", "leader without a quorum", "no message from leader"];
        assert!(why.iter().any(|w| line.contains(w)), "{line}");
    }
    let status = cluster.status(1).unwrap();
    assert_eq!(status["serving"], false, "{status}");
    assert_eq!(status["shards"][0]["serving"], false, "{status}");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(log.contains("no leader known"), "the log says so, not `leader=0`");

    cluster.restart(2);
    cluster.wait_until(Duration::from_secs(20), "nodes 1 and 2 say 200", || {
        health(&cluster, 1).0 == 200 && health(&cluster, 2).0 == 200
    });
    assert_eq!(cluster.status(2).unwrap()["serving"], true);
    let log = std::fs::read_to_string(cluster.log_path(2)).unwrap();
    assert!(log.contains("snapshot_keys="), "the recovery line says what its keys count");

    // Node 3 comes back with a registry naming another cluster (and fresh data): every peer
    // refuses its hellos, and it hears from nobody.
    let text = std::fs::read_to_string(&cluster.registry_path).unwrap();
    let other = cluster.dir.path().join("other.toml");
    let name_line = format!("cluster = \"{}\"", cluster.registry.cluster);
    std::fs::write(&other, text.replace(&name_line, "cluster = \"other\"")).unwrap();
    let stranger_dir = cluster.dir.path().join("stranger");
    let mut stranger = common::spawn_serve(&other, "3", &stranger_dir, &[], false);
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = health(&cluster, 3);
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no leader known"), "{body}");
}

// Shows: a client whose registry file gives another shard count than the cluster's is told
// so in one round trip, for keys of every shard — also those whose port does not exist on
// the cluster — and so is corekvctl (exit status 2), instead of waiting out its deadline.
#[test]
fn a_client_with_another_shard_count_learns_it_at_once() {
    let cluster = TestCluster::start(3, 2);
    let text = std::fs::read_to_string(&cluster.registry_path).unwrap();
    for shards in [1, 4] {
        let wrong = text.replace("shards = 2", &format!("shards = {shards}"));
        let registry = Registry::parse(&wrong, "wrong.toml").unwrap();
        let client = Client::connect(ClientConfig::new(registry.clone()));
        for shard in 0..shards {
            let key = (0..)
                .map(|i| format!("k{i}"))
                .find(|k| client.shard_of(k.as_bytes()).get() == shard)
                .unwrap();
            let started = Instant::now();
            let result = block_on(client.get(&key));
            let error = match result {
                Err(error @ Error::Handshake { .. }) => error.to_string(),
                other => panic!("{shards} shards, key on shard {shard}: {other:?}"),
            };
            assert!(error.contains("shard count mismatch"), "{error}");
            assert!(error.contains(&format!("says {shards}")), "{error}");
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        }
        let path = cluster.dir.path().join(format!("wrong-{shards}.toml"));
        std::fs::write(&path, &wrong).unwrap();
        let output = Command::new(common::corekvctl_bin())
            .arg("--registry")
            .arg(&path)
            .args(["put", "k", "v"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains("shard count mismatch") && err.lines().count() == 1, "{err}");
    }
}

/// `corekv dev` with `args`, run to its end: exit code and stderr.
fn dev_exit(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(corekv_bin()).arg("dev").args(args).arg("--dir").arg(dir).output();
    let output = output.unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

// Shows: in `corekv dev`, a node killed with SIGKILL is reported and left down while the
// others keep serving; `corekv dev restart N` brings it back, `corekv dev stop N` stops one;
// a second `corekv dev` in the same directory is refused with one line and rewrites nothing;
// Ctrl-C still stops everything.
#[test]
fn dev_survives_a_dead_node_and_a_second_dev() {
    let dir = tempfile::tempdir().unwrap();
    let base = dev_base(3, 2).to_string();
    let mut dev = Dev::start(dir.path(), &["--nodes", "3", "--shards", "2", "--base-port", &base]);
    dev.wait_for("every shard has a leader");
    let dir = dir.path().canonicalize().unwrap();
    let registry_before = std::fs::read(dir.join("corekv.toml")).unwrap();

    let (code, err) = dev_exit(&dir, &["--nodes", "5", "--shards", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already running") && err.trim().lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(dir.join("corekv.toml")).unwrap(), registry_before);

    let pid = node_pid(&dir, 2).expect("node 2 runs");
    // SAFETY: killing a process of this test's dev cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let line = dev.wait_for("node 2 exited");
    assert!(line.contains("the other nodes keep serving"), "{line}");
    dev.wait_for("corekv dev restart 2");
    let client = dev_client(&dir);
    put_during_failover(&client, &dir, "while-2-is-down");
    block_on(async { assert!(client.get("while-2-is-down").await.unwrap().is_some()) });

    let (code, out) = dev_action(&dir, &["restart", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("node 2 restarted"), "{out}");
    let (code, out) = dev_action(&dir, &["restart", "2"]);
    assert_eq!(code, 1, "a running node is not restarted: {out}");
    let (code, out) = dev_action(&dir, &["stop", "3"]);
    assert_eq!((code, out.contains("node 3 stopped")), (0, true), "{out}");
    // Nodes 1 and 2 are a majority: node 2 caught up and serves.
    put_during_failover(&client, &dir, "after-restart");
    let status = dev.interrupt();
    assert!(status.success(), "corekv dev exited with {status}");
    assert!(node_pid(&dir, 1).is_none() && node_pid(&dir, 2).is_none(), "every node stopped");
}

/// Puts `key` while leaders may be changing: a put in flight when a leader goes away may end
/// `Indeterminate` (the client never sends a write twice), so the test puts again. Gives up
/// after 20 s, showing the end of every node's log in `dir` (the cluster's temporary directory
/// is gone once the test fails).
fn put_during_failover(client: &Client, dir: &std::path::Path, key: &str) {
    let started = Instant::now();
    loop {
        match block_on(client.put(key, "yes")) {
            Ok(_) => return,
            Err(error @ (Error::Indeterminate(_) | Error::Unavailable { .. }))
                if started.elapsed() < Duration::from_secs(20) =>
            {
                eprintln!("put {key}: {error}; again");
            }
            Err(error) => panic!("put {key}: {error}\n{}", node_log_tails(dir)),
        }
    }
}

/// The end of each `node-N.log` of a `corekv dev` directory.
fn node_log_tails(dir: &std::path::Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".log")));
    logs.sort();
    logs.iter().map(|log| format!("--- {}\n{}\n", log.display(), log_tail(log))).collect()
}

/// `corekv dev ACTION... --dir DIR`: exit code and stdout+stderr.
fn dev_action(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(corekv_bin()).arg("dev").args(args).arg("--dir").arg(dir).output();
    let output = output.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

// Shows: `corekv dev` on a directory that holds a 1-node, 4-shard cluster refuses to start it
// as 2 shards (exit status 2, one line saying what it holds and how to start it), and
// without flags starts it with its own shape, every key there.
#[test]
fn dev_keeps_the_shape_of_the_cluster_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let base = dev_base(1, 4).to_string();
    {
        let mut dev =
            Dev::start(dir.path(), &["--nodes", "1", "--shards", "4", "--base-port", &base]);
        dev.wait_for("every shard has a leader");
        let client = dev_client(dir.path());
        block_on(async {
            for i in 0..10 {
                client.put(format!("key-{i}"), "v").await.unwrap();
            }
        });
        assert!(dev.interrupt().success());
    }
    let (code, err) = dev_exit(dir.path(), &["--nodes", "1", "--shards", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1 nodes x 4 shards") && err.contains("--clean"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let text = std::fs::read_to_string(dir.path().join("corekv.toml")).unwrap();
    assert!(text.contains("shards = 4"), "the registry is left as it was:\n{text}");

    let mut dev = Dev::start(dir.path(), &[]);
    let line = dev.wait_for("started");
    assert!(line.contains("1 nodes x 4 shards"), "{line}");
    dev.wait_for("every shard has a leader");
    let client = dev_client(dir.path());
    block_on(async {
        for i in 0..10 {
            assert!(client.get(format!("key-{i}")).await.unwrap().is_some(), "key-{i}");
        }
    });
}
