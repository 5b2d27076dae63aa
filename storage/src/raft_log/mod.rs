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

pub use cold::{ColdFetch, ColdRead};

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use crate::constants::{COLD_FETCH_RECORDS_MAX, ENTRY_CACHE_BYTES_MAX, RECORD_HEADER_BYTES};
use crate::error::{Result, StorageError};
use crate::wal::format::parse_record;
use crate::wal::recovery::{recover, Recovered, RecoveryMode, SegmentSource};
use crate::wal::{AppendRefused, FlushJob, Lsn, SegmentIdentity, WalWriter};

/// Record kind: a run of raft entries.
pub const KIND_ENTRIES: u8 = 1;
/// Record kind: the raft hard state.
pub const KIND_HARD_STATE: u8 = 2;
/// Record kind: the log was compacted up to an index.
pub const KIND_COMPACT: u8 = 3;
/// Record kind: the log was replaced by a snapshot.
pub const KIND_SNAPSHOT_RESET: u8 = 4;
/// Record kind: the replica's rebuilding mark was set or cleared.
pub const KIND_REBUILDING: u8 = 5;

/// Bytes of the per-entry header inside an `ENTRIES` payload.
const ENTRY_HEADER_BYTES: usize = 8 + 1 + 4 + 4;
/// Bytes of the `ENTRIES` payload header.
const ENTRIES_HEADER_BYTES: usize = 8 + 4;

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

fn entry_bytes(entry: &Entry) -> usize {
    ENTRY_HEADER_BYTES + entry.data.len() + entry.context.len()
}

fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

fn encode_hard_state(hs: &HardState) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&hs.term.to_le_bytes());
    out[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    out[16..].copy_from_slice(&hs.commit.to_le_bytes());
    out
}

fn encode_rebuilding(mark: Option<u64>) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = mark.is_some() as u8;
    out[1..].copy_from_slice(&mark.unwrap_or(0).to_le_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Decodes the entry at `pos` of an `ENTRIES` payload; returns it and the position after it.
fn decode_entry(payload: &Bytes, pos: usize, index: u64) -> Option<(Entry, usize)> {
    let term = u64_at(payload, pos)?;
    let entry_type = match *payload.get(pos + 8)? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    };
    let data_len = u32_at(payload, pos + 9)? as usize;
    let context_len = u32_at(payload, pos + 13)? as usize;
    let data_start = pos + ENTRY_HEADER_BYTES;
    let end = data_start.checked_add(data_len)?.checked_add(context_len)?;
    if end > payload.len() {
        return None;
    }
    let entry = Entry {
        term,
        index,
        entry_type,
        data: payload.slice(data_start..data_start + data_len),
        context: payload.slice(data_start + data_len..end),
        ..Default::default()
    };
    Some((entry, end))
}

fn parse_pair(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() != 16 {
        return None;
    }
    Some((u64_at(payload, 0)?, u64_at(payload, 8)?))
}

impl RaftLogStore {
    /// Opens a shard's log: recovers the WAL from `source` and rebuilds the index, hard state
    /// and compaction point. `conf_state` is the cluster's static membership.
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
        if replay.gap_floor > replay.marker_index {
            return Err(StorageError::Corrupt {
                path: source.dir(),
                offset: 0,
                reason: format!(
                    "log entries {}..={} are missing (no compaction covers them)",
                    replay.marker_index + 1,
                    replay.gap_floor
                ),
            });
        }
        let last = replay.compact_index + replay.locs.len() as u64;
        if replay.hard_state.commit > last {
            return Err(StorageError::Corrupt {
                path: source.dir(),
                offset: 0,
                reason: format!(
                    "hard state commits index {} but the log ends at {last}",
                    replay.hard_state.commit
                ),
            });
        }
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

    /// Whether the WAL buffer has room for `bytes` more of records right now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.wal.buffered_bytes() + bytes + 4 * RECORD_HEADER_BYTES
            <= crate::constants::WRITE_BUFFER_BYTES_MAX
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

