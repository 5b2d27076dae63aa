//! The history log on an in-memory disk: recording, flushing, reopening, reading back,
//! retention, resets and damage.

use super::*;
use crate::state_machine::KeyMeta;
use crate::wal::MemSegments;

const SEGMENT: u64 = 64 * 1024;

fn identity() -> SegmentIdentity {
    SegmentIdentity { cluster: "test".to_string(), shard: 0 }
}

fn keep_all() -> Retention {
    Retention {
        min_entries: u64::MAX,
        min_bytes: u64::MAX,
        min_age_ms: u64::MAX,
        max_bytes: u64::MAX,
    }
}

fn open(disk: &MemSegments, state_index: u64, retention: Retention) -> Opened {
    let opened = HistoryLog::open(disk, identity(), SEGMENT, state_index, retention);
    for seq in &opened.discard {
        disk.remove(*seq);
    }
    opened
}

/// A put of `key` to a value of `len` bytes at `index`, over a previous version.
fn put(key: &str, index: u64, len: usize) -> ChangeSet {
    let meta = KeyMeta { create_index: 1, mod_index: index, version: 2 };
    let before = KeyMeta { mod_index: 1, version: 1, ..meta };
    let mut changes = ChangeSet::default();
    changes.push(key.as_bytes(), Some((&vec![b'v'; len], meta)), Some((before, Some(b"old"))));
    changes
}

/// Runs every flush job the log hands out, as the shell would.
fn flush(log: &mut HistoryLog, disk: &MemSegments, now_us: u64) {
    log.want_durable(log.through());
    while let Some(job) = log.take_flush_job(now_us) {
        disk.run(&job);
        log.on_flush_complete(job);
    }
}

/// Reads every entry from `from` on, from disk and cache, as a catching-up watcher would.
fn read_all(log: &HistoryLog, disk: &MemSegments, from: u64) -> Result<Vec<u64>, u64> {
    let (mut next, mut cont, mut seen) = (from, None, Vec::new());
    loop {
        match log.plan(next, cont) {
            Plan::Compacted { first } => return Err(first),
            Plan::UpToDate => return Ok(seen),
            Plan::Cache => {
                seen.extend(log.cached(next).map(|e| e.index));
                return Ok(seen);
            }
            Plan::Disk(mut read) => loop {
                let bytes = disk.read_at(read.seq, read.offset, read.len).unwrap();
                match log.parse(&read, &bytes, next).unwrap() {
                    ReadBack::Entries { entries, next: at, next_index } => {
                        seen.extend(entries.iter().map(|e| e.index));
                        next = next_index;
                        cont = Some(at);
                        break;
                    }
                    ReadBack::Larger(len) => read.len = len,
                    ReadBack::Gone => panic!("segment {} gone", read.seq),
                }
            },
        }
    }
}

// Shows: recorded entries read back in order from disk and from the cache, from any index,
// and after a reopen; entries without changes are covered but not recorded; an index
// before the history is Compacted; a reopen does not record again what it has.
#[test]
fn entries_read_back_from_disk_and_cache_and_survive_a_reopen() {
    let disk = MemSegments::new("h", SEGMENT);
    let mut log = open(&disk, 10, keep_all()).log;
    assert_eq!((log.first(), log.through()), (11, 10));
    for index in 11..=200u64 {
        let changes = if index % 10 == 0 { ChangeSet::default() } else { put("k", index, 300) };
        log.record(index, 1000 + index, changes, index);
        if index % 7 == 0 {
            flush(&mut log, &disk, index);
        }
    }
    flush(&mut log, &disk, 1_000);
    log.set_cache_limit(4096);
    let want: Vec<u64> = (11..=200).filter(|i| i % 10 != 0).collect();
    assert_eq!(read_all(&log, &disk, 11).unwrap(), want, "mostly from disk");
    assert_eq!(read_all(&log, &disk, 150).unwrap(), want[want.len() - 45..].to_vec());
    assert_eq!(read_all(&log, &disk, 10), Err(11));
    assert!(log.disk_bytes() > 190 * 300);

    let mut log = open(&disk, 120, keep_all()).log;
    assert_eq!((log.first(), log.through()), (11, 200));
    assert!(log.record(150, 0, put("k", 150, 1), 0).is_none(), "recorded before");
    assert!(log.record(201, 0, put("k", 201, 1), 0).is_some());
    flush(&mut log, &disk, 2_000);
    let reopened = open(&disk, 0, keep_all());
    assert!(reopened.restarted.is_none());
    let mut with_201 = want;
    with_201.push(201);
    assert_eq!(read_all(&reopened.log, &disk, 11).unwrap(), with_201);
}

