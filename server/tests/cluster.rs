//! Multi-process tests of the server: real `corekv` processes on loopback, a temporary registry,
//! the real client.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{block_on, TestCluster};
use corekv_proto::client::{Consistency, ErrorKind};
use corekv_proto::encode::{PeerEncoder, PeerHello, RequestEncoder};
use corekv_proto::frame::verify_reply;
use corekv_types::ids::{NodeId, ShardId};

// Shows: every shard elects a leader and, once the preferred nodes are caught up, each shard
// is led by its preferred node (shard s by the (s mod N)-th node), so leaders spread across
// nodes.
#[test]
fn leaders_spread_across_nodes() {
    let cluster = TestCluster::start(3, 3);
    let placed = || {
        (0..3)
            .all(|s| cluster.leader(s) == Some(cluster.registry.preferred_leader(ShardId(s)).get()))
    };
    let started = std::time::Instant::now();
    while !placed() {
        let leaders: Vec<Option<u64>> = (0..3).map(|s| cluster.leader(s)).collect();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "leaders {leaders:?}, preferred [1, 2, 3]\n{}",
            cluster.log_tail(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let leaders: std::collections::BTreeSet<u64> =
        (0..3).filter_map(|s| cluster.leader(s)).collect();
    assert_eq!(leaders.len(), 3, "three shards, three different leaders");
}

// Shows: writes acknowledged by the leader become readable from every node's applied state, a
// follower answers NotLeader naming the leader and its address, and the HTTP status agrees.
#[test]
fn writes_replicate_and_followers_redirect() {
    let cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    block_on(async {
        for key in &keys {
            client.put(key, format!("value-of-{key}")).await.expect("put");
        }
    });
    for key in keys.iter().step_by(13) {
        let shard = client.shard_of(key.as_bytes()).get();
        for node in 1..=3 {
            cluster.wait_until(Duration::from_secs(5), &format!("{key} on node {node}"), || {
                cluster.replica_value(node, shard, key.as_bytes())
                    == Some(format!("value-of-{key}").into_bytes())
            });
        }
    }

    let leader = cluster.leader_of(0);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let key = (0..)
        .map(|i| format!("probe-{i}"))
        .find(|k| client.shard_of(k.as_bytes()).get() == 0)
        .unwrap();
    let mut conn = cluster.raw(follower, 0);
    conn.send(RequestEncoder::new().get(7, key.as_bytes(), Consistency::Linearizable));
    let frame = conn.recv();
    let reply = verify_reply(&frame).unwrap();
    assert_eq!(reply.id(), 7);
    let error = reply.reply_as_error_reply().expect("an error");
    assert_eq!(error.kind_type(), ErrorKind::NotLeader);
    let hint = error.kind_as_not_leader().unwrap();
    assert_eq!(hint.leader_id(), leader);
    assert_eq!(
        hint.leader_addr(),
        Some(cluster.registry.node(NodeId(leader)).unwrap().client_addr(ShardId(0)).as_str())
    );

    // A key of another shard sent here is refused with the right shard.
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|k| client.shard_of(k.as_bytes()).get() == 1)
        .unwrap();
    conn.send(RequestEncoder::new().get(8, other.as_bytes(), Consistency::Stale));
    let frame = conn.recv();
    let error = verify_reply(&frame).unwrap().reply_as_error_reply().expect("an error");
    assert_eq!(error.kind_as_wrong_shard().map(|w| w.shard()), Some(1));

    let status = cluster.status(leader).unwrap();
    assert_eq!(status["shards"][0]["role"], "leader");
    // /status is refreshed every tick: wait for it to catch up with the writes.
    cluster.wait_until(Duration::from_secs(5), "/status to count every key", || {
        let status = cluster.status(leader).unwrap();
        (0..2).map(|s| status["shards"][s]["keys"].as_u64().unwrap()).sum::<u64>() == 200
    });
}

// Shows: after SIGKILL of the node leading shard 0, the other two elect new leaders and keep
// serving; the killed node restarts from its WAL and catches up on what it missed.
#[test]
fn leader_kill_failover_and_restart_catch_up() {
    let mut cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    block_on(async {
        for i in 0..100 {
            client.put(format!("before-{i}"), "1").await.expect("put before the kill");
        }
    });
    let victim = cluster.leader_of(0);
    cluster.kill(victim);
    cluster.wait_for_leaders(Duration::from_secs(15));
    assert_ne!(cluster.leader(0), Some(victim));
    block_on(async {
        for i in 0..100 {
            client.put(format!("after-{i}"), "2").await.expect("put after the kill");
        }
        for i in 0..100 {
            let before =
                client.get(format!("before-{i}")).await.unwrap().expect("acknowledged write kept");
            assert_eq!(before.value, b"1");
        }
    });

    cluster.restart(victim);
    let last_key = "after-99";
    let shard = client.shard_of(last_key.as_bytes()).get();
    cluster.wait_until(Duration::from_secs(20), "the restarted node to catch up", || {
        cluster.status(victim).is_some()
            && cluster.replica_value(victim, shard, last_key.as_bytes()) == Some(b"2".to_vec())
    });
    let applied = |node: u64| cluster.shard_number(node, shard, "applied_index");
    cluster.wait_until(Duration::from_secs(10), "applied indexes to match", || {
        let leader = cluster.leader(shard);
        leader.is_some() && applied(victim).is_some() && applied(victim) == leader.and_then(applied)
    });
    let status = cluster.status(victim).unwrap();
    assert!(status["shards"][shard as usize]["last_index"].as_u64().unwrap() > 50);
}

// Shows: garbage, oversized lengths and corrupted frames on the client and peer ports get an
// error reply or a closed connection, and the node keeps serving everyone else.
#[test]
fn malformed_frames_leave_the_node_serving() {
    let cluster = TestCluster::start(3, 1);
    let client = cluster.client();
    let node = cluster.leader_of(0);
    let client_addr = cluster.registry.node(NodeId(node)).unwrap().client_addr(ShardId(0));
    let peer_addr = cluster.registry.node(NodeId(node)).unwrap().peer_addr(ShardId(0));

    // Before its hello: garbage that happens to be framed gets an error and a closed socket.
    let mut conn = common::RawConn::connect(&client_addr);
    let mut garbage = 40u32.to_le_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    conn.send(&garbage);
    let reply = conn.recv();
    let error = verify_reply(&reply).unwrap().reply_as_error_reply().expect("error reply");
    assert_eq!(error.kind_type(), ErrorKind::InvalidRequest);

    // After a hello: a corrupted frame gets InvalidRequest and the connection carries on.
    let mut conn = cluster.raw(node, 0);
    let mut bad = RequestEncoder::new().put(3, b"k", b"v").to_vec();
    for byte in bad.iter_mut().skip(8).step_by(5) {
        *byte ^= 0x5a;
    }
    conn.send(&bad);
    let reply = conn.recv();
    assert!(verify_reply(&reply).unwrap().reply_as_error_reply().is_some());
    conn.send(RequestEncoder::new().status(4));
    assert!(verify_reply(&conn.recv()).unwrap().reply_as_status_reply().is_some(), "still served");

    // An oversized length prefix closes that connection.
    let mut conn = cluster.raw(node, 0);
    conn.send(&u32::MAX.to_le_bytes());
    assert!(conn.closed_by_server(), "oversized frame closes the connection");

    // Peer port: random bytes, a bad hello, an oversized frame.
    for payload in [
        vec![0xde; 64],
        PeerEncoder::new().hello(&PeerHello::new("not-this-cluster", 2, 0, 2)).to_vec(),
        {
            let mut newer = PeerHello::new(&cluster.registry.cluster, 2, 0, 2);
            newer.protocol_version = 99;
            PeerEncoder::new().hello(&newer).to_vec()
        },
        u32::MAX.to_le_bytes().to_vec(),
    ] {
        let mut peer = std::net::TcpStream::connect(&peer_addr).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = peer.write_all(&payload);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut peer, &mut sink);
    }

    let log = std::fs::read_to_string(cluster.log_path(node)).unwrap();
    assert!(
        log.contains("peer protocol 99 not supported (this node speaks 1 to 5; upgrade this node)"),
        "a newer peer is refused by name"
    );
    block_on(async {
        client.put("still", "alive").await.expect("put after the garbage");
        assert_eq!(client.get("still").await.unwrap().unwrap().value, b"alive");
    });
    let (code, _) = cluster.http(node, "/health").unwrap();
    assert_eq!(code, 200);
    let metrics = cluster.http(node, "/metrics").unwrap().1;
    let malformed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("corekv_malformed_frames_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(malformed >= 4, "the refused frames were counted ({malformed})");
}

// Shows: /metrics is valid Prometheus text exposition: every sample belongs to a declared
// metric family, histograms are cumulative with +Inf equal to their count, and values parse.
#[test]
fn metrics_are_valid_prometheus_text() {
    let cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    block_on(async {
        for i in 0..50 {
            client.put(format!("m-{i}"), "x").await.unwrap();
            client.get(format!("m-{i}")).await.unwrap();
        }
    });
    let leader = cluster.leader_of(0);
    let (code, body) = cluster.http(leader, "/metrics").unwrap();
    assert_eq!(code, 200);
    let families = validate_prometheus(&body);
    for name in [
        "corekv_requests_total",
        "corekv_request_duration_seconds",
        "corekv_proposals_total",
        "corekv_batch_ops",
        "corekv_wal_flush_duration_seconds",
        "corekv_wal_written_bytes_total",
        "corekv_elections_total",
        "corekv_leader_changes_total",
        "corekv_dropped_messages_total",
        "corekv_client_connections",
        "corekv_snapshots_total",
        "corekv_snapshot_duration_seconds",
        "corekv_snapshots_installed_total",
    ] {
        assert!(families.contains_key(name), "metric family {name} missing");
    }
    let puts: f64 = body
        .lines()
        .filter(|l| l.starts_with("corekv_requests_total{") && l.contains("op=\"put\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(puts >= 1.0, "the leader counted puts");
}

/// Checks the text format strictly; returns family name → type.
fn validate_prometheus(body: &str) -> std::collections::HashMap<String, String> {
    use std::collections::HashMap;
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse accepts it");
    assert!(!parsed.samples.is_empty());
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = std::collections::HashSet::new();
    let mut histogram_buckets: HashMap<String, (f64, f64)> = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap().to_string();
            assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "type {kind}");
            assert!(types.insert(name.clone(), kind).is_none(), "family {name} declared twice");
            assert!(helps.contains(&name), "TYPE of {name} without HELP");
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "name {name}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} before or without its TYPE line");
        if name.ends_with("_bucket") {
            let labels_without_le = series.split(",le=").next().unwrap().to_string();
            let entry = histogram_buckets.entry(labels_without_le).or_insert((0.0, 0.0));
            assert!(value >= entry.0, "buckets of {series} are cumulative");
            entry.0 = value;
            if series.contains("le=\"+Inf\"") {
                entry.1 = value;
            }
        }
        if name.ends_with("_count") && types.get(family).is_some_and(|t| t == "histogram") {
            let labels =
                series.trim_start_matches(name).trim_start_matches('{').trim_end_matches('}');
            let bucket_key = if labels.is_empty() {
                format!("{family}_bucket{{")
            } else {
                format!("{family}_bucket{{{labels}")
            };
            let inf = histogram_buckets.get(&bucket_key).map(|b| b.1);
            assert_eq!(inf, Some(value), "+Inf bucket of {series} equals its count");
        }
    }
    types
}

