//! Online backup and restore on real processes: `corekvctl backup save` on a cluster under
//! writes, `corekvctl backup verify`, `corekv restore` into a new cluster, and every way a
//! backup or a restore can be refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{corekv_bin, corekvctl_bin, TestCluster};
use corekv_client::watch::ChangeKind;
use corekv_client::{Client, Cursor, KeyMeta, ScanOptions, ScanRange, ShardId, WatchMessage};
use corekv_client::{WatchSpec, WriteOptions};
use futures_util::StreamExt;

/// Snapshots every 300 entries: the leaders have older snapshots and compacted logs.
const SMALL: &[&str] = &["--snapshot-entries", "300", "--wal-segment-mib", "16"];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `corekvctl` with `registry` and `args`: exit code, stdout, stderr.
fn ctl(registry: &Path, args: &[&str]) -> (i32, String, String) {
    let output =
        Command::new(corekvctl_bin()).arg("--registry").arg(registry).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// `corekv restore` of node `node` of `cluster` from `backup`: exit code, stdout, stderr.
fn restore(backup: &Path, cluster: &TestCluster, node: u64) -> (i32, String, String) {
    restore_with(backup, &cluster.registry_path, node, &cluster.data_dir(node))
}

/// `corekv restore` with these flags: exit code, stdout, stderr.
fn restore_with(backup: &Path, registry: &Path, node: u64, data: &Path) -> (i32, String, String) {
    let output = Command::new(corekv_bin())
        .arg("restore")
        .arg("--backup")
        .arg(backup)
        .arg("--registry")
        .arg(registry)
        .args(["--node-id", &node.to_string(), "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The per-shard `field` (index, term) a backup's manifest records.
fn backup_field(dir: &Path, field: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = manifest["files"].as_array().unwrap();
    files.iter().map(|f| f[field].as_u64().unwrap()).collect()
}

/// Every key of the cluster with its value and metadata.
async fn everything(client: &Client) -> BTreeMap<Vec<u8>, (Vec<u8>, KeyMeta)> {
    let options = ScanOptions { limit: 1000, ..Default::default() };
    let mut stream = std::pin::pin!(client.scan_stream(ScanRange::All, options));
    let mut all = BTreeMap::new();
    while let Some(entry) = stream.next().await {
        let entry = entry.unwrap();
        all.insert(entry.key, (entry.value, entry.meta));
    }
    all
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    key: Vec<u8>,
    value: Vec<u8>,
    shard: ShardId,
    meta: KeyMeta,
}

/// Loads `count` keys of `value_bytes` each in batches; returns the acknowledged writes.
async fn preload(client: &Client, count: usize, value_bytes: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    for start in (0..count).step_by(500) {
        let items: Vec<(String, Vec<u8>)> = (start..(start + 500).min(count))
            .map(|i| (format!("pre-{i:06}"), vec![b'a' + (i % 26) as u8; value_bytes]))
            .collect();
        let metas = client.batch_put(&items, WriteOptions::default()).await.unwrap();
        for ((key, value), meta) in items.into_iter().zip(metas) {
            let shard = client.shard_of(key.as_bytes());
            acked.push(Acked { key: key.into_bytes(), value, shard, meta });
        }
    }
    acked
}

// Shows: a backup taken by `corekvctl backup save` while four writers run — writes keep
// being acknowledged during it — holds exactly the writes its per-shard indexes cover: a new
// 3-node cluster restored from it by `corekv restore` holds every key whose last covered
// write it names, with that write's value, version and mod index, and no other key; a watch
// on the old cluster from the backup's cursor yields exactly the writes after it; the new
// cluster elects leaders in terms past the backup's (a replica's term is never below its
// last entry's) and takes writes, its log going on from the backup's indexes.
#[test]
fn a_backup_taken_under_writes_restores_exactly_what_its_indexes_cover() {
    let old = TestCluster::start_with(3, 2, SMALL);
    let rt = runtime();
    let client = old.client();
    // About 12 MiB, so the streams (at 8 MiB/s per shard) last long enough to write during.
    let mut history = rt.block_on(preload(&client, 12_000, 1000));
    // A leadership transfer puts shard 0 in a later term: a restored cluster starts past it.
    let to = if old.leader_of(0) == 1 { 2 } else { 1 };
    rt.block_on(client.transfer_leader(ShardId(0), corekv_client::NodeId(to))).unwrap();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{:02}", n % 40);
                    let value = format!("{w}-{n}");
                    n += 1;
                    let meta = client.put(&key, &value).await.expect("no write fails");
                    let shard = client.shard_of(key.as_bytes());
                    let write = Acked { key: key.into_bytes(), value: value.into(), shard, meta };
                    acked.lock().unwrap().push(write);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = acked.lock().unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let began = Instant::now();
    let (code, out, err) = ctl(
        &old.registry_path,
        &["-o", "json", "backup", "save", backup.to_str().unwrap(), "--rate-mib", "8"],
    );
    let took = began.elapsed();
    assert_eq!(code, 0, "backup save: {out}{err}");
    let during = acked.lock().unwrap().len() - before;
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        rt.block_on(writer).unwrap();
    }
    let writes_per_sec = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "writes/s before the backup {:.0}, during it {:.0} ({during} in {took:?})",
        writes_per_sec(before, Duration::from_secs(2)),
        writes_per_sec(during, took)
    );
    assert!(during > 0, "writes were acknowledged while the backup ran");
    assert!(err.contains("backup: shard 0:") && err.contains("MiB"), "progress on stderr: {err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let indexes = backup_field(&backup, "index");
    let terms = backup_field(&backup, "term");
    let cursor_text = summary["cursor"].as_str().unwrap();
    let expected_cursor = format!("0:{},1:{}", indexes[0] + 1, indexes[1] + 1);
    assert_eq!(cursor_text, expected_cursor);
    let (code, out, err) = ctl(&old.registry_path, &["backup", "verify", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "backup verify: {out}{err}");

    history.extend(acked.lock().unwrap().iter().cloned());
    // What the backup must hold: per key, its last write at or before its shard's index.
    let mut expected: BTreeMap<Vec<u8>, (Vec<u8>, KeyMeta)> = BTreeMap::new();
    for write in &history {
        if write.meta.mod_index <= indexes[write.shard.get() as usize] {
            let newer =
                expected.get(&write.key).is_none_or(|(_, m)| m.mod_index < write.meta.mod_index);
            if newer {
                expected.insert(write.key.clone(), (write.value.clone(), write.meta));
            }
        }
    }
    assert!(expected.len() > 12_000, "the writers' keys are in the backup too");
    assert!(
        history.iter().any(|w| w.meta.mod_index > indexes[w.shard.get() as usize]),
        "some writes came after the backup's indexes"
    );

    // A watch from the backup's cursor yields exactly the writes after it.
    let cursor: Cursor = cursor_text.parse().unwrap();
    let after: BTreeMap<(Vec<u8>, u64), Vec<u8>> = history
        .iter()
        .filter(|w| w.meta.mod_index > indexes[w.shard.get() as usize])
        .map(|w| ((w.key.clone(), w.meta.mod_index), w.value.clone()))
        .collect();
    let watched = rt.block_on(watch_until(&client, cursor, after.len()));
    assert_eq!(watched, after, "the watch from the cursor continues exactly after the backup");

    // A new cluster, restored from it.
    let mut new = TestCluster::prepare(3, 2, SMALL);
    for node in 1..=3 {
        let (code, out, err) = restore(&backup, &new, node);
        assert_eq!(code, 0, "restore node {node}: {out}{err}");
        assert!(out.contains("through index"), "{out}");
    }
    new.launch();
    assert!(terms[0] >= 2, "shard 0's term moved on with the transfer: {terms:?}");
    for shard in 0..2u32 {
        let leader = new.leader_of(shard);
        let term = new.shard_number(leader, shard, "term").unwrap();
        assert!(term > terms[shard as usize], "shard {shard}: term {term} after {terms:?}");
    }
    let restored_client = new.client();
    let restored = rt.block_on(everything(&restored_client));
    assert_eq!(restored.len(), expected.len(), "the restored cluster's key count");
    for (key, (value, meta)) in &expected {
        let Some((got, got_meta)) = restored.get(key) else {
            panic!("{} missing after the restore", String::from_utf8_lossy(key));
        };
        assert_eq!(got, value, "{}", String::from_utf8_lossy(key));
        assert_eq!(
            (got_meta.version, got_meta.mod_index, got_meta.create_index),
            (meta.version, meta.mod_index, meta.create_index),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    let meta = rt.block_on(restored_client.put("w0-00", "after the restore")).unwrap();
    let shard = restored_client.shard_of(b"w0-00").get() as usize;
    assert!(meta.mod_index > indexes[shard], "the restored log goes on from the backup's index");
}

/// Watches every writer key from `cursor` until `count` changes came; returns them by
/// `(key, mod index)`.
async fn watch_until(
    client: &Client,
    cursor: Cursor,
    count: usize,
) -> BTreeMap<(Vec<u8>, u64), Vec<u8>> {
    let mut watch = client.watch(WatchSpec::prefix("w").from(cursor)).unwrap();
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < count {
        let message = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("the watch delivers every write after the backup in time")
            .expect("the watch goes on")
            .unwrap();
        let WatchMessage::Event(event) = message else { continue };
        for change in event.changes.iter() {
            assert_eq!(change.kind, ChangeKind::Put);
            let value = change.value.as_ref().unwrap().value.clone();
            assert!(seen.insert((change.key.clone(), event.index), value).is_none());
        }
    }
    seen
}

/// Copies the backup in `from` to a new directory `to`.
fn copy_backup(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Asserts that `verify` and `restore` both refuse the backup in `dir`, naming `file` and
/// `reason`, and that the refused restore wrote nothing.
fn assert_refused(dir: &Path, target: &TestCluster, file: &str, reason: &str) {
    let (code, out, err) = ctl(&target.registry_path, &["backup", "verify", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "verify of a backup with a bad {file}: {out}{err}");
    assert!(err.contains(file) && err.contains(reason), "verify names {file} and {reason}: {err}");
    let (code, out, err) = restore(dir, target, 1);
    assert_eq!(code, 2, "restore from a backup with a bad {file}: {out}{err}");
    assert!(err.contains(file) && err.contains(reason), "restore names {file} and {reason}: {err}");
    assert!(!target.data_dir(1).exists(), "a refused restore writes nothing");
}

// Shows: a backup that is truncated, has a flipped byte, or never finished (its save was
// SIGKILLed mid-stream: no manifest) is refused by `verify` and by `restore` with the file
// and the reason, and nothing is written; `save` refuses a directory that is not empty;
// `restore` refuses a registry of another shard count, the backup's own cluster name
// (unless told), a node not in the registry, and a data directory that holds anything.
#[test]
fn damaged_backups_and_wrong_targets_are_refused() {
    let cluster = TestCluster::start_with(1, 2, &[]);
    let rt = runtime();
    let client = cluster.client();
    rt.block_on(preload(&client, 6_000, 1000));
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let (code, out, err) = ctl(&cluster.registry_path, &["backup", "save", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cursor 0:"), "the summary names the cursor: {out}");
    let (code, out, err) = ctl(&cluster.registry_path, &["backup", "save", good.to_str().unwrap()]);
    assert_eq!(code, 2, "a second save into the same directory: {out}{err}");
    assert!(err.contains("not empty"), "{err}");
    let target = TestCluster::prepare(1, 2, &[]);

    let truncated = dir.path().join("truncated");
    copy_backup(&good, &truncated);
    let file =
        std::fs::OpenOptions::new().write(true).open(truncated.join("shard-1.snap")).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 1000).unwrap();
    assert_refused(&truncated, &target, "shard-1.snap", "truncated");

    let flipped = dir.path().join("flipped");
    copy_backup(&good, &flipped);
    let path = flipped.join("shard-0.snap");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert_refused(&flipped, &target, "shard-0.snap", "checksum mismatch");

    // A save killed mid-stream (1 MiB/s: each shard's 3 MiB take seconds).
    let killed = dir.path().join("killed");
    let mut save = Command::new(corekvctl_bin())
        .arg("--registry")
        .arg(&cluster.registry_path)
        .args(["backup", "save", killed.to_str().unwrap(), "--rate-mib", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    save.kill().unwrap();
    save.wait().unwrap();
    let names: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".partial")), "a stream was under way: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".snap")), "no file looks finished: {names:?}");
    assert_refused(&killed, &target, "manifest.json", "did not finish");

    let wider = TestCluster::prepare(1, 3, &[]);
    let (code, out, err) = restore(&good, &wider, 1);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("the backup has 2 shards, the registry says shards = 3"), "{err}");
    let (code, out, err) =
        restore_with(&good, &cluster.registry_path, 1, &dir.path().join("same-name"));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--reuse-cluster-name"), "{err}");
    let (code, out, err) = restore(&good, &target, 7);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("node 7 is not in the registry"), "{err}");
    std::fs::create_dir_all(target.data_dir(1)).unwrap();
    std::fs::write(target.data_dir(1).join("something"), b"x").unwrap();
    let (code, out, err) = restore(&good, &target, 1);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("is not empty"), "{err}");
}
