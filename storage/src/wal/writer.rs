//! The WAL's write side, without I/O: records go in with [`WalWriter::append`], and
//! [`WalWriter::take_flush_job`] hands out everything appended since the last job as a
//! [`FlushJob`] — block-aligned writes plus one sync per segment touched — for an I/O shell
//! (glommio DMA in the server, `std::fs` in tools and tests, memory in the simulator) to run.
//!
//! Group commit falls out of this split: one job is in flight at a time; appends made while it
//! runs accumulate and all go out in the next job, with one write and one `fdatasync`.
//!
//! ```text
//!   append append append   take_flush_job      append append      complete(job1)  take_flush_job
//!   ------ records ------> [job 1: write+sync] ---- buffered ---> durable = job1  [job 2: ...]
//! ```
//!
//! Only [`WalWriter::complete`] moves the durable position; positions returned by `append`
//! are durable once the durable position reaches them.
//!
//! The partly filled last block of a flush stays in the buffer and is written again, with the
//! records that follow it, by the next job. When a record does not fit in the current segment,
//! the segment gets a seal record and the next segment starts; a job that spans the boundary
//! writes and syncs the old segment before it touches the new one, so a sealed segment is
//! always durable before anything after it.

use crate::constants::{
    BLOCK_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_BYTES, SEGMENT_HEADER_BYTES,
    WRITE_BUFFER_BYTES_MAX,
};
use crate::wal::format::{
    align_up, encode_record, encode_record_parts, encode_segment_header, record_size,
    SegmentHeader, SegmentIdentity, KIND_INVALID, KIND_SEAL,
};

/// A position in the WAL: a segment and a byte offset in it. Positions order the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset in the segment file.
    pub offset: u64,
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.offset)
    }
}

/// Why an append was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendRefused {
    /// The write buffer holds [`WRITE_BUFFER_BYTES_MAX`] unflushed bytes: flush, wait for it
    /// to complete, and append again. This is backpressure, not a failure.
    Full {
        /// Bytes buffered now.
        buffered: usize,
        /// The record's size.
        record: usize,
    },
    /// The payload is over [`RECORD_PAYLOAD_BYTES_MAX`]; it never fits.
    TooLarge {
        /// Payload bytes.
        size: usize,
    },
    /// An earlier flush failed; the WAL takes nothing until it is recovered from disk.
    Failed(String),
}

/// One block-aligned write into one segment, followed by a sync of that segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentWrite {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset in the file; a multiple of [`BLOCK_BYTES`].
    pub offset: u64,
    /// The bytes; a multiple of [`BLOCK_BYTES`] long.
    pub bytes: Vec<u8>,
    /// First write to this segment since it joined the log: the shell must make the file
    /// `seq` exist (take a spare, or create one) before writing. The bytes then start with the
    /// segment's header block.
    pub activate: bool,
}

/// Everything appended since the previous job. Run the writes in order, each followed by a
/// sync of its segment, then call [`WalWriter::complete`] (or [`WalWriter::fail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushJob {
    /// Writes, in order.
    pub writes: Vec<SegmentWrite>,
    /// The position that is durable once every write and sync is done.
    pub durable: Lsn,
}

impl FlushJob {
    /// Bytes this job writes.
    pub fn bytes(&self) -> usize {
        self.writes.iter().map(|w| w.bytes.len()).sum()
    }
}

/// The state a writer resumes from after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTail {
    /// Segment that appends go to.
    pub seq: u64,
    /// Where the next record goes in it.
    pub append_offset: u64,
    /// The durable bytes of the block that `append_offset` falls in (from the block start to
    /// `append_offset`); empty when `append_offset` is block-aligned.
    pub partial_block: Vec<u8>,
    /// Higher than every flush sequence number found on disk.
    pub next_flush_seq: u64,
    /// The segment file does not hold a valid header for `seq` yet.
    pub needs_activation: bool,
}

#[derive(Debug)]
struct PendingSegment {
    seq: u64,
    /// Bytes from `buf_offset` on: already-flushed bytes of the partial block, then new ones.
    buf: Vec<u8>,
    /// Block-aligned file offset of `buf[0]`.
    buf_offset: u64,
    needs_activation: bool,
}

