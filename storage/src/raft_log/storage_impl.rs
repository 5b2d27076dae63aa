//! raft-rs's [`raft::Storage`] over the log: entries from the cache, or from the WAL (at once
//! when raft-rs cannot wait, else asynchronously through the `cold` module).

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use super::records::entry_bytes;
use super::RaftLogStore;

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

    /// The newest snapshot, unless it is not one `to` can take: there is none yet, it is
    /// older than `to` asked for, or its configuration does not name `to` (a member added
    /// since; raft-rs on `to` refuses such a snapshot). Then raft-rs tries again later, and
    /// the wish is noted for the caller to take a new snapshot
    /// ([`RaftLogStore::take_snapshot_wanted`]).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let conf = meta.get_conf_state();
        let names_to = [conf.get_voters(), conf.get_learners(), conf.get_voters_outgoing()]
            .iter()
            .any(|ids| ids.contains(&to));
        if meta.index < request_index || meta.index == 0 || !names_to {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
