//! Data-driven WAL recovery cases: a log is written through the real writer and flusher, then
//! damaged in one specific way, and recovery must keep exactly the records it may keep,
//! truncate exactly what it may truncate, and refuse (naming file and offset) what it must
//! refuse.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use corekv_storage::constants::SEGMENT_HEADER_BYTES;
use corekv_storage::wal::format::record_size;
use corekv_storage::wal::{
    recover, Lsn, RecoveryMode, SegmentDir, SegmentIdentity, SegmentSource, StdFlusher, WalWriter,
};
use corekv_storage::StorageError;

/// Small segments so a few hundred records span several files.
const SEGMENT_BYTES: u64 = 32 * 1024;

fn identity() -> SegmentIdentity {
    SegmentIdentity { cluster: "test".to_string(), shard: 1 }
}

/// A record as written: where it starts, where it ends, and its payload.
#[derive(Debug, Clone)]
struct Written {
    start: Lsn,
    payload: Vec<u8>,
}

/// Writes `count` records with a flush after every `flush_every`, all durable at the end.
fn build(dir: &Path, count: usize, flush_every: usize) -> Vec<Written> {
    let segments = SegmentDir::open(dir, identity(), SEGMENT_BYTES).unwrap();
    let mut flusher = StdFlusher::new(segments);
    let mut wal = WalWriter::with_segment_bytes(identity(), SEGMENT_BYTES);
    let mut written = Vec::new();
    for i in 0..count {
        let payload: Vec<u8> = (0..(i * 13) % 700 + 1).map(|j| (i + j) as u8).collect();
        let end = wal.append(9, &payload).unwrap();
        let start = Lsn { seq: end.seq, offset: end.offset - record_size(payload.len()) as u64 };
        written.push(Written { start, payload });
        if (i + 1) % flush_every == 0 {
            let job = wal.take_flush_job().unwrap();
            flusher.run(&job).unwrap();
            wal.complete(job);
        }
    }
    if let Some(job) = wal.take_flush_job() {
        flusher.run(&job).unwrap();
        wal.complete(job);
    }
    written
}

/// Recovers and returns the payloads, or the error.
fn recover_payloads(
    dir: &Path,
    mode: RecoveryMode,
) -> Result<(Vec<Vec<u8>>, corekv_storage::wal::Recovered), StorageError> {
    let segments = SegmentDir::open(dir, identity(), SEGMENT_BYTES).unwrap();
    let mut payloads = Vec::new();
    let recovered = recover(&segments, &identity(), mode, |r| {
        assert_eq!(r.kind, 9);
        payloads.push(r.payload.to_vec());
        Ok(())
    })?;
    Ok((payloads, recovered))
}

fn segment_path(dir: &Path, seq: u64) -> std::path::PathBuf {
    SegmentDir::open(dir, identity(), SEGMENT_BYTES).unwrap().path(seq)
}

