//! The watch history of one shard: what every applied raft entry changed, by raft index,
//! kept on disk for a configurable retention, so that a watcher can resume from an old
//! cursor with no gap and no duplicate.
//!
//! Why not replay the raft log itself: an entry holds commands, whose effects depend on the
//! state they met — a key's version and create index, whether a delete found the key, which
//! branch of a transaction ran, and the value a change replaced. Replaying entries from an
//! old index would need the state as of that index, which is long gone. So every replica
//! records each entry's *effects* as it applies it ([`HistoryEntry`]: the keys, the values
//! and metadata after, and before) in a log of its own. Applying is deterministic, so every
//! replica records the same history for the same index; a watcher can resume at any of them.
//!
//! The history log is a second WAL (same segment and record format, [`crate::wal`]) under
//! `DATA_DIR/shard-S/history/`, flushed on its own schedule, never on the commit path: it is
//! derived data, and what a crash loses of it is rebuilt by applying the raft log again.
//!
//! ```text
//!  apply(entry i) ──► record(i, changes) ──► cache (newest records, memory) ──► watchers
//!                                      └───► history WAL buffer ──(flush, every ~10 ms)──► disk
//!  a watcher behind the cache ──► plan(from) ──► HistoryRead ──(shell reads, off the executor)
//!                                                 └──► parse ──► its entries
//! ```
//!
//! Invariants:
//! - *Coverage*: every change of every entry in `[first, through]` is in the history — on disk
//!   or in the cache — and nothing else is. Records are in index order.
//! - A record leaves the cache only once durable, so disk and cache together always cover
//!   `[first, through]`; reads go to disk only below `cache_from`.
//! - *Recovery*: the history is durable through `durable_through` (tracked from `THROUGH`
//!   marks written with every flush). A replica's state is rebuilt from its newest snapshot
//!   plus the raft log, so on restart the history is kept only when it reaches the snapshot's
//!   index — the core hands out a snapshot job only once the history is durable through the
//!   snapshot's index, so that holds except after a crash in the middle of installing a
//!   leader's snapshot — and then entries at or below `through` are not recorded again.
//!   Otherwise, and whenever the history cannot be read back, it restarts empty after the
//!   state's index (a `RESET` record): watchers older than that are told `Compacted`, never
//!   given a gap.
//! - Every segment starts with a `THROUGH` (or `RESET`) record: how far the history reached
//!   before it, which is where the history starts once the segments before it are retired.
//!
//! Retention ([`Retention`], from the registry's `[watch]` section): whole segments are retired from the front once the rest still
//! holds at least `min_entries` raft entries, `min_bytes` of records and everything newer
//! than `min_age_ms`; or, whatever those say, once the history is over `max_bytes`.

mod records;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use records::{
    ChangeSet, ChangeView, Changes, HistoryEntry, KIND_ENTRY, KIND_RESET, KIND_THROUGH,
};

use crate::constants::{
    HISTORY_BACKLOG_BYTES, HISTORY_BUFFER_BYTES_MAX, HISTORY_CACHE_BYTES_MAX, HISTORY_FLUSH_BYTES,
    HISTORY_FLUSH_DELAY_US, HISTORY_MARK_BYTES, HISTORY_READ_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::wal::format::{parse_record, record_size, RecordProblem, KIND_SEAL};
use crate::wal::recovery::{recover, RecoveryMode, SegmentSource};
use crate::wal::{AppendRefused, FlushJob, Lsn, SegmentIdentity, WalTail, WalWriter};

/// How much history a shard keeps (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at least this many raft entries of history.
    pub min_entries: u64,
    /// Keep at least this many bytes of records.
    pub min_bytes: u64,
    /// Keep everything applied less than this long ago (ms).
    pub min_age_ms: u64,
    /// Never keep more than this many bytes: the oldest segments go first, whatever the
    /// minimums say (each time counted in [`HistoryStats::cut_by_size`]).
    pub max_bytes: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Segments retired before the minimums were met, because the history reached its
    /// maximum size.
    pub cut_by_size: u64,
    /// Times the history restarted empty (a leader's snapshot installed, a failed disk, a
    /// record that did not read back).
    pub resets: u64,
}

