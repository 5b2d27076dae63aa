//! raft-rs's [`raft::Storage`] on top of the WAL: the raft log, the hard state and compaction
//! of one shard.
//!
//! What goes into the WAL (record kinds of this layer):
//!
//! | kind | payload | meaning on replay |
//! | --- | --- | --- |
//! | 1 `ENTRIES` | first index u64, count u32, then per entry: term u64, type u8, data length u32, context length u32, data, context | entries from `first` on replace whatever the log held from `first` on (a conflicting suffix is overwritten) |
//! | 2 `HARD_STATE` | term u64, vote u64, commit u64 | the latest wins |
//! | 3 `COMPACT` | index u64, term u64 | entries up to `index` are gone; `term` is the term of `index` |
//! | 4 `SNAPSHOT_RESET` | index u64, term u64 | the whole log was replaced by a snapshot at `index` |
//! | 5 `REBUILDING` | set u8 (1 or 0), target u64 | the latest wins: whether the replica is catching up before it votes again, and the commit index it catches up to (0: not known yet); see [`RaftLogStore::set_rebuilding`] |
//!
//! Every new segment starts with the current hard state and compaction point, and the
//! rebuilding mark while it is set (its *preamble*), so that older segments can be removed
//! without losing them: a segment is retired once every entry in it is at or below a durable
//! compaction point and a later segment holds a durable preamble.
//!
//! Asynchronous persistence (raft-rs's `advance_append_async` / `on_persist_ready`): appended
//! entries are visible through [`raft::Storage`] at once, before they are durable, as raft-rs
//! requires; each append returns the WAL position ([`Lsn`]) that makes it durable, and
//! [`RaftLogStore::on_flush_complete`] reports the durable position so the caller can tell
//! raft-rs which readies are persisted.
//!
//! Memory: the most recent entries, up to [`ENTRY_CACHE_BYTES_MAX`] bytes, are kept in memory;
//! older ones are read back from their segment (checksum verified) when a lagging follower
//! needs them — by the shell, off the executor, when raft-rs can wait for them (the `cold`
//! module).
//! Every live entry also costs a 24-byte location record; compaction bounds their number.

mod cold;
mod records;
mod replay;
mod storage_impl;

pub use cold::{ColdFetch, ColdRead};
pub use records::{
    KIND_COMPACT, KIND_ENTRIES, KIND_HARD_STATE, KIND_REBUILDING, KIND_SNAPSHOT_RESET,
};

use records::{
    encode_hard_state, encode_pair, encode_rebuilding, entry_bytes, ENTRIES_HEADER_BYTES,
};
use replay::Replay;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::constants::{
    ENTRY_CACHE_BYTES_MAX, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::error::{Result, StorageError};
use crate::wal::recovery::{recover, Recovered, RecoveryMode, SegmentSource};
use crate::wal::{AppendRefused, FlushJob, Lsn, SegmentIdentity, WalWriter};

/// Where an entry lives on disk, and its term (so term lookups never touch the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntryLoc {
    term: u64,
    seq: u32,
    /// Offset of the record header in the segment.
    record_offset: u32,
    /// Header plus payload bytes of the record.
    record_len: u32,
    /// Offset of the entry inside the record payload.
    entry_pos: u32,
}

/// What a completed flush made durable, and what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushDone {
    /// Everything before this position is durable.
    pub durable: Lsn,
    /// Segments no longer needed by the log: retire them (recycle or delete the files).
    pub retire: Vec<u64>,
}

/// raft-rs storage backed by one shard's WAL. See the module docs.
pub struct RaftLogStore {
    wal: WalWriter,
    source: Box<dyn SegmentSource>,
    conf_state: ConfState,
    hard_state: HardState,
    /// Entries up to here are gone.
    compact_index: u64,
    /// Term of the entry at `compact_index`.
    compact_term: u64,
    /// Locations of entries `compact_index + 1 ..= last_index`.
    locs: VecDeque<EntryLoc>,
    /// The newest entries, ending at `last_index`. After a compaction its front may still hold
    /// compacted entries, until [`RaftLogStore::trim`] frees them.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Entries a snapshot reset let go of, until [`RaftLogStore::trim`] frees them.
    stale: VecDeque<Entry>,
    stale_bytes: usize,
    /// Most bytes `cache` holds; [`ENTRY_CACHE_BYTES_MAX`] unless set otherwise.
    cache_bytes_max: usize,
    /// Segments in the log, and the highest entry index each one holds (0 for none).
    segments: BTreeMap<u64, u64>,
    /// Compaction points whose marker record is not durable yet.
    pending_compactions: VecDeque<(Lsn, u64)>,
    /// The highest compaction point whose marker is durable.
    durable_compact_index: u64,
    /// Records read back for lagging followers, and the reads raft-rs waits for.
    cold: RefCell<cold::ColdRecords>,
    snapshot: Snapshot,
    /// Whether raft-rs asked for a snapshot that `snapshot` is not (none yet, older than a
    /// follower asked for, or one whose configuration leaves out the follower it is for).
    snapshot_wanted: std::cell::Cell<bool>,
    /// The rebuilding mark (see [`RaftLogStore::set_rebuilding`]), as last set.
    rebuilding: Option<u64>,
    /// Hard states whose commit index is not durable yet: (position, commit index).
    pending_commits: VecDeque<(Lsn, u64)>,
    /// The highest commit index of a durable hard state.
    durable_commit: u64,
}

