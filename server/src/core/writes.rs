//! Writes: batching client writes into raft entries, and answering them when their entry
//! applies.
//!
//! Every write that arrives in one loop iteration goes into one [`BatchBuilder`]; at the start
//! of the next `process()` (or as soon as the batch reaches
//! [`crate::constants::BATCH_BYTES_TARGET`]) the batch is proposed as one raft entry, and its
//! writers wait, in batch order, on that entry's `(index, term)`. When an entry applies:
//! - if it is the one proposed (same index and term), each operation's result is encoded
//!   straight from the state machine into its writer's reply;
//! - if another entry took that index (leadership changed and the proposal was overwritten),
//!   the writers are told `NotLeader`: their write did not and never will apply.
//!
//! A write whose entry does neither within [`PROPOSAL_TIMEOUT_MS`] is answered `Timeout`:
//! its outcome is unknown.

use std::collections::VecDeque;

use corekv_proto::client::KeyMeta as WireMeta;
use corekv_proto::encode::{EntryRef, ErrorInfo, TxnResultRef};
use corekv_storage::command::BatchBuilder;
use corekv_storage::state_machine::{OpResult, TxnResult};
use raft::eraftpb::{Entry, EntryType};

use super::leases::LeaseApplied;
use super::replies::{push_reply, Caller};
use super::ShardCore;
use crate::constants::{
    BATCH_BYTES_TARGET, BUSY_RETRY_AFTER_MS, PROPOSAL_TIMEOUT_MS, READ_TIMEOUT_MS,
    WAL_BACKLOG_BYTES_BUSY, WRITES_IN_FLIGHT_MAX,
};

/// A proposed entry and the writers waiting on it, in batch order.
#[derive(Debug)]
struct Pending {
    index: u64,
    term: u64,
    waiters: Vec<Caller>,
    proposed_us: u64,
}

/// The write path's state.
#[derive(Debug, Default)]
pub struct Writes {
    batch: BatchBuilder,
    batch_waiters: Vec<Caller>,
    pending: VecDeque<Pending>,
    in_flight: usize,
}

impl Writes {
    /// Writes batched or proposed and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Takes the writers of every proposal at or before `index`.
    pub(super) fn take_pending_through(&mut self, index: u64) -> Vec<Caller> {
        let mut taken = Vec::new();
        while self.pending.front().is_some_and(|p| p.index <= index) {
            let p = self.pending.pop_front().expect("non-empty");
            self.in_flight -= p.waiters.len();
            taken.extend(p.waiters);
        }
        taken
    }
}

impl ShardCore {
    /// Admits a write of about `bytes` key and value bytes: checks leadership and
    /// backpressure, then lets `encode` add its operation to the batch.
    pub(super) fn enqueue_write(
        &mut self,
        caller: Caller,
        bytes: usize,
        encode: impl FnOnce(&mut BatchBuilder),
    ) {
        let backlog = self.raw.store().wal().buffered_bytes();
        let busy =
            self.writes.in_flight >= WRITES_IN_FLIGHT_MAX || backlog >= WAL_BACKLOG_BYTES_BUSY;
        if !self.admit(caller, busy) {
            return;
        }
        if !self.writes.batch.is_empty()
            && self.writes.batch.len_bytes() + bytes > BATCH_BYTES_TARGET
        {
            // A big write does not join a batch that would then outgrow the target.
            self.propose_batch();
        }
        encode(&mut self.writes.batch);
        self.writes.batch_waiters.push(caller);
        self.writes.in_flight += 1;
        if self.writes.batch.len_bytes() >= BATCH_BYTES_TARGET {
            self.propose_batch();
        }
    }

