//! Changing the cluster while it runs, on real `corekv` processes with `corekvctl`: nodes
//! added (as learners, caught up by snapshot, promoted), removed (leadership moved away
//! first), and the refusals, while writers and readers run and record a history that is
//! checked for linearizability.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;
#[path = "common/workload.rs"]
mod workload;

use std::time::Duration;

use common::TestCluster;
use serde_json::Value;
use workload::{check_history, Workload};

/// `corekvctl -o json member list`, parsed: one entry per shard.
fn members(cluster: &TestCluster) -> Vec<Value> {
    let (code, out, err) = cluster.ctl(&["-o", "json", "member", "list"]);
    assert_eq!(code, 0, "member list: {err}");
    serde_json::from_str::<Vec<Value>>(&out).expect("member list JSON")
}

fn ids(value: &Value) -> Vec<u64> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// `--host H --client-port P --peer-port Q --http-port R --wait-timeout 60s` for node `id`.
fn addr_flags(cluster: &TestCluster, id: u64) -> Vec<String> {
    let node = cluster.node(id).expect("a started node");
    [
        "--host".to_string(),
        node.host,
        "--client-port".to_string(),
        node.client_port.to_string(),
        "--peer-port".to_string(),
        node.peer_port.to_string(),
        "--http-port".to_string(),
        node.http_port.to_string(),
        "--wait-timeout".to_string(),
        "60s".to_string(),
    ]
    .into()
}

// Shows: a 3-node, 2-shard cluster grows to 5 under load — each new node started with --join,
// added with `corekvctl member add`, catches up (by snapshot) and is promoted in every shard
// — then shrinks back to 3 by removing nodes 4 and 5 after each was made the leader of a
// shard (`leader transfer`; `member remove` moves leadership away first). `member list` shows
// every step. Refused with a reason (exit 2): adding a member twice, removing a voter when
// that would leave no healthy majority, a second change while one is pending is left to the
// sans-IO test. A removed node answers clients that it is not a member. No acknowledged write
// is lost and the whole history is linearizable.
#[test]
fn grow_to_five_then_shrink_to_three_removing_leaders() {
    let mut cluster = TestCluster::start(3, 2);
    let workload = Workload::start(&cluster, 3, 2, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));

    for _ in 0..2 {
        let id = cluster.add_node();
        let mut args = vec!["member".to_string(), "add".to_string(), id.to_string()];
        args.extend(addr_flags(&cluster, id));
        let (code, out, err) = cluster.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "member add {id}: {out}{err}\n{}", cluster.log_tail(id));
        assert!(out.contains(&format!("node {id} is a voter of every shard")), "{out}");
        assert!(err.contains("added as a learner"), "reports progress: {err}");
    }
    for shard in members(&cluster) {
        assert_eq!(ids(&shard["membership"]["voters"]), vec![1, 2, 3, 4, 5], "{shard}");
        assert_eq!(shard["membership"]["addrs"]["5"]["host"], "127.0.0.1", "{shard}");
    }
    for id in [4, 5] {
        let installed = cluster.metric(id, "corekv_snapshots_installed_total").unwrap_or(0.0);
        assert!(
            installed >= 2.0,
            "node {id} caught up from a snapshot in each shard ({installed})"
        );
    }

    // Adding a member twice is refused, naming it.
    let (code, _, err) = cluster.ctl(&[
        "member",
        "add",
        "4",
        "--host",
        "127.0.0.1",
        "--client-port",
        "1",
        "--peer-port",
        "2",
        "--http-port",
        "3",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node 4 is a member of shard 0 already"), "{err}");

    // Nodes 4 and 5 lead a shard each, then are removed.
    for (shard, id) in [(0, 4), (1, 5)] {
        let (code, out, err) =
            cluster.ctl(&["leader", "transfer", &shard.to_string(), &id.to_string()]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(&format!("node {id} leads shard {shard}")), "{out}");
    }
    for id in [4, 5] {
        let (code, out, err) = cluster.ctl(&["member", "remove", &id.to_string()]);
        assert_eq!(code, 0, "member remove {id}: {out}{err}");
        assert!(err.contains("leadership moved from node"), "moved leadership first: {err}");
    }
    for shard in members(&cluster) {
        assert_eq!(ids(&shard["membership"]["voters"]), vec![1, 2, 3], "{shard}");
        let leader = shard["leader_id"].as_u64().unwrap();
        assert!((1..=3).contains(&leader), "{shard}");
    }

    // A removed node says so to clients, and in its /health.
    cluster.wait_until(Duration::from_secs(10), "node 4 to know it was removed", || {
        cluster
            .http(4, "/health")
            .is_some_and(|(code, body)| code == 503 && body.contains("no longer a member"))
    });
    let mut conn = cluster.raw(4, 0);
    conn.send(corekv_proto::encode::RequestEncoder::new().get(
        2,
        b"k",
        corekv_proto::client::Consistency::Linearizable,
    ));
    let reply = conn.recv();
    let reply = corekv_proto::frame::verify_reply(&reply).unwrap();
    let error = reply.reply_as_error_reply().expect("an error");
    assert_eq!(error.kind_type(), corekv_proto::client::ErrorKind::NotMember);

    // Node 3 down: removing node 2 would leave one healthy voter of two.
    cluster.kill(3);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _, err) = cluster.ctl(&["member", "remove", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("fewer than a majority"), "{err}");
    cluster.restart(3);

    let history = workload.finish(&cluster);
    check_history(&history, "grow to five, shrink to three");
}

// Shows: every node of a 3-node, 2-shard cluster replaced one by one (`member replace OLD NEW`:
// the new node added as a learner, caught up, then one joint change per shard; the old node
// then stopped), while writers and readers run with a client that was given only the original
// registry: it learns the new members from the nodes and keeps working after the last
// original node is gone. The history is linearizable.
#[test]
fn every_node_replaced_one_by_one_with_a_client_of_the_original_registry() {
    let mut cluster = TestCluster::start(3, 2);
    let workload = Workload::start(&cluster, 3, 2, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));
    let mut last = 0;
    for old in 1..=3u64 {
        let new = cluster.add_node();
        last = new;
        let mut args = vec!["member".into(), "replace".into(), old.to_string(), new.to_string()];
        args.extend(addr_flags(&cluster, new));
        let (code, out, err) = cluster.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "replace {old} with {new}: {out}{err}");
        assert!(out.contains(&format!("node {new} replaced node {old} in every shard")), "{out}");
        cluster.stop(old);
        let since = workload.now();
        for shard in 0..2 {
            workload.wait_for_write(shard, since, Duration::from_secs(20));
        }
    }
    for shard in 0..2 {
        let status = cluster.status(last).unwrap();
        let leader = status["shards"][shard]["leader_id"].as_u64().unwrap();
        assert!((4..=6).contains(&leader), "shard {shard} led by a new node: {status}");
    }
    let history = workload.finish_reading_with(
        corekv_client::Client::from_registry(cluster.registry_of(last)).unwrap(),
    );
    check_history(&history, "every node replaced");
}
