//! Opening a log: the WAL's records replayed, in order, into the entries' locations, the
//! cached tail, the hard state, the compaction point and the rebuilding mark.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use bytes::Bytes;
use raft::eraftpb::{Entry, HardState};

use super::records::{
    decode_entry, entry_bytes, parse_pair, u32_at, u64_at, ENTRIES_HEADER_BYTES, KIND_COMPACT,
    KIND_ENTRIES, KIND_HARD_STATE, KIND_REBUILDING, KIND_SNAPSHOT_RESET,
};
use super::EntryLoc;
use crate::constants::{ENTRY_CACHE_BYTES_MAX, RECORD_HEADER_BYTES};
use crate::error::{Result, StorageError};

/// The log as replay rebuilds it, record by record.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) hard_state: HardState,
    pub(super) compact_index: u64,
    pub(super) compact_term: u64,
    /// Entries were missing before an `ENTRIES` record (their segment was retired); a
    /// compaction point at or above this index must explain it.
    pub(super) gap_floor: u64,
    /// The highest index a `COMPACT` or `SNAPSHOT_RESET` record named.
    pub(super) marker_index: u64,
    pub(super) locs: VecDeque<EntryLoc>,
    pub(super) cache: VecDeque<Entry>,
    pub(super) cache_bytes: usize,
    pub(super) segment_max_index: BTreeMap<u64, u64>,
    pub(super) rebuilding: Option<u64>,
}

impl Replay {
    /// Refuses a replayed log that cannot be whole: entries missing with no compaction to
    /// explain them, or a hard state that commits past the end of the log.
    pub(super) fn check(&self, dir: &Path) -> Result<()> {
        if self.gap_floor > self.marker_index {
            return Err(StorageError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "log entries {}..={} are missing (no compaction covers them)",
                    self.marker_index + 1,
                    self.gap_floor
                ),
            });
        }
        let last = self.last();
        if self.hard_state.commit > last {
            return Err(StorageError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "hard state commits index {} but the log ends at {last}",
                    self.hard_state.commit
                ),
            });
        }
        Ok(())
    }

    pub(super) fn last(&self) -> u64 {
        self.compact_index + self.locs.len() as u64
    }

    pub(super) fn apply(
        &mut self,
        seq: u64,
        offset: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), String> {
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