    /// Proposes the batch as one raft entry.
    pub(super) fn propose_batch(&mut self) {
        if self.writes.batch.is_empty() {
            return;
        }
        let ops = self.writes.batch.ops();
        let stamp = self.batch_stamp();
        // A lease operation or a write with a deadline, admitted before a member of an older
        // peer protocol joined, is not proposed: that member could not apply it.
        let lease_refused = self.writes.batch.has_lease_ops() && !self.leases_supported();
        let computed_refused =
            self.writes.batch.has_computed_ops() && !self.computed_ops_supported();
        let data = super::expiry::finish_batch(&mut self.writes.batch, stamp)
            .filter(|_| !lease_refused && !computed_refused);
        let waiters = std::mem::take(&mut self.writes.batch_waiters);
        let Some(data) = data else {
            // Nothing was appended.
            self.writes.in_flight -= waiters.len();
            let reason = if lease_refused {
                "a member of this shard runs an older corekv that cannot keep leases"
            } else if computed_refused {
                "a member of this shard runs an older corekv that cannot apply computed \
                 transaction ops (INCR, APPEND, EXPIRE…)"
            } else {
                "a member of this shard runs an older corekv that cannot keep deadlines"
            };
            for w in waiters {
                self.reply_error(w, &ErrorInfo::Unavailable { reason });
            }
            return;
        };
        if !self.is_leader() {
            // Stepped down since they were admitted (see `is_leader`): nothing was appended,
            // so a retry at the new leader is safe.
            self.writes.in_flight -= waiters.len();
            for w in waiters {
                self.reply_not_leader(w);
            }
            return;
        }
        self.metrics.proposals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.batch_ops.record(ops as u64);
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                self.writes.pending.push_back(Pending {
                    index,
                    term,
                    waiters,
                    proposed_us: self.now_us,
                });
            }
            Err(error) => {
                // Dropped: not leader any more, a leadership transfer is under way, or too many
                // uncommitted bytes. Nothing was appended, so a retry is safe.
                tracing::debug!(shard = %self.cfg.shard, %error, "proposal dropped");
                self.writes.in_flight -= waiters.len();
                for w in waiters {
                    if self.is_leader() {
                        let error = ErrorInfo::Busy { retry_after_ms: BUSY_RETRY_AFTER_MS };
                        self.reply_error(w, &error);
                    } else {
                        self.reply_not_leader(w);
                    }
                }
            }
        }
    }

    /// Applies one committed entry and answers the writers waiting on it.
    pub(super) fn apply_entry(&mut self, entry: &Entry) {
        self.note_applied_bytes(entry.data.len());
        let waiters = self.take_waiters_for(entry);
        if entry.get_entry_type() != EntryType::EntryNormal {
            self.apply_conf_entry(entry);
            return self.watch_applied(entry.index);
        } else if entry.data.is_empty() {
            self.sm.apply_empty(entry.index, entry.term);
            return self.watch_applied(entry.index);
        }
        let index = entry.index;
        // What a transaction's reads report of a deadline goes by the time reads go by.
        let read_ms = self.read_time_ms();
        let (sm, encoder, out, metrics) =
            (&mut self.sm, &mut self.encoder, &mut self.out, &self.metrics);
        let now_us = self.now_us;
        let mut answered = 0usize;
        let mut expired = Vec::new();
        let mut lease_events = Vec::new();
        let applied = sm.apply(index, entry.term, &entry.data, |result| {
            if let Some(event) = LeaseApplied::of(&result) {
                lease_events.push(event);
            }
            match result {
                OpResult::Expire(deadlines) => {
                    expired.extend_from_slice(deadlines.unwrap_or_default());
                    return;
                }
                // The leader's own entries: nobody waits on them.
                OpResult::LeaseCheckpointed(_) | OpResult::LeaseExpired(_) => return,
                _ => {}
            }
            let Some(w) = waiters.as_ref().and_then(|ws| ws.get(answered)) else {
                answered += 1;
                return;
            };
            answered += 1;
            metrics.replied(w.op, now_us.saturating_sub(w.start_us));
            let frame = match result {
                OpResult::Put(meta) => encoder.put(w.id, meta.into()),
                OpResult::Delete(deleted) => encoder.delete(w.id, deleted, index),
                OpResult::BatchPut(metas) => {
                    let metas: Vec<WireMeta> = metas.iter().copied().map(WireMeta::from).collect();
                    encoder.batch_put(w.id, &metas)
                }
                OpResult::BatchDelete(flags) => encoder.batch_delete(w.id, flags, index),
                OpResult::Expire(_)
                | OpResult::LeaseCheckpointed(_)
                | OpResult::LeaseExpired(_) => unreachable!("answered above"),
                OpResult::LeaseMissing(lease)
                | OpResult::LeaseRevoked { lease, found: false, .. } => {
                    metrics.error(super::ErrorKind::LeaseNotFound);
                    encoder.error(w.id, &ErrorInfo::LeaseNotFound { lease })
                }
                OpResult::LeaseRevoked { keys, .. } => encoder.lease_revoke(w.id, keys, index),
                OpResult::LeaseGranted { lease, ttl_ms, metas, .. } => {
                    let metas: Vec<WireMeta> = metas.iter().copied().map(WireMeta::from).collect();
                    encoder.lease_grant(w.id, lease, ttl_ms, &metas, index)
                }
                OpResult::Txn(outcome) if !outcome.succeeded && outcome.branch_empty => {
                    metrics.error(super::ErrorKind::CompareFailed);
                    let compare = outcome.failed_compare.unwrap_or(0);
                    encoder.error(w.id, &ErrorInfo::CompareFailed { compare })
                }
                OpResult::Txn(outcome) => {
                    let results: Vec<TxnResultRef<'_>> = outcome
                        .results
                        .iter()
                        .map(|r| match r {
                            TxnResult::Get { key, found } => TxnResultRef::Get(found.as_ref().map(
                                |(value, meta, expires_ms, lease)| EntryRef {
                                    key,
                                    value: Some(value),
                                    meta: (*meta).into(),
                                    ttl_ms: ttl_left(*expires_ms, read_ms),
                                    lease: *lease,
                                },
                            )),
                            TxnResult::Put(meta) => TxnResultRef::Put((*meta).into()),
                            TxnResult::Delete(deleted) => TxnResultRef::Delete(*deleted),
                            TxnResult::Value(value) => TxnResultRef::Value(value),
                            TxnResult::Length(length) => TxnResultRef::Length(*length),
                            TxnResult::Applied(applied) => TxnResultRef::Applied(*applied),
                            TxnResult::Failed(reason) => TxnResultRef::Failed(reason),
                        })
                        .collect();
                    encoder.txn(w.id, outcome.failed_compare, &results, index)
                }
            };
            push_reply(out, w.conn, frame);
        });
        match (applied, waiters) {
            (Ok(()), Some(waiters)) => {
                assert_eq!(answered, waiters.len(), "entry {index}: one result per batched write");
            }
            (Err(error), Some(waiters)) => {
                tracing::error!(shard = %self.cfg.shard, index, %error, "committed entry does not decode");
                let reason = error.to_string();
                for w in waiters {
                    self.reply_error(w, &ErrorInfo::InvalidRequest { reason: &reason });
                }
            }
            (Err(error), None) => {
                tracing::error!(shard = %self.cfg.shard, index, %error, "committed entry does not decode");
            }
            (Ok(()), None) => {}
        }
        if !expired.is_empty() {
            self.note_expired(&expired);
        }
        for event in lease_events {
            self.on_lease_applied(event);
        }
        self.watch_applied(index);
    }

    /// The writers waiting on `entry` if it is the entry they proposed. Writers of a proposal
    /// that another entry replaced are answered `NotLeader` (their write never applies).
    fn take_waiters_for(&mut self, entry: &Entry) -> Option<Vec<Caller>> {
        while self.writes.pending.front().is_some_and(|p| p.index < entry.index) {
            // Every index applies in order, so this is unreachable while logs are never
            // replaced by snapshots; answer conservatively if it happens.
            let lost = self.writes.pending.pop_front().expect("non-empty");
            self.writes.in_flight -= lost.waiters.len();
            for w in lost.waiters {
                self.reply_error(w, &ErrorInfo::Timeout);
            }
        }
        if self.writes.pending.front().is_none_or(|p| p.index != entry.index) {
            return None;
        }
        let pending = self.writes.pending.pop_front().expect("checked");
        self.writes.in_flight -= pending.waiters.len();
        if pending.term != entry.term {
            for w in pending.waiters {
                self.reply_not_leader(w);
            }
            return None;
        }
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            // Writers wait only on batches this replica proposed; should the books ever say
            // otherwise (a new leader's empty entry, a configuration change), they are told
            // their outcome is unknown rather than nothing.
            for w in pending.waiters {
                self.reply_error(w, &ErrorInfo::Timeout);
            }
            return None;
        }
        Some(pending.waiters)
    }

    /// Answers the writers of the batch not yet proposed: they never entered the log.
    pub(super) fn fail_unproposed_writes(&mut self) {
        if self.writes.batch.is_empty() {
            return;
        }
        self.writes.batch.clear();
        let waiters = std::mem::take(&mut self.writes.batch_waiters);
        self.writes.in_flight -= waiters.len();
        for w in waiters {
            if self.shutting_down {
                let error = ErrorInfo::Unavailable { reason: "the node is shutting down" };
                self.reply_error(w, &error);
            } else if let Some(failure) = self.failure.clone() {
                self.reply_error(w, &ErrorInfo::Unavailable { reason: &failure });
            } else {
                self.reply_not_leader(w);
            }
        }
    }

    /// Answers every proposed write with `Timeout`: their entries may still commit elsewhere.
    pub(super) fn fail_proposed_writes_unknown(&mut self) {
        while let Some(p) = self.writes.pending.pop_front() {
            self.writes.in_flight -= p.waiters.len();
            for w in p.waiters {
                self.reply_error(w, &ErrorInfo::Timeout);
            }
        }
    }

    /// Answers writes and reads that waited too long.
    pub(super) fn expire_requests(&mut self) {
        let now = self.now_us;
        while self
            .writes
            .pending
            .front()
            .is_some_and(|p| now.saturating_sub(p.proposed_us) > PROPOSAL_TIMEOUT_MS * 1000)
        {
            let p = self.writes.pending.pop_front().expect("non-empty");
            self.writes.in_flight -= p.waiters.len();
            for w in p.waiters {
                self.reply_error(w, &ErrorInfo::Timeout);
            }
        }
        for w in self.reads.expire(now, READ_TIMEOUT_MS * 1000) {
            self.reply_error(w.caller, &ErrorInfo::Timeout);
        }
    }
}