impl PendingSegment {
    fn append_offset(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    /// Moves the buffered bytes into a write, padded to whole blocks.
    fn into_write(self) -> SegmentWrite {
        let mut bytes = self.buf;
        bytes.resize(align_up(bytes.len(), BLOCK_BYTES), 0);
        SegmentWrite {
            seq: self.seq,
            offset: self.buf_offset,
            bytes,
            activate: self.needs_activation,
        }
    }
}

/// Buffers handed back by completed jobs, reused so steady-state flushing allocates nothing.
const RECYCLED_BUFFERS_MAX: usize = 2;

/// The write side of one shard's WAL. See the module docs.
#[derive(Debug)]
pub struct WalWriter {
    identity: SegmentIdentity,
    segment_bytes: u64,
    active: PendingSegment,
    /// Full segments (ending in a seal) whose last bytes are not in a job yet.
    sealed: Vec<PendingSegment>,
    /// Flush sequence number stamped on records appended now: the number of the next job.
    next_flush_seq: u64,
    /// Bytes appended since the last job was taken.
    buffered_bytes: usize,
    /// Most bytes the buffer takes before refusing: [`WRITE_BUFFER_BYTES_MAX`], or more for
    /// one batch taken into an empty buffer ([`WalWriter::take_batch`]) until a job takes it.
    buffer_limit: usize,
    /// What `buffer_limit` returns to after each job ([`WRITE_BUFFER_BYTES_MAX`] unless
    /// [`WalWriter::set_buffer_limit`] says otherwise).
    buffer_limit_base: usize,
    /// Whether the active segment has bytes not yet in a job.
    active_dirty: bool,
    in_flight: Option<Lsn>,
    durable: Lsn,
    failed: Option<String>,
    /// Emptied buffers of completed jobs, ready for reuse.
    recycled: Vec<Vec<u8>>,
}

impl WalWriter {
    /// A writer for an empty WAL: the first record goes to segment 1.
    pub fn new(identity: SegmentIdentity) -> Self {
        Self::with_segment_bytes(identity, SEGMENT_BYTES)
    }

    /// Like [`WalWriter::new`] with another segment size (tests use small segments to roll over
    /// often).
    pub fn with_segment_bytes(identity: SegmentIdentity, segment_bytes: u64) -> Self {
        let tail = WalTail {
            seq: 1,
            append_offset: SEGMENT_HEADER_BYTES,
            partial_block: Vec::new(),
            next_flush_seq: 1,
            needs_activation: true,
        };
        Self::resume(identity, segment_bytes, tail)
    }

    /// A writer that continues a recovered WAL.
    pub fn resume(identity: SegmentIdentity, segment_bytes: u64, tail: WalTail) -> Self {
        assert!(segment_bytes % BLOCK_BYTES as u64 == 0 && segment_bytes > SEGMENT_HEADER_BYTES);
        assert!(tail.append_offset >= SEGMENT_HEADER_BYTES);
        let buf_offset = tail.append_offset - tail.append_offset % BLOCK_BYTES as u64;
        assert_eq!(tail.partial_block.len() as u64, tail.append_offset - buf_offset);
        let mut active = PendingSegment {
            seq: tail.seq,
            buf: tail.partial_block,
            buf_offset,
            needs_activation: tail.needs_activation,
        };
        let mut active_dirty = false;
        if tail.needs_activation {
            // The header block is written by the first job, as ordinary data.
            assert_eq!(tail.append_offset, SEGMENT_HEADER_BYTES, "a new segment starts empty");
            active.buf = header_block(&identity, tail.seq, segment_bytes);
            active.buf_offset = 0;
            active_dirty = true;
        }
        let durable = Lsn { seq: tail.seq, offset: tail.append_offset };
        WalWriter {
            identity,
            segment_bytes,
            active,
            sealed: Vec::new(),
            next_flush_seq: tail.next_flush_seq,
            buffered_bytes: 0,
            buffer_limit: WRITE_BUFFER_BYTES_MAX,
            buffer_limit_base: WRITE_BUFFER_BYTES_MAX,
            active_dirty,
            in_flight: None,
            durable,
            failed: None,
            recycled: Vec::new(),
        }
    }