/// One read of history records off the disk: `len` bytes of segment `seq` at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRead {
    /// The segment.
    pub seq: u64,
    /// Where in it (a record boundary).
    pub offset: u64,
    /// How many bytes.
    pub len: usize,
}

/// Where a reader starting at an index gets its history from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The index is older than the history: the oldest kept is `first`.
    Compacted {
        /// The oldest index the history covers.
        first: u64,
    },
    /// Nothing after `through` is recorded yet.
    UpToDate,
    /// In memory: [`HistoryLog::cached`].
    Cache,
    /// On disk: read this, then [`HistoryLog::parse`].
    Disk(HistoryRead),
}

/// What a disk read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    /// Records read: the entries at or after the reader's index, the position after the last
    /// whole record (where to read on), and the index the reader continues from (everything
    /// before it is covered: entries between records changed nothing).
    Entries {
        /// The entries at or after the index asked for, in order.
        entries: Vec<HistoryEntry>,
        /// Where the next read starts.
        next: Lsn,
        /// The reader's next index.
        next_index: u64,
    },
    /// The record at the read's start is larger than the read: read again with this many
    /// bytes.
    Larger(usize),
    /// The segment left the history meanwhile (retired, or the history restarted): plan
    /// again.
    Gone,
}

/// What [`HistoryLog::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The history, ready to record.
    pub log: HistoryLog,
    /// Segments the history does not use (void, or unreadable): remove them before the first
    /// flush.
    pub discard: Vec<u64>,
    /// Why the history on disk was not kept, when it was not.
    pub restarted: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// The history reached this index before the segment began (its first record says so).
    through_before: u64,
    /// The history reached this index at the segment's last record.
    last_index: u64,
    /// When the newest entry in it was applied (ms since the epoch; 0: none).
    last_time_ms: u64,
    /// Where the bytes appended to it end.
    end: u64,
}

impl Segment {
    fn bytes(&self) -> u64 {
        self.end.saturating_sub(SEGMENT_HEADER_BYTES)
    }
}

/// One shard's watch history. See the module docs.
#[derive(Debug)]
pub struct HistoryLog {
    wal: WalWriter,
    segments: BTreeMap<u64, Segment>,
    /// Bytes of records in `segments`.
    disk_bytes: u64,
    /// Where records start, every [`HISTORY_MARK_BYTES`] or so: (entry index, position).
    marks: VecDeque<(u64, Lsn)>,
    bytes_since_mark: u64,
    /// The newest entries, with the position just past each record.
    cache: VecDeque<(Arc<HistoryEntry>, Lsn)>,
    cache_bytes: usize,
    cache_bytes_max: usize,
    /// Every change from this index to `through` is in `cache`.
    cache_from: u64,
    /// The oldest index covered.
    first: u64,
    /// The newest index covered: the last applied entry recorded.
    through: u64,
    /// The highest index a record appended so far says the history reaches.
    through_appended: u64,
    /// Appended records not yet durable: (position just past it, index it says the history
    /// reaches).
    pending: VecDeque<(Lsn, u64)>,
    durable_through: u64,
    /// A snapshot waits for the history to be durable through this index.
    want_durable: u64,
    /// When the oldest unflushed record was appended (µs, the caller's clock).
    unflushed_since_us: Option<u64>,
    retention: Retention,
    /// The history's disk failed: it lives in memory only until the node restarts.
    failed: Option<String>,
    stats: HistoryStats,
    scratch: Vec<u8>,
}

#[derive(Debug, Default)]
struct Scan {
    segments: BTreeMap<u64, Segment>,
    marks: VecDeque<(u64, Lsn)>,
    bytes_since_mark: u64,
    through: u64,
    first: Option<u64>,
    /// Segments before this one are void (a `RESET` was found in it).
    void_before: Option<u64>,
}

