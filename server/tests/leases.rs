//! Leases with real processes and the real client: keep-alives hold a lease across leader
//! SIGKILLs; a lease whose keep-alives stop expires within its time to live plus one
//! checkpoint interval after the last keep-alive, not before it less one, with a leader
//! change in between, and its keys go as expiries; `corekvctl lease` and `put --lease`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestCluster;
use corekv_client::watch::ChangeKind;
use corekv_client::{Error, WatchMessage, WatchSpec};
use futures_util::StreamExt;

/// The checkpoint interval (server constant `LEASE_CHECKPOINT_INTERVAL_MS`).
const CHECKPOINT: Duration = Duration::from_millis(500);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

// Shows: a lease of 5 s kept alive every third of it lives through 10 leader changes (each a
// SIGKILL of shard 0's leader, then its restart): no keep-alive is told the lease is gone,
// its key is never deleted (a watch sees no delete), and it is still there at the end.
#[test]
fn keep_alives_hold_a_lease_across_leader_changes() {
    let mut cluster = TestCluster::start(3, 1);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let ttl = Duration::from_secs(5);
    let lease = rt.block_on(client.lease_grant_with(ttl, &[("svc/a", "up")], None)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let kept = Arc::new(AtomicU64::new(0));
    let keeper = {
        let (client, stop, kept) = (client.clone(), stop.clone(), kept.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match client.lease_keep_alive_within(lease.id, Some(Duration::from_secs(2))).await {
                    Ok(_) => {
                        kept.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep_until((sent + ttl / 3).into()).await;
                    }
                    // An election under way: try again at once.
                    Err(error) if error.is_unavailable() => {}
                    Err(error) => panic!("keep-alive failed after {:?}: {error}", sent.elapsed()),
                }
            }
        })
    };
    let deletes = Arc::new(AtomicU64::new(0));
    let watcher = {
        let _runtime = rt.enter();
        let mut watch = client.watch(WatchSpec::key("svc/a")).unwrap();
        let deletes = deletes.clone();
        rt.spawn(async move {
            while let Some(message) = watch.next().await {
                if let Ok(WatchMessage::Event(event)) = message {
                    let gone = event.changes.iter().filter(|c| c.kind == ChangeKind::Delete);
                    deletes.fetch_add(gone.count() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    for round in 0..10 {
        let leader = cluster.leader_of(0);
        cluster.kill(leader);
        let new = cluster.leader_of(0);
        assert_ne!(new, leader, "round {round}");
        cluster.restart(leader);
        std::thread::sleep(Duration::from_millis(1_000));
    }
    cluster.wait_for_leaders(Duration::from_secs(15));
    std::thread::sleep(ttl);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(keeper).unwrap();
    assert!(kept.load(Ordering::Relaxed) >= 10, "keep-alives answered throughout");
    assert_eq!(deletes.load(Ordering::Relaxed), 0, "the key was never deleted");
    let entry = rt.block_on(client.get("svc/a")).unwrap().expect("still there");
    assert_eq!(entry.lease, Some(lease.id));
    let info = rt.block_on(client.lease_time_to_live(lease.id, true)).unwrap();
    assert_eq!(info.keys, vec![b"svc/a".to_vec()]);
    watcher.abort();
}

// Shows: once keep-alives stop, and shard 0's leader is SIGKILLed right after the last one,
// the lease's key stays readable until the last keep-alive plus the time to live less one
// checkpoint interval, and a watcher sees it deleted, as an expiry, no later than the last
// keep-alive's answer plus the time to live plus one checkpoint interval (plus what an
// expiry takes to apply and reach the watcher); then the lease is not found.
#[test]
fn a_lease_expires_within_its_ttl_plus_a_checkpoint_after_the_last_keep_alive() {
    let mut cluster = TestCluster::start(3, 1);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let ttl = Duration::from_secs(3);
    let lease = rt.block_on(client.lease_grant_with(ttl, &[("svc/b", "up")], None)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = {
        let _runtime = rt.enter();
        let mut watch = client.watch(WatchSpec::key("svc/b")).unwrap();
        rt.spawn(async move {
            while let Some(message) = watch.next().await {
                if let Ok(WatchMessage::Event(event)) = message {
                    for change in event.changes.iter() {
                        if change.kind == ChangeKind::Delete {
                            let _ = tx.send((Instant::now(), change.expired));
                        }
                    }
                }
            }
        })
    };
    // Keep-alives for a while (each moves the deadline; checkpoints follow), then the last.
    let mut last = (Instant::now(), Instant::now());
    for _ in 0..4 {
        let sent = Instant::now();
        rt.block_on(client.lease_keep_alive(lease.id)).unwrap();
        last = (sent, Instant::now());
        std::thread::sleep(Duration::from_millis(700));
    }
    let (last_sent, last_acked) = last;
    let leader = cluster.leader_of(0);
    cluster.kill(leader);
    // Readable until the deadline less one checkpoint interval (the new leader may have
    // missed the last keep-alive's checkpoint), less a margin for the reads themselves.
    let must_live_until = last_sent + ttl - CHECKPOINT - Duration::from_millis(100);
    while Instant::now() < must_live_until {
        let started = Instant::now();
        match rt.block_on(client.get("svc/b")) {
            Ok(found) if Instant::now() < must_live_until => {
                assert!(found.is_some(), "gone {:?} after the last keep-alive", started - last_sent)
            }
            Ok(_) => {}
            Err(error) => assert!(error.is_unavailable(), "{error}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (deleted_at, expired) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("deleted within 10 s")
        .expect("the watch runs");
    assert!(expired, "the delete is marked as an expiry");
    let latest = last_acked + ttl + CHECKPOINT + Duration::from_millis(300);
    assert!(
        deleted_at <= latest,
        "deleted {:?} after the last keep-alive's answer (bound {:?})",
        deleted_at - last_acked,
        latest - last_acked
    );
    println!("deleted {:?} after the last keep-alive was sent", deleted_at - last_sent);
    assert!(rt.block_on(client.get("svc/b")).unwrap().is_none());
    let gone = rt.block_on(client.lease_keep_alive(lease.id));
    assert!(matches!(gone, Err(Error::LeaseNotFound(id)) if id == lease.id), "{gone:?}");
    cluster.restart(leader);
    watcher.abort();
}

// Shows: `corekvctl lease grant` prints an id; `put --lease` attaches a key, which `get -o
// json` and `lease ttl --keys` show; `lease keep-alive --once` renews it; `lease revoke`
// deletes the key and says how many went; a lease that is gone gives exit status 1, a key on
// another shard than the lease's and a malformed id exit status 2.
#[test]
fn corekvctl_leases() {
    let cluster = TestCluster::start(1, 2);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let (code, out, err) = cluster.ctl(&["lease", "grant", "10s", "--key", "{svc}x"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    assert_eq!(id.len(), 16, "{out}");
    let (code, _, err) = cluster.ctl(&["put", "{svc}x", "up", "--lease", &id]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cluster.ctl(&["-o", "json", "get", "{svc}x"]);
    let entry: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entry["lease"], id);
    let (code, out, _) = cluster.ctl(&["lease", "ttl", &id, "--keys"]);
    assert_eq!(code, 0);
    assert!(out.contains("ttl 10s") && out.contains("{svc}x"), "{out}");
    let (code, out, _) = cluster.ctl(&["lease", "keep-alive", "--once", &id]);
    assert!(code == 0 && out.contains("kept alive"), "{out}");
    // A key on the other shard cannot carry it.
    let shard_of = |k: &[u8]| corekv_client::placement::shard_for_key(k, 2);
    let other =
        (0..100).map(|i| format!("k{i}")).find(|k| shard_of(k.as_bytes()) != shard_of(b"{svc}x"));
    let other = other.expect("some key on the other shard");
    let (code, _, err) = cluster.ctl(&["put", &other, "v", "--lease", &id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must be on its shard"), "{err}");
    let (code, out, _) = cluster.ctl(&["lease", "revoke", &id]);
    assert!(code == 0 && out.contains("1 keys deleted"), "{out}");
    let (code, _, _) = cluster.ctl(&["get", "{svc}x"]);
    assert_eq!(code, 1, "the key went with the lease");
    let (code, _, err) = cluster.ctl(&["lease", "ttl", &id]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = cluster.ctl(&["lease", "revoke", &id]);
    assert!(code == 1 && err.contains("not found"), "{err}");
    let (code, _, err) = cluster.ctl(&["lease", "revoke", "nothex"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cluster.ctl(&["lease", "grant", "1s"]);
    assert!(code == 2 && err.contains("from 2000 ms"), "{err}");
}
