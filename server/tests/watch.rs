//! Watches with real processes: a watcher on a prefix follows a writer; the shard's leader is
//! SIGKILLed; the watcher resumes at the new leader from the index after the last event it
//! got, and ends up with every acknowledged write exactly once, in log order.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{block_on, RawConn, TestCluster};
use corekv_proto::client::{Reply, WatchScope};
use corekv_proto::encode::{RequestEncoder, WatchSpec};
use corekv_proto::frame::verify_reply;

/// Reads watch frames until the connection closes or `done` holds; records each put's key
/// and log index (in arrival order); returns the index after the last event seen, or where
/// an end said to resume.
fn follow(
    conn: &mut RawConn,
    next: &mut u64,
    seen: &mut Vec<(String, u64)>,
    done: impl Fn(&[(String, u64)]) -> bool,
) {
    while !done(seen) {
        let Some(frame) = conn.try_recv() else { return };
        let reply = verify_reply(&frame).expect("a valid reply");
        match reply.reply_type() {
            Reply::WatchEvents => {
                let events = reply.reply_as_watch_events().unwrap();
                assert!(events.index() >= *next, "events at {} after {}", events.index(), *next);
                for change in events.changes().unwrap() {
                    let key = String::from_utf8(change.key().bytes().to_vec()).unwrap();
                    seen.push((key, events.index()));
                }
                *next = events.index() + 1;
            }
            Reply::WatchProgress => {}
            Reply::WatchEnded => {
                let end = reply.reply_as_watch_ended().unwrap();
                *next = end.next_index();
                return;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

fn watch(cluster: &TestCluster, node: u64, start_index: u64) -> RawConn {
    let mut conn = cluster.raw(node, 0);
    let spec = WatchSpec {
        scope: WatchScope::Prefix,
        key: b"w/",
        range_end: b"",
        start_index,
        prev_value: false,
        progress_ms: 200,
    };
    conn.send(RequestEncoder::new().watch(7, &spec));
    conn
}

// Shows: the watcher's events, put together from the killed leader's stream and the new
// leader's, hold every acknowledged write exactly once, in log order, with nothing from
// outside the prefix.
#[test]
fn a_watch_resumed_at_the_next_leader_misses_and_repeats_nothing() {
    let mut cluster = TestCluster::start(3, 1);
    let leader = cluster.leader_of(0);
    let mut conn = watch(&cluster, leader, 0);
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (cluster.client(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            block_on(async {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w/{i:05}");
                    if let Ok(meta) = client.put(key.clone(), "v").await {
                        acked.lock().unwrap().insert(key, meta.mod_index);
                    }
                    let _ = client.put(format!("other/{i}"), "x").await;
                    i += 1;
                }
            })
        })
    };
    let (mut next, mut seen) = (0u64, Vec::new());
    follow(&mut conn, &mut next, &mut seen, |s| s.len() >= 100);
    cluster.kill(leader);
    follow(&mut conn, &mut next, &mut seen, |_| false);
    assert!(next > 0, "the watcher saw events before the kill");

    let deadline = Instant::now() + Duration::from_secs(20);
    let new_leader = loop {
        match cluster.leader(0) {
            Some(l) if l != leader => break l,
            _ => assert!(Instant::now() < deadline, "no new leader"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut conn = watch(&cluster, new_leader, next);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let want = acked.len();
    follow(&mut conn, &mut next, &mut seen, |s| {
        s.iter().filter(|(k, _)| acked.contains_key(k)).count() >= want
    });

    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, index) in &seen {
        by_key.entry(key).or_default().push(*index);
    }
    assert!(by_key.values().all(|v| v.len() == 1), "no change delivered twice");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "in log order");
    assert!(seen.iter().all(|(k, _)| k.starts_with("w/")), "only the prefix");
    for (key, index) in &acked {
        assert_eq!(by_key.get(key.as_str()), Some(&vec![*index]), "{key} at its index");
    }
    assert!(acked.len() > 100, "the writer kept writing through the kill ({})", acked.len());
}