    /// Entry `index` from its WAL record: from memory when the record was read back already;
    /// else read now when `read_now`, or `None` (the caller queues an asynchronous read).
    fn cold_entry(
        &self,
        cold: &mut cold::ColdRecords,
        index: u64,
        loc: EntryLoc,
        read_now: bool,
    ) -> raft::Result<Option<Entry>> {
        let key = (loc.seq as u64, loc.record_offset as u64);
        let corrupt = |reason: String| {
            raft::Error::Store(RaftStorageError::Other(Box::new(StorageError::Corrupt {
                path: self.source.path(loc.seq as u64),
                offset: loc.record_offset as u64,
                reason,
            })))
        };
        if let Some(reason) = cold.failure(key).filter(|_| !read_now).map(str::to_string) {
            // raft-rs treats any other storage error as fatal; "compacted" makes it send the
            // follower a snapshot instead, which does not need this record.
            cold.clear_failure(key);
            tracing::warn!(
                path = %self.source.path(loc.seq as u64).display(),
                offset = loc.record_offset,
                %reason,
                "reading a WAL record for a lagging follower failed; sending it a snapshot instead"
            );
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if cold.get(key).is_none() {
            if !read_now {
                return Ok(None);
            }
            let bytes = self
                .source
                .read_at(loc.seq as u64, loc.record_offset as u64, loc.record_len as usize)
                .map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))))?;
            let view =
                parse_record(&bytes, 0, loc.seq as u64).map_err(|p| corrupt(p.to_string()))?;
            cold.keep_last(key, Bytes::copy_from_slice(view.payload));
        }
        let payload = cold.get(key).expect("kept above");
        let (entry, _) = decode_entry(payload, loc.entry_pos as usize, index)
            .ok_or_else(|| corrupt(format!("entry {index} does not decode")))?;
        assert_eq!(entry.term, loc.term, "entry {index} read back with another term");
        Ok(Some(entry))
    }

    /// The WAL records holding entries `from..high` that are not in memory, in log order, up
    /// to about `max_size` bytes and [`COLD_FETCH_RECORDS_MAX`] records.
    fn cold_reads(
        &self,
        cold: &cold::ColdRecords,
        from: u64,
        high: u64,
        max_size: u64,
    ) -> Vec<ColdRead> {
        let mut reads: Vec<ColdRead> = Vec::new();
        let mut bytes = 0u64;
        // Entries from the cache on are in memory — and may not be on disk yet.
        let cache_first = self.last() + 1 - self.cache.len() as u64;
        for index in from..high.min(cache_first) {
            let loc = self.locs[(index - self.compact_index - 1) as usize];
            let key = (loc.seq as u64, loc.record_offset as u64);
            if reads.last().is_some_and(|r| (r.seq, r.offset) == key) || cold.get(key).is_some() {
                continue;
            }
            if reads.len() >= COLD_FETCH_RECORDS_MAX || (!reads.is_empty() && bytes >= max_size) {
                break;
            }
            bytes += loc.record_len as u64;
            reads.push(ColdRead { seq: key.0, offset: key.1, len: loc.record_len as usize });
        }
        reads
    }

    /// Reads of old entries raft-rs is waiting for: run them off the executor and hand the
    /// bytes to [`RaftLogStore::on_cold_fetched`] (see the `cold` module).
    pub fn take_cold_fetches(&mut self) -> Vec<ColdFetch> {
        self.cold.get_mut().take()
    }

    /// The records of `fetch` were read (one result per [`ColdFetch::reads`], in order): keeps
    /// them and returns the context to pass to raft-rs's `RawNode::on_entries_fetched`, which
    /// asks for the entries again.
    pub fn on_cold_fetched(
        &mut self,
        fetch: ColdFetch,
        data: Vec<Result<Vec<u8>>>,
    ) -> GetEntriesContext {
        self.cold.get_mut().fetched(fetch, data)
    }
}

