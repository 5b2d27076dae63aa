//! The raft log store under raft-rs itself: a 3-node in-process raft group whose nodes keep
//! their logs in real WAL files (flushed with the blocking flusher) elects a leader,
//! replicates, survives restarts of every node with its log and hard state intact, and
//! compacts. Plus the store's own contract: conflicting suffixes, cold reads, compaction and
//! segment retirement.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use corekv_storage::raft_log::RaftLogStore;
use corekv_storage::wal::{RecoveryMode, SegmentDir, SegmentIdentity, StdFlusher};
use raft::eraftpb::{ConfState, Entry, HardState, Message};
use raft::{Config, RawNode, StateRole, Storage};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn identity() -> SegmentIdentity {
    SegmentIdentity { cluster: "raft-test".to_string(), shard: 0 }
}

fn conf_state() -> ConfState {
    ConfState { voters: vec![1, 2, 3], ..Default::default() }
}

fn open_store(dir: &Path) -> (RaftLogStore, StdFlusher) {
    open_store_with(dir, SEGMENT_BYTES)
}

fn open_store_with(dir: &Path, segment_bytes: u64) -> (RaftLogStore, StdFlusher) {
    let segments = SegmentDir::open(dir, identity(), segment_bytes).unwrap();
    let (store, _) = RaftLogStore::open(
        Box::new(segments.clone()),
        identity(),
        segment_bytes,
        conf_state(),
        RecoveryMode::Strict,
    )
    .unwrap();
    (store, StdFlusher::new(segments))
}

fn flush(store: &mut RaftLogStore, flusher: &mut StdFlusher) {
    while let Some(job) = store.take_flush_job() {
        flusher.run(&job).unwrap();
        let done = store.on_flush_complete(job);
        for seq in done.retire {
            flusher.dir().retire(seq).unwrap();
        }
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry { index, term, data: data.to_vec().into(), ..Default::default() }
}

/// One node of the in-process group.
struct Node {
    raw: RawNode<RaftLogStore>,
    flusher: StdFlusher,
    applied: Vec<Vec<u8>>,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn start_node(id: u64, dir: &Path, applied_index: u64) -> Node {
    let (store, flusher) = open_store(dir);
    let config = Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        check_quorum: true,
        pre_vote: true,
        applied: applied_index,
        max_inflight_msgs: 64,
        ..Default::default()
    };
    Node { raw: RawNode::new(&config, store, &logger()).unwrap(), flusher, applied: Vec::new() }
}

/// Drives a ready the way the server does: messages first, then entries and hard state into
/// the WAL, a flush, persisted messages, then committed entries.
fn handle_ready(node: &mut Node, outbox: &mut VecDeque<Message>) {
    if !node.raw.has_ready() {
        return;
    }
    let mut ready = node.raw.ready();
    outbox.extend(ready.take_messages());
    let store = node.raw.mut_store();
    store.append(ready.entries()).unwrap();
    if let Some(hs) = ready.hs() {
        store.set_hard_state(hs).unwrap();
    }
    let committed = ready.take_committed_entries();
    let persisted = ready.take_persisted_messages();
    let number = ready.number();
    node.raw.advance_append_async(ready);
    flush(node.raw.mut_store(), &mut node.flusher);
    outbox.extend(persisted);
    for e in committed {
        if !e.data.is_empty() {
            node.applied.push(e.data.to_vec());
        }
    }
    node.raw.on_persist_ready(number);
}

struct Cluster {
    dirs: HashMap<u64, PathBuf>,
    nodes: HashMap<u64, Node>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = HashMap::new();
        let mut nodes = HashMap::new();
        for id in 1..=3 {
            let dir = tmp.path().join(format!("node-{id}"));
            nodes.insert(id, start_node(id, &dir, 0));
            dirs.insert(id, dir);
        }
        Cluster { dirs, nodes, _tmp: tmp }
    }

    /// Runs until no node has work, delivering every message; ticks when idle if asked.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut outbox = VecDeque::new();
            for id in 1..=3 {
                if let Some(node) = self.nodes.get_mut(&id) {
                    handle_ready(node, &mut outbox);
                }
            }
            if outbox.is_empty() {
                return;
            }
            for message in outbox {
                if let Some(node) = self.nodes.get_mut(&message.to) {
                    let _ = node.raw.step(message);
                }
            }
        }
        panic!("the group did not settle");
    }

    fn tick_until_leader(&mut self) -> u64 {
        for _ in 0..500 {
            for node in self.nodes.values_mut() {
                node.raw.tick();
            }
            self.settle();
            if let Some((&id, _)) =
                self.nodes.iter().find(|(_, n)| n.raw.raft.state == StateRole::Leader)
            {
                return id;
            }
        }
        panic!("no leader elected");
    }

    fn restart(&mut self, id: u64) {
        let applied = 0;
        self.nodes.remove(&id);
        let node = start_node(id, &self.dirs[&id], applied);
        self.nodes.insert(id, node);
    }
}

