//! The runbook's backup and restore procedure (deploy/bare-metal/RUNBOOK.md), on real
//! processes: one follower stopped cleanly, its data directory copied, the node started again;
//! later the whole cluster is stopped, every node's data replaced by the copy, and the cluster
//! restarted from it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{block_on, TestCluster};

/// Snapshot every 40 entries, so the backup holds snapshots and a WAL after them.
const SMALL: &[&str] = &["--snapshot-entries", "40", "--wal-segment-mib", "16"];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn snapshot_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("shard-0").join("snap"))
        .map(|d| {
            d.filter(|e| e.as_ref().unwrap().path().extension() == Some("snap".as_ref())).count()
        })
        .unwrap_or(0)
}

// Shows: a cold copy of one replica restores the whole cluster to the state it held — every
// key written before the backup readable with its value, every key written after it gone —
// and the restored cluster elects leaders and takes writes.
#[test]
fn cluster_restores_from_one_replicas_copy() {
    let mut cluster = TestCluster::start_with(3, 1, SMALL);
    let client = cluster.client();
    block_on(async {
        for i in 0..150 {
            client.put(format!("before-{i}"), format!("value-{i}")).await.unwrap();
        }
    });
    let leader = cluster.leader_of(0);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    // The follower must hold everything written so far before it is copied.
    let committed = cluster.status(leader).unwrap()["shards"][0]["commit_index"].as_u64().unwrap();
    cluster.wait_until(Duration::from_secs(20), "the follower to apply every write", || {
        cluster.shard_number(follower, 0, "applied_index").is_some_and(|a| a >= committed)
    });
    assert!(cluster.stop(follower).success());
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&cluster.data_dir(follower), backup.path());
    assert!(snapshot_files(backup.path()) >= 1, "the backup holds a snapshot");
    cluster.restart(follower);
    block_on(async {
        for i in 0..50 {
            client.put(format!("after-{i}"), "lost in the restore").await.unwrap();
        }
    });

    for node in 1..=3 {
        assert!(cluster.stop(node).success());
    }
    for node in 1..=3 {
        let dir = cluster.data_dir(node);
        std::fs::remove_dir_all(&dir).unwrap();
        copy_dir(backup.path(), &dir);
    }
    for node in 1..=3 {
        cluster.restart(node);
    }
    cluster.wait_for_leaders(Duration::from_secs(30));
    let client = cluster.client();
    block_on(async {
        for i in 0..150 {
            let kv = client.get(format!("before-{i}")).await.unwrap();
            assert_eq!(
                kv.map(|kv| kv.value),
                Some(format!("value-{i}").into_bytes()),
                "before-{i}"
            );
        }
        for i in 0..50 {
            assert!(client.get(format!("after-{i}")).await.unwrap().is_none(), "after-{i}");
        }
        client.put("after-restore", "yes").await.unwrap();
        let kv = client.get("after-restore").await.unwrap().unwrap();
        assert_eq!(kv.value, b"yes");
    });
}