fn write_at(dir: &Path, seq: u64, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(segment_path(dir, seq)).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn flip_bit(dir: &Path, seq: u64, offset: u64) {
    let path = segment_path(dir, seq);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
}

fn payloads(written: &[Written]) -> Vec<Vec<u8>> {
    written.iter().map(|w| w.payload.clone()).collect()
}

fn last_seq(written: &[Written]) -> u64 {
    written.last().unwrap().start.seq
}

// Shows: an undamaged log recovers every record, with no truncation, and the writer resumes
// where the log ends (appending more and recovering again keeps everything).
#[test]
fn intact_log_recovers_everything_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let written = build(dir.path(), 300, 7);
    assert!(last_seq(&written) >= 4, "the log spans several segments");
    let (got, recovered) = recover_payloads(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(got, payloads(&written));
    assert_eq!(recovered.truncated, None);

    let segments = SegmentDir::open(dir.path(), identity(), SEGMENT_BYTES).unwrap();
    let mut wal = WalWriter::resume(identity(), SEGMENT_BYTES, recovered.tail);
    wal.append(9, b"after restart").unwrap();
    let job = wal.take_flush_job().unwrap();
    StdFlusher::new(segments).run(&job).unwrap();
    let (again, _) = recover_payloads(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(again.len(), written.len() + 1);
    assert_eq!(again.last().unwrap(), b"after restart");
}

// Shows: an empty directory is an empty log that starts at segment 1.
#[test]
fn empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (got, recovered) = recover_payloads(dir.path(), RecoveryMode::Strict).unwrap();
    assert!(got.is_empty());
    assert_eq!(recovered.tail.seq, 1);
    assert!(recovered.tail.needs_activation);
}

/// A damage applied to the last record of the log, and whether recovery keeps that record.
struct TailCase {
    name: &'static str,
    damage: fn(&Path, &Written),
}

// Shows: damage confined to the final flush of the last segment is a torn tail: the damaged
// record and everything after it are dropped, everything before is kept, and the cut is
// reported.
#[test]
fn torn_tails_are_truncated() {
    let cases = [
        TailCase {
            name: "truncated header",
            damage: |dir, last| write_at(dir, last.start.seq, last.start.offset + 10, &[0u8; 22]),
        },
        TailCase {
            name: "truncated payload",
            damage: |dir, last| {
                let zeros = vec![0u8; last.payload.len() / 2 + 1];
                let at = last.start.offset + 32 + (last.payload.len() / 2) as u64;
                write_at(dir, last.start.seq, at, &zeros)
            },
        },
        TailCase {
            name: "bit flip in payload",
            damage: |dir, last| flip_bit(dir, last.start.seq, last.start.offset + 32),
        },
        TailCase {
            name: "bit flip in header",
            damage: |dir, last| flip_bit(dir, last.start.seq, last.start.offset + 5),
        },
        TailCase {
            name: "zeroed last block",
            damage: |dir, last| {
                let block = last.start.offset - last.start.offset % 4096;
                write_at(dir, last.start.seq, block.max(SEGMENT_HEADER_BYTES), &[0u8; 4096])
            },
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        // One flush per record: the last record is alone in the final flush.
        let written = build(dir.path(), 60, 1);
        let last = written.last().unwrap().clone();
        (case.damage)(dir.path(), &last);
        let (got, recovered) = recover_payloads(dir.path(), RecoveryMode::Strict)
            .unwrap_or_else(|e| panic!("{}: refused: {e}", case.name));
        assert!(got.len() < written.len(), "{}: the damaged record is dropped", case.name);
        assert_eq!(got[..], payloads(&written)[..got.len()], "{}: a prefix is kept", case.name);
        if case.name != "zeroed last block" {
            assert_eq!(got.len(), written.len() - 1, "{}: only the last record goes", case.name);
        }
        let truncation =
            recovered.truncated.unwrap_or_else(|| panic!("{}: cut not reported", case.name));
        assert!(truncation.at.seq == last.start.seq && truncation.at.offset <= last.start.offset);
    }
}

// Shows: bytes after the last record that are not records (garbage) are cut and counted, and
// every record is kept.
#[test]
fn garbage_after_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let written = build(dir.path(), 40, 3);
    let last = written.last().unwrap();
    let end = last.start.offset + record_size(last.payload.len()) as u64;
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
    write_at(dir.path(), last.start.seq, end, &garbage);
    let (got, recovered) = recover_payloads(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(got, payloads(&written));
    let truncation = recovered.truncated.expect("garbage reported");
    assert_eq!(truncation.at, Lsn { seq: last.start.seq, offset: end });
    assert_eq!(truncation.dropped_bytes, 3000);
}

// Shows: damage to a record that an earlier, completed flush made durable is refused with the
// file and offset — in the last segment (a later flush follows it) and in any earlier one.
#[test]
fn damage_outside_the_tail_is_refused() {
    for (name, payload_byte) in [("bit flip in payload", 32u64), ("bit flip in header", 5)] {
        // In the last segment, followed by later flushes.
        let dir = tempfile::tempdir().unwrap();
        let written = build(dir.path(), 200, 1);
        let seq = last_seq(&written);
        let victim = written.iter().find(|w| w.start.seq == seq).unwrap().clone();
        flip_bit(dir.path(), seq, victim.start.offset + payload_byte);
        match recover_payloads(dir.path(), RecoveryMode::Strict) {
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment_path(dir.path(), seq), "{name}");
                assert_eq!(offset, victim.start.offset, "{name}");
            }
            other => panic!("{name} in the last segment: expected Corrupt, got {other:?}"),
        }

        // In a middle segment.
        let dir = tempfile::tempdir().unwrap();
        let written = build(dir.path(), 200, 5);
        let victim = written.iter().find(|w| w.start.seq == 2).unwrap().clone();
        flip_bit(dir.path(), 2, victim.start.offset + payload_byte);
        match recover_payloads(dir.path(), RecoveryMode::Strict) {
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment_path(dir.path(), 2), "{name}");
                assert_eq!(offset, victim.start.offset, "{name}");
            }
            other => panic!("{name} in a middle segment: expected Corrupt, got {other:?}"),
        }
    }
}

// Shows: a hole in the segment sequence is refused, naming the missing segment.
#[test]
fn missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let written = build(dir.path(), 300, 4);
    assert!(last_seq(&written) >= 3);
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    match recover_payloads(dir.path(), RecoveryMode::Strict) {
        Err(StorageError::MissingSegment { missing, before, after, .. }) => {
            assert_eq!((missing, before, after), (2, 1, 3));
        }
        other => panic!("expected MissingSegment, got {other:?}"),
    }
}

// Shows: segments of another shard or another cluster are refused.
#[test]
fn foreign_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30, 3);
    let segments = SegmentDir::open(dir.path(), identity(), SEGMENT_BYTES).unwrap();
    for (other, what) in [
        (SegmentIdentity { cluster: "test".to_string(), shard: 2 }, "shard"),
        (SegmentIdentity { cluster: "prod".to_string(), shard: 1 }, "cluster"),
    ] {
        match recover(&segments, &other, RecoveryMode::Strict, |_| Ok(())) {
            Err(StorageError::ForeignSegment { reason, .. }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("expected ForeignSegment for {what}, got {other:?}"),
        }
    }
}

// Shows: repair, chosen explicitly, keeps the records before the first bad one, drops the
// rest and names the segments to discard; a normal open of the repaired log then succeeds.
#[test]
fn repair_truncates_at_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let written = build(dir.path(), 300, 5);
    let total_segments = last_seq(&written);
    let index = written.iter().position(|w| w.start.seq == 2).unwrap() + 3;
    let victim = written[index].clone();
    flip_bit(dir.path(), 2, victim.start.offset + 30);
    assert!(recover_payloads(dir.path(), RecoveryMode::Strict).is_err());

    let (got, recovered) = recover_payloads(dir.path(), RecoveryMode::Repair).unwrap();
    assert_eq!(got, payloads(&written[..index]));
    assert_eq!(recovered.discarded_segments, (3..=total_segments).collect::<Vec<_>>());
    let segments = SegmentDir::open(dir.path(), identity(), SEGMENT_BYTES).unwrap();
    segments.apply_repair(&recovered).unwrap();
    let (again, _) = recover_payloads(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(again, payloads(&written[..index]));
}