impl std::fmt::Debug for RaftLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogStore")
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("hard_state", &self.hard_state)
            .field("durable", &self.wal.durable())
            .finish()
    }
}

impl RaftLogStore {
    /// Opens a shard's log: recovers the WAL from `source` and rebuilds the index, hard state
    /// and compaction point. `conf_state` is the raft configuration as of the state the
    /// replica starts from (its snapshot's, or a new cluster's first voters): raft-rs reads it
    /// once, and the configuration changes in the log after it apply on top.
    pub fn open(
        source: Box<dyn SegmentSource>,
        identity: SegmentIdentity,
        segment_bytes: u64,
        conf_state: ConfState,
        mode: RecoveryMode,
    ) -> Result<(Self, Recovered)> {
        let mut replay = Replay::default();
        let recovered = recover(source.as_ref(), &identity, mode, |record| {
            replay.apply(record.seq, record.offset, record.kind, record.payload).map_err(|reason| {
                StorageError::Corrupt {
                    path: source.path(record.seq),
                    offset: record.offset,
                    reason,
                }
            })
        })?;
        replay.check(&source.dir())?;
        let mut segments: BTreeMap<u64, u64> = recovered.segments.iter().map(|&s| (s, 0)).collect();
        for (seq, max) in replay.segment_max_index {
            if let Some(slot) = segments.get_mut(&seq) {
                *slot = max;
            }
        }
        segments.entry(recovered.tail.seq).or_insert(0);
        let wal = WalWriter::resume(identity, segment_bytes, recovered.tail.clone());
        let durable_commit = replay.hard_state.commit;
        let mut store = RaftLogStore {
            wal,
            source,
            conf_state,
            hard_state: replay.hard_state,
            compact_index: replay.compact_index,
            compact_term: replay.compact_term,
            locs: replay.locs,
            cache: replay.cache,
            cache_bytes: replay.cache_bytes,
            stale: VecDeque::new(),
            stale_bytes: 0,
            cache_bytes_max: ENTRY_CACHE_BYTES_MAX,
            segments,
            pending_compactions: VecDeque::new(),
            durable_compact_index: replay.compact_index,
            cold: RefCell::default(),
            snapshot: Snapshot::default(),
            snapshot_wanted: std::cell::Cell::new(false),
            rebuilding: replay.rebuilding,
            pending_commits: VecDeque::new(),
            durable_commit,
        };
        store.snapshot.mut_metadata().index = store.compact_index;
        store.snapshot.mut_metadata().term = store.compact_term;
        store.snapshot.mut_metadata().set_conf_state(store.conf_state.clone());
        if recovered.tail.needs_activation && recovered.tail.seq > 1 {
            // A fresh segment after recovery: give it the preamble a roll-over would have.
            store
                .append_preamble()
                .map_err(|refused| StorageError::Failed(format!("{refused:?}")))?;
        }
        Ok((store, recovered))
    }

    fn first(&self) -> u64 {
        self.compact_index + 1
    }

    fn last(&self) -> u64 {
        self.compact_index + self.locs.len() as u64
    }

    /// The current hard state (as last set, durable or not).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The index up to which the log is compacted, and its term.
    pub fn compacted(&self) -> (u64, u64) {
        (self.compact_index, self.compact_term)
    }

    /// The WAL writer (positions, buffered bytes, failure).
    pub fn wal(&self) -> &WalWriter {
        &self.wal
    }

    /// Segments currently in the log.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of memory the in-memory log holds: cached entries, location records and WAL
    /// records read back for lagging followers.
    pub fn memory_bytes(&self) -> usize {
        self.cache_bytes
            + self.stale_bytes
            + self.locs.len() * std::mem::size_of::<EntryLoc>()
            + self.cold.borrow().bytes()
    }