impl Scan {
    fn visit(&mut self, seq: u64, offset: u64, kind: u8, payload: &[u8]) -> Result<(), String> {
        let end = offset + record_size(payload.len()) as u64;
        let fresh = !self.segments.contains_key(&seq);
        if fresh && kind == KIND_ENTRY {
            return Err("a history segment that does not start with how far it reaches".into());
        }
        match kind {
            KIND_THROUGH => {
                let index = records::decode_index(payload)?;
                if index < self.through {
                    return Err(format!("reach {index} after {}", self.through));
                }
                self.through = index;
            }
            KIND_RESET => {
                let index = records::decode_index(payload)?;
                self.void_before = Some(seq);
                self.segments.retain(|&s, _| s == seq);
                self.marks.clear();
                self.through = index;
                self.first = Some(index + 1);
                if let Some(segment) = self.segments.get_mut(&seq) {
                    segment.through_before = index;
                }
            }
            KIND_ENTRY => {
                let (index, time_ms) = records::entry_header(payload)?;
                if index <= self.through {
                    return Err(format!(
                        "entry {index} after the history reached {}",
                        self.through
                    ));
                }
                self.through = index;
                if self.marks.is_empty()
                    || self.bytes_since_mark >= HISTORY_MARK_BYTES
                    || self.marks.back().is_some_and(|(_, at)| at.seq != seq)
                {
                    self.marks.push_back((index, Lsn { seq, offset }));
                    self.bytes_since_mark = 0;
                }
                self.bytes_since_mark += end - offset;
                let segment = self.segments.get_mut(&seq).expect("not fresh");
                segment.last_time_ms = time_ms;
            }
            other => return Err(format!("record kind {other} is not a history record")),
        }
        let through = self.through;
        let segment = self.segments.entry(seq).or_insert(Segment {
            through_before: through,
            last_index: through,
            last_time_ms: 0,
            end,
        });
        segment.last_index = through;
        segment.end = end;
        Ok(())
    }
}

impl HistoryLog {
    /// Opens the history in `source` for a replica whose state is at `state_index` (its
    /// snapshot's index, or 0): keeps what is on disk when it reaches `state_index` and
    /// reads back, else starts an empty history after `state_index` (see the module docs).
    pub fn open(
        source: &dyn SegmentSource,
        identity: SegmentIdentity,
        segment_bytes: u64,
        state_index: u64,
        retention: Retention,
    ) -> Opened {
        let listed = source.list().unwrap_or_default();
        let mut scan = Scan::default();
        let recovered = recover(source, &identity, RecoveryMode::Strict, |r| {
            scan.visit(r.seq, r.offset, r.kind, r.payload).map_err(|reason| {
                crate::StorageError::Corrupt { path: source.path(r.seq), offset: r.offset, reason }
            })
        });
        let restart = |why: String| {
            let next_seq = listed.last().map_or(1, |last| last + 1);
            let log = HistoryLog::fresh(
                identity.clone(),
                segment_bytes,
                next_seq,
                state_index,
                retention,
            );
            Opened { log, discard: listed.clone(), restarted: Some(why) }
        };
        let recovered = match recovered {
            Ok(recovered) => recovered,
            Err(error) => return restart(format!("the history does not read back: {error}")),
        };
        if scan.through < state_index {
            return restart(format!(
                "the history reaches index {}, the state starts at {state_index}",
                scan.through
            ));
        }
        let void_before = scan.void_before.unwrap_or(0);
        let discard: Vec<u64> =
            recovered.segments.iter().copied().filter(|&s| s < void_before).collect();
        let mut segments = scan.segments;
        let first = match scan.first {
            Some(first) => first,
            None => segments.values().next().map_or(state_index + 1, |s| s.through_before + 1),
        };
        let tail: WalTail = recovered.tail.clone();
        let fresh_segment = tail.needs_activation;
        segments.entry(tail.seq).or_insert(Segment {
            through_before: scan.through,
            last_index: scan.through,
            last_time_ms: 0,
            end: tail.append_offset,
        });
        let mut log = HistoryLog::with_writer(
            WalWriter::resume(identity, segment_bytes, tail),
            retention,
            scan.through,
        );
        log.disk_bytes = segments.values().map(Segment::bytes).sum();
        log.segments = segments;
        log.marks = scan.marks;
        log.bytes_since_mark = scan.bytes_since_mark;
        log.first = first;
        if fresh_segment {
            log.append_marker(KIND_THROUGH, scan.through);
        }
        Opened { log, discard, restarted: None }
    }