impl raft::Storage for RaftLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compact_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let cache_first = self.last() + 1 - self.cache.len() as u64;
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut cold = self.cold.borrow_mut();
        // raft-rs can wait only for entries it sends a follower (see `cold`).
        let read_now = !context.can_async();
        for index in low..high {
            let entry = if index >= cache_first {
                self.cache[(index - cache_first) as usize].clone()
            } else {
                let loc = self.locs[(index - self.compact_index - 1) as usize];
                match self.cold_entry(&mut cold, index, loc, read_now)? {
                    Some(entry) => entry,
                    // What is in memory goes now; the rest is read for the next message.
                    None if !out.is_empty() => return Ok(out),
                    None => {
                        let reads = self.cold_reads(&cold, index, high, max_size);
                        cold.request(reads, context);
                        return Err(raft::Error::Store(
                            RaftStorageError::LogTemporarilyUnavailable,
                        ));
                    }
                }
            };
            size += entry_bytes(&entry) as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compact_index {
            return Ok(self.compact_term);
        }
        if idx < self.compact_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.locs[(idx - self.compact_index - 1) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index
            || self.snapshot.get_metadata().index == 0
        {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

/// The log as replay rebuilds it, record by record.
#[derive(Default)]
struct Replay {
    hard_state: HardState,
    compact_index: u64,
    compact_term: u64,
    /// Entries were missing before an `ENTRIES` record (their segment was retired); a
    /// compaction point at or above this index must explain it.
    gap_floor: u64,
    /// The highest index a `COMPACT` or `SNAPSHOT_RESET` record named.
    marker_index: u64,
    locs: VecDeque<EntryLoc>,
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    segment_max_index: BTreeMap<u64, u64>,
    rebuilding: Option<u64>,
}

impl Replay {
    fn last(&self) -> u64 {
        self.compact_index + self.locs.len() as u64
    }

    fn apply(&mut self, seq: u64, offset: u64, kind: u8, payload: &[u8]) -> Result<(), String> {
        match kind {
            KIND_ENTRIES => self.apply_entries(seq, offset, payload),
            KIND_HARD_STATE => {
                if payload.len() != 24 {
                    return Err(format!("hard state record of {} bytes", payload.len()));
                }
                let field = |i: usize| u64_at(payload, i * 8).expect("24 bytes");
                self.hard_state.term = field(0);
                self.hard_state.vote = field(1);
                self.hard_state.commit = field(2);
                Ok(())
            }
            KIND_COMPACT => {
                let (index, term) = parse_pair(payload).ok_or("compact record of wrong size")?;
                self.marker_index = self.marker_index.max(index);
                // At equal indexes the marker still matters: after a gap (entries before it
                // retired) the compaction point is known but its term is not.
                if index >= self.compact_index {
                    let drop = ((index - self.compact_index) as usize).min(self.locs.len());
                    self.locs.drain(..drop);
                    while self.cache.front().is_some_and(|e| e.index <= index) {
                        let old = self.cache.pop_front().expect("non-empty");
                        self.cache_bytes -= entry_bytes(&old);
                    }
                    self.compact_index = index;
                    self.compact_term = term;
                }
                Ok(())
            }
            KIND_SNAPSHOT_RESET => {
                let (index, term) = parse_pair(payload).ok_or("snapshot record of wrong size")?;
                self.locs.clear();
                self.cache.clear();
                self.cache_bytes = 0;
                self.compact_index = index;
                self.compact_term = term;
                // Everything before the reset is discarded, holes included.
                self.gap_floor = 0;
                self.marker_index = self.marker_index.max(index);
                Ok(())
            }
            KIND_REBUILDING => {
                let target = u64_at(payload, 1).filter(|_| payload.len() == 9);
                self.rebuilding = match (payload.first(), target) {
                    (Some(0), Some(_)) => None,
                    (Some(1), Some(target)) => Some(target),
                    _ => return Err(format!("malformed rebuilding record ({payload:?})")),
                };
                Ok(())
            }
            other => Err(format!("unknown record kind {other}")),
        }
    }

    fn apply_entries(&mut self, seq: u64, offset: u64, payload: &[u8]) -> Result<(), String> {
        let payload = Bytes::copy_from_slice(payload);
        let first = u64_at(&payload, 0).ok_or("entries record too short")?;
        let count = u32_at(&payload, 8).ok_or("entries record too short")? as u64;
        if first == 0 {
            return Err("entries record starts at index 0".to_string());
        }
        let record_len = (RECORD_HEADER_BYTES + payload.len()) as u32;
        let mut pos = ENTRIES_HEADER_BYTES;
        for i in 0..count {
            let index = first + i;
            let (entry, next) = decode_entry(&payload, pos, index)
                .ok_or_else(|| format!("entry {index} does not decode"))?;
            let entry_pos = pos as u32;
            pos = next;
            if index <= self.compact_index {
                continue;
            }
            if index > self.last() + 1 {
                // The entries before this one lived in a retired segment; a compaction marker
                // later in the log must cover them.
                self.locs.clear();
                self.cache.clear();
                self.cache_bytes = 0;
                self.gap_floor = self.gap_floor.max(index - 1);
                self.compact_index = index - 1;
                self.compact_term = 0;
            }
            while self.last() >= index {
                self.locs.pop_back();
                if self.cache.back().is_some_and(|e| e.index >= index) {
                    let old = self.cache.pop_back().expect("non-empty");
                    self.cache_bytes -= entry_bytes(&old);
                }
            }
            self.locs.push_back(EntryLoc {
                term: entry.term,
                seq: seq as u32,
                record_offset: offset as u32,
                record_len,
                entry_pos,
            });
            self.cache_bytes += entry_bytes(&entry);
            self.cache.push_back(entry);
            while self.cache_bytes > ENTRY_CACHE_BYTES_MAX && self.cache.len() > 1 {
                let old = self.cache.pop_front().expect("non-empty");
                self.cache_bytes -= entry_bytes(&old);
            }
        }
        if pos != payload.len() {
            return Err(format!("{} stray bytes after the entries", payload.len() - pos));
        }
        let last = self.last();
        let slot = self.segment_max_index.entry(seq).or_insert(0);
        *slot = (*slot).max(last);
        Ok(())
    }
}