    /// Frees up to `max_entries` entries, or `max_bytes` of them, that a compaction or a
    /// snapshot reset let go of (at least one when there is any); returns whether more are
    /// left. Compactions and resets only detach entries, since freeing them there would free
    /// up to the whole cache ([`ENTRY_CACHE_BYTES_MAX`]) in one call: 1–30 ms measured for
    /// 20,000–33,000 entries on a loaded 2-vCPU machine. The owner calls this between other
    /// work until it returns false.
    pub fn trim(&mut self, max_entries: usize, max_bytes: usize) -> bool {
        let (mut entries, mut bytes) = (0, 0);
        while entries < max_entries.max(1) && bytes < max_bytes.max(1) {
            let freed = if let Some(old) = self.stale.pop_front() {
                let size = entry_bytes(&old);
                self.stale_bytes -= size;
                size
            } else if self.cache.len() > 1
                && self.cache.front().is_some_and(|e| e.index <= self.compact_index)
            {
                let old = self.cache.pop_front().expect("non-empty");
                let size = entry_bytes(&old);
                self.cache_bytes -= size;
                size
            } else {
                return false;
            };
            entries += 1;
            bytes += freed;
        }
        self.needs_trim()
    }

    /// Whether [`RaftLogStore::trim`] has anything to free.
    pub fn needs_trim(&self) -> bool {
        !self.stale.is_empty()
            || (self.cache.len() > 1
                && self.cache.front().is_some_and(|e| e.index <= self.compact_index))
    }

