//! Recovery: reads a shard's WAL segments in order, checks every record, hands each good record
//! to the caller, and works out where the writer resumes.
//!
//! The rules (DESIGN.md §7):
//!
//! - Segments are numbered without holes; a hole is an error naming the missing number.
//! - Every segment's header must name this cluster and shard; a foreign segment is an error.
//! - Every segment but the last must be intact up to its seal record; a bad record there is an
//!   error naming the file and byte offset.
//! - In the last segment, the records end at the first bytes that are not a good record. That
//!   is a torn or zeroed tail — a crash during the final flush — and is truncated, with a log
//!   line saying how many bytes were dropped, unless a good record written by a *later* flush
//!   follows the bad bytes: then the bad bytes were durable once (flushes are sequential, and a
//!   later flush completing proves the earlier one completed), so they are damage, and recovery
//!   refuses with the file and offset.
//!
//! [`RecoveryMode::Repair`] is the operator's explicit choice to truncate at the first bad
//! record wherever it is, dropping every later record and segment.

use std::path::PathBuf;

use crate::constants::{BLOCK_BYTES, RECORD_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use crate::error::{Result, StorageError};
use crate::wal::format::{
    decode_segment_header, parse_record, RecordProblem, SegmentIdentity, KIND_SEAL,
};
use crate::wal::writer::{Lsn, WalTail};

/// Read access to a WAL directory's segments, as recovery and cold log reads need it.
pub trait SegmentSource {
    /// Sequence numbers of the segments in the log (not spares), ascending.
    fn list(&self) -> Result<Vec<u64>>;
    /// The whole file of segment `seq`.
    fn read_segment(&self, seq: u64) -> Result<Vec<u8>>;
    /// `len` bytes of segment `seq` at `offset`.
    fn read_at(&self, seq: u64, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The path of segment `seq`, for messages.
    fn path(&self, seq: u64) -> PathBuf;
    /// The WAL directory, for messages.
    fn dir(&self) -> PathBuf;
}

/// How strict recovery is about damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open on damage outside a torn tail.
    Strict,
    /// Truncate at the first bad record anywhere (the operator asked for it).
    Repair,
}

/// A good record found during recovery.
#[derive(Debug, Clone, Copy)]
pub struct RecoveredRecord<'a> {
    /// Its segment.
    pub seq: u64,
    /// Byte offset of its header in the segment file.
    pub offset: u64,
    /// The user's record kind.
    pub kind: u8,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Where the writer resumes.
    pub tail: WalTail,
    /// Segments in the log after recovery, ascending.
    pub segments: Vec<u64>,
    /// Segments after the truncation point that repair dropped from the log; the caller
    /// deletes (or recycles) them.
    pub discarded_segments: Vec<u64>,
    /// Set when a tail was cut: where, and how many bytes after it were not records.
    pub truncated: Option<Truncation>,
    /// Records handed to the visitor.
    pub records: u64,
}

/// A cut made by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The first position that is no longer part of the log.
    pub at: Lsn,
    /// Bytes between that position and the last non-zero byte of the segment.
    pub dropped_bytes: u64,
    /// What was found at the cut.
    pub reason: String,
}