    /// An empty history after `index`, writing from segment `seq` on.
    fn fresh(
        identity: SegmentIdentity,
        segment_bytes: u64,
        seq: u64,
        index: u64,
        retention: Retention,
    ) -> HistoryLog {
        let tail = WalTail {
            seq,
            append_offset: SEGMENT_HEADER_BYTES,
            partial_block: Vec::new(),
            next_flush_seq: 1,
            needs_activation: true,
        };
        let mut log = HistoryLog::with_writer(
            WalWriter::resume(identity, segment_bytes, tail),
            retention,
            index,
        );
        log.segments.insert(
            seq,
            Segment {
                through_before: index,
                last_index: index,
                last_time_ms: 0,
                end: SEGMENT_HEADER_BYTES,
            },
        );
        log.append_marker(KIND_RESET, index);
        log
    }

    fn with_writer(mut wal: WalWriter, retention: Retention, through: u64) -> HistoryLog {
        wal.set_buffer_limit(HISTORY_BUFFER_BYTES_MAX);
        HistoryLog {
            wal,
            segments: BTreeMap::new(),
            disk_bytes: 0,
            marks: VecDeque::new(),
            bytes_since_mark: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_bytes_max: HISTORY_CACHE_BYTES_MAX,
            cache_from: through + 1,
            first: through + 1,
            through,
            through_appended: through,
            pending: VecDeque::new(),
            durable_through: through,
            want_durable: 0,
            unflushed_since_us: None,
            retention,
            failed: None,
            stats: HistoryStats::default(),
            scratch: Vec::new(),
        }
    }

    /// The oldest index the history covers.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The newest index the history covers (the last entry recorded).
    pub fn through(&self) -> u64 {
        self.through
    }

    /// The history is durable through this index.
    pub fn durable_through(&self) -> u64 {
        if self.failed.is_some() {
            // Nothing more will be: a snapshot must not wait for it.
            return self.through;
        }
        self.durable_through
    }

    /// Bytes of history on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Bytes of history in memory.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Counts for metrics.
    pub fn stats(&self) -> HistoryStats {
        self.stats
    }

    /// Sets how much history to keep (from the next [`HistoryLog::retire`]).
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// Sets how many bytes of the newest entries stay in memory (tests make it small, to
    /// have watchers read from disk).
    pub fn set_cache_limit(&mut self, bytes: usize) {
        self.cache_bytes_max = bytes;
        self.evict();
    }

    /// Whether so much is waiting to be flushed that the caller should hold back applying
    /// entries until a flush completes (so recording never has to drop a record).
    pub fn backlogged(&self) -> bool {
        self.failed.is_none() && self.wal.buffered_bytes() >= HISTORY_BACKLOG_BYTES
    }

    /// Records that entry `index`, applied at `time_ms`, made `changes`. Returns the entry
    /// for live watchers, or `None` when it changed nothing or was recorded before a restart.
    pub fn record(
        &mut self,
        index: u64,
        time_ms: u64,
        changes: ChangeSet,
        now_us: u64,
    ) -> Option<Arc<HistoryEntry>> {
        if index <= self.through {
            return None;
        }
        if changes.is_empty() {
            self.through = index;
            return None;
        }
        let mut header = std::mem::take(&mut self.scratch);
        header.clear();
        records::encode_header(&mut header, index, time_ms, &changes);
        let entry = Arc::new(HistoryEntry::new(index, time_ms, changes));
        let end = if self.failed.is_none() {
            let parts = [header.as_slice(), records::change_bytes(&entry)];
            match self.append(KIND_ENTRY, &parts, index) {
                Ok((start, end)) => {
                    self.note_entry(index, time_ms, start, end);
                    Some(end)
                }
                Err(refused) => {
                    self.lose(format!("a record of entry {index} was refused: {refused:?}"));
                    None
                }
            }
        } else {
            None
        };
        self.scratch = header;
        self.through = index;
        self.unflushed_since_us.get_or_insert(now_us);
        self.cache_bytes += entry.bytes();
        self.cache.push_back((entry.clone(), end.unwrap_or_default()));
        self.evict();
        Some(entry)
    }

    fn note_entry(&mut self, index: u64, time_ms: u64, start: Lsn, end: Lsn) {
        if self.marks.is_empty()
            || self.bytes_since_mark >= HISTORY_MARK_BYTES
            || self.marks.back().is_some_and(|(_, at)| at.seq != start.seq)
        {
            self.marks.push_back((index, start));
            self.bytes_since_mark = 0;
        }
        self.bytes_since_mark += end.offset - start.offset;
        let segment = self.segments.get_mut(&start.seq).expect("appends go to a known segment");
        segment.last_index = index;
        segment.last_time_ms = time_ms;
    }