// Shows: SIGTERM shuts a node down cleanly (exit status 0, its shards log that they stopped),
// and the node starts again on the same data.
#[test]
fn sigterm_shuts_down_cleanly() {
    let mut cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    block_on(async {
        for i in 0..20 {
            client.put(format!("t-{i}"), "v").await.unwrap();
        }
    });
    let status = cluster.stop(2);
    assert!(status.success(), "exit status {status}\n{}", cluster.log_tail(2));
    let log = std::fs::read_to_string(cluster.log_path(2)).unwrap();
    assert_eq!(log.matches("shard stopped").count(), 2, "both shards stopped cleanly\n{log}");
    assert!(log.contains("node stopped"));
    cluster.restart(2);
    cluster.wait_until(Duration::from_secs(15), "node 2 to serve again", || {
        cluster.http(2, "/health").is_some_and(|(code, _)| code == 200)
    });
}

// Shows: /debug/pprof/flamegraph samples a real node under load and answers an SVG naming
// the shard executors' code; a second request meanwhile is refused with 409 and bad
// parameters with 400, and /health keeps answering while a profile runs.
#[test]
fn cpu_profile_over_http() {
    let cluster = TestCluster::start(3, 1);
    let leader = cluster.leader_of(0);
    let addr = cluster.registry.node(NodeId(leader)).unwrap().http_addr();
    let (code, body) = cluster.http(leader, "/debug/pprof/flamegraph?seconds=0").unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = cluster.http(leader, "/debug/pprof/flamegraph?rate=9").unwrap();
    assert_eq!(code, 400, "{body}");

    let profile = std::thread::spawn(move || {
        corekv_server::http::get(
            &addr,
            "/debug/pprof/flamegraph?seconds=3",
            Duration::from_secs(20),
        )
    });
    let load_until = std::time::Instant::now() + Duration::from_secs(3);
    let client = cluster.client();
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = cluster.http(leader, "/debug/pprof/flamegraph?seconds=1").unwrap();
    assert_eq!(code, 409, "a second profile at once is refused: {body}");
    let (code, _) = cluster.http(leader, "/health").unwrap();
    assert_eq!(code, 200, "the HTTP thread is not blocked by a running profile");
    block_on(async {
        let mut i = 0u64;
        while std::time::Instant::now() < load_until {
            client.put(format!("p-{}", i % 100), "x").await.unwrap();
            i += 1;
        }
    });
    let (code, svg) = profile.join().unwrap().expect("the profile request");
    assert_eq!(code, 200, "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "a whole SVG");
    assert!(
        svg.contains("samples at 199 Hz"),
        "samples were taken: {}",
        &svg[..svg.len().min(300)]
    );
    assert!(svg.contains("shard-0"), "the shard executor's thread is in the graph");
}