// Shows: three raft-rs nodes on this storage elect a leader and replicate; after every node
// restarts from its WAL, each has the same log and hard state as before, and the group
// elects again and keeps replicating.
#[test]
fn three_nodes_elect_replicate_restart() {
    let mut cluster = Cluster::new();
    let leader = cluster.tick_until_leader();
    for i in 0..200u32 {
        let data = format!("write-{i}").into_bytes();
        cluster.nodes.get_mut(&leader).unwrap().raw.propose(vec![], data).unwrap();
        if i % 10 == 0 {
            cluster.settle();
        }
    }
    cluster.settle();
    // Heartbeats carry the final commit index to followers.
    for _ in 0..3 {
        for node in cluster.nodes.values_mut() {
            node.raw.tick();
        }
        cluster.settle();
    }
    let expected: Vec<Vec<u8>> = (0..200u32).map(|i| format!("write-{i}").into_bytes()).collect();
    for (id, node) in &cluster.nodes {
        assert_eq!(node.applied, expected, "node {id} applied every write in order");
    }
    let before: HashMap<u64, (u64, HardState, Vec<Entry>)> = cluster
        .nodes
        .iter()
        .map(|(&id, n)| {
            let store = n.raw.store();
            let last = store.last_index().unwrap();
            let entries =
                store.entries(1, last + 1, None, raft::GetEntriesContext::empty(false)).unwrap();
            (id, (last, store.hard_state().clone(), entries))
        })
        .collect();
    assert!(before[&1].0 >= 201, "200 writes plus the leader's empty entry");

    for id in 1..=3 {
        cluster.restart(id);
    }
    for (id, node) in &cluster.nodes {
        let store = node.raw.store();
        let (last, hs, entries) = &before[id];
        assert_eq!(store.last_index().unwrap(), *last, "node {id} kept its log");
        assert_eq!(store.hard_state(), hs, "node {id} kept its hard state");
        let again =
            store.entries(1, last + 1, None, raft::GetEntriesContext::empty(false)).unwrap();
        assert_eq!(&again, entries, "node {id} reads back the same entries");
    }
    let leader = cluster.tick_until_leader();
    cluster.nodes.get_mut(&leader).unwrap().raw.propose(vec![], b"after".to_vec()).unwrap();
    cluster.settle();
    for _ in 0..3 {
        for node in cluster.nodes.values_mut() {
            node.raw.tick();
        }
        cluster.settle();
    }
    for (id, node) in &cluster.nodes {
        // After restart with applied = 0 each node re-applies the whole log.
        assert_eq!(node.applied.last().map(|v| v.as_slice()), Some(&b"after"[..]), "node {id}");
        assert_eq!(node.applied.len(), 201, "node {id}");
    }
}

// Shows: a follower receiving different entries at indexes it already holds replaces the
// conflicting suffix, in memory and on disk.
#[test]
fn conflicting_suffix_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    let old: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"old")).collect();
    store.append(&old).unwrap();
    flush(&mut store, &mut flusher);
    let new: Vec<Entry> = (6..=8).map(|i| entry(i, 2, b"new")).collect();
    store.append(&new).unwrap();
    flush(&mut store, &mut flusher);
    let check = |store: &RaftLogStore| {
        assert_eq!(store.last_index().unwrap(), 8);
        let got = store.entries(1, 9, None, raft::GetEntriesContext::empty(false)).unwrap();
        let terms: Vec<u64> = got.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 1, 1, 1, 1, 2, 2, 2]);
        assert_eq!(store.term(7).unwrap(), 2);
        assert!(store.term(9).is_err());
    };
    check(&store);
    drop(store);
    let (store, _) = open_store(dir.path());
    check(&store);
}

