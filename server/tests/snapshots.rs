//! Snapshots with real processes: followers that fall behind a compaction catch up by
//! snapshot and then by log, a wiped node rejoins, a damaged snapshot file is refused (naming
//! the file and the reason) and the node falls back to the older one, and the data directory
//! stays bounded under a long run of overwrites.

mod common;

use std::time::Duration;

use common::{block_on, TestCluster};
use corekv_client::WriteOptions;

/// Small thresholds so a few hundred writes make several snapshots and compactions.
const SMALL: &[&str] = &["--snapshot-entries", "40", "--wal-segment-mib", "16"];

fn applied(cluster: &TestCluster, node: u64) -> Option<u64> {
    cluster.shard_number(node, 0, "applied_index")
}

fn shard0(cluster: &TestCluster, node: u64, field: &str) -> u64 {
    cluster.shard_number(node, 0, field).unwrap_or(0)
}

fn write_keys(cluster: &TestCluster, prefix: &str, count: usize) {
    let client = cluster.client();
    block_on(async {
        for i in 0..count {
            client.put(format!("{prefix}-{i}"), format!("{prefix}-value-{i}")).await.unwrap();
        }
    });
}

fn status_of(cluster: &TestCluster, node: Option<u64>) -> String {
    node.and_then(|n| cluster.status(n)).map(|s| s.to_string()).unwrap_or_default()
}