    /// Owner of this WAL's segments.
    pub fn identity(&self) -> &SegmentIdentity {
        &self.identity
    }

    /// Size of each segment file.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Where the next record goes.
    pub fn appended(&self) -> Lsn {
        Lsn { seq: self.active.seq, offset: self.active.append_offset() }
    }

    /// Everything before this position is durable.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// The segment appends go to.
    pub fn active_seq(&self) -> u64 {
        self.active.seq
    }

    /// Bytes appended and not yet handed to a job; compare with [`WRITE_BUFFER_BYTES_MAX`].
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Whether `bytes` more of records fit the buffer now. An empty buffer takes any one
    /// batch ([`WalWriter::take_batch`]): a caller whose batch must be written whole (raft's
    /// unstable entries) would otherwise wait forever for room that never comes.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.buffered_bytes == 0 || self.buffered_bytes + bytes <= self.buffer_limit
    }

    /// Lets an empty buffer take the next `bytes` of records even past
    /// [`WRITE_BUFFER_BYTES_MAX`]; the limit comes back when a job takes them. Does nothing
    /// when the buffer holds bytes already (then the caller waits for room, as for any batch).
    pub fn take_batch(&mut self, bytes: usize) {
        if self.buffered_bytes == 0 {
            self.buffer_limit = self.buffer_limit.max(bytes);
        }
    }

    /// Sets the most unflushed bytes the buffer takes (a log whose caller bounds its backlog
    /// itself, and must not be refused a record, sets more than the default).
    pub fn set_buffer_limit(&mut self, bytes: usize) {
        self.buffer_limit_base = bytes;
        self.buffer_limit = self.buffer_limit.max(bytes);
    }

    /// Whether a job is in flight.
    pub fn flush_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether there are appended bytes that no job has taken yet.
    pub fn has_unflushed(&self) -> bool {
        self.active_dirty || !self.sealed.is_empty()
    }

    /// The error that failed the WAL, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Largest payload one record may have: the global limit, or what fits in an empty
    /// segment of this WAL (with its seal) when segments are small.
    pub fn record_payload_max(&self) -> usize {
        let room = self.segment_bytes - SEGMENT_HEADER_BYTES - 2 * record_size(0) as u64;
        RECORD_PAYLOAD_BYTES_MAX.min(room as usize - crate::constants::RECORD_HEADER_BYTES)
    }

    /// Whether a record of `payload_len` bytes would start a new segment.
    pub fn would_roll_over(&self, payload_len: usize) -> bool {
        let seal = record_size(0) as u64;
        self.active.append_offset() + record_size(payload_len) as u64 + seal > self.segment_bytes
    }

    /// Seals the active segment and starts the next one, even if the current one has room.
    /// Callers that keep state in the log (the raft log store) roll over themselves, so they
    /// can write that state first thing in the new segment.
    pub fn roll_over(&mut self) {
        let seq = self.active.seq;
        let mut seal = Vec::new();
        encode_record(&mut seal, seq, KIND_SEAL, self.next_flush_seq, self.flush_base(), &[]);
        self.buffered_bytes += seal.len();
        self.active.buf.extend_from_slice(&seal);
        let next = PendingSegment {
            seq: seq + 1,
            buf: header_block(&self.identity, seq + 1, self.segment_bytes),
            buf_offset: 0,
            needs_activation: true,
        };
        self.buffered_bytes += next.buf.len();
        let full = std::mem::replace(&mut self.active, next);
        self.sealed.push(full);
        self.active_dirty = true;
    }