// Shows: entries evicted from memory are read back from disk (checksum verified), compaction
// drops the prefix and retires fully compacted segments, and a reopened store agrees.
#[test]
fn cold_reads_compaction_and_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    // Keep ~10 entries in memory: the rest must come back from disk.
    store.set_cache_limit(20 * 1024);
    // ~2 KiB per entry, 400 entries: many 64 KiB segments.
    let payload = |i: u64| vec![i as u8; 2000];
    for chunk in (1..=400u64).collect::<Vec<_>>().chunks(10) {
        let entries: Vec<Entry> = chunk.iter().map(|&i| entry(i, 1, &payload(i))).collect();
        store.append(&entries).unwrap();
        flush(&mut store, &mut flusher);
    }
    let segments_before = store.segment_count();
    assert!(segments_before > 8, "{segments_before} segments");
    let all = store.entries(1, 401, None, raft::GetEntriesContext::empty(false)).unwrap();
    assert_eq!(all.len(), 400);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.index == i as u64 + 1 && e.data == payload(e.index)));
    assert!(store.memory_bytes() < 64 * 1024, "{} bytes in memory", store.memory_bytes());
    // max_size limits the batch but always returns at least one entry.
    assert_eq!(store.entries(1, 401, 1, raft::GetEntriesContext::empty(false)).unwrap().len(), 1);

    store.compact(300).unwrap();
    assert_eq!(store.first_index().unwrap(), 301);
    assert_eq!(store.term(300).unwrap(), 1);
    assert!(store.entries(300, 302, None, raft::GetEntriesContext::empty(false)).is_err());
    // The marker becomes durable with the next flush; more writes roll segments over.
    for i in 401..=420u64 {
        store.append(&[entry(i, 1, &payload(i))]).unwrap();
        flush(&mut store, &mut flusher);
    }
    assert!(store.segment_count() < segments_before / 2, "{} segments left", store.segment_count());
    let dir_segments = SegmentDir::open(dir.path(), identity(), SEGMENT_BYTES).unwrap();
    use corekv_storage::wal::SegmentSource;
    assert_eq!(dir_segments.list().unwrap().len(), store.segment_count());
    drop(store);

    let (store, _) = open_store(dir.path());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (301, 420));
    assert_eq!(store.term(300).unwrap(), 1);
    let tail = store.entries(301, 421, None, raft::GetEntriesContext::empty(false)).unwrap();
    assert_eq!(tail.len(), 120);
    assert!(tail.iter().all(|e| e.data == payload(e.index)));
}

// Shows: a caller that can wait (raft-rs sending a lagging follower entries) is not made to
// wait on the disk: entries older than the cache are queued as reads of their WAL records and
// the call says "temporarily unavailable"; a second ask for the same records queues nothing
// more; once the records are handed back, the entries come from memory, verified. A record
// that failed to read makes the next ask answer "compacted" (raft-rs then sends a snapshot),
// and the one after queues a read again.
#[test]
fn entries_older_than_the_cache_are_read_asynchronously() {
    use corekv_storage::wal::SegmentSource;
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    store.set_cache_limit(20 * 1024);
    let payload = |i: u64| vec![i as u8; 2000];
    for chunk in (1..=100u64).collect::<Vec<_>>().chunks(10) {
        let entries: Vec<Entry> = chunk.iter().map(|&i| entry(i, 1, &payload(i))).collect();
        store.append(&entries).unwrap();
        flush(&mut store, &mut flusher);
    }
    let can_wait = || raft::GetEntriesContext::empty(true);
    let unavailable = raft::Error::Store(raft::StorageError::LogTemporarilyUnavailable);
    assert_eq!(store.entries(1, 31, None, can_wait()).unwrap_err(), unavailable);
    assert_eq!(store.entries(1, 31, None, can_wait()).unwrap_err(), unavailable);
    let fetches = store.take_cold_fetches();
    assert_eq!(fetches.len(), 1, "the second ask waits for the first read");
    assert!(store.take_cold_fetches().is_empty());
    let fetch = fetches.into_iter().next().unwrap();
    assert_eq!(fetch.reads().len(), 3, "three records of ten entries: {:?}", fetch.reads());
    let segments = flusher.dir().clone();
    let data = fetch.reads().iter().map(|r| segments.read_at(r.seq, r.offset, r.len)).collect();
    let _context = store.on_cold_fetched(fetch, data);
    let read = store.entries(1, 31, None, can_wait()).unwrap();
    assert_eq!(read.len(), 30);
    assert!(read.iter().all(|e| e.data == payload(e.index)));
    assert!(store.memory_bytes() > 3 * 20_000, "the records are held: {}", store.memory_bytes());

    // A read that failed.
    assert_eq!(store.entries(31, 41, None, can_wait()).unwrap_err(), unavailable);
    let fetch = store.take_cold_fetches().into_iter().next().unwrap();
    let failed = fetch
        .reads()
        .iter()
        .map(|_| Err(corekv_storage::error::StorageError::Failed("the disk said no".into())))
        .collect();
    let _context = store.on_cold_fetched(fetch, failed);
    let compacted = raft::Error::Store(raft::StorageError::Compacted);
    assert_eq!(store.entries(31, 41, None, can_wait()).unwrap_err(), compacted, "a snapshot");
    assert_eq!(store.entries(31, 41, None, can_wait()).unwrap_err(), unavailable);
    assert_eq!(store.take_cold_fetches().len(), 1, "read again");
    // A caller that cannot wait reads at once, as before.
    let now = store.entries(41, 51, None, raft::GetEntriesContext::empty(false)).unwrap();
    assert_eq!(now.len(), 10);
}

