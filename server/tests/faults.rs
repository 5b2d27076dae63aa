//! Fault tests on real `corekv` processes with the real client: leaders SIGKILLed under load
//! (repeatedly), the whole cluster SIGKILLed at once, a leader paused with SIGSTOP, real
//! network partitions between network namespaces, and a WAL whose disk fills up. While faults
//! happen, clients record every operation; the history is checked for linearizability with the
//! same checker the simulator uses.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;
#[path = "common/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use common::{block_on, RawConn, TestCluster};
use corekv_proto::client::{Consistency, Reply};
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::verify_reply;
use workload::{check_history, percentile, wait_caught_up, Workload};

/// Kill cycles of the leader-kill test.
const KILL_CYCLES: usize = 20;

// Shows: SIGKILL of the leader of a shard under write load, 20 times (alternating shards, the
// victim restarted and caught up each time): writes to the shard resume within seconds every
// time, and the clients' history — every acknowledged write, every read — is linearizable.
// Prints the distribution of the unavailability windows.
#[test]
fn leader_kills_under_load() {
    let mut cluster = TestCluster::start(3, 2);
    let workload = Workload::start(&cluster, 4, 2, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    let mut windows = Vec::new();
    for cycle in 0..KILL_CYCLES {
        let shard = (cycle % 2) as u32;
        let victim = cluster.leader_of(shard);
        let since = workload.now();
        cluster.kill(victim);
        let window = workload.wait_for_write(shard, since, Duration::from_secs(20));
        windows.push(window);
        cluster.restart(victim);
        cluster.wait_until(Duration::from_secs(20), "the victim to serve /status", || {
            cluster.status(victim).is_some()
        });
        wait_caught_up(&cluster, victim);
    }
    let history = workload.finish(&cluster);
    check_history(&history, "leader kills");
    let mut sorted = windows.clone();
    sorted.sort();
    println!(
        "unavailability after a leader kill, {} kills (ms): min {} p50 {} p90 {} max {}; all: {:?}",
        sorted.len(),
        sorted[0].as_millis(),
        percentile(&sorted, 0.5).as_millis(),
        percentile(&sorted, 0.9).as_millis(),
        sorted[sorted.len() - 1].as_millis(),
        windows.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    assert_eq!(windows.len(), KILL_CYCLES);
}

// Shows: SIGKILL of every node at once under write load, then a restart: nothing acknowledged
// is lost (the final reads are part of the checked history), and the cluster serves again.
#[test]
fn whole_cluster_kill_loses_nothing() {
    let mut cluster = TestCluster::start(3, 2);
    let workload = Workload::start(&cluster, 4, 2, Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill_all();
    let killed_at = workload.now();
    std::thread::sleep(Duration::from_millis(200));
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leaders(Duration::from_secs(30));
    for shard in 0..2 {
        workload.wait_for_write(shard, killed_at, Duration::from_secs(20));
    }
    let history = workload.finish(&cluster);
    check_history(&history, "whole-cluster kill");
}

/// A linearizable get of `key` on `conn`, answered: `Some(value)` when served, `None` when
/// refused with an error.
fn raw_get(conn: &mut RawConn, id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let frame = RequestEncoder::new().get(id, key, Consistency::Linearizable).to_vec();
    conn.send(&frame);
    let reply = conn.recv();
    let reply = verify_reply(&reply).expect("a valid reply");
    assert_eq!(reply.id(), id);
    match reply.reply_type() {
        Reply::GetReply => {
            let get = reply.reply_as_get_reply().expect("typed");
            Ok(get.entry().and_then(|e| e.value()).map(|v| v.bytes().to_vec()))
        }
        Reply::ErrorReply => {
            Err(format!("{:?}", reply.reply_as_error_reply().expect("typed").kind_type()))
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

// Shows: a leader paused with SIGSTOP (as a long GC pause would) is replaced; writes go on;
// when it resumes, a linearizable read it had queued is refused or answered with the new
// value — never the value from before the pause — and it steps down.
#[test]
fn paused_leader_steps_down_without_stale_reads() {
    let cluster = TestCluster::start(3, 1);
    let client = cluster.client();
    block_on(async { client.put("k", "before").await.expect("put before the pause") });
    let old = cluster.leader_of(0);
    let mut stale_conn = cluster.raw(old, 0);
    cluster.signal(old, libc::SIGSTOP);
    let paused = Instant::now();
    // The other two elect a leader; ask them, the paused node cannot answer.
    let mut new = 0;
    cluster.wait_until(Duration::from_secs(15), "a new leader while the old one is paused", || {
        new = (1..=3)
            .filter(|&id| id != old)
            .filter_map(|id| cluster.status(id))
            .filter_map(|s| s["shards"][0]["leader_id"].as_u64())
            .find(|&l| l != 0 && l != old)
            .unwrap_or(0);
        new != 0
    });
    // The new leader takes writes during the pause (following a hint if leadership moved on
    // to the shard's preferred node meanwhile).
    let mut written = false;
    for attempt in 0..20 {
        let mut conn = cluster.raw(new, 0);
        let put = RequestEncoder::new().put(7 + attempt, b"k", b"after").to_vec();
        conn.send(&put);
        let reply = conn.recv();
        let reply = verify_reply(&reply).expect("reply");
        if reply.reply_type() == Reply::PutReply {
            written = true;
            break;
        }
        let error = reply.reply_as_error_reply().expect("a put reply or an error");
        if let Some(hint) = error.kind_as_not_leader().map(|h| h.leader_id()) {
            if hint != 0 && hint != old {
                new = hint;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(written, "no write succeeded during the pause");
    println!("new leader {new} elected and writing {:?} after the pause began", paused.elapsed());

    // A read queued at the old leader while it is paused, then the pause ends.
    let get = RequestEncoder::new().get(9, b"k", Consistency::Linearizable).to_vec();
    stale_conn.send(&get);
    cluster.signal(old, libc::SIGCONT);
    let reply = stale_conn.recv();
    let reply = verify_reply(&reply).expect("reply");
    assert_eq!(reply.id(), 9);
    if reply.reply_type() == Reply::GetReply {
        let value = reply
            .reply_as_get_reply()
            .unwrap()
            .entry()
            .and_then(|e| e.value())
            .map(|v| v.bytes().to_vec());
        assert_eq!(
            value.as_deref(),
            Some(&b"after"[..]),
            "the resumed old leader served a stale read"
        );
    }
    cluster.wait_until(Duration::from_secs(10), "the old leader to step down", || {
        cluster.status(old).is_some_and(|s| s["shards"][0]["role"] != "leader")
    });
    // It answers reads correctly from then on (redirecting or with the new value).
    let mut again = cluster.raw(old, 0);
    match raw_get(&mut again, 11, b"k") {
        Ok(value) => assert_eq!(value.as_deref(), Some(&b"after"[..])),
        Err(kind) => assert!(kind.contains("NotLeader"), "{kind}"),
    }
}

/// Network namespaces, one per node, joined by veth pairs to a bridge in the test's own
/// namespace. Removed on drop.
struct Namespaces {
    names: Vec<String>,
    host_links: Vec<String>,
    bridge: String,
    subnet: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    fn create(nodes: usize) -> Result<Namespaces, String> {
        let tag = std::process::id() % 100_000;
        let subnet = 100 + (std::process::id() % 100) as u8;
        let mut ns = Namespaces {
            names: Vec::new(),
            host_links: Vec::new(),
            bridge: format!("kvbr{tag}"),
            subnet,
        };
        ip(&["link", "add", &ns.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.77.{subnet}.254/24"), "dev", &ns.bridge])?;
        ip(&["link", "set", &ns.bridge, "up"])?;
        for i in 1..=nodes {
            let name = format!("kv{tag}n{i}");
            let link = format!("kv{tag}h{i}");
            ip(&["netns", "add", &name])?;
            ns.names.push(name.clone());
            ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
            ns.host_links.push(link.clone());
            ip(&["link", "set", &link, "master", &ns.bridge, "up"])?;
            let addr = format!("{}/24", ns.addr(i));
            ip(&["-n", &name, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    fn addr(&self, node: usize) -> String {
        format!("10.77.{}.{node}", self.subnet)
    }

    /// Cuts node `node` off the network, both ways (its own address stays reachable from
    /// inside its namespace).
    fn isolate(&self, node: usize) {
        ip(&["link", "set", &self.host_links[node - 1], "down"]).expect("link down");
        ip(&["-n", &self.names[node - 1], "link", "set", "eth0", "down"]).expect("link down");
    }

    fn heal(&self, node: usize) {
        ip(&["-n", &self.names[node - 1], "link", "set", "eth0", "up"]).expect("link up");
        ip(&["link", "set", &self.host_links[node - 1], "up"]).expect("link up");
    }

    /// Runs `f` on a thread inside node `node`'s namespace.
    fn inside<T: Send + 'static>(&self, node: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.names[node - 1]);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace file descriptor we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

// Shows: with each node in its own network namespace, cutting the leader's link leaves it in
// a minority that refuses writes and linearizable reads, while the majority elects a leader
// and keeps serving; after the link is back, all replicas converge, and the clients' history
// over the whole run is linearizable. Needs root and iproute2; fails if namespaces cannot be
// made.
#[test]
fn partition_minority_refuses_majority_serves() {
    let ns = Namespaces::create(3).unwrap_or_else(|e| {
        panic!("this test needs root and iproute2 to create network namespaces: {e}")
    });
    let hosts: Vec<(String, u16, u16, u16)> =
        (1..=3).map(|i| (ns.addr(i), 7100, 7200, 7300)).collect();
    let netns = ns.names.iter().map(|n| Some(n.clone())).collect();
    let mut cluster = TestCluster::prepare_on(&hosts, 1, &[], netns);
    cluster.launch();
    let workload = Workload::start(&cluster, 3, 2, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(1));

    let old = cluster.leader_of(0) as usize;
    ns.isolate(old);
    let cut_at = workload.now();
    // The majority elects a leader and serves writes.
    let window = workload.wait_for_write(0, cut_at, Duration::from_secs(20));
    println!("majority serving writes {window:?} after the cut");
    let majority: Vec<u64> = (1..=3).filter(|&i| i != old as u64).collect();
    cluster.wait_until(Duration::from_secs(15), "a majority-side leader", || {
        majority.iter().filter_map(|&id| cluster.status(id)).any(|s| {
            let l = s["shards"][0]["leader_id"].as_u64().unwrap_or(0);
            l != 0 && l != old as u64
        })
    });

    // The minority refuses, seen from inside its namespace.
    let addr = format!("{}:7100", ns.addr(old));
    let name = cluster.registry.cluster.clone();
    let (put, get) = ns.inside(old, move || {
        let mut conn = RawConn::connect(&addr);
        conn.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let hello = RequestEncoder::new().hello(1, &name, 1).to_vec();
        conn.send(&hello);
        conn.recv();
        let put = RequestEncoder::new().put(2, b"w0-k0", b"minority").to_vec();
        conn.send(&put);
        let reply = conn.recv();
        let put = verify_reply(&reply).expect("reply").reply_type();
        let get = raw_get(&mut conn, 3, b"w0-k0");
        (put, get)
    });
    assert_eq!(put, Reply::ErrorReply, "the minority acknowledged a write");
    assert!(get.is_err(), "the minority served a linearizable read: {get:?}");

    ns.heal(old);
    std::thread::sleep(Duration::from_secs(1));
    let history = workload.finish(&cluster);
    cluster.wait_until(Duration::from_secs(30), "all replicas to converge", || {
        let states: Vec<Option<(u64, u64)>> = (1..=3)
            .map(|id| {
                let s = cluster.status(id)?;
                Some((s["shards"][0]["applied_index"].as_u64()?, s["shards"][0]["keys"].as_u64()?))
            })
            .collect();
        states[0].is_some() && states.iter().all(|s| *s == states[0])
    });
    for key in ["w0-k0", "w1-k1", "w2-k2"] {
        let values: Vec<Option<Vec<u8>>> =
            (1..=3).map(|id| cluster.replica_value(id, 0, key.as_bytes())).collect();
        assert!(values.iter().all(|v| *v == values[0]), "replicas differ on {key}: {values:?}");
    }
    check_history(&history, "partition");
    drop(cluster);
    drop(ns);
}

/// A tmpfs mount, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "this test needs root to mount a tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xAB; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

// Shows: when the leader's disk fills up, its WAL flush fails: it stops acknowledging, says
// why in its log, /health and /status, and hands leadership over so the cluster keeps
// serving. Once space is freed and it restarts, its WAL recovers intact and it catches up.
#[test]
fn full_disk_stops_acknowledging_and_corrupts_nothing() {
    let mut cluster = TestCluster::prepare(3, 1, &["--wal-segment-mib", "16"]);
    // Room for three 16 MiB WAL segments (two in use and a spare after the restart), the
    // watch history's segment and its spare, and the directory's small files (LOCK,
    // IDENTITY); the test fills the rest.
    let _mount = Tmpfs::mount(&cluster.data_dir(1), 84);
    cluster.launch();
    // Node 1 is shard 0's preferred leader; another node may win the first election, and
    // hands leadership back once node 1 is caught up.
    cluster.wait_until(Duration::from_secs(30), "node 1 to lead shard 0", || {
        cluster.leader(0) == Some(1)
    });
    let client = cluster.client();
    block_on(async {
        for i in 0..50 {
            client.put(format!("early-{i}"), format!("v{i}")).await.expect("put before the fault");
        }
    });
    let filler = fill(&cluster.data_dir(1));

    // Write until node 1's WAL runs out of room; the cluster keeps acknowledging meanwhile.
    let value = vec![b'x'; 128 << 10];
    let mut acked = 0;
    let failed = block_on(async {
        for i in 0..2000 {
            if client.put(format!("big-{}", i % 64), &value).await.is_ok() {
                acked += 1;
            }
            if i % 16 == 0 && cluster.http(1, "/health").is_some_and(|(code, _)| code != 200) {
                return true;
            }
        }
        false
    });
    assert!(failed, "node 1 never reported the failed WAL ({acked} puts acknowledged)");
    let (code, body) = cluster.http(1, "/health").expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("WAL"), "health names the WAL: {body}");
    let status = cluster.status(1).expect("status");
    let failure = status["shards"][0]["failure"].as_str().expect("a failure in /status");
    assert!(failure.contains("WAL"), "{failure}");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(log.contains("shard stops accepting writes"), "the log says so");

    // The others took over and keep serving.
    cluster.wait_until(Duration::from_secs(15), "another leader", || {
        [2, 3].iter().filter_map(|&id| cluster.status(id)).any(|s| {
            let l = s["shards"][0]["leader_id"].as_u64().unwrap_or(0);
            l == 2 || l == 3
        })
    });
    block_on(async {
        for i in 0..20 {
            client.put(format!("after-{i}"), "ok").await.expect("the majority serves");
        }
    });

    // Free the space and restart node 1: its WAL recovers and it catches up.
    cluster.kill(1);
    std::fs::remove_file(&filler).expect("remove filler");
    cluster.restart(1);
    cluster
        .wait_until(Duration::from_secs(30), "node 1 to restart", || cluster.status(1).is_some());
    wait_caught_up(&cluster, 1);
    let status = cluster.status(1).expect("status");
    assert!(status["shards"][0]["failure"].is_null(), "restarted cleanly: {status}");
    for i in [0, 49] {
        let key = format!("early-{i}");
        let v = cluster.replica_value(1, 0, key.as_bytes());
        assert_eq!(v, Some(format!("v{i}").into_bytes()), "node 1 kept {key}");
    }
}