fn wait_caught_up(cluster: &TestCluster, node: u64) {
    let started = std::time::Instant::now();
    loop {
        let leader = cluster.leader(0);
        let mine = applied(cluster, node);
        if leader.is_some() && mine.is_some() && mine == leader.and_then(|l| applied(cluster, l)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {node} did not catch up (applied {mine:?}, leader {leader:?})\n\
             --- node {node} status {}\n{}\n--- leader status {}\n{}",
            status_of(cluster, Some(node)),
            cluster.log_tail(node),
            status_of(cluster, leader),
            leader.map(|l| cluster.log_tail(l)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Shows: a follower that lags further behind than the leader's entry cache (64 MiB) catches
// up by log, with entries the leader reads back from its WAL off the executor (counted in
// corekv_wal_records_read_for_followers_total), and holds every value it missed.
#[test]
fn follower_lagging_past_the_entry_cache_catches_up_from_the_wal() {
    let mut cluster = TestCluster::start(3, 1);
    let leader = cluster.leader_of(0);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.kill(follower);
    // 96 values of 1 MiB: the first third is older than the cache when the follower returns.
    let value = |i: usize| vec![b'a' + (i % 26) as u8; 1 << 20];
    let client = cluster.client();
    block_on(async {
        for i in 0..96 {
            client.put(format!("big-{i}"), value(i)).await.unwrap();
        }
    });
    assert_eq!(shard0(&cluster, leader, "first_index"), 1, "no compaction: the log has it all");
    cluster.restart(follower);
    wait_caught_up(&cluster, follower);
    let read = cluster.metric(leader, "corekv_wal_records_read_for_followers_total").unwrap();
    assert!(read >= 1.0, "the leader read old entries back from its WAL ({read})");
    for i in [0, 10, 95] {
        let got = cluster.replica_value(follower, 0, format!("big-{i}").as_bytes());
        assert_eq!(got, Some(value(i)), "the follower holds big-{i}");
    }
}

// Shows: a follower stopped while the leader snapshots and compacts past its log comes back,
// receives the leader's snapshot, and then follows by log again.
#[test]
fn follower_catches_up_by_snapshot_then_by_log() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    let leader = cluster.leader_of(0);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    write_keys(&cluster, "early", 20);
    wait_caught_up(&cluster, follower);
    let follower_last = shard0(&cluster, follower, "last_index");
    cluster.kill(follower);
    write_keys(&cluster, "missed", 300);
    let leader = cluster.leader_of(0);
    cluster.wait_until(Duration::from_secs(20), "the leader to compact past the follower", || {
        shard0(&cluster, leader, "first_index") > follower_last + 1
    });

    cluster.restart(follower);
    wait_caught_up(&cluster, follower);
    assert!(
        cluster.metric(follower, "corekv_snapshots_installed_total").unwrap() >= 1.0,
        "caught up by snapshot\n--- follower {follower}\n{}\n--- leader {leader}\n{}",
        cluster.log_tail(follower),
        cluster.log_tail(leader)
    );
    assert!(cluster.metric(leader, "corekv_snapshots_sent_total").unwrap() >= 1.0);
    for key in ["early-0", "missed-0", "missed-150", "missed-299"] {
        let value = cluster
            .replica_value(follower, 0, key.as_bytes())
            .unwrap_or_else(|| panic!("{key} on the follower"));
        assert_eq!(
            value,
            format!(
                "{}-value-{}",
                key.rsplit_once('-').unwrap().0,
                key.rsplit_once('-').unwrap().1
            )
            .into_bytes()
        );
    }
    let installed = cluster.metric(follower, "corekv_snapshots_installed_total").unwrap();
    write_keys(&cluster, "after", 10);
    // Waited for by the value itself: /status refreshes once per tick, so a caught-up check
    // can pass on figures from before these writes.
    cluster.wait_until(Duration::from_secs(20), "the follower to apply the later writes", || {
        cluster.replica_value(follower, 0, b"after-9").is_some()
    });
    assert_eq!(cluster.replica_value(follower, 0, b"after-9"), Some(b"after-value-9".to_vec()));
    assert_eq!(
        cluster.metric(follower, "corekv_snapshots_installed_total").unwrap(),
        installed,
        "later entries arrived by log, not by another snapshot"
    );
}

// Shows: a node whose data directory was wiped, restarted without --join, notices that the
// cluster holds data it lacks, rebuilds its state from the leader while taking no part in
// elections (joining, also shown in /status), and then votes again; the cluster serves
// throughout. Started with --join, it catches up also when no write comes to show the leader
// its log is gone.
#[test]
fn wiped_node_rebuilds_itself_then_votes_again() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    write_keys(&cluster, "k", 200);
    let leader = cluster.leader_of(0);
    let victim = (1..=3).find(|&n| n != leader).unwrap();
    wait_caught_up(&cluster, victim);
    cluster.kill(victim);
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();

    cluster.restart(victim);
    write_keys(&cluster, "during", 5);
    wait_caught_up(&cluster, victim);
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap();
    assert!(
        log.contains("lost acknowledged data") || log.contains("the cluster has committed data"),
        "says why it catches up before voting\n{}",
        cluster.log_tail(victim)
    );
    cluster.wait_until(Duration::from_secs(10), "the node to say it votes again", || {
        std::fs::read_to_string(cluster.log_path(victim))
            .is_ok_and(|log| log.contains("caught up with the cluster"))
    });
    let status = cluster.status(victim).unwrap();
    assert_eq!(status["shards"][0]["joining"], false);
    assert_eq!(cluster.replica_value(victim, 0, b"k-0"), Some(b"k-value-0".to_vec()));
    assert_eq!(cluster.replica_value(victim, 0, b"during-4"), Some(b"during-value-4".to_vec()));
    assert_eq!(shard0(&cluster, victim, "keys"), 205);

    // Wiped again and started with --join, when nothing has been written since: the leader
    // believes it holds the whole log and sends only heartbeats, so it must ask to be probed.
    cluster.kill(victim);
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    cluster.restart_with(victim, &["--join"]);
    cluster.wait_until(Duration::from_secs(20), "the node to serve /status", || {
        cluster.status(victim).is_some()
    });
    wait_caught_up(&cluster, victim);
    assert_eq!(shard0(&cluster, victim, "keys"), 205);
    cluster.wait_until(Duration::from_secs(10), "the node to stop joining", || {
        cluster.status(victim).is_some_and(|s| s["shards"][0]["joining"] == false)
    });
}

// Shows: a wiped node restarted without --join on an idle shard catches up and votes again with
// no write arriving. The leader still counts it as holding the log it acknowledged before the
// wipe; it installs a snapshot, and the entries after the snapshot take several messages (large
// values), which a leader that trusts its old match index never sent before the next write.
// Voting again: with the leader paused, the other follower needs the wiped node's vote.
#[test]
fn wiped_node_of_an_idle_shard_catches_up_and_votes_with_no_write() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    let leader = cluster.leader_of(0);
    let client = cluster.client();
    let value = vec![b'v'; 200 * 1024];
    block_on(async {
        for i in 0..150 {
            client.put(format!("big-{i}"), value.clone()).await.unwrap();
        }
    });
    let victim = (1..=3).find(|&n| n != leader).unwrap();
    wait_caught_up(&cluster, victim);
    cluster.kill(victim);
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    cluster.restart(victim);

    wait_caught_up(&cluster, victim);
    assert_eq!(shard0(&cluster, victim, "keys"), 150);
    cluster.wait_until(Duration::from_secs(10), "the wiped node to stop joining", || {
        cluster.status(victim).is_some_and(|s| s["shards"][0]["joining"] == false)
    });
    let other = (1..=3).find(|&n| n != leader && n != victim).unwrap();
    cluster.signal(leader, libc::SIGSTOP);
    cluster.wait_until(
        Duration::from_secs(20),
        "a leader elected with the wiped node's vote",
        || {
            [victim, other]
                .iter()
                .any(|&n| cluster.status(n).is_some_and(|s| s["shards"][0]["role"] == "leader"))
        },
    );
    cluster.signal(leader, libc::SIGCONT);
    assert_eq!(cluster.replica_value(victim, 0, b"big-149"), Some(value));
}

// Shows: a wiped node restarted without --join, which no leader can tell lost data, does not
// help elect a leader that lacks writes it had acknowledged. One follower is paused while
// writes commit on the leader and the other follower; that follower is wiped, the leader
// killed, the paused one resumed. The wiped node withholds its vote from the paused one's
// longer log, so the shard has no leader (rather than one without the writes) until the old
// leader returns; then the wiped node catches up from it.
#[test]
fn wiped_node_without_join_does_not_elect_a_stale_leader() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    let leader = cluster.leader_of(0);
    let mut others = (1..=3).filter(|&n| n != leader);
    let (stale, wiped) = (others.next().unwrap(), others.next().unwrap());
    write_keys(&cluster, "before", 20);
    wait_caught_up(&cluster, stale);
    cluster.signal(stale, libc::SIGSTOP);
    write_keys(&cluster, "acked", 100);
    // (`wait_caught_up` asks every node for the leader; the paused one cannot answer.)
    cluster.wait_until(Duration::from_secs(20), "the other follower to apply the writes", || {
        applied(&cluster, wiped).is_some() && applied(&cluster, wiped) == applied(&cluster, leader)
    });
    cluster.kill(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped)).unwrap();
    cluster.kill(leader);
    cluster.signal(stale, libc::SIGCONT);
    cluster.restart(wiped);

    cluster.wait_until(Duration::from_secs(20), "the wiped node to start", || {
        cluster.status(wiped).is_some()
    });
    // Several election timeouts (about a second each).
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let role = cluster.status(stale).map(|s| s["shards"][0]["role"].clone());
        assert_ne!(
            role,
            Some(serde_json::json!("leader")),
            "node {stale} was elected without the writes it missed\n{}",
            cluster.log_tail(stale)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.metric(wiped, "corekv_votes_withheld_total").is_some_and(|n| n >= 1.0));
    let log = std::fs::read_to_string(cluster.log_path(wiped)).unwrap();
    assert!(log.contains("not voting") && log.contains("--join"), "says why it does not vote");

    cluster.restart(leader);
    wait_caught_up(&cluster, wiped);
    wait_caught_up(&cluster, stale);
    for node in [stale, wiped] {
        assert_eq!(cluster.replica_value(node, 0, b"acked-99"), Some(b"acked-value-99".to_vec()));
        assert_eq!(shard0(&cluster, node, "keys"), 120, "node {node} holds every write");
    }
}

