//! Watches with real processes and the real client: watchers follow writers through leader
//! SIGKILLs and miss, repeat and reorder nothing; a watcher whose client is SIGSTOPped past
//! its byte budget catches up after SIGCONT; one stopped past the history's retention is told
//! to list again, and `list_and_watch` lists and follows without losing a change.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{corekvctl_bin, TestCluster};
use corekv_client::watch::{ChangeKind, WatchEvent};
use corekv_client::{Client, KeyMeta, ScanOptions, ScanRange, Watch, WatchMessage, WatchSpec};
use corekv_types::ids::{NodeId, ShardId};
use futures_util::StreamExt;

/// What a key holds: its value and metadata.
type State = BTreeMap<Vec<u8>, (Vec<u8>, KeyMeta)>;

/// An acknowledged put: the key, its mod index, the value.
type Acked = (Vec<u8>, u64, Vec<u8>);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Follows `spec` in the background, recording every event.
fn record(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    spec: WatchSpec,
) -> Arc<Mutex<Vec<WatchEvent>>> {
    let _runtime = rt.enter();
    collect(rt, client.watch(spec).expect("a valid watch"))
}

/// Reads `watch` in the background, recording every event.
fn collect(rt: &tokio::runtime::Runtime, mut watch: Watch) -> Arc<Mutex<Vec<WatchEvent>>> {
    let events: Arc<Mutex<Vec<WatchEvent>>> = Arc::default();
    let sink = events.clone();
    rt.spawn(async move {
        while let Some(message) = watch.next().await {
            match message.expect("the watch goes on") {
                WatchMessage::Event(event) => sink.lock().unwrap().push(event),
                WatchMessage::Progress { .. } => {}
            }
        }
    });
    events
}