    /// Buffers one record. Returns the position just past it: the record is durable once
    /// [`WalWriter::durable`] reaches that position.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, AppendRefused> {
        self.append_parts(kind, &[payload])
    }

    /// [`WalWriter::append`] of a payload given in parts (written one after the other).
    pub fn append_parts(&mut self, kind: u8, parts: &[&[u8]]) -> Result<Lsn, AppendRefused> {
        assert!(kind != KIND_INVALID && kind != KIND_SEAL, "record kind {kind} is reserved");
        if let Some(failure) = &self.failed {
            return Err(AppendRefused::Failed(failure.clone()));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.record_payload_max() {
            return Err(AppendRefused::TooLarge { size: len });
        }
        let size = record_size(len);
        if self.buffered_bytes + size > self.buffer_limit {
            return Err(AppendRefused::Full { buffered: self.buffered_bytes, record: size });
        }
        if self.would_roll_over(len) {
            self.roll_over();
        }
        let seq = self.active.seq;
        let base = self.flush_base();
        let buf = &mut self.active.buf;
        encode_record_parts(buf, seq, kind, self.next_flush_seq, base, parts);
        self.buffered_bytes += size;
        self.active_dirty = true;
        Ok(self.appended())
    }

    /// The durable offset (in the active segment) that the flush carrying records appended now
    /// will start from: the target of the job in flight if there is one (the next job can only
    /// start after it completes), else the durable position. 0 when that lies in an earlier
    /// segment.
    fn flush_base(&self) -> u64 {
        let base = self.in_flight.unwrap_or(self.durable);
        if base.seq == self.active.seq {
            base.offset
        } else {
            0
        }
    }

    /// Hands out everything appended since the last job, or `None` when a job is in flight or
    /// nothing is new.
    pub fn take_flush_job(&mut self) -> Option<FlushJob> {
        if self.in_flight.is_some() || !self.has_unflushed() || self.failed.is_some() {
            return None;
        }
        let mut writes: Vec<SegmentWrite> =
            self.sealed.drain(..).map(PendingSegment::into_write).collect();
        if self.active_dirty {
            // The job takes the buffer; the active segment keeps a copy of the partly filled
            // last block only, which the next job writes again with what follows it.
            let append_offset = self.active.append_offset();
            let keep_from = append_offset - append_offset % BLOCK_BYTES as u64;
            let mut next = self.recycled.pop().unwrap_or_default();
            next.clear();
            let keep = (keep_from - self.active.buf_offset) as usize;
            next.extend_from_slice(&self.active.buf[keep..]);
            let taken = PendingSegment {
                seq: self.active.seq,
                buf: std::mem::replace(&mut self.active.buf, next),
                buf_offset: self.active.buf_offset,
                needs_activation: self.active.needs_activation,
            };
            writes.push(taken.into_write());
            self.active.buf_offset = keep_from;
            self.active.needs_activation = false;
        }
        self.active_dirty = false;
        self.buffered_bytes = 0;
        self.buffer_limit = self.buffer_limit_base;
        self.next_flush_seq += 1;
        let durable = self.appended();
        self.in_flight = Some(durable);
        Some(FlushJob { writes, durable })
    }

    /// Records that `job` finished: every write and sync succeeded. Returns the new durable
    /// position. The job's buffers are kept for reuse.
    ///
    /// # Panics
    /// If `job` is not the job in flight (a shell bug).
    pub fn complete(&mut self, job: FlushJob) -> Lsn {
        assert_eq!(self.in_flight, Some(job.durable), "completed a job that is not in flight");
        self.in_flight = None;
        assert!(job.durable >= self.durable, "durable position went backwards");
        self.durable = job.durable;
        for write in job.writes {
            if self.recycled.len() < RECYCLED_BUFFERS_MAX {
                self.recycled.push(write.bytes);
            }
        }
        self.durable
    }

    /// Records that the job in flight failed. Nothing after the durable position can be trusted
    /// to be on disk; the WAL refuses further appends, and the node must restart (recovery
    /// then decides from the bytes on disk).
    pub fn fail(&mut self, error: String) {
        self.in_flight = None;
        self.failed = Some(error);
    }
}