// Shows: the durable commit index follows the hard states that completed flushes wrote, and
// is what a restart finds.
#[test]
fn durable_commit_follows_flushed_hard_states() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    store.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
    let hs = |commit| raft::eraftpb::HardState { term: 1, vote: 1, commit, ..Default::default() };
    store.set_hard_state(&hs(1)).unwrap();
    assert_eq!(store.durable_commit(), 0, "not flushed yet");
    flush(&mut store, &mut flusher);
    assert_eq!(store.durable_commit(), 1);
    store.set_hard_state(&hs(2)).unwrap();
    assert_eq!(store.durable_commit(), 1);
    flush(&mut store, &mut flusher);
    assert_eq!(store.durable_commit(), 2);
    drop(store);
    let (store, _) = open_store(dir.path());
    assert_eq!(store.durable_commit(), 2, "a restart finds it");
}

// Shows: entries that together exceed the WAL write buffer (a follower's unstable entries:
// the leader's whole in-flight window of 1 MiB appends) go into an empty buffer as one batch,
// reach disk and come back after a restart; the buffer refuses more until a job takes them,
// and afterwards holds its usual bound again. (Refusing such a batch forever stalled a
// follower catching up.)
#[test]
fn a_batch_larger_than_the_write_buffer_is_taken_when_the_buffer_is_empty() {
    use corekv_storage::constants::WRITE_BUFFER_BYTES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) =
        open_store_with(dir.path(), corekv_storage::constants::SEGMENT_BYTES);
    let value = vec![7u8; 1 << 20];
    let count = (WRITE_BUFFER_BYTES_MAX >> 20) as u64 + 8;
    let batch: Vec<Entry> = (1..=count).map(|i| entry(i, 1, &value)).collect();
    assert!(store.has_room(count as usize * value.len()), "an empty buffer takes any batch");
    store.append(&batch).unwrap();
    let hs = raft::eraftpb::HardState { term: 1, vote: 1, commit: count, ..Default::default() };
    store.set_hard_state(&hs).unwrap();
    assert!(!store.has_room(1 << 20), "a full buffer takes nothing more");
    assert!(store.append(&[entry(count + 1, 1, &value)]).is_err());
    flush(&mut store, &mut flusher);
    assert!(store.has_room(1 << 20));
    let more: Vec<Entry> = (count + 1..count + 40).map(|i| entry(i, 1, &value)).collect();
    store.append(&more).unwrap();
    let over: Vec<Entry> = (count + 40..count + 70).map(|i| entry(i, 1, &value)).collect();
    assert!(
        matches!(store.append(&over), Err(corekv_storage::wal::AppendRefused::Full { .. })),
        "past the usual bound once the buffer holds bytes"
    );
    flush(&mut store, &mut flusher);
    drop(store);
    let (store, _) = open_store_with(dir.path(), corekv_storage::constants::SEGMENT_BYTES);
    assert_eq!(store.last_index().unwrap(), count + 39);
    let back = store.entries(count, count + 2, None, raft::GetEntriesContext::empty(false));
    let back = back.unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|e| e.data.as_ref() == value.as_slice()), "the entries read back");
}

// Shows: a snapshot reset replaces the log, survives a restart, and later entries follow it.
#[test]
fn snapshot_reset_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    store.append(&(1..=5).map(|i| entry(i, 1, b"x")).collect::<Vec<_>>()).unwrap();
    let mut snapshot = raft::eraftpb::Snapshot::default();
    snapshot.mut_metadata().index = 50;
    snapshot.mut_metadata().term = 3;
    store.reset_to_snapshot(snapshot).unwrap();
    store.append(&[entry(51, 3, b"y")]).unwrap();
    flush(&mut store, &mut flusher);
    drop(store);
    let (store, _) = open_store(dir.path());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (51, 51));
    assert_eq!(store.term(50).unwrap(), 3);
}