/// Scans the WAL and calls `visit` with every good record in log order. Errors from `visit`
/// stop recovery and are returned.
pub fn recover(
    source: &dyn SegmentSource,
    identity: &SegmentIdentity,
    mode: RecoveryMode,
    mut visit: impl FnMut(RecoveredRecord<'_>) -> Result<()>,
) -> Result<Recovered> {
    let segments = source.list()?;
    check_no_holes(source, &segments)?;
    let Some(&last_seq) = segments.last() else {
        return Ok(finish(segments, Vec::new(), tail_new_segment(1, 0), None, 0));
    };
    let mut records = 0u64;
    let mut max_flush_seq = 0u64;
    for (position, &seq) in segments.iter().enumerate() {
        let bytes = source.read_segment(seq)?;
        let is_last = seq == last_seq;
        let header = check_header(source, identity, seq, &bytes, is_last)?;
        if header == HeaderState::Unactivated {
            // A crash between making the file and writing its header: nothing in it was
            // durable. The writer writes the header again.
            tracing::warn!(path = %source.path(seq).display(), "last WAL segment was never activated; reusing it");
            return Ok(finish(
                segments,
                Vec::new(),
                tail_new_segment(seq, max_flush_seq),
                None,
                records,
            ));
        }
        let scan = scan_segment(&bytes, seq, is_last || mode == RecoveryMode::Repair);
        for record in &scan.records {
            visit(RecoveredRecord { seq, offset: record.0, kind: record.1, payload: record.2 })?;
            records += 1;
        }
        max_flush_seq = max_flush_seq.max(scan.max_flush_seq);
        match &scan.end {
            SegmentEnd::Sealed if !is_last => continue,
            SegmentEnd::Sealed => {
                // Sealed, but the next segment never made it: start it now.
                return Ok(finish(
                    segments,
                    Vec::new(),
                    tail_new_segment(seq + 1, max_flush_seq),
                    None,
                    records,
                ));
            }
            SegmentEnd::Bad { offset, problem } => {
                let at = Lsn { seq, offset: *offset };
                let truncation = truncation(source, at, problem, is_last, &scan, mode)?;
                let discarded = segments[position + 1..].to_vec();
                let kept = segments[..=position].to_vec();
                let tail = tail_in_segment(&bytes, seq, *offset, max_flush_seq);
                return Ok(finish(kept, discarded, tail, truncation, records));
            }
        }
    }
    unreachable!("the last segment always ends the loop")
}

/// What stopping at bad bytes at `at` means: in a sealed segment, or followed by records of a
/// later flush, it is damage (an error in strict mode); otherwise a torn tail, truncated.
/// `None` when nothing is lost (the bad bytes are the zeroes past the last record).
fn truncation(
    source: &dyn SegmentSource,
    at: Lsn,
    problem: &RecordProblem,
    is_last: bool,
    scan: &SegmentScan<'_>,
    mode: RecoveryMode,
) -> Result<Option<Truncation>> {
    let path = source.path(at.seq);
    let damage = !is_last || scan.later_flush_found;
    if damage && mode == RecoveryMode::Strict {
        let reason = if is_last {
            format!("{problem}, followed by records of a later flush")
        } else {
            format!("{problem} before the segment's seal")
        };
        return Err(StorageError::Corrupt { path, offset: at.offset, reason });
    }
    let dropped = scan.last_nonzero.map_or(0, |end| end.saturating_sub(at.offset));
    Ok((dropped > 0 || damage).then(|| {
        tracing::warn!(
            path = %path.display(),
            offset = at.offset,
            dropped_bytes = dropped,
            "WAL tail truncated: {problem}"
        );
        Truncation { at, dropped_bytes: dropped, reason: problem.to_string() }
    }))
}

fn finish(
    segments: Vec<u64>,
    discarded_segments: Vec<u64>,
    tail: WalTail,
    truncated: Option<Truncation>,
    records: u64,
) -> Recovered {
    Recovered { tail, segments, discarded_segments, truncated, records }
}

fn tail_new_segment(seq: u64, max_flush_seq: u64) -> WalTail {
    WalTail {
        seq,
        append_offset: SEGMENT_HEADER_BYTES,
        partial_block: Vec::new(),
        next_flush_seq: max_flush_seq + 1,
        needs_activation: true,
    }
}

fn tail_in_segment(bytes: &[u8], seq: u64, offset: u64, max_flush_seq: u64) -> WalTail {
    let block_start = offset - offset % BLOCK_BYTES as u64;
    WalTail {
        seq,
        append_offset: offset,
        partial_block: bytes[block_start as usize..offset as usize].to_vec(),
        next_flush_seq: max_flush_seq + 1,
        needs_activation: false,
    }
}

fn check_no_holes(source: &dyn SegmentSource, segments: &[u64]) -> Result<()> {
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StorageError::MissingSegment {
                dir: source.dir(),
                missing: pair[0] + 1,
                before: pair[0],
                after: pair[1],
            });
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum HeaderState {
    Valid,
    /// The last segment's header is a valid header of another sequence number (a spare or a
    /// recycled segment that was renamed but not yet written).
    Unactivated,
}

fn check_header(
    source: &dyn SegmentSource,
    identity: &SegmentIdentity,
    seq: u64,
    bytes: &[u8],
    is_last: bool,
) -> Result<HeaderState> {
    let path = source.path(seq);
    let header = decode_segment_header(bytes).map_err(|reason| StorageError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    })?;
    if header.identity.cluster != identity.cluster {
        return Err(StorageError::ForeignSegment {
            path,
            reason: format!(
                "written by cluster {:?}, this node is in cluster {:?}",
                header.identity.cluster, identity.cluster
            ),
        });
    }
    if header.identity.shard != identity.shard {
        return Err(StorageError::ForeignSegment {
            path,
            reason: format!(
                "written by shard {}, this is shard {}",
                header.identity.shard, identity.shard
            ),
        });
    }
    if header.seq != seq {
        if is_last {
            return Ok(HeaderState::Unactivated);
        }
        return Err(StorageError::Corrupt {
            path,
            offset: 0,
            reason: format!("header says segment {}, file name says {seq}", header.seq),
        });
    }
    if header.segment_bytes != bytes.len() as u64 {
        return Err(StorageError::Corrupt {
            path,
            offset: 0,
            reason: format!(
                "segment is {} bytes, its header says {}",
                bytes.len(),
                header.segment_bytes
            ),
        });
    }
    Ok(HeaderState::Valid)
}