// Shows: a history that does not reach the state's index restarts empty after it, and the
// old segments are discarded; so does one that does not read back (a damaged record in a
// sealed segment); a torn tail is cut and the durable part kept.
#[test]
fn a_history_behind_the_state_or_damaged_restarts_and_a_torn_tail_is_cut() {
    let disk = MemSegments::new("h", SEGMENT);
    let mut log = open(&disk, 0, keep_all()).log;
    for index in 1..=100u64 {
        log.record(index, 0, put("k", index, 2000), index);
        flush(&mut log, &disk, index);
    }
    let segments = disk.list().unwrap();
    assert!(segments.len() > 2, "{segments:?}");

    // A torn last flush: the durable part stays.
    log.record(101, 0, put("k", 101, 2000), 0);
    log.want_durable(101);
    let job = log.take_flush_job(0).unwrap();
    disk.run_torn(&job, 100);
    let opened = open(&disk, 50, keep_all());
    assert!(opened.restarted.is_none(), "{:?}", opened.restarted);
    assert_eq!(opened.log.through(), 100);

    let opened = open(&disk, 150, keep_all());
    assert!(opened.restarted.unwrap().contains("reaches index 100"));
    assert_eq!((opened.log.first(), opened.log.through()), (151, 150));
    assert_eq!(disk.list().unwrap(), Vec::<u64>::new(), "old segments discarded");
    let mut log = opened.log;
    log.record(151, 0, put("k", 151, 10), 0);
    flush(&mut log, &disk, 0);
    assert_eq!(disk.list().unwrap(), vec![segments.last().unwrap() + 1]);

    // Damage in a sealed segment: the history restarts after the state.
    let disk = MemSegments::new("h2", SEGMENT);
    let mut log = open(&disk, 0, keep_all()).log;
    for index in 1..=100u64 {
        log.record(index, 0, put("k", index, 2000), index);
    }
    flush(&mut log, &disk, 0);
    let first = disk.list().unwrap()[0];
    let mut bytes = disk.read_segment(first).unwrap();
    bytes[SEGMENT_HEADER_BYTES as usize + 100] ^= 0xff;
    let job = FlushJob {
        writes: vec![crate::wal::SegmentWrite { seq: first, offset: 0, bytes, activate: false }],
        durable: Lsn::default(),
    };
    disk.run(&job);
    let opened = open(&disk, 40, keep_all());
    assert!(opened.restarted.unwrap().contains("does not read back"));
    assert_eq!(opened.log.first(), 41);
}

// Shows: retention retires whole segments from the front only once the rest holds the
// minimum entries, bytes and age; past the maximum size it cuts regardless (counted); the
// history then starts after the retired segments, and older indexes are Compacted.
#[test]
fn retention_keeps_the_minimums_and_never_passes_the_maximum() {
    let disk = MemSegments::new("h", SEGMENT);
    let retention = Retention {
        min_entries: 50,
        min_bytes: 2 * SEGMENT,
        min_age_ms: 1_000,
        max_bytes: u64::MAX,
    };
    let mut log = open(&disk, 0, retention).log;
    for index in 1..=200u64 {
        log.record(index, index * 10, put("k", index, 2000), index);
        flush(&mut log, &disk, index);
    }
    assert!(log.retire(1_100).is_empty(), "the oldest segment holds entries younger than a second");
    let retired = log.retire(100_000);
    assert!(!retired.is_empty());
    for seq in &retired {
        disk.remove(*seq);
    }
    assert!(log.disk_bytes() >= 2 * SEGMENT - 2 * 2100, "{}", log.disk_bytes());
    assert!(log.through() - log.first() + 1 >= 50);
    assert_eq!(log.stats().cut_by_size, 0);
    log.set_cache_limit(0);
    let first = log.first();
    assert_eq!(read_all(&log, &disk, first - 1), Err(first));
    assert_eq!(read_all(&log, &disk, first).unwrap(), (first..=200).collect::<Vec<_>>());
    let reopened = open(&disk, 0, retention).log;
    assert_eq!(reopened.first(), first, "the next segment's marker says where it starts");
    assert_eq!(
        read_all(&reopened, &disk, first).unwrap(),
        (first..=200).collect::<Vec<_>>(),
        "read back from the oldest segment's start after a reopen"
    );

    // Retired after a reopen too: the read starts at the oldest segment left, not at a mark
    // further on (recovery marks every segment's first record).
    let disk2 = MemSegments::new("h2", SEGMENT);
    let mut log2 = open(&disk2, 0, retention).log;
    for index in 1..=200u64 {
        log2.record(index, index * 10, put("k", index, 2000), index);
        flush(&mut log2, &disk2, index);
    }
    let mut log2 = open(&disk2, 0, retention).log;
    for seq in log2.retire(100_000) {
        disk2.remove(seq);
    }
    let first2 = log2.first();
    assert!(first2 > 1);
    assert_eq!(read_all(&log2, &disk2, first2).unwrap(), (first2..=200).collect::<Vec<_>>());

    let mut log = reopened;
    log.retention.max_bytes = SEGMENT;
    let cut = log.retire(0);
    assert!(!cut.is_empty());
    assert!(log.stats().cut_by_size >= 1);
    assert!(log.disk_bytes() <= SEGMENT);
}