// Shows: a compaction or a snapshot reset frees no cached entry itself; `trim` frees them,
// no more per call than asked, oldest first, and reads of the live log are unaffected.
#[test]
fn compacted_entries_are_freed_by_trim_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    store.append(&(1..=100).map(|i| entry(i, 1, &[i as u8; 500])).collect::<Vec<_>>()).unwrap();
    flush(&mut store, &mut flusher);
    assert!(!store.needs_trim());
    let before = store.memory_bytes();
    store.compact(60).unwrap();
    assert!(store.needs_trim());
    // Only the entries' location records went (a few dozen bytes each), not their 500 bytes.
    assert!(before - store.memory_bytes() < 60 * 100, "compact freed no entry");
    let live = |store: &RaftLogStore| {
        store.entries(61, 101, None, raft::GetEntriesContext::empty(false)).unwrap()
    };
    assert_eq!(
        live(&store).iter().map(|e| e.index).collect::<Vec<_>>(),
        (61..=100).collect::<Vec<_>>()
    );
    let mut calls = 0;
    let mut last = store.memory_bytes();
    while store.trim(25, usize::MAX) {
        calls += 1;
        let now = store.memory_bytes();
        assert!(
            last - now >= 25 * 500 && last - now < 26 * 600,
            "{} bytes in one call",
            last - now
        );
        last = now;
    }
    assert_eq!(calls, 2, "60 entries, 25 per call: 25, 25, then the last 10");
    assert!(store.memory_bytes() <= before - 60 * 500);
    assert!(live(&store).iter().all(|e| e.data == vec![e.index as u8; 500]));
    // A byte limit ends a call early, after at least one entry.
    let mut snapshot = raft::eraftpb::Snapshot::default();
    snapshot.mut_metadata().index = 200;
    snapshot.mut_metadata().term = 2;
    store.reset_to_snapshot(snapshot).unwrap();
    assert!(store.needs_trim());
    let held = store.memory_bytes();
    assert!(held >= 40 * 500, "the reset freed nothing yet: {held}");
    assert!(store.trim(usize::MAX, 1));
    assert!(held - store.memory_bytes() < 600, "one entry for a one-byte limit");
    while store.trim(usize::MAX, usize::MAX) {}
    assert!(!store.needs_trim());
    assert!(store.memory_bytes() < 1000, "{} bytes left", store.memory_bytes());
    store.append(&[entry(201, 2, b"after")]).unwrap();
    assert_eq!(
        store.entries(201, 202, None, raft::GetEntriesContext::empty(false)).unwrap()[0].data,
        b"after".as_slice()
    );
}

// Shows: the rebuilding mark and its target survive a restart, and the retirement of the
// segment that set it (each new segment's preamble carries it); clearing it survives a
// restart too.
#[test]
fn rebuilding_mark_survives_restarts_and_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut flusher) = open_store(dir.path());
    assert_eq!(store.rebuilding(), None);
    assert!(store.set_rebuilding(Some(0)).unwrap().is_some());
    assert!(store.set_rebuilding(Some(0)).unwrap().is_none(), "no record when nothing changes");
    store.set_rebuilding(Some(150)).unwrap();
    let payload = |i: u64| vec![i as u8; 2000];
    for i in 1..=200u64 {
        store.append(&[entry(i, 1, &payload(i))]).unwrap();
        flush(&mut store, &mut flusher);
    }
    drop(store);
    let (mut store, mut flusher) = open_store(dir.path());
    assert_eq!(store.rebuilding(), Some(150), "set before a restart");

    // Compact and roll over until the segment holding the record is retired.
    let segments_before = store.segment_count();
    store.compact(190).unwrap();
    for i in 201..=260u64 {
        store.append(&[entry(i, 1, &payload(i))]).unwrap();
        flush(&mut store, &mut flusher);
    }
    assert!(store.segment_count() < segments_before, "old segments were retired");
    drop(store);
    let (mut store, mut flusher) = open_store(dir.path());
    assert_eq!(store.rebuilding(), Some(150), "carried by the preambles of later segments");

    store.set_rebuilding(None).unwrap();
    store.append(&[entry(261, 1, b"z")]).unwrap();
    flush(&mut store, &mut flusher);
    drop(store);
    let (store, _) = open_store(dir.path());
    assert_eq!(store.rebuilding(), None, "cleared before a restart");
    assert_eq!(store.last_index().unwrap(), 261);
}