// Shows: a damaged newest snapshot file is refused at start-up with its path and the reason,
// and the node starts from the previous snapshot plus the log after it, losing nothing.
#[test]
fn damaged_snapshot_falls_back_to_the_previous_one() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    write_keys(&cluster, "k", 200);
    let node = 2;
    wait_caught_up(&cluster, node);
    let snap_dir = cluster.data_dir(node).join("shard-0").join("snap");
    cluster.wait_until(Duration::from_secs(20), "two snapshot files", || {
        std::fs::read_dir(&snap_dir)
            .map(|d| {
                d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "snap"))
                    .count()
                    >= 2
            })
            .unwrap_or(false)
    });
    let status = cluster.stop(node);
    assert!(status.success());
    let mut files: Vec<_> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    files.sort();
    let newest = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();

    cluster.restart(node);
    cluster.wait_until(Duration::from_secs(20), "the node to serve again", || {
        cluster.http(node, "/health").is_some_and(|(code, _)| code == 200)
    });
    let log = std::fs::read_to_string(cluster.log_path(node)).unwrap();
    let refusal =
        log.lines().find(|l| l.contains("snapshot refused")).expect("the refusal is logged");
    assert!(refusal.contains(&newest.display().to_string()), "names the file: {refusal}");
    assert!(refusal.contains("checksum mismatch"), "says why: {refusal}");
    wait_caught_up(&cluster, node);
    assert_eq!(cluster.replica_value(node, 0, b"k-199"), Some(b"k-value-199".to_vec()));
    assert_eq!(shard0(&cluster, node, "keys"), 200);
}