    /// Whether the WAL buffer has room for `bytes` more of records right now. An empty buffer
    /// always has: raft's unstable entries go into the log as one batch, and on a follower
    /// they can add up to more than the buffer (the leader's whole in-flight window of
    /// appends, stepped while a flush was in flight) — refusing them would wait forever.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.wal.has_room(bytes + 4 * RECORD_HEADER_BYTES)
    }

    /// Changes how many bytes of entries are kept in memory (tests use a small cache to
    /// exercise reads from disk).
    pub fn set_cache_limit(&mut self, bytes: usize) {
        self.cache_bytes_max = bytes;
        self.evict();
    }

    /// Drops the oldest cached entries past the limit — but never one whose WAL record is not
    /// durable yet: until its flush completes, the segment does not hold it, and a read back
    /// would find zeros. (With the default limits the write buffer is no larger than the
    /// cache, so this only holds back small caches; found by the simulator with one.)
    fn evict(&mut self) {
        let durable = self.wal.durable();
        while self.cache_bytes > self.cache_bytes_max && self.cache.len() > 1 {
            let index = self.cache.front().expect("non-empty").index;
            if index > self.compact_index {
                let loc = self.locs[(index - self.compact_index - 1) as usize];
                let end = Lsn {
                    seq: loc.seq as u64,
                    offset: loc.record_offset as u64 + loc.record_len as u64,
                };
                if end > durable {
                    break;
                }
            }
            let old = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= entry_bytes(&old);
        }
    }

    /// Raises the hard state's commit index to `index` when it is lower: a snapshot at `index`
    /// proves everything up to it committed, even if the commit index in the WAL lagged.
    pub fn ensure_committed(&mut self, index: u64) {
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
    }

    /// Sets the configuration [`raft::Storage::initial_state`] hands raft-rs (before raft-rs
    /// starts on the store; see [`RaftLogStore::open`]).
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.snapshot.mut_metadata().set_conf_state(conf_state.clone());
        self.conf_state = conf_state;
    }

    /// Whether raft-rs asked for a snapshot it could not have since the last call (see
    /// [`raft::Storage::snapshot`]): the caller takes a new one.
    pub fn take_snapshot_wanted(&mut self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Sets the snapshot that [`raft::Storage::snapshot`] hands out.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
    }

    fn append_preamble(&mut self) -> Result<Lsn, AppendRefused> {
        self.wal.append(KIND_HARD_STATE, &encode_hard_state(&self.hard_state))?;
        if self.rebuilding.is_some() {
            self.wal.append(KIND_REBUILDING, &encode_rebuilding(self.rebuilding))?;
        }
        self.wal.append(KIND_COMPACT, &encode_pair(self.compact_index, self.compact_term))
    }

    /// Appends one record, rolling over to a new segment (with its preamble) when needed.
    fn append_record(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, AppendRefused> {
        if self.wal.would_roll_over(payload.len()) {
            self.wal.roll_over();
            self.segments.insert(self.wal.active_seq(), 0);
            self.append_preamble()?;
        }
        self.wal.append(kind, payload)
    }

    /// An upper bound on the WAL bytes that entries of `total` bytes and the records written
    /// with them (the hard state after them, a preamble in each segment they start) take.
    fn batch_bytes(&self, total: usize) -> usize {
        let records = 1 + total / self.wal.record_payload_max();
        let segments = 2 + total / self.wal.segment_bytes() as usize;
        let per_record = ENTRIES_HEADER_BYTES + RECORD_HEADER_BYTES + RECORD_ALIGN_BYTES;
        let per_segment = SEGMENT_HEADER_BYTES as usize + 8 * RECORD_HEADER_BYTES + 256;
        total + records * per_record + segments * per_segment + 4 * RECORD_HEADER_BYTES + 256
    }

    /// Appends entries from raft's Ready. Entries at or after the first one's index that the
    /// log already holds are replaced (a follower overwriting a conflicting suffix). Returns the
    /// WAL position that makes them durable.
    ///
    /// # Panics
    /// If the entries do not follow the log (a hole, or reaching into the compacted prefix) —
    /// raft-rs never asks for that.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Lsn, AppendRefused> {
        let Some(first) = entries.first() else {
            return Ok(self.wal.appended());
        };
        let first_index = first.index;
        assert!(
            first_index > self.compact_index && first_index <= self.last() + 1,
            "entries from {first_index} do not follow the log [{}, {}]",
            self.first(),
            self.last()
        );
        let total: usize = entries.iter().map(entry_bytes).sum();
        if !self
            .has_room(total + ENTRIES_HEADER_BYTES * (1 + total / self.wal.record_payload_max()))
        {
            return Err(AppendRefused::Full { buffered: self.wal.buffered_bytes(), record: total });
        }
        self.wal.take_batch(self.batch_bytes(total));
        self.truncate_from(first_index);
        let mut lsn = self.wal.appended();
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut size = ENTRIES_HEADER_BYTES;
            let chunk_max = self.wal.record_payload_max();
            while end < entries.len()
                && (end == start || size + entry_bytes(&entries[end]) <= chunk_max)
            {
                size += entry_bytes(&entries[end]);
                end += 1;
            }
            lsn = self.append_chunk(&entries[start..end], size)?;
            start = end;
        }
        Ok(lsn)
    }

    fn append_chunk(&mut self, entries: &[Entry], size: usize) -> Result<Lsn, AppendRefused> {
        let mut payload = Vec::with_capacity(size);
        payload.extend_from_slice(&entries[0].index.to_le_bytes());
        payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        let mut positions = Vec::with_capacity(entries.len());
        for entry in entries {
            positions.push(payload.len() as u32);
            payload.extend_from_slice(&entry.term.to_le_bytes());
            payload.push(entry.get_entry_type() as u8);
            payload.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
            payload.extend_from_slice(&(entry.context.len() as u32).to_le_bytes());
            payload.extend_from_slice(&entry.data);
            payload.extend_from_slice(&entry.context);
        }
        let lsn = self.append_record(KIND_ENTRIES, &payload)?;
        let record_len = (RECORD_HEADER_BYTES + payload.len()) as u32;
        let record_offset =
            (lsn.offset - crate::wal::format::record_size(payload.len()) as u64) as u32;
        for (entry, pos) in entries.iter().zip(positions) {
            debug_assert_eq!(entry.index, self.last() + 1);
            self.locs.push_back(EntryLoc {
                term: entry.term,
                seq: lsn.seq as u32,
                record_offset,
                record_len,
                entry_pos: pos,
            });
            self.cache_push(entry.clone());
        }
        let last = self.last();
        self.segments.insert(lsn.seq, last);
        Ok(lsn)
    }

    fn cache_push(&mut self, entry: Entry) {
        self.cache_bytes += entry_bytes(&entry);
        self.cache.push_back(entry);
        self.evict();
    }

    /// Drops entries at and after `index` from the in-memory log.
    fn truncate_from(&mut self, index: u64) {
        while self.last() >= index && !self.locs.is_empty() {
            self.locs.pop_back();
            if let Some(entry) = self.cache.back() {
                if entry.index >= index {
                    self.cache_bytes -= entry_bytes(entry);
                    self.cache.pop_back();
                }
            }
        }
    }

    /// The rebuilding mark: the commit index the replica catches up to (0: not known yet), or
    /// `None` when it is not rebuilding (as last set, durable or not).
    pub fn rebuilding(&self) -> Option<u64> {
        self.rebuilding
    }

    /// Sets, raises or clears the rebuilding mark. The shard core sets it while a replica
    /// that lost its data (or is new to a running cluster) catches up before it votes again,
    /// so that a restart part way does not take its partial log for a whole one, and goes on
    /// towards the same target. Records appended after this one are durable only after it.
    /// Returns the WAL position that makes it durable (`None` when nothing changed).
    pub fn set_rebuilding(&mut self, mark: Option<u64>) -> Result<Option<Lsn>, AppendRefused> {
        if self.rebuilding == mark {
            return Ok(None);
        }
        let lsn = self.append_record(KIND_REBUILDING, &encode_rebuilding(mark))?;
        self.rebuilding = mark;
        Ok(Some(lsn))
    }

    /// Records a new hard state. Returns the WAL position that makes it durable.
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<Lsn, AppendRefused> {
        let lsn = self.append_record(KIND_HARD_STATE, &encode_hard_state(hard_state))?;
        if hard_state.commit > self.hard_state.commit {
            self.pending_commits.push_back((lsn, hard_state.commit));
        }
        self.hard_state = hard_state.clone();
        Ok(lsn)
    }

    /// The highest commit index a durable hard state holds: what a restart would find.
    pub fn durable_commit(&self) -> u64 {
        self.durable_commit
    }

    /// Drops entries up to and including `index` (it must be applied and covered by a
    /// snapshot). Segments whose entries are all compacted are retired once the compaction
    /// marker is durable.
    pub fn compact(&mut self, index: u64) -> Result<Lsn, AppendRefused> {
        if index <= self.compact_index {
            return Ok(self.wal.appended());
        }
        assert!(index <= self.last(), "compacting to {index} past the last index {}", self.last());
        let term = self.locs[(index - self.compact_index - 1) as usize].term;
        let lsn = self.append_record(KIND_COMPACT, &encode_pair(index, term))?;
        let drop = (index - self.compact_index) as usize;
        self.locs.drain(..drop);
        // Cached entries up to `index` stay where they are (reads never reach them now) for
        // `trim` to free.
        self.compact_index = index;
        self.compact_term = term;
        self.pending_compactions.push_back((lsn, index));
        Ok(lsn)
    }

    /// Replaces the whole log with a snapshot at `(index, term)` (a follower installing a
    /// snapshot from its leader). The hard state that goes with it comes from raft's Ready
    /// through [`RaftLogStore::set_hard_state`].
    pub fn reset_to_snapshot(&mut self, snapshot: Snapshot) -> Result<Lsn, AppendRefused> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        let lsn = self.append_record(KIND_SNAPSHOT_RESET, &encode_pair(index, term))?;
        self.locs.clear();
        // Detached whole (no entry moves or is freed here), for `trim` to free.
        let old = std::mem::take(&mut self.cache);
        if self.stale.is_empty() {
            self.stale = old;
        } else {
            self.stale.extend(old);
        }
        self.stale_bytes += std::mem::take(&mut self.cache_bytes);
        self.compact_index = index;
        self.compact_term = term;
        self.pending_compactions.push_back((lsn, index));
        self.snapshot = snapshot;
        Ok(lsn)
    }

    /// Everything appended since the last job, for the I/O shell to write.
    pub fn take_flush_job(&mut self) -> Option<FlushJob> {
        self.wal.take_flush_job()
    }

    /// Records that `job` is durable. Returns the durable position and the segments that can
    /// now be retired (already removed from the log's own bookkeeping).
    pub fn on_flush_complete(&mut self, job: FlushJob) -> FlushDone {
        let durable = self.wal.complete(job);
        while let Some(&(lsn, commit)) = self.pending_commits.front() {
            if lsn > durable {
                break;
            }
            self.durable_commit = self.durable_commit.max(commit);
            self.pending_commits.pop_front();
        }
        while let Some(&(lsn, index)) = self.pending_compactions.front() {
            if lsn > durable {
                break;
            }
            self.durable_compact_index = self.durable_compact_index.max(index);
            self.pending_compactions.pop_front();
        }
        let mut retire = Vec::new();
        while let Some((&seq, &max_index)) = self.segments.iter().next() {
            if seq >= durable.seq || max_index > self.durable_compact_index {
                break;
            }
            retire.push(seq);
            self.segments.remove(&seq);
        }
        // Entries held back from eviction until they were durable can go now.
        self.evict();
        FlushDone { durable, retire }
    }

    /// Records that the flush in flight failed; the log accepts nothing more.
    pub fn on_flush_failed(&mut self, error: String) {
        self.wal.fail(error);
    }
}