/// What a read reports of a key's deadline at `now_ms`: the ms left (at least 1, as the key
/// exists), or 0 for none.
pub(super) fn ttl_left(expires_ms: u64, now_ms: u64) -> u64 {
    match expires_ms {
        0 => 0,
        deadline => deadline.saturating_sub(now_ms).max(1),
    }
}

#[cfg(test)]
mod tests {
    use corekv_proto::client::{ErrorKind as WireErrorKind, Reply};

    use super::super::test_support::{Replica, ReplyKind};
    use crate::constants::WRITES_IN_FLIGHT_MAX;

    // Shows: a put is answered only once the flush that holds its entry has completed.
    #[test]
    fn a_write_is_answered_once_its_entry_is_durable() {
        let mut r = Replica::new(1);
        assert!(r.core.is_leader(), "a single voter elects itself");
        r.disk_works = false;
        let put = r.encoder.put(1, b"k", b"v").to_vec();
        r.send(7, &put);
        r.settle();
        assert!(!r.held.is_empty(), "the entry waits on a flush");
        assert!(r.reply_kinds().iter().all(|(id, _)| *id != 1), "no answer before the flush");
        r.release_disk();
        assert_eq!(r.reply_kinds(), vec![(1, ReplyKind::Ok(Reply::PutReply))]);
        assert_eq!(r.core.state_machine().get(b"k").map(|v| v.value.to_vec()), Some(b"v".into()));
    }