enum SegmentEnd {
    Sealed,
    Bad { offset: u64, problem: RecordProblem },
}

struct SegmentScan<'a> {
    /// (offset, kind, payload) of each good record before the end.
    records: Vec<(u64, u8, &'a [u8])>,
    end: SegmentEnd,
    max_flush_seq: u64,
    /// A good record past the bad bytes has a flush base beyond them.
    later_flush_found: bool,
    /// One past the last non-zero byte at or after the end, when the end is bad.
    last_nonzero: Option<u64>,
}

/// Walks the records of one segment. When `look_past_end` is set and the walk stops at bad
/// bytes, it also scans the rest of the segment for good records of later flushes.
fn scan_segment(bytes: &[u8], seq: u64, look_past_end: bool) -> SegmentScan<'_> {
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let mut last_flush = 0u64;
    let mut max_flush_seq = 0u64;
    let end = loop {
        match parse_record(bytes, offset, seq) {
            Ok(view) if view.flush_seq < last_flush => {
                break SegmentEnd::Bad {
                    offset: offset as u64,
                    problem: RecordProblem::BadHeader(format!(
                        "stale record of flush {} after flush {last_flush}",
                        view.flush_seq
                    )),
                };
            }
            Ok(view) => {
                last_flush = view.flush_seq;
                max_flush_seq = max_flush_seq.max(view.flush_seq);
                if view.kind == KIND_SEAL {
                    break SegmentEnd::Sealed;
                }
                records.push((offset as u64, view.kind, view.payload));
                offset += view.size;
            }
            Err(problem) => break SegmentEnd::Bad { offset: offset as u64, problem },
        }
    };
    let mut later_flush_found = false;
    let mut last_nonzero = None;
    if let (SegmentEnd::Bad { offset: bad, .. }, true) = (&end, look_past_end) {
        let bad = *bad as usize;
        // A good record further on whose flush began with the log durable past `bad` proves
        // the bad bytes were durable: damage, not a torn write.
        let mut probe = bad + RECORD_ALIGN_BYTES;
        while probe < bytes.len() {
            if let Ok(view) = parse_record(bytes, probe, seq) {
                max_flush_seq = max_flush_seq.max(view.flush_seq);
                if view.flush_base > bad as u64 {
                    later_flush_found = true;
                }
            }
            probe += RECORD_ALIGN_BYTES;
        }
        last_nonzero = bytes[bad..].iter().rposition(|&b| b != 0).map(|i| (bad + i + 1) as u64);
    }
    SegmentScan { records, end, max_flush_seq, later_flush_found, last_nonzero }
}
