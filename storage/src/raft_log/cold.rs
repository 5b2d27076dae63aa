//! Entries older than the entry cache, read back from their WAL records for a follower that
//! lags behind — without blocking the executor that serves the shard: raft-rs's asynchronous
//! entry fetch.
//!
//! ```text
//!   raft-rs (leader)            RaftLogStore::entries              the shell
//!   ────────────────            ─────────────────────              ─────────
//!   send_append(to) ─entries()─► older than the cache and not in
//!                                memory, the caller can wait:
//!                                queue a ColdFetch{records, ctx} ─► take_cold_fetches()
//!                 ◄─ LogTemporarilyUnavailable                      reads the records off
//!                                                                   the executor
//!   on_entries_fetched(ctx) ◄── on_cold_fetched(fetch, bytes) ◄──────┘
//!   send_append(to) ─entries()─► the records are in memory now: entries
//! ```
//!
//! Callers that cannot wait (raft-rs's own reads outside `send_append`, tools, tests) read
//! synchronously, as the store always did, keeping the last record read (a follower catching
//! up reads runs of consecutive entries). Records read asynchronously are kept up to
//! [`COLD_RECORD_BYTES_MAX`] bytes, oldest dropped first, until raft-rs has sent them. A WAL
//! position `(segment, offset)` never holds another record later (recycled segments get new
//! sequence numbers), so a kept record never goes stale.
//!
//! A record that could not be read or did not verify is remembered: the next `entries` call
//! that can wait for it answers "compacted", so raft-rs sends the follower a snapshot instead
//! (any other storage error is fatal to raft-rs).

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use raft::GetEntriesContext;

use raft::eraftpb::Entry;
use raft::StorageError as RaftStorageError;

use super::records::decode_entry;
use super::EntryLoc;
use crate::constants::{COLD_FETCH_RECORDS_MAX, COLD_RECORD_BYTES_MAX};
use crate::error::Result;
use crate::error::StorageError;
use crate::wal::format::parse_record;

/// One WAL record to read for a [`ColdFetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdRead {
    /// The segment.
    pub seq: u64,
    /// Offset of the record header in the segment.
    pub offset: u64,
    /// Header plus payload bytes.
    pub len: usize,
}

/// Records raft-rs is waiting for: read them (off the executor) and hand the bytes to
/// [`crate::raft_log::RaftLogStore::on_cold_fetched`].
#[derive(Debug)]
pub struct ColdFetch {
    reads: Vec<ColdRead>,
    context: GetEntriesContext,
}

impl ColdFetch {
    /// The records to read, in log order.
    pub fn reads(&self) -> &[ColdRead] {
        &self.reads
    }
}

/// A record read back: its position and payload.
#[derive(Debug)]
struct Record {
    key: (u64, u64),
    payload: Bytes,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct ColdRecords {
    /// The last record read synchronously.
    last: Option<Record>,
    /// Records read asynchronously, oldest first, at most [`COLD_RECORD_BYTES_MAX`] bytes of
    /// payload.
    records: VecDeque<Record>,
    bytes: usize,
    /// Fetches not yet handed to the shell.
    queued: Vec<ColdFetch>,
    /// The first record of every fetch queued or being read: another ask for it waits for
    /// that fetch (raft-rs asks again on the next heartbeat response anyway).
    wanted: HashSet<(u64, u64)>,
    /// Records that could not be read, with why.
    failed: Vec<((u64, u64), String)>,
}

impl ColdRecords {
    /// The payload of the record at `key`, if it is in memory.
    pub(super) fn get(&self, key: (u64, u64)) -> Option<&Bytes> {
        let last = self.last.as_ref().filter(|r| r.key == key);
        last.or_else(|| self.records.iter().rev().find(|r| r.key == key)).map(|r| &r.payload)
    }

    /// Bytes of records held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes + self.last.as_ref().map_or(0, |r| r.payload.len())
    }

    /// Keeps the record just read synchronously, in place of the one before.
    pub(super) fn keep_last(&mut self, key: (u64, u64), payload: Bytes) {
        self.last = Some(Record { key, payload });
    }

    /// Why the record at `key` could not be read, if it could not.
    pub(super) fn failure(&self, key: (u64, u64)) -> Option<&str> {
        self.failed.iter().find(|(k, _)| *k == key).map(|(_, why)| why.as_str())
    }

    /// Keeps a record read asynchronously, dropping the oldest past the byte limit.
    fn keep(&mut self, key: (u64, u64), payload: Bytes) {
        if self.get(key).is_some() {
            return;
        }
        self.bytes += payload.len();
        self.records.push_back(Record { key, payload });
        while self.bytes > COLD_RECORD_BYTES_MAX && self.records.len() > 1 {
            if let Some(old) = self.records.pop_front() {
                self.bytes -= old.payload.len();
            }
        }
    }

    /// Queues a fetch of `reads` for `context`, unless one for the same first record is queued
    /// or being read already.
    pub(super) fn request(&mut self, reads: Vec<ColdRead>, context: GetEntriesContext) {
        let Some(first) = reads.first() else { return };
        if self.wanted.insert((first.seq, first.offset)) {
            self.queued.push(ColdFetch { reads, context });
        }
    }

    /// The fetches to run.
    pub(super) fn take(&mut self) -> Vec<ColdFetch> {
        std::mem::take(&mut self.queued)
    }

    /// Takes the records a fetch read (one result per read, in order): verified records are
    /// kept, failures remembered. Returns the context to hand back to raft-rs.
    pub(super) fn fetched(
        &mut self,
        fetch: ColdFetch,
        data: Vec<Result<Vec<u8>>>,
    ) -> GetEntriesContext {
        if let Some(first) = fetch.reads.first() {
            self.wanted.remove(&(first.seq, first.offset));
        }
        for (read, bytes) in fetch.reads.iter().zip(data) {
            let key = (read.seq, read.offset);
            let verified = bytes.map_err(|e| e.to_string()).and_then(|bytes| {
                let view = parse_record(&bytes, 0, read.seq).map_err(|p| p.to_string())?;
                Ok(Bytes::copy_from_slice(view.payload))
            });
            match verified {
                Ok(payload) => self.keep(key, payload),
                Err(reason) => {
                    if self.failure(key).is_none() {
                        self.failed.push((key, reason));
                    }
                }
            }
        }
        fetch.context
    }

    /// Forgets a failure once it was reported (the next ask reads the record again).
    pub(super) fn clear_failure(&mut self, key: (u64, u64)) {
        self.failed.retain(|(k, _)| *k != key);
    }
}

impl super::RaftLogStore {
    /// Entry `index` from its WAL record: from memory when the record was read back already;
    /// else read now when `read_now`, or `None` (the caller queues an asynchronous read).
    pub(super) fn cold_entry(
        &self,
        cold: &mut ColdRecords,
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
    pub(super) fn cold_reads(
        &self,
        cold: &ColdRecords,
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
    /// bytes to [`super::RaftLogStore::on_cold_fetched`] (see this module's docs).
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
