//! Keys with a time to live, with real processes and the real client: a key is never read
//! after its deadline nor missed before it (checked against the client's own clock with the
//! bound docs/DESIGN.md states), through a leader SIGKILL; expired keys are deleted without
//! another write and watchers see each deletion marked as an expiry; `corekvctl put --ttl`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use corekv_client::watch::ChangeKind;
use corekv_client::{Client, WatchMessage, WatchSpec, WriteOptions};
use futures_util::StreamExt;

/// How much later than its deadline a node may still serve a key, by the client's clock, on
/// one machine (docs/DESIGN.md, "Time"): whole-millisecond rounding of the node's clock.
const ROUNDING: Duration = Duration::from_millis(2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A put with a time to live: when it was sent and acknowledged, by the client's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    sent: Instant,
    acked: Instant,
    ttl: Duration,
}

/// Each key's last acknowledged put, and whether a put of it is under way.
#[derive(Debug, Default)]
struct Puts {
    acked: BTreeMap<Vec<u8>, Written>,
    pending: BTreeMap<Vec<u8>, Instant>,
}

/// A read: when it started and ended, and whether it found the key.
#[derive(Debug, Clone, Copy)]
struct Read {
    started: Instant,
    ended: Instant,
    found: bool,
}

// Shows: while writers put keys with times to live of 150–600 ms and readers read them in a
// loop, and the leader of shard 0 is SIGKILLed halfway, no read that started at least
// ROUNDING after a put's acknowledgement plus its time to live finds the key, and no read that
// ended ROUNDING before its send plus its time to live (and started after the acknowledgement)
// misses it; afterwards every key is gone without another write, the watchers saw every
// delete marked as an expiry (a key expires between rounds), and the nodes counted them.
#[test]
fn keys_are_never_read_past_their_deadline() {
    let mut cluster = TestCluster::start(3, 2);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let keys: Vec<Vec<u8>> = (0..120).map(|i| format!("ttl/{i:03}").into_bytes()).collect();

    let expired: Arc<Mutex<BTreeMap<Vec<u8>, usize>>> = Arc::default();
    let watch = {
        let _runtime = rt.enter();
        let mut watch = client.watch(WatchSpec::prefix("ttl/")).unwrap();
        let expired = expired.clone();
        rt.spawn(async move {
            while let Some(Ok(message)) = watch.next().await {
                let WatchMessage::Event(event) = message else { continue };
                for change in event.changes.iter() {
                    if change.kind == ChangeKind::Delete {
                        assert!(change.expired, "only expiries delete these keys");
                        *expired.lock().unwrap().entry(change.key.clone()).or_default() += 1;
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let written: Arc<Mutex<Puts>> = Arc::default();
    let reads: Arc<Mutex<Vec<(Written, Read)>>> = Arc::default();
    let writers = keys.chunks(40).map(|chunk| {
        let (client, written, chunk) = (client.clone(), written.clone(), chunk.to_vec());
        rt.spawn(async move { write_all(&client, &written, &chunk).await })
    });
    let writers: Vec<_> = writers.collect();
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (client, written, reads) = (client.clone(), written.clone(), reads.clone());
            let keys = keys.clone();
            rt.spawn(async move { read_loop(r, &client, &written, &reads, &keys).await })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));
    let leader = cluster.leader_of(0);
    cluster.kill(leader);
    rt.block_on(async {
        for writer in writers {
            writer.await.unwrap();
        }
        for reader in readers {
            reader.await.unwrap();
        }
    });

    let reads = reads.lock().unwrap().clone();
    let (mut late, mut early, mut gone) = (Vec::new(), Vec::new(), 0);
    for (w, read) in &reads {
        if read.found && read.started >= w.acked + w.ttl + ROUNDING {
            late.push(read.started - (w.acked + w.ttl));
        }
        let due = w.sent + w.ttl;
        if !read.found && read.ended + ROUNDING <= due {
            early.push(due - read.ended);
        }
        gone += usize::from(!read.found);
    }
    assert!(
        reads.len() > 1_000 && gone > 100,
        "{} reads checked, {gone} found nothing",
        reads.len()
    );
    assert!(late.is_empty(), "read past the deadline: {late:?}");
    assert!(early.is_empty(), "missing before the deadline: {early:?}");

    // Every key goes without another write; the watch saw each go once, as an expiry.
    cluster.wait_until(Duration::from_secs(20), "every key expired", || {
        rt.block_on(
            client.scan(&corekv_client::ScanRange::Prefix(b"ttl/".to_vec()), &Default::default()),
        )
        .is_ok_and(|page| page.entries.is_empty())
            && expired.lock().unwrap().len() == keys.len()
    });
    let total: usize = expired.lock().unwrap().values().sum();
    assert!(total >= 3 * keys.len(), "keys expire in each round: {total} expiries seen");
    let live = cluster.live_nodes();
    for node in &live {
        cluster.wait_until(Duration::from_secs(10), "the replicas deleted them", || {
            let shard = client.shard_of(&keys[0]).get();
            cluster.replica_value(*node, shard, &keys[0]).is_none()
                && cluster.metric(*node, "corekv_timed_keys").is_some_and(|n| n == 0.0)
        });
    }
    let counted: f64 =
        live.iter().filter_map(|n| cluster.metric(*n, "corekv_expired_keys_total")).sum();
    assert!(counted >= keys.len() as f64, "expiries counted: {counted}");
    watch.abort();
}

/// Puts each key of `keys` with a time to live of 150–600 ms, a round every 800 ms for 3 s
/// (so keys expire between rounds), noting each put under way and each acknowledged.
async fn write_all(client: &Client, puts: &Mutex<Puts>, keys: &[Vec<u8>]) {
    let start = Instant::now();
    let mut round = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        let round_start = Instant::now();
        for (i, key) in keys.iter().enumerate() {
            let ttl = Duration::from_millis(150 + ((i as u64 * 37 + round * 11) % 450));
            let sent = Instant::now();
            puts.lock().unwrap().pending.insert(key.clone(), sent);
            let options = WriteOptions {
                ttl: Some(ttl),
                timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            };
            let result = client.put_with(key, b"v", options).await;
            let acked = Instant::now();
            let mut puts = puts.lock().unwrap();
            puts.pending.remove(key);
            match result {
                Ok(_) => puts.acked.insert(key.clone(), Written { sent, acked, ttl }),
                // Across the leader's SIGKILL a put's outcome may be unknown: the key is left
                // out of the checks until its next put.
                Err(_) => puts.acked.remove(key),
            };
        }
        round += 1;
        tokio::time::sleep_until((round_start + Duration::from_millis(800)).into()).await;
    }
}

/// Reads the keys in turn until 4.5 s passed, noting each read with the put it follows; a
/// read that a put of its key overlapped (under way when it started or ended, or
/// acknowledged meanwhile) is left out.
async fn read_loop(
    first: usize,
    client: &Client,
    puts: &Mutex<Puts>,
    reads: &Mutex<Vec<(Written, Read)>>,
    keys: &[Vec<u8>],
) {
    let start = Instant::now();
    let mut i = first;
    while start.elapsed() < Duration::from_millis(4_500) {
        let key = &keys[i % keys.len()];
        i += 7;
        let state = |puts: &Mutex<Puts>| {
            let puts = puts.lock().unwrap();
            (puts.acked.get(key).copied(), puts.pending.contains_key(key))
        };
        let before = state(puts);
        let started = Instant::now();
        let Ok(found) = client.get(key).await else { continue };
        let ended = Instant::now();
        let after = state(puts);
        if let ((Some(put), false), true) = (before, before == after) {
            reads.lock().unwrap().push((put, Read { started, ended, found: found.is_some() }));
        }
    }
}

// Shows: `corekvctl put --ttl` writes a key that reads with its time left (-o json) and is
// gone after it; a malformed or zero --ttl is refused with a clear message and writes nothing.
#[test]
fn corekvctl_put_with_a_ttl() {
    let cluster = TestCluster::start(1, 1);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let (code, _, err) = cluster.ctl(&["put", "--ttl", "1s", "k", "v"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cluster.ctl(&["-o", "json", "get", "k"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ttl = json["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 1_000, "{json}");
    std::thread::sleep(Duration::from_millis(1_100));
    let (code, _, err) = cluster.ctl(&["get", "k"]);
    assert_eq!(code, 1, "gone: {err}");
    for bad in ["0s", "soon", "-5s", "1.5x"] {
        let (code, _, err) = cluster.ctl(&["put", &format!("--ttl={bad}"), "other", "v"]);
        assert_eq!(code, 2, "--ttl {bad}: {err}");
        assert!(err.contains("ttl") || err.contains("duration") || err.contains("zero"), "{err}");
    }
    let (code, _, _) = cluster.ctl(&["get", "other"]);
    assert_eq!(code, 1, "nothing written");
    // A transaction's put with a time to live.
    let txn = r#"{"success": [{"op": "put", "key": "t", "value": "v", "ttl": "5s"}]}"#;
    let file = cluster.data_dir(1).with_extension("txn.json");
    std::fs::write(&file, txn).unwrap();
    let (code, out, err) = cluster.ctl(&["txn", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cluster.ctl(&["-o", "json", "get", "t"]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ttl = json["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 4_000 && ttl <= 5_000, "{json}");
    let bad = r#"{"success": [{"op": "put", "key": "t", "value": "v", "ttl": 5}]}"#;
    std::fs::write(&file, bad).unwrap();
    let (code, _, err) = cluster.ctl(&["txn", file.to_str().unwrap()]);
    assert_eq!(code, 2, "a ttl that is not a duration: {err}");
}

// Shows: reads go by the serving node's clock, not by when the expiry applies: with the
// leader and one follower SIGSTOPped (no expiry can commit, no new leader be elected), the
// other follower's stale reads return a key until its deadline and nothing after it, while it
// still holds it; once the others run again the key is deleted everywhere.
#[test]
fn followers_hide_a_key_past_its_deadline_before_its_expiry_commits() {
    let cluster = TestCluster::start(3, 1);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let options = WriteOptions::with_ttl(Duration::from_millis(1_500));
    let acked = rt.block_on(client.put_with("k", "v", options)).map(|_| Instant::now()).unwrap();
    let (node, stopped) = isolate_a_follower(&cluster, b"k");
    assert!(acked.elapsed() < Duration::from_millis(1_000), "the checks below need time");
    assert_eq!(cluster.replica_value(node, 0, b"k"), Some(b"v".to_vec()), "before");
    std::thread::sleep(
        (acked + Duration::from_millis(1_500) + ROUNDING).duration_since(Instant::now()),
    );
    assert_eq!(cluster.replica_value(node, 0, b"k"), None, "node {node} after the deadline");
    assert_eq!(cluster.shard_number(node, 0, "keys"), Some(1), "not deleted yet");
    for other in stopped {
        cluster.signal(other, libc::SIGCONT);
    }
    for node in cluster.live_nodes() {
        cluster.wait_until(Duration::from_secs(10), "the expiry applied", || {
            cluster.shard_number(node, 0, "keys") == Some(0)
        });
    }
}

/// Waits until every replica of shard 0 applied `key`, then SIGSTOPs its leader and one
/// follower, so that the other follower (returned, with the stopped ones) can neither see an
/// expiry commit nor elect a leader that would propose one.
fn isolate_a_follower(cluster: &TestCluster, key: &[u8]) -> (u64, Vec<u64>) {
    let leader = cluster.leader_of(0);
    let followers: Vec<u64> = cluster.live_nodes().into_iter().filter(|&n| n != leader).collect();
    for &node in &followers {
        cluster.wait_until(Duration::from_secs(5), "the follower applied the write", || {
            cluster.replica_value(node, 0, key).is_some()
        });
    }
    let stopped = vec![leader, followers[1]];
    for &node in &stopped {
        cluster.signal(node, libc::SIGSTOP);
    }
    (followers[0], stopped)
}

// Shows: a scan over keys past their deadline whose expiry cannot commit (the leader and a
// follower SIGSTOPped) costs the other follower a bounded amount per request: its first page of a prefix
// holding 25,000 such keys comes back empty with where to go on, and following the
// continuations reaches the live keys, and nothing else; the client's stale scan stream
// gives the same.
#[test]
fn scans_pass_over_keys_past_their_deadline_a_bounded_number_at_a_time() {
    use corekv_proto::client::Consistency;
    use corekv_proto::encode::{RequestEncoder, ScanSpec};
    use corekv_proto::frame::verify_reply;

    let cluster = TestCluster::start(3, 1);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let keys: Vec<(String, &[u8])> =
        (0..25_000).map(|i| (format!("many/{i:05}"), &b"v"[..])).collect();
    let options = WriteOptions::with_ttl(Duration::from_secs(4));
    let started = Instant::now();
    rt.block_on(async {
        for chunk in keys.chunks(1_000) {
            client.batch_put(chunk, options).await.unwrap();
        }
        client.put("many/zz-live", "v").await.unwrap();
    });
    assert!(started.elapsed() < Duration::from_secs(3), "the checks below need the keys alive");
    let (node, stopped) = isolate_a_follower(&cluster, b"many/zz-live");
    let last_put = Instant::now();
    std::thread::sleep(
        (last_put + Duration::from_millis(4_100)).saturating_duration_since(Instant::now()),
    );
    {
        let mut conn = cluster.raw(node, 0);
        let mut continuation: Option<Vec<u8>> = None;
        let (mut pages, mut found) = (Vec::new(), Vec::new());
        loop {
            let spec = ScanSpec {
                start: None,
                end: None,
                prefix: Some(b"many/"),
                continuation: continuation.as_deref(),
                limit: 0,
                keys_only: true,
                consistency: Consistency::Stale,
            };
            conn.send(RequestEncoder::new().scan(7, &spec));
            let frame = conn.recv();
            let reply = verify_reply(&frame).unwrap();
            let scan = reply.reply_as_scan_reply().expect("a scan reply");
            pages.push(scan.entries().len());
            found.extend(scan.entries().iter().map(|e| e.key().bytes().to_vec()));
            match scan.continuation() {
                Some(next) => continuation = Some(next.bytes().to_vec()),
                None => break,
            }
        }
        assert_eq!(found, [b"many/zz-live".to_vec()], "node {node}");
        assert_eq!(pages, [0, 0, 1], "node {node}: 10,000 skipped per page at most");
    }
    let stale = corekv_client::ScanOptions {
        consistency: corekv_client::Consistency::Stale,
        ..Default::default()
    };
    let listed: Vec<Vec<u8>> = rt.block_on(async {
        use futures_util::TryStreamExt;
        let range = corekv_client::ScanRange::Prefix(b"many/".to_vec());
        let stream = client.scan_stream(range, stale);
        stream.map_ok(|e| e.key).try_collect().await.unwrap()
    });
    assert_eq!(listed, [b"many/zz-live".to_vec()]);
    for other in stopped {
        cluster.signal(other, libc::SIGCONT);
    }
}