    // Shows: the writes that arrive before a turn become one raft entry.
    #[test]
    fn the_writes_of_one_turn_are_one_entry() {
        let mut r = Replica::new(1);
        let before = r.core.raft().raft.raft_log.last_index();
        for id in 1..=3u64 {
            let put = r.encoder.put(id, format!("k{id}").as_bytes(), b"v").to_vec();
            r.send(7, &put);
        }
        r.settle();
        assert_eq!(r.core.raft().raft.raft_log.last_index(), before + 1);
        let ok = ReplyKind::Ok(Reply::PutReply);
        assert_eq!(r.reply_kinds(), vec![(1, ok), (2, ok), (3, ok)]);
    }

    // Shows: a replica that does not lead refuses writes.
    #[test]
    fn a_replica_without_a_leader_refuses_writes() {
        let mut r = Replica::new(3);
        assert!(!r.core.is_leader());
        let put = r.encoder.put(1, b"k", b"v").to_vec();
        r.send(7, &put);
        r.settle();
        assert_eq!(r.reply_kinds(), vec![(1, ReplyKind::Error(WireErrorKind::NotLeader))]);
    }

    // Shows: past the limit of writes in flight, a write is answered Busy at once; the ones
    // before it are all answered once the disk catches up.
    #[test]
    fn writes_past_the_in_flight_limit_are_busy() {
        let mut r = Replica::new(1);
        r.disk_works = false;
        let count = WRITES_IN_FLIGHT_MAX as u64 + 1;
        for id in 1..=count {
            let put = r.encoder.put(id, &id.to_le_bytes(), b"v").to_vec();
            r.send(7, &put);
        }
        r.settle();
        let kinds = r.reply_kinds();
        assert_eq!(kinds, vec![(count, ReplyKind::Error(WireErrorKind::Busy))], "only the last");
        r.release_disk();
        let puts =
            r.reply_kinds().iter().filter(|(_, k)| *k == ReplyKind::Ok(Reply::PutReply)).count();
        assert_eq!(puts, WRITES_IN_FLIGHT_MAX);
    }

    // Shows: once shutdown began, writes are refused as Unavailable.
    #[test]
    fn shutdown_refuses_new_writes() {
        let mut r = Replica::new(1);
        let mut out = super::super::Outputs::default();
        assert!(r.core.shutdown_turn(2, false, &mut out), "nothing in flight");
        let put = r.encoder.put(1, b"k", b"v").to_vec();
        r.send(7, &put);
        r.settle();
        assert_eq!(r.reply_kinds(), vec![(1, ReplyKind::Error(WireErrorKind::Unavailable))]);
    }
}