// Shows: a reset (a leader's snapshot installed) restarts the history after its index, on
// disk too: a reopen finds the history starting there; a read of a segment retired meanwhile
// is Gone; a record larger than a read asks for a larger one.
#[test]
fn resets_gone_segments_and_large_records() {
    let disk = MemSegments::new("h", SEGMENT);
    let mut log = open(&disk, 0, keep_all()).log;
    for index in 1..=50u64 {
        log.record(index, 0, put("k", index, 2000), index);
    }
    flush(&mut log, &disk, 0);
    log.set_cache_limit(0);
    let Plan::Disk(read) = log.plan(1, None) else { panic!("on disk") };
    log.reset(500);
    assert_eq!(log.plan(1, None), Plan::Compacted { first: 501 });
    let bytes = disk.read_at(read.seq, read.offset, read.len).unwrap();
    assert_eq!(log.parse(&read, &bytes, 1).unwrap(), ReadBack::Gone);
    log.record(501, 0, put("big", 501, 20_000), 0);
    flush(&mut log, &disk, 0);
    let reopened = open(&disk, 0, keep_all());
    assert!(reopened.restarted.is_none());
    let mut log = reopened.log;
    assert_eq!((log.first(), log.through()), (501, 501));
    log.set_cache_limit(0);
    let Plan::Disk(mut read) = log.plan(501, None) else { panic!("on disk") };
    read.len = 64;
    let bytes = disk.read_at(read.seq, read.offset, read.len).unwrap();
    let ReadBack::Larger(len) = log.parse(&read, &bytes, 501).unwrap() else { panic!() };
    assert!(len > 20_000);
    assert_eq!(read_all(&log, &disk, 501).unwrap(), vec![501]);
}

// Shows: a record leaves the cache only once durable; a failed flush keeps the history in
// memory only (older indexes Compacted, the cache still served, nothing waits on the disk).
#[test]
fn the_cache_holds_what_is_not_durable_and_a_failed_disk_keeps_memory() {
    let disk = MemSegments::new("h", SEGMENT);
    let mut log = open(&disk, 0, keep_all()).log;
    log.set_cache_limit(0);
    for index in 1..=5u64 {
        log.record(index, 0, put("k", index, 100), 0);
    }
    assert_eq!(log.cached(1).count(), 5, "not durable: still cached");
    assert_eq!(log.plan(1, None), Plan::Cache);
    flush(&mut log, &disk, 0);
    assert_eq!(log.cached(1).count(), 0);
    assert!(matches!(log.plan(1, None), Plan::Disk(_)));
    assert_eq!(log.durable_through(), 5);

    log.set_cache_limit(1 << 20);
    log.record(6, 0, put("k", 6, 100), 0);
    log.want_durable(6);
    let job = log.take_flush_job(0).unwrap();
    drop(job);
    log.on_flush_failed("disk gone".to_string());
    assert_eq!(log.plan(3, None), Plan::Compacted { first: 6 });
    assert_eq!(log.plan(6, None), Plan::Cache);
    log.record(7, 0, put("k", 7, 100), 0);
    assert_eq!(log.cached(6).map(|e| e.index).collect::<Vec<_>>(), vec![6, 7]);
    assert_eq!(log.durable_through(), 7, "a snapshot does not wait for a failed disk");
    assert!(log.take_flush_job(u64::MAX).is_none());
}