// Shows: under a long run of overwrites — far more bytes than the data directory could hold
// without compaction — every node's data directory levels off.
#[test]
fn disk_use_stays_bounded_under_overwrites() {
    let mut cluster =
        TestCluster::prepare(3, 1, &["--snapshot-log-mib", "4", "--wal-segment-mib", "16"]);
    // The watch history's cap: its segments are part of the bound below.
    cluster.add_to_registry(
        "[watch]\nhistory_min_entries = 0\nhistory_min_mib = 0\nhistory_min_minutes = 0\n\
         history_max_mib = 32",
    );
    cluster.launch();
    let client = cluster.client();
    let value = vec![b'x'; 1024];
    let mut sizes = Vec::new();
    block_on(async {
        for round in 0..30 {
            let mut calls = Vec::new();
            for task in 0..8 {
                let items: Vec<(String, Vec<u8>)> =
                    (0..100).map(|i| (format!("hot-{task}-{i}"), value.clone())).collect();
                let client = client.clone();
                calls.push(async move {
                    for _ in 0..10 {
                        client.batch_put(&items, WriteOptions::default()).await.unwrap();
                    }
                });
            }
            futures_util::future::join_all(calls).await;
            if round % 5 == 4 {
                sizes.push(common::dir_bytes(cluster.dir.path()));
            }
        }
    });
    // Per node: the log since the previous snapshot (about 2 x 4 MiB of entries) within
    // 16 MiB segments, a spare and recycled segments, two small snapshots; the watch
    // history's 32 MiB, its active segment, a spare and recycled ones. Without compaction and
    // retention each node would hold every byte its WAL and history wrote.
    let bound: u64 = (8 + 6) * 16 * 1024 * 1024;
    for node in 1..=3 {
        let written = cluster.metric(node, "corekv_wal_written_bytes_total").unwrap() as u64
            + cluster.metric(node, "corekv_watch_history_written_bytes_total").unwrap() as u64;
        let size = common::dir_bytes(&cluster.data_dir(node));
        assert!(written > 2 * size, "node {node} wrote {written} bytes and holds {size}");
        assert!(size < bound, "node {node} holds {size} bytes");
    }
    let final_size = *sizes.last().unwrap();
    let peak_early = sizes[..sizes.len() / 2].iter().max().unwrap();
    assert!(final_size <= peak_early + 3 * 32 * 1024 * 1024, "still growing: {sizes:?}");
}