fn header_block(identity: &SegmentIdentity, seq: u64, segment_bytes: u64) -> Vec<u8> {
    encode_segment_header(&SegmentHeader { identity: identity.clone(), seq, segment_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{decode_segment_header, parse_record};

    fn identity() -> SegmentIdentity {
        SegmentIdentity { cluster: "test".to_string(), shard: 0 }
    }

    /// Applies jobs to in-memory "files" so tests can read back what a shell would write.
    fn apply(files: &mut std::collections::BTreeMap<u64, Vec<u8>>, job: &FlushJob, size: u64) {
        for w in &job.writes {
            let file = files.entry(w.seq).or_insert_with(|| vec![0; size as usize]);
            assert_eq!(w.offset % BLOCK_BYTES as u64, 0);
            assert_eq!(w.bytes.len() % BLOCK_BYTES, 0);
            file[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        }
    }

    // Shows: appends made while a job is in flight go out together in the next job, and only
    // completion moves the durable position.
    #[test]
    fn group_commit() {
        let mut wal = WalWriter::new(identity());
        let first = wal.append(1, b"a").unwrap();
        let job1 = wal.take_flush_job().unwrap();
        assert!(job1.writes[0].activate, "the first job creates segment 1");
        assert_eq!(job1.durable, first);
        assert!(wal.take_flush_job().is_none(), "one job in flight at a time");
        let second = wal.append(1, b"b").unwrap();
        let third = wal.append(1, b"c").unwrap();
        assert!(wal.durable() < first);
        assert_eq!(wal.complete(job1.clone()), first);
        let job2 = wal.take_flush_job().unwrap();
        assert_eq!(job2.writes.len(), 1);
        assert!(!job2.writes[0].activate);
        assert_eq!(job2.durable, third);
        assert!(second < third);
        // The second job rewrites the partial block the first one ended in.
        assert_eq!(job2.writes[0].offset, SEGMENT_HEADER_BYTES);
        wal.complete(job2.clone());
        assert!(wal.take_flush_job().is_none(), "nothing new to flush");
    }

    // Shows: bytes written by successive jobs read back as the same records, in order.
    #[test]
    fn jobs_reassemble_to_records() {
        let size = 64 * 1024;
        let mut wal = WalWriter::with_segment_bytes(identity(), size);
        let mut files = std::collections::BTreeMap::new();
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let payload = vec![i as u8; (i as usize * 37) % 900];
            wal.append(7, &payload).unwrap();
            expected.push(payload);
            if i % 7 == 0 {
                let job = wal.take_flush_job().unwrap();
                apply(&mut files, &job, size);
                wal.complete(job);
            }
        }
        let job = wal.take_flush_job().unwrap();
        apply(&mut files, &job, size);
        wal.complete(job);
        assert!(files.len() > 3, "small segments rolled over ({} files)", files.len());
        let mut got = Vec::new();
        for (seq, file) in &files {
            assert_eq!(decode_segment_header(file).unwrap().seq, *seq);
            let mut offset = SEGMENT_HEADER_BYTES as usize;
            loop {
                let view = parse_record(file, offset, *seq).unwrap();
                if view.kind == KIND_SEAL {
                    break;
                }
                got.push(view.payload.to_vec());
                offset += view.size;
                if got.len() == expected.len() {
                    break;
                }
            }
        }
        assert_eq!(got, expected);
    }

    // Shows: the buffer has a hard maximum; past it append refuses until a job drains it.
    #[test]
    fn backpressure_when_full() {
        let mut wal = WalWriter::new(identity());
        let payload = vec![0u8; 1024 * 1024];
        let mut taken = 0;
        loop {
            match wal.append(1, &payload) {
                Ok(_) => taken += 1,
                Err(AppendRefused::Full { .. }) => break,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!((60..=64).contains(&taken), "took {taken} MiB");
        assert!(wal.buffered_bytes() <= WRITE_BUFFER_BYTES_MAX);
        let job = wal.take_flush_job().unwrap();
        assert!(wal.append(1, &payload).is_ok(), "room again once a job took the bytes");
        wal.complete(job);
        assert_eq!(
            wal.append(1, &vec![0u8; RECORD_PAYLOAD_BYTES_MAX + 1]),
            Err(AppendRefused::TooLarge { size: RECORD_PAYLOAD_BYTES_MAX + 1 })
        );
    }

    // Shows: after a failed job the WAL refuses appends and offers no more jobs.
    #[test]
    fn failure_is_sticky() {
        let mut wal = WalWriter::new(identity());
        wal.append(1, b"x").unwrap();
        let _job = wal.take_flush_job().unwrap();
        wal.fail("fdatasync: EIO".to_string());
        assert!(matches!(wal.append(1, b"y"), Err(AppendRefused::Failed(_))));
        assert!(wal.take_flush_job().is_none());
    }
}