    /// Appends one record, rolling over to a new segment first (with its `THROUGH` marker)
    /// when it would not fit. Returns where it starts and ends.
    fn append(
        &mut self,
        kind: u8,
        parts: &[&[u8]],
        reach: u64,
    ) -> Result<(Lsn, Lsn), AppendRefused> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // A record must fit a new segment after its `THROUGH` marker.
        if len + record_size(records::encode_index(0).len()) > self.wal.record_payload_max() {
            return Err(AppendRefused::TooLarge { size: len });
        }
        if self.wal.would_roll_over(len) {
            self.wal.roll_over();
            let seq = self.wal.active_seq();
            let through = self.through_appended.max(self.through);
            self.segments.insert(
                seq,
                Segment {
                    through_before: through,
                    last_index: through,
                    last_time_ms: 0,
                    end: SEGMENT_HEADER_BYTES,
                },
            );
            let marker = records::encode_index(through);
            self.append_raw(KIND_THROUGH, &[&marker], through)?;
        }
        self.append_raw(kind, parts, reach)
    }

    fn append_raw(
        &mut self,
        kind: u8,
        parts: &[&[u8]],
        reach: u64,
    ) -> Result<(Lsn, Lsn), AppendRefused> {
        let start = self.wal.appended();
        let end = self.wal.append_parts(kind, parts)?;
        debug_assert_eq!(start.seq, end.seq, "rolled over without a marker");
        let segment = self.segments.get_mut(&end.seq).expect("appends go to a known segment");
        self.disk_bytes += end.offset - segment.end;
        segment.end = end.offset;
        self.through_appended = self.through_appended.max(reach);
        self.pending.push_back((end, reach));
        Ok((start, end))
    }

    /// Appends a `THROUGH` or `RESET` marker.
    fn append_marker(&mut self, kind: u8, index: u64) {
        let marker = records::encode_index(index);
        if let Err(refused) = self.append(kind, &[&marker], index) {
            self.lose(format!("a marker was refused: {refused:?}"));
        }
    }

    /// The state was replaced by a snapshot at `index` (a leader's): the history restarts
    /// after it.
    pub fn reset(&mut self, index: u64) {
        if index <= self.through {
            return;
        }
        self.stats.resets += 1;
        self.restart_after(index);
        if self.failed.is_none() {
            self.append_marker(KIND_RESET, index);
        }
    }

    fn restart_after(&mut self, index: u64) {
        self.cache.clear();
        self.cache_bytes = 0;
        self.marks.clear();
        self.bytes_since_mark = 0;
        self.through = index;
        self.first = index + 1;
        self.cache_from = index + 1;
    }

    /// The history's disk failed (or refused a record): from now on it lives in memory only,
    /// restarting after what it has recorded.
    fn lose(&mut self, why: String) {
        tracing::error!(%why, "the watch history on disk is given up until the node restarts");
        self.stats.resets += 1;
        self.failed = Some(why);
        // What is on disk is no longer read; the cache still covers what it holds.
        self.marks.clear();
        self.first = self.first.max(self.cache_from);
    }

    /// A history flush job: what was appended (and a `THROUGH` marker of how far the history
    /// now reaches), once there is enough of it, it waited long enough, or a snapshot waits
    /// for it. `None` while a job is in flight.
    pub fn take_flush_job(&mut self, now_us: u64) -> Option<FlushJob> {
        if self.failed.is_some() || self.wal.flush_in_flight() {
            return None;
        }
        let waited = self
            .unflushed_since_us
            .is_some_and(|since| now_us.saturating_sub(since) >= HISTORY_FLUSH_DELAY_US);
        let wanted = self.want_durable > self.durable_through;
        let due = waited || wanted || self.wal.buffered_bytes() >= HISTORY_FLUSH_BYTES;
        if !due {
            return None;
        }
        if self.through > self.through_appended {
            self.append_marker(KIND_THROUGH, self.through);
        }
        self.unflushed_since_us = None;
        self.wal.take_flush_job()
    }

    /// When the next flush job is due (µs, the caller's clock), if something waits.
    pub fn flush_due_us(&self) -> Option<u64> {
        if self.failed.is_some() {
            return None;
        }
        if self.want_durable > self.durable_through {
            return Some(0);
        }
        self.unflushed_since_us.map(|since| since + HISTORY_FLUSH_DELAY_US)
    }

    /// Asks for the history to be durable through `index` (a snapshot of that index waits).
    pub fn want_durable(&mut self, index: u64) {
        self.want_durable = self.want_durable.max(index);
    }

    /// A flush job finished.
    pub fn on_flush_complete(&mut self, job: FlushJob) {
        let durable = self.wal.complete(job);
        while let Some(&(end, reach)) = self.pending.front() {
            if end > durable {
                break;
            }
            self.durable_through = self.durable_through.max(reach);
            self.pending.pop_front();
        }
        self.evict();
    }

    /// A flush job failed: the history keeps going in memory only.
    pub fn on_flush_failed(&mut self, error: String) {
        self.wal.fail(error.clone());
        self.lose(format!("a history flush failed: {error}"));
    }

    fn evict(&mut self) {
        let durable = self.wal.durable();
        while self.cache_bytes > self.cache_bytes_max {
            let Some((entry, end)) = self.cache.front() else { break };
            if self.failed.is_none() && *end > durable {
                break;
            }
            self.cache_bytes -= entry.bytes();
            self.cache_from = entry.index + 1;
            if self.failed.is_some() {
                self.first = self.first.max(self.cache_from);
            }
            self.cache.pop_front();
        }
    }

    /// Segments the retention lets go (see [`Retention`]), oldest first; the history now
    /// starts after them. `now_ms` is the wall clock.
    pub fn retire(&mut self, now_ms: u64) -> Vec<u64> {
        let mut retired = Vec::new();
        let active = self.wal.active_seq();
        while let Some((&seq, &segment)) = self.segments.iter().next() {
            let Some((_, next)) = self.segments.range(seq + 1..).next() else { break };
            if seq == active {
                break;
            }
            let r = &self.retention;
            let rest = self.disk_bytes - segment.bytes();
            let over = self.disk_bytes > r.max_bytes;
            let beyond = rest >= r.min_bytes
                && self.through.saturating_sub(segment.last_index) >= r.min_entries
                && now_ms.saturating_sub(segment.last_time_ms) >= r.min_age_ms;
            if !over && !beyond {
                break;
            }
            if !beyond {
                self.stats.cut_by_size += 1;
            }
            self.first = self.first.max(next.through_before + 1);
            self.disk_bytes = rest;
            self.segments.remove(&seq);
            while self.marks.front().is_some_and(|(_, at)| at.seq <= seq) {
                self.marks.pop_front();
            }
            retired.push(seq);
        }
        retired
    }

    /// Where a reader that wants the changes from `from` on gets them; `cont`, where its
    /// last read ended (to read on from there rather than look the index up).
    pub fn plan(&self, from: u64, cont: Option<Lsn>) -> Plan {
        if from < self.first {
            return Plan::Compacted { first: self.first };
        }
        if from > self.through {
            return Plan::UpToDate;
        }
        if from >= self.cache_from {
            return Plan::Cache;
        }
        let start = cont
            .filter(|at| self.segments.contains_key(&at.seq))
            .unwrap_or_else(|| self.mark_for(from));
        let mut at = start;
        loop {
            let end = self.readable_end(at.seq);
            if at.offset < end {
                let len = (end - at.offset).min(HISTORY_READ_BYTES as u64) as usize;
                return Plan::Disk(HistoryRead { seq: at.seq, offset: at.offset, len });
            }
            match self.segments.range(at.seq + 1..).next() {
                Some((&seq, _)) => at = Lsn { seq, offset: SEGMENT_HEADER_BYTES },
                // Read to the end of the disk: what is left is in the cache.
                None => return Plan::Cache,
            }
        }
    }

    /// The records at or after `from` in the cache (call when [`HistoryLog::plan`] says
    /// [`Plan::Cache`]).
    pub fn cached(&self, from: u64) -> impl Iterator<Item = &Arc<HistoryEntry>> {
        let start = self.cache.partition_point(|(entry, _)| entry.index < from);
        self.cache.range(start..).map(|(entry, _)| entry)
    }

    /// The index from which the cache holds every change (a reader that reached the end of
    /// the disk's records continues here).
    pub fn cache_from(&self) -> u64 {
        self.cache_from
    }

    /// Where to start reading for the records from `from` on: the last mark at or before
    /// it, else the oldest segment's start (never a mark after it: the records between
    /// would be skipped).
    fn mark_for(&self, from: u64) -> Lsn {
        let after = self.marks.partition_point(|(index, _)| *index <= from);
        match after.checked_sub(1).and_then(|i| self.marks.get(i)) {
            Some(&(_, at)) => at,
            None => {
                let seq = self.segments.keys().next().copied().unwrap_or(1);
                Lsn { seq, offset: SEGMENT_HEADER_BYTES }
            }
        }
    }

    /// Whether segment `seq` is part of the history.
    pub fn holds_segment(&self, seq: u64) -> bool {
        self.segments.contains_key(&seq)
    }

    /// How far segment `seq` can be read: its records that are durable.
    fn readable_end(&self, seq: u64) -> u64 {
        let Some(segment) = self.segments.get(&seq) else { return 0 };
        let durable = self.wal.durable();
        if durable.seq > seq {
            segment.end
        } else if durable.seq == seq {
            segment.end.min(durable.offset)
        } else {
            0
        }
    }

    /// Makes sense of the bytes a [`HistoryRead`] gave, for a reader at index `from`. An
    /// error is damage: the caller gives up the history up to and including that segment
    /// ([`HistoryLog::cut_through`]).
    pub fn parse(&self, read: &HistoryRead, bytes: &[u8], from: u64) -> Result<ReadBack, String> {
        if !self.segments.contains_key(&read.seq) || from < self.first {
            return Ok(ReadBack::Gone);
        }
        let mut entries = Vec::new();
        let mut off = 0usize;
        let mut next_index = from;
        while off < bytes.len() {
            match parse_record(bytes, off, read.seq) {
                Ok(view) if view.kind == KIND_SEAL => break,
                Ok(view) => {
                    if view.kind == KIND_ENTRY {
                        let (index, _) = records::entry_header(view.payload)?;
                        if index >= from {
                            entries.push(records::decode_entry(view.payload)?);
                        }
                        next_index = next_index.max(index + 1);
                    } else if view.kind != KIND_THROUGH && view.kind != KIND_RESET {
                        return Err(format!("record kind {} in the history", view.kind));
                    }
                    off += view.size;
                }
                Err(RecordProblem::Truncated { len }) if off == 0 => {
                    return Ok(ReadBack::Larger(record_size(len)));
                }
                Err(RecordProblem::Truncated { .. } | RecordProblem::NoRoomForHeader) => break,
                Err(problem) => {
                    return Err(format!("{problem} at byte {}", read.offset + off as u64));
                }
            }
        }
        let next = Lsn { seq: read.seq, offset: read.offset + off as u64 };
        let last_seq = self.segments.keys().next_back().copied().unwrap_or(0);
        if next.seq == last_seq && next.offset >= self.readable_end(next.seq) {
            next_index = next_index.max(self.cache_from);
        }
        Ok(ReadBack::Entries { entries, next, next_index })
    }

    /// Segment `seq` did not read back: the history gives up everything up to and including
    /// it. Returns the segments to retire.
    pub fn cut_through(&mut self, seq: u64) -> Vec<u64> {
        if !self.segments.contains_key(&seq) {
            // Retired meanwhile: nothing to give up.
            return Vec::new();
        }
        let mut retired = Vec::new();
        while let Some((&s, &segment)) = self.segments.iter().next() {
            if s > seq || s == self.wal.active_seq() {
                break;
            }
            self.disk_bytes -= segment.bytes();
            self.segments.remove(&s);
            retired.push(s);
        }
        while self.marks.front().is_some_and(|(_, at)| at.seq <= seq) {
            self.marks.pop_front();
        }
        self.stats.resets += 1;
        let restart = self.segments.values().next().map(|s| s.through_before + 1);
        match restart {
            Some(first) if retired.last() == Some(&seq) => self.first = self.first.max(first),
            // The damaged segment is the one being written: keep only the cache.
            _ => self.first = self.first.max(self.cache_from),
        }
        retired
    }
}

#[cfg(test)]
mod tests;