/// Files of snapshots being received (`*.incoming.tmp`) in a node's snapshot directory (not
/// those of its own snapshots being written: a node may start one right after installing).
fn temp_files(cluster: &TestCluster, node: u64) -> usize {
    let dir = cluster.data_dir(node).join("shard-0").join("snap");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".incoming.tmp"))
                .count()
        })
        .unwrap_or(0)
}

// Shows: a snapshot transfer cut by a disconnect (the receiver frozen mid-file, then killed)
// fails on the sender, and the next transfer starts from the beginning and installs; no
// partial file is left behind.
#[test]
fn interrupted_snapshot_transfer_restarts_cleanly() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    let client = cluster.client();
    let leader = cluster.leader_of(0);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let follower_last = shard0(&cluster, follower, "last_index");
    cluster.kill(follower);
    // About 40 MB of state, so the transfer takes long enough to be caught in the middle.
    let value = vec![b'v'; 1024];
    block_on(async {
        for batch in 0..40 {
            let items: Vec<(String, Vec<u8>)> =
                (0..1000).map(|i| (format!("big-{batch}-{i}"), value.clone())).collect();
            client.batch_put(&items, WriteOptions::default()).await.unwrap();
        }
    });
    write_keys(&cluster, "tail", 60);
    // The follower must need a snapshot: the leader compacted past its log. When depends on
    // the leader's place among the nodes (replicas snapshot out of step), so write until then.
    let compacted_past =
        || shard0(&cluster, cluster.leader_of(0), "first_index") > follower_last + 1;
    for _ in 0..10 {
        if compacted_past() {
            break;
        }
        write_keys(&cluster, "pad", 40);
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.wait_until(
        Duration::from_secs(20),
        "the leader to compact past the follower",
        compacted_past,
    );
    let mut interrupted = false;
    for _attempt in 0..3 {
        cluster.restart(follower);
        let log = cluster.log_path(follower);
        let before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("receiving a snapshot")
            .count();
        cluster.wait_until(Duration::from_secs(30), "the transfer to start", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("receiving a snapshot")
                .count()
                > before
        });
        cluster.signal(follower, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        interrupted = temp_files(&cluster, follower) > 0;
        cluster.signal(follower, libc::SIGCONT);
        cluster.kill(follower);
        if interrupted {
            break;
        }
        // The whole transfer beat the freeze: make it longer and try again.
        write_keys(&cluster, "more", 50);
    }
    assert!(interrupted, "a transfer was caught in the middle");
    // Summed over the nodes: on a loaded machine leadership may have moved meanwhile.
    cluster.wait_until(Duration::from_secs(30), "the sender to give the transfer up", || {
        cluster
            .live_nodes()
            .into_iter()
            .map(|n| cluster.metric(n, "corekv_snapshot_send_failures_total").unwrap_or(0.0))
            .sum::<f64>()
            >= 1.0
    });
    let leader = cluster.leader_of(0);
    cluster.restart(follower);
    wait_caught_up(&cluster, follower);
    assert!(cluster.metric(follower, "corekv_snapshots_installed_total").unwrap() >= 1.0);
    assert_eq!(temp_files(&cluster, follower), 0, "the partial file of the cut transfer is gone");
    assert_eq!(cluster.replica_value(follower, 0, b"tail-59"), Some(b"tail-value-59".to_vec()));
    let keys = shard0(&cluster, follower, "keys");
    assert!(keys >= 40_060, "the follower holds {keys} keys");
    assert_eq!(keys, shard0(&cluster, leader, "keys"), "the follower holds what the leader holds");
}
