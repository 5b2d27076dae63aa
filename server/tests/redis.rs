//! The Redis endpoint with real parts: `corekv serve` processes with `resp_port`, and real
//! Redis clients — `redis-cli -c` (Debian's redis-tools), redis-py's `RedisCluster` running
//! a script of every command, the Rust `redis` crate's async cluster client, and
//! `redis-benchmark --cluster` as load while a leader is SIGKILLed. A RESP fuzz test throws
//! malformed bytes at a node and checks it keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::tls_cluster_with;
use common::{block_on, TestCluster};
use corekv_types::ids::{NodeId, ShardId};

/// `host:port` of node `id`'s RESP listener for `shard`.
fn resp_addr(cluster: &TestCluster, id: u64, shard: u32) -> (String, u16) {
    let node = cluster.registry.node(NodeId(id)).expect("node in the registry");
    let addr = node.resp_addr(ShardId(shard)).expect("test clusters have resp ports");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    (host.to_string(), port.parse().expect("a port"))
}

/// Runs `redis-cli -c -p PORT ARGS…`; its output, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim_end().to_string()
}

// Shows: redis-cli in cluster mode reads and writes keys of every shard through one node's
// port (following MOVED), with the options of SET, TTLs, the counters, MULTI/EXEC through
// one connection, and the topology commands naming each shard's leader.
#[test]
fn redis_cli_speaks_to_the_cluster() {
    let cluster = TestCluster::start(3, 2);
    let (_, port) = resp_addr(&cluster, 1, 0);
    assert_eq!(cli(port, &["ping"]), "PONG");
    for i in 0..20 {
        assert_eq!(cli(port, &["set", &format!("k{i}"), &format!("v{i}")]), "OK");
    }
    for i in 0..20 {
        assert_eq!(cli(port, &["get", &format!("k{i}")]), format!("v{i}"));
    }
    assert_eq!(cli(port, &["set", "k1", "new", "XX", "GET"]), "v1");
    assert_eq!(cli(port, &["set", "k1", "x", "NX"]), "");
    assert_eq!(cli(port, &["incrby", "counter", "41"]), "41");
    assert_eq!(cli(port, &["incr", "counter"]), "42");
    assert_eq!(cli(port, &["setex", "temp", "100", "v"]), "OK");
    let ttl: i64 = cli(port, &["ttl", "temp"]).parse().expect("a number");
    assert!((98..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(cli(port, &["mset", "{t}a", "1", "{t}b", "2"]), "OK");
    // The missing key prints as an empty line (trimmed here).
    assert_eq!(cli(port, &["mget", "{t}a", "{t}b", "{t}c"]), "1\n2");
    assert!(cli(port, &["mget", "k1", "k2"]).contains("CROSSSLOT"));
    assert_eq!(cli(port, &["del", "{t}a", "{t}b", "{t}c"]), "2");
    assert_eq!(
        cli(port, &["cluster", "keyslot", "{user1}:x"]),
        cli(port, &["cluster", "keyslot", "user1"])
    );

    // CLUSTER SLOTS names each shard's leader as its master, at the leader's port.
    let slots = cli(port, &["cluster", "slots"]);
    for shard in 0..2 {
        let leader = cluster.leader_of(shard);
        let (_, leader_port) = resp_addr(&cluster, leader, shard);
        let lines: Vec<&str> = slots.lines().collect();
        let at = lines.iter().position(|l| *l == leader_port.to_string()).expect("leader listed");
        let range_start = if shard == 0 { "0" } else { "8192" };
        let block = lines.iter().position(|l| *l == range_start).expect("range listed");
        assert_eq!(at, block + 3, "shard {shard}'s master is its leader: {slots}");
    }
    let nodes = cli(port, &["cluster", "nodes"]);
    assert_eq!(nodes.lines().count(), 6, "{nodes}");
    assert_eq!(nodes.lines().filter(|l| l.contains("master")).count(), 2, "{nodes}");
    assert!(nodes.lines().any(|l| l.contains("myself")), "{nodes}");
    assert!(cli(port, &["cluster", "info"]).contains("cluster_state:ok"));

    // One connection, so MULTI spans the commands: fed on stdin.
    let key_port = {
        let leader = cluster.leader_of(shard_of(b"{x}"));
        resp_addr(&cluster, leader, shard_of(b"{x}")).1
    };
    let mut child = Command::new("redis-cli")
        .args(["-p", &key_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"MULTI\nSET {x}a 1\nINCR {x}a\nAPPEND {x}b hi\nEXEC\n")
        .expect("feeding redis-cli");
    let output = child.wait_with_output().expect("redis-cli output");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text, "OK\nQUEUED\nQUEUED\nQUEUED\nOK\n2\n2\n", "{text}");
}

fn shard_of(key: &[u8]) -> u32 {
    corekv_types::placement::shard_for_key(key, 2).get()
}

// Shows: redis-py's RedisCluster runs the script of every command (strings, counters, TTLs,
// WATCH/MULTI/EXEC, SCAN over every shard, errors) and every check holds.
#[test]
fn redis_py_cluster_runs_every_command() {
    let cluster = TestCluster::start(3, 2);
    let (host, port) = resp_addr(&cluster, 2, 1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/redis_cluster.py");
    let output = Command::new("python3")
        .arg(&script)
        .args([&host, &port.to_string()])
        .output()
        .expect("python3 with redis-py (pip install redis)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks held"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// Shows: the Rust `redis` crate's async cluster client routes commands of both shards,
// including after the leader of a shard moved (it follows MOVED), and reads back what it
// wrote.
#[test]
fn rust_cluster_client_follows_leaders() {
    use redis::AsyncCommands;
    let cluster = TestCluster::start(3, 2);
    let (host, port) = resp_addr(&cluster, 3, 0);
    let client = redis::cluster::ClusterClient::new(vec![format!("redis://{host}:{port}/")])
        .expect("a cluster client");
    block_on(async {
        let mut conn = client.get_async_connection().await.expect("connecting");
        for i in 0..50u32 {
            let () = conn.set(format!("rust:{i}"), i).await.expect("SET");
        }
        let n: i64 = conn.incr("rust:counter", 5).await.expect("INCRBY");
        assert_eq!(n, 5);
        let values: Vec<Option<u32>> =
            conn.mget(&["{r}a", "{r}b"]).await.expect("MGET of one slot");
        assert_eq!(values, [None, None]);
        let () = conn.set_ex("rust:ttl", "v", 100).await.expect("SETEX");
        let ttl: i64 = conn.ttl("rust:ttl").await.expect("TTL");
        assert!((98..=100).contains(&ttl), "ttl {ttl}");
    });
    // Move shard 0's leadership away from its current leader: the client follows MOVED.
    let shard0 = cluster.leader_of(0);
    let to = if shard0 == 1 { 2 } else { 1 };
    let (code, out, err) = cluster.ctl(&["leader", "transfer", "0", &to.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    block_on(async {
        let mut conn = client.get_async_connection().await.expect("connecting");
        for i in 0..50u32 {
            let value: u32 = conn.get(format!("rust:{i}")).await.expect("GET");
            assert_eq!(value, i);
            let () = conn.set(format!("rust:{i}"), i + 1000).await.expect("SET after a move");
        }
        for i in 0..50u32 {
            let value: u32 = conn.get(format!("rust:{i}")).await.expect("GET");
            assert_eq!(value, i + 1000);
        }
    });
}

/// Writes `ack:I` = `I` through RedisCluster for `secs`, retrying nothing; prints each
/// acknowledged key's index, one per line.
const ACKED_WRITER: &str = r#"
import sys, time
import redis
from redis.cluster import RedisCluster
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rc = RedisCluster(host=host, port=port, socket_timeout=2, cluster_error_retry_attempts=1)
end, i, failed = time.time() + secs, 0, 0
while time.time() < end:
    i += 1
    try:
        if rc.set(f"ack:{i}", str(i)):
            print(i, time.time(), flush=True)
    except Exception as e:
        failed += 1
        time.sleep(0.05)
        try:
            rc = RedisCluster(host=host, port=port, socket_timeout=2, cluster_error_retry_attempts=1)
        except Exception:
            pass
print(f"failed {failed}", file=sys.stderr)
"#;

/// Keeps `redis-benchmark --cluster` SETs running against `host:port` until `stop`: its
/// cluster mode cannot follow a shard to a new master (as with Redis, it exits when the
/// masters change), so each run that ends is started again. Returns when each run started
/// and how long it lasted.
fn benchmark_load(
    host: String,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, Duration)>> {
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            let mut bench = Command::new("redis-benchmark")
                .args(["--cluster", "-h", &host, "-p", &port.to_string()])
                .args(["-t", "set", "-c", "32", "-n", "100000000", "-d", "100", "-r", "100000"])
                .arg("-q")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-benchmark (apt-get install redis-tools)");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if bench.try_wait().expect("redis-benchmark's status").is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = bench.kill();
            let _ = bench.wait();
            runs.push((started, started.elapsed()));
            std::thread::sleep(Duration::from_millis(200));
        }
        runs
    })
}

// Shows: under `redis-benchmark --cluster` load and a writer recording every acknowledged
// SET, SIGKILLing a shard's leader loses no acknowledged write: each is read back, with its
// value, once the cluster has a leader again; writes to that shard are acknowledged again
// after the kill, and redis-benchmark runs again against the new leader.
#[test]
fn leader_kill_under_redis_load_loses_no_acknowledged_set() {
    let mut cluster = TestCluster::start(3, 2);
    let victim = cluster.leader_of(0);
    let seed = if victim == 1 { 2 } else { 1 };
    let (host, port) = resp_addr(&cluster, seed, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = benchmark_load(host.clone(), port, stop.clone());
    let writer = Command::new("python3")
        .args(["-c", ACKED_WRITER, &host, &port.to_string(), "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with redis-py");
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64();
    let killed = Instant::now();
    cluster.kill(victim);
    let output = writer.wait_with_output().expect("the writer");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = load.join().expect("the load thread");
    assert!(
        runs.iter().any(|(started, lasted)| *started > killed && *lasted > Duration::from_secs(1)),
        "redis-benchmark never ran against the new leader: {runs:?}"
    );
    let acked: Vec<(u64, f64)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (i, at) = line.trim().split_once(' ')?;
            Some((i.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(acked.len() > 50, "few writes acknowledged: {stderr}");
    let shard0_after = acked
        .iter()
        .filter(|(i, at)| *at > killed_at && shard_of(format!("ack:{i}").as_bytes()) == 0)
        .count();
    assert!(shard0_after > 0, "no write to the killed leader's shard acknowledged after: {stderr}");
    cluster.wait_for_leaders(Duration::from_secs(20));
    let client = cluster.client();
    block_on(async {
        for (i, _) in &acked {
            let key = format!("ack:{i}");
            let value = client.get(key.as_bytes()).await.expect("reading back");
            let value = value.map(|kv| kv.value);
            assert_eq!(value.as_deref(), Some(i.to_string().as_bytes()), "{key} was acknowledged");
        }
    });
}

/// Sends `bytes` on a new connection, reads whatever comes back until the server closes or
/// goes quiet; what it answered.
fn throw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_millis(300))).expect("a timeout");
    // The server may close before taking everything: a broken pipe is an answer too.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// A small deterministic generator (the test's cases are the same every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// Shows: arbitrary bytes, truncated and oversized bulk strings, huge and negative counts,
// deeply nested arrays and endless inline lines each get an error or a closed connection,
// and the node keeps serving: a connection opened before answers PING and SET/GET after.
#[test]
fn resp_fuzz_leaves_the_node_serving() {
    let cluster = TestCluster::start(1, 1);
    let (host, port) = resp_addr(&cluster, 1, 0);
    let addr = format!("{host}:{port}");
    let mut witness = TcpStream::connect(&addr).expect("connecting");
    witness.set_read_timeout(Some(Duration::from_secs(5))).expect("a timeout");
    let mut cases: Vec<Vec<u8>> = vec![
        b"*1\r\n$4\r\nPI".to_vec(),
        b"*2\r\n$3\r\nSET\r\n$99999999999\r\n".to_vec(),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$-5\r\n".to_vec(),
        b"*999999999\r\n".to_vec(),
        b"*-7\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
        b"*1\r\n".repeat(100_000),
        vec![b'a'; 200_000],
        b"\"unterminated\r\n".to_vec(),
        b"*2\r\n$3\r\nGET\r\n$1\r\nkXX".to_vec(),
        b"*1\r\n$4\r\nPING\n".to_vec(),
        b"$5\r\nhello\r\n".to_vec(),
        [&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n"[..], &vec![b'v'; 2_000_000]].concat(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    for _ in 0..200 {
        let mut bytes = valid.to_vec();
        for _ in 0..1 + rng.next() % 6 {
            let at = (rng.next() % bytes.len() as u64) as usize;
            bytes[at] = rng.next() as u8;
        }
        bytes.truncate(1 + (rng.next() % bytes.len() as u64) as usize);
        cases.push(bytes);
    }
    for _ in 0..100 {
        cases.push((0..1 + rng.next() % 512).map(|_| rng.next() as u8).collect());
    }
    let started = Instant::now();
    for case in &cases {
        let answer = throw(&addr, case);
        // The connection opened before answers between the cases too.
        witness.write_all(b"PING\r\n").expect("writing to the witness connection");
        let mut pong = [0u8; 7];
        let shown = String::from_utf8_lossy(&case[..case.len().min(40)]);
        witness.read_exact(&mut pong).unwrap_or_else(|e| panic!("after {shown:?}: {e}"));
        assert_eq!(&pong, b"+PONG\r\n");
        // Whatever came back is RESP: replies and errors, never a garbled line.
        assert!(
            answer.is_empty() || b"+-:$*_%~,=".contains(&answer[0]),
            "{:?} answered {:?}",
            String::from_utf8_lossy(&case[..case.len().min(40)]),
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        );
    }
    assert!(started.elapsed() < Duration::from_secs(120), "the fuzz cases took too long");
    let oversized = throw(&addr, b"*2\r\n$3\r\nSET\r\n$99999999999\r\n");
    assert!(
        String::from_utf8_lossy(&oversized).starts_with("-ERR Protocol error: invalid bulk length")
    );
    witness.write_all(b"PING\r\nSET after fuzz\r\nGET after\r\n").expect("writing");
    let mut answer = Vec::new();
    let expected = b"+PONG\r\n+OK\r\n$4\r\nfuzz\r\n";
    while answer.len() < expected.len() {
        let mut chunk = [0u8; 256];
        let so_far = String::from_utf8_lossy(&answer).into_owned();
        let n = witness.read(&mut chunk).unwrap_or_else(|e| panic!("{e}; so far {so_far:?}"));
        assert!(n > 0, "the witness connection was closed");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(answer, expected);
    let metrics = cluster.http(1, "/metrics").expect("the node serves /metrics");
    assert_eq!(metrics.0, 200);
}

/// Runs `redis-cli -c --tls --cacert CA -p PORT EXTRA… ARGS…`; its output and whether it
/// exited 0.
fn tls_cli(ca: &Path, port: u16, extra: &[&str], args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-c", "--tls", "--cacert"])
        .arg(ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout).trim_end().to_string();
    text + String::from_utf8_lossy(&output.stderr).trim_end()
}

// Shows: on a cluster with TLS and users, the Redis ports speak TLS only; a connection with
// no user is told NOAUTH; AUTH with a token (redis-cli --user/--pass) acts as its user, and
// a client certificate names its user; each may do what its roles grant and gets NOPERM for
// the rest; a wrong token is WRONGPASS.
#[test]
fn redis_over_tls_with_users() {
    let digest = corekv_server::auth::token_digest("svc-token");
    let (cluster, pki) = tls_cluster_with(
        |dir| {
            let policy = dir.join("auth.toml");
            let text = format!(
                "[[role]]\nname = \"app-read\"\nread = [\"app/\"]\n\n\
                 [[role]]\nname = \"app-write\"\nwrite = [\"app/\"]\n\n\
                 [[role]]\nname = \"all\"\nwrite = [\"\"]\nadmin = true\n\n\
                 [[user]]\nname = \"reader\"\nroles = [\"app-read\"]\n\n\
                 [[user]]\nname = \"root\"\nroles = [\"all\"]\n\n\
                 [[user]]\nname = \"svc\"\nroles = [\"app-write\"]\n\
                 tokens = [\"sha256:{digest}\"]\n"
            );
            std::fs::write(&policy, text).expect("write the policy");
            format!("client_certs = \"optional\"\n\n[auth]\npolicy = \"{}\"\n", policy.display())
        },
        "root",
    );
    let ca = pki.path("ca.pem");
    let (_, port) = resp_addr(&cluster, 1, 0);
    assert!(tls_cli(&ca, port, &[], &["get", "app/x"]).contains("NOAUTH"));
    let svc = ["--user", "svc", "--pass", "svc-token", "--no-auth-warning"];
    assert_eq!(tls_cli(&ca, port, &svc, &["set", "app/x", "1"]), "OK");
    assert_eq!(tls_cli(&ca, port, &svc, &["incr", "app/n"]), "1");
    assert!(tls_cli(&ca, port, &svc, &["set", "other/y", "1"]).contains("NOPERM"));
    let wrong = ["--user", "svc", "--pass", "nope", "--no-auth-warning"];
    assert!(tls_cli(&ca, port, &wrong, &["get", "app/x"]).contains("WRONGPASS"));

    let (cert, key) = pki.client(&pki.ca, "reader", "reader", None);
    let reader = ["--cert", cert.to_str().expect("a path"), "--key", key.to_str().expect("a path")];
    assert_eq!(tls_cli(&ca, port, &reader, &["get", "app/x"]), "1");
    assert!(tls_cli(&ca, port, &reader, &["set", "app/x", "2"]).contains("NOPERM"));
    assert!(tls_cli(&ca, port, &reader, &["get", "other/y"]).contains("NOPERM"));

    // A plaintext Redis client gets no answer: the port speaks TLS only.
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
        .output()
        .expect("redis-cli");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("PONG"), "{output:?}");
    // The handshake's failure closes the socket before the node writes its log line.
    cluster.wait_logged(&[1], &["refused a redis connection"]);
}

// Shows: a node added while the cluster runs (`member add --from-registry`, its entry with a
// `resp_port`) appears in the Redis topology of the nodes that were there before — from
// the address in the membership, not their registry file — and serves its replicas' stale
// reads after READONLY.
#[test]
fn an_added_node_joins_the_redis_topology() {
    let mut cluster = TestCluster::start(3, 2);
    let (_, port) = resp_addr(&cluster, 1, 0);
    assert_eq!(cli(port, &["set", "before", "1"]), "OK");
    let id = cluster.add_node();
    let registry = cluster.registry_of(id);
    let registry = registry.to_str().expect("a path");
    // A learner is a member of the topology as much as a voter: no need to wait for it to
    // catch up and be promoted (which a loaded test machine can make slow).
    let (code, out, err) =
        cluster.ctl(&["member", "add", &id.to_string(), "--from-registry", registry, "--no-wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let node = cluster.node(id).expect("the added node");
    let added_port = node.resp_port.expect("added with a Redis port");
    // Each shard lists it once node 1's replica of it has applied the change.
    let listed = |nodes: &str| {
        (0..2).all(|shard| nodes.contains(&format!("127.0.0.1:{}@", added_port as u32 + shard)))
    };
    cluster.wait_until(Duration::from_secs(30), "both shards to list the new node", || {
        listed(&cli(port, &["cluster", "nodes"]))
    });
    let nodes = cli(port, &["cluster", "nodes"]);
    assert_eq!(nodes.lines().count(), 8, "{nodes}");
    // The new replica of `before`'s shard serves it to a READONLY connection once it has
    // caught up.
    let shard = shard_of(b"before");
    let stale_read = || {
        let mut child = Command::new("redis-cli")
            .args(["-p", &(added_port as u32 + shard).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().expect("stdin").write_all(b"READONLY\nGET before\n").expect("feeding");
        let output = child.wait_with_output().expect("redis-cli output");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    cluster.wait_until(Duration::from_secs(60), "the new replica to serve `before`", || {
        stale_read() == "OK\n1\n"
    });
}

// Shows: a pipeline far longer than the commands a connection may have unanswered, written
// whole before any answer is read, is answered whole and in order (commands read and not
// taken at the bound are taken as answers go out); QUIT closes only after answering every
// command before it, and nothing after it runs.
#[test]
fn long_pipelines_and_quit_are_answered_in_full() {
    let cluster = TestCluster::start(1, 1);
    let (host, port) = resp_addr(&cluster, 1, 0);
    let mut stream = TcpStream::connect((host.as_str(), port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a timeout");
    let commands = 10_000;
    let mut pipeline = b"SET counter 0\r\n".to_vec();
    for _ in 0..commands {
        pipeline.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
    }
    pipeline.extend_from_slice(b"GET counter\r\nQUIT\r\nSET counter gone\r\n");
    let writer = {
        let mut stream = stream.try_clone().expect("a second handle");
        std::thread::spawn(move || stream.write_all(&pipeline).expect("writing the pipeline"))
    };
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading until the server closes");
    writer.join().expect("the writer");
    let text = String::from_utf8(answer).expect("text answers");
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some("+OK"));
    for n in 1..=commands {
        assert_eq!(lines.next(), Some(format!(":{n}").as_str()), "answer {n} in order");
    }
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest, ["$5", "10000", "+OK", ""], "GET, QUIT, then the close");
    let (_, port) = resp_addr(&cluster, 1, 0);
    assert_eq!(cli(port, &["get", "counter"]), "10000", "nothing after QUIT ran");
}

// Shows: a client that pipelines commands with large answers and reads none is closed once
// its unwritten answers pass the hard limit (256 MiB), instead of growing the node's memory;
// the node goes on serving others.
#[test]
fn a_client_that_does_not_read_is_closed_at_the_output_limit() {
    let cluster = TestCluster::start(1, 1);
    let (host, port) = resp_addr(&cluster, 1, 0);
    let value = "v".repeat(1 << 20);
    let mut stream = TcpStream::connect((host.as_str(), port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
    let set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n", value.len());
    stream.write_all(set.as_bytes()).expect("writing the SET");
    let mut ok = [0u8; 5];
    stream.read_exact(&mut ok).expect("the SET's answer");
    assert_eq!(&ok, b"+OK\r\n");
    // 400 MiB of answers asked for, none read until the node has had time to write them.
    stream.write_all(&b"GET big\r\n".repeat(400)).expect("writing the GETs");
    std::thread::sleep(Duration::from_secs(5));
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < 400 << 20, "the connection was closed before every answer ({received})");
    assert!(cluster.log_tail(1).contains("closing a redis connection whose unread answers"));
    assert_eq!(cli(port, &["strlen", "big"]), (1 << 20).to_string(), "the node still serves");
}