/// Replays `events` onto `state`, checking that they are whole: per shard in rising index
/// order; per key every version after the one before (a put after a delete starting again
/// at version 1, created at its own index), each put's mod index its event's. A missed,
/// repeated or reordered change breaks one of these.
fn replay(state: &mut State, events: &[WatchEvent]) -> Result<(), String> {
    let mut last_index: BTreeMap<u32, u64> = BTreeMap::new();
    for event in events {
        let last = last_index.entry(event.shard.get()).or_insert(0);
        if event.index <= *last {
            return Err(format!("shard {} index {} after {}", event.shard, event.index, last));
        }
        *last = event.index;
        for change in event.changes.iter() {
            let before = state.get(&change.key).map(|(_, meta)| *meta);
            match (change.kind, &change.value) {
                (ChangeKind::Put, Some(value)) => {
                    let meta = value.meta;
                    let expected = match before {
                        Some(b) => (b.create_index, b.version + 1),
                        None => (event.index, 1),
                    };
                    if (meta.create_index, meta.version) != expected
                        || meta.mod_index != event.index
                    {
                        return Err(format!(
                            "{}: {meta:?} at {} after {before:?}",
                            String::from_utf8_lossy(&change.key),
                            event.index
                        ));
                    }
                    state.insert(change.key.clone(), (value.value.clone(), meta));
                }
                _ => {
                    if state.remove(&change.key).is_none() {
                        return Err(format!(
                            "{}: deleted at {} but not known",
                            String::from_utf8_lossy(&change.key),
                            event.index
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every key with `prefix` now, linearizably.
async fn listing(client: &Client, prefix: &str) -> State {
    let options = ScanOptions { limit: 1000, ..Default::default() };
    let mut stream = std::pin::pin!(client.scan_stream(ScanRange::prefix(prefix), options));
    let mut state = State::new();
    while let Some(entry) = stream.next().await {
        let entry = entry.expect("scan");
        state.insert(entry.key, (entry.value, entry.meta));
    }
    state
}

/// Waits until replaying what `events` holds gives `want`.
fn wait_replayed(events: &Mutex<Vec<WatchEvent>>, start: &State, want: &State, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut state = start.clone();
        let replayed = replay(&mut state, &events.lock().unwrap());
        if let Err(broken) = replayed {
            panic!("{what}: {broken}");
        }
        if state == *want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {} keys differ", differ(&state, want));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn differ(a: &State, b: &State) -> usize {
    let keys: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).count()
}

/// Writers putting (and now and then deleting) keys `{prefix}{00..keys}` until `stop`;
/// returns every acknowledged put: (key, mod index, value).
fn writers(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    prefix: &str,
    keys: u64,
    value_bytes: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Acked>>> {
    (0..3u64)
        .map(|writer| {
            let (client, stop, prefix) = (client.clone(), stop.clone(), prefix.to_string());
            rt.spawn(async move {
                let mut acked = Vec::new();
                let mut n = writer * 7919;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let key = format!("{prefix}{:02}", (n >> 33) % keys).into_bytes();
                    if (n >> 20) % 10 == 0 {
                        let _ = client.delete(key.clone()).await;
                        continue;
                    }
                    let mut value = format!("{writer}-{n}-").into_bytes();
                    value.resize(value_bytes.max(value.len()), b'.');
                    if let Ok(meta) = client.put(key.clone(), value.clone()).await {
                        acked.push((key, meta.mod_index, value));
                    }
                }
                acked
            })
        })
        .collect()
}

// Shows: a watcher on a prefix across both shards and watchers on single keys, with writers
// running and each shard's leader SIGKILLed and restarted in turn, end up with exactly the
// committed changes: every acknowledged put at its index, every key's versions whole and in
// order, and replaying the events gives the final listing.
#[test]
fn watchers_miss_and_repeat_nothing_through_leader_kills() {
    let mut cluster = TestCluster::start(3, 2);
    let rt = runtime();
    let client = cluster.client();
    let prefix = record(&rt, &client, WatchSpec::prefix("w/"));
    let single: Vec<(&str, _)> = ["w/03", "w/07"]
        .into_iter()
        .map(|k| (k, record(&rt, &client, WatchSpec::key(k))))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&rt, &client, "w/", 20, 100, &stop);
    for round in 0..4u32 {
        std::thread::sleep(Duration::from_millis(1500));
        let leader = cluster.leader_of(round % 2);
        cluster.kill(leader);
        std::thread::sleep(Duration::from_millis(1500));
        cluster.restart(leader);
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<_> = writing.into_iter().flat_map(|w| rt.block_on(w).unwrap()).collect();
    assert!(acked.len() > 200, "the writers kept writing through the kills ({})", acked.len());

    let want = rt.block_on(listing(&client, "w/"));
    wait_replayed(&prefix, &State::new(), &want, "the prefix watcher");
    let events = prefix.lock().unwrap().clone();
    let seen: std::collections::HashSet<Acked> = events
        .iter()
        .flat_map(|e| {
            e.changes
                .iter()
                .filter_map(|c| c.value.as_ref())
                .map(|v| (v.key.clone(), e.index, v.value.clone()))
        })
        .collect();
    for put in &acked {
        assert!(
            seen.contains(put),
            "acknowledged put of {} at {} not seen",
            String::from_utf8_lossy(&put.0),
            put.1
        );
    }
    for (key, events) in single {
        let only: State = want
            .iter()
            .filter(|(k, _)| k.as_slice() == key.as_bytes())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        wait_replayed(&events, &State::new(), &only, key);
        let changes_of = |events: &[WatchEvent]| -> Vec<(u64, Vec<u8>)> {
            events
                .iter()
                .flat_map(|e| {
                    let matching = e.changes.iter().filter(|c| c.key == key.as_bytes());
                    matching.map(|c| {
                        (e.index, c.value.as_ref().map(|v| v.value.clone()).unwrap_or_default())
                    })
                })
                .collect()
        };
        let mine = changes_of(&events.lock().unwrap());
        let from_prefix = changes_of(&prefix.lock().unwrap());
        let first_difference = mine.iter().zip(&from_prefix).position(|(a, b)| a != b);
        assert!(
            mine.len() == from_prefix.len() && first_difference.is_none(),
            "{key}: {} changes, the prefix watcher saw {}; first difference at {first_difference:?}",
            mine.len(),
            from_prefix.len()
        );
    }
}

/// `corekvctl watch --prefix PREFIX -o json --progress 100ms` with its output going to a
/// file (read with [`watch_lines`]).
fn ctl_watch(cluster: &TestCluster, prefix: &str) -> (Child, std::path::PathBuf) {
    let out = cluster.dir.path().join(format!("watch-{}.jsonl", prefix.trim_end_matches('/')));
    let child = Command::new(corekvctl_bin())
        .args(["--registry", cluster.registry_path.to_str().unwrap(), "-o", "json"])
        .args(["watch", prefix, "--prefix", "--progress", "100ms"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start corekvctl watch");
    (child, out)
}

/// The changes `corekvctl watch -o json` printed, as events (one per line).
fn watch_lines(path: &std::path::Path) -> Vec<WatchEvent> {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap()
    };
    let file = std::fs::File::open(path).unwrap();
    let mut events = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { break };
        let Some(kind) = v["kind"].as_str() else { continue };
        let index = v["index"].as_u64().unwrap();
        let key = b64(&v["key"]);
        let value = (kind == "put").then(|| corekv_client::KeyValue {
            key: key.clone(),
            value: b64(&v["value"]),
            meta: KeyMeta {
                create_index: v["create_index"].as_u64().unwrap(),
                mod_index: index,
                version: v["version"].as_u64().unwrap(),
            },
            ttl: None,
            lease: None,
        });
        let change = corekv_client::watch::Change {
            kind: if kind == "put" { ChangeKind::Put } else { ChangeKind::Delete },
            key,
            value,
            prev: None,
            expired: v["expired"].as_bool().unwrap_or(false),
        };
        let shard = corekv_client::ShardId(v["shard"].as_u64().unwrap() as u32);
        match events.last_mut() {
            Some(WatchEvent { shard: s, index: i, changes }) if *s == shard && *i == index => {
                let mut more = changes.to_vec();
                more.push(change);
                *changes = more.into();
            }
            _ => events.push(WatchEvent { shard, index, changes: vec![change].into() }),
        }
    }
    events
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signalling a child process this test started and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Sums a metric over the live nodes.
fn metric_sum(cluster: &TestCluster, name: &str) -> f64 {
    cluster.live_nodes().iter().filter_map(|&n| cluster.metric(n, name)).sum()
}

// Shows: a `corekvctl watch` SIGSTOPped while 30 MB of changes are written is switched to
// catching up on the server (which queues no more than its budget for it), and after SIGCONT
// prints every change, whole and in order, ending at the final listing.
#[test]
fn a_paused_watcher_catches_up_after_sigcont() {
    let cluster = TestCluster::start(3, 1);
    let rt = runtime();
    let client = cluster.client();
    let (mut child, out) = ctl_watch(&cluster, "p/");
    cluster.wait_until(Duration::from_secs(10), "the watch to start", || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 0)
    });
    signal(&child, libc::SIGSTOP);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&rt, &client, "p/", 100, 16 * 1024, &stop);
    let leader = cluster.leader_of(0);
    let mut queued_max = 0.0f64;
    cluster.wait_until(
        Duration::from_secs(60),
        "30 MB written and the watcher catching up",
        || {
            let queued = cluster.metric(leader, "corekv_watch_queued_bytes").unwrap_or(0.0);
            queued_max = queued_max.max(queued);
            cluster.metric(leader, "corekv_watch_history_written_bytes_total").unwrap_or(0.0) > 30e6
                && metric_sum(&cluster, "corekv_watch_catch_ups_total") >= 1.0
        },
    );
    stop.store(true, Ordering::Relaxed);
    for w in writing {
        rt.block_on(w).unwrap();
    }
    assert!(queued_max <= (1 << 20) as f64 + 64.0 * 1024.0, "{queued_max} bytes queued for it");
    signal(&child, libc::SIGCONT);
    let want = rt.block_on(listing(&client, "p/"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut state = State::new();
        replay(&mut state, &watch_lines(&out)).expect("whole and in order");
        if state == want {
            break;
        }
        assert!(Instant::now() < deadline, "{} keys differ after SIGCONT", differ(&state, &want));
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// Shows: a `corekvctl watch` SIGSTOPped while the history moves past its position (a
// retention of 1 MiB) exits with status 1 after SIGCONT, saying to list again; a
// `list_and_watch` then lists consistently and follows, and the listing plus its events give
// the final state while writers kept writing.
#[test]
fn a_watcher_past_the_retention_is_told_to_list_again() {
    let mut cluster = TestCluster::prepare(3, 1, &["--wal-segment-mib", "16"]);
    cluster.add_to_registry(
        "[watch]\nhistory_min_entries = 0\nhistory_min_mib = 0\nhistory_min_minutes = 0\n\
         history_max_mib = 1",
    );
    cluster.launch();
    let rt = runtime();
    let client = cluster.client();
    let (mut child, out) = ctl_watch(&cluster, "q/");
    cluster.wait_until(Duration::from_secs(10), "the watch to start", || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 0)
    });
    signal(&child, libc::SIGSTOP);
    let start_index = cluster.shard_number(cluster.leader_of(0), 0, "applied_index").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&rt, &client, "q/", 50, 64 * 1024, &stop);
    cluster.wait_until(Duration::from_secs(90), "the history to move past the watcher", || {
        (1..=3).all(|n| {
            cluster.metric(n, "corekv_watch_history_first_index").unwrap_or(0.0)
                > start_index as f64
        })
    });
    signal(&child, libc::SIGCONT);
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("list again"), "{stderr}");

    // List and follow while the writers go on.
    let spec = WatchSpec::prefix("q/");
    let (listed, watch) = rt.block_on(client.list_and_watch("q/", spec)).expect("listed");
    let events = collect(&rt, watch);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writing {
        rt.block_on(w).unwrap();
    }
    let start: State = listed.entries.into_iter().map(|e| (e.key, (e.value, e.meta))).collect();
    let want = rt.block_on(listing(&client, "q/"));
    wait_replayed(&events, &start, &want, "the listing and its watch");
    assert!(!events.lock().unwrap().is_empty(), "changes came after the listing");
}

// Shows: a listing of more keys than one scan page takes on each of two shards (its pages
// read at different indexes), taken while writers overwrite its keys, is each shard's state
// at one index: the listing plus the events after it give the final state.
#[test]
fn a_listing_of_many_pages_per_shard_is_one_state() {
    let cluster = TestCluster::start(3, 2);
    let rt = runtime();
    let client = cluster.client();
    let keys: u64 = 30_000;
    rt.block_on(async {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(2_000) {
            let items: Vec<(String, Vec<u8>)> =
                chunk.iter().map(|i| (format!("pages/{i:02}"), b"first".to_vec())).collect();
            client.batch_put(&items, Default::default()).await.expect("loaded");
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Small keys and values: the writers change keys while the pages are read.
    let writing = writers(&rt, &client, "pages/", keys, 8, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let (listed, watch) =
        rt.block_on(client.list_and_watch("pages/", WatchSpec::prefix("pages/"))).expect("listed");
    assert!(listed.entries.len() > 20_000, "{} keys listed", listed.entries.len());
    let events = collect(&rt, watch);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in writing {
        rt.block_on(w).unwrap();
    }
    let start: State = listed.entries.into_iter().map(|e| (e.key, (e.value, e.meta))).collect();
    let want = rt.block_on(listing(&client, "pages/"));
    wait_replayed(&events, &start, &want, "the listing and its watch");
}

/// Waits until every one of `watches` recorded at least `n` events.
fn wait_all_got(watches: &[Arc<Mutex<Vec<WatchEvent>>>], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = watches.iter().filter(|w| w.lock().unwrap().len() >= n).count();
        if got == watches.len() {
            return;
        }
        assert!(Instant::now() < deadline, "{got} of {} watches got change {n}", watches.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Shows: one client running more watches on a node and shard than a node takes on one
// connection (1,024) opens another — and no more: the watches started together share the
// connections (one request connection and two watch connections in all) — and every watch
// gets the change.
#[test]
fn a_client_runs_more_watches_than_one_connection_takes() {
    let cluster = TestCluster::start(1, 1);
    let rt = runtime();
    let client = cluster.client();
    let watches: Vec<_> =
        (0..1100).map(|_| record(&rt, &client, WatchSpec::prefix("many/"))).collect();
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(client.put("many/x", "1")).expect("put");
    wait_all_got(&watches, 1);
    let connections = cluster.metric(1, "corekv_client_connections").expect("metrics");
    assert_eq!(connections, 3.0, "1,100 watches started together: two watch connections");
}

// Shows: 300 watches that end together at a leadership transfer resume at the new leader on
// one connection, not one each, and miss nothing.
#[test]
fn watches_resuming_together_at_a_new_leader_share_one_connection() {
    let cluster = TestCluster::start(3, 1);
    let rt = runtime();
    let client = cluster.client();
    let watches: Vec<_> = (0..300).map(|_| record(&rt, &client, WatchSpec::prefix("r/"))).collect();
    let old = cluster.leader_of(0);
    cluster.wait_until(Duration::from_secs(20), "the watches to start", || {
        cluster.metric(old, "corekv_watches") == Some(300.0)
    });
    rt.block_on(client.put("r/1", "1")).expect("put");
    wait_all_got(&watches, 1);
    let new = if old == 1 { 2 } else { 1 };
    rt.block_on(client.transfer_leader(ShardId(0), NodeId(new))).expect("transfer");
    rt.block_on(client.put("r/2", "2")).expect("put after the transfer");
    wait_all_got(&watches, 2);
    for watch in &watches {
        let events = watch.lock().unwrap();
        let keys: Vec<&[u8]> =
            events.iter().flat_map(|e| e.changes.iter()).map(|c| &c.key[..]).collect();
        assert_eq!(keys, [&b"r/1"[..], b"r/2"], "each change once, in order");
    }
    // The watch connection, and the request connection of the put.
    let connections = cluster.metric(new, "corekv_client_connections").expect("metrics");
    assert!(connections <= 2.0, "{connections} client connections on the new leader");
}
