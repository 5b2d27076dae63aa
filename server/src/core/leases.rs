//! Leases on the core's side: the leader's deadlines (keep-alives move them without a log
//! entry), the checkpoints that make them durable, and the leader's expiry of leases past
//! their deadline (the state machine's side is in `corekv_storage::lease`).
//!
//! ```text
//!  grant ──► state machine: deadline = stamp + ttl ──┐ a new leader starts from these
//!                                                    ▼
//!  keep-alive ──► leader: deadline = now + ttl (memory) ──► checkpoint every 500 ms ──► state machine
//!                       │
//!                       └─ deadline passed ──► LEASE_EXPIRE (lease, state machine's deadline, term)
//! ```
//!
//! A keep-alive is answered only by a leader that confirmed its leadership with a ReadIndex
//! round — which raft-rs serves only once the leader committed an entry of its term, so every
//! entry of earlier leaders is applied by then. The leader keeps the new deadline in memory
//! and puts every lease kept alive since the last checkpoint into the next one, at most
//! [`LEASE_CHECKPOINT_TICKS`] ticks (500 ms) later (a new leader's first one at once). A new leader
//! starts from the deadlines the state machine holds: a lease loses at most the keep-alives
//! of the last checkpoint interval (and of the checkpoint's commit), never gains time. A
//! holder that keeps alive every third of the time to live therefore keeps its lease
//! through a change of leader when its keep-alive reaches the new leader within the time to
//! live less a third, less a checkpoint interval, after the last one: with the one-second
//! elections of the default configuration, a time to live of 5 s or more.
//!
//! The leader proposes the expiry of a lease once its deadline (the later of its own and the
//! state machine's) is past on its clock, naming the state machine's deadline then and its
//! term. Applying ends the lease only if its deadline is still that one (a checkpoint in
//! between wins) and the entry's term is the one named (an expiry decided under one
//! leadership and proposed under another is refused). While an expiry is in flight the lease
//! is *expiring*: keep-alives are answered `Unavailable` (retry), so no keep-alive is
//! answered that the expiry would then contradict.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;

use corekv_proto::encode::ErrorInfo;
use corekv_storage::command::BatchBuilder;
use corekv_storage::state_machine::OpResult;

use super::replies::{push_reply, Caller};
use super::requests::Refusal;
use super::ShardCore;
use crate::constants::{
    LEASES_EXPIRING_MAX, LEASE_CHECKPOINT_TICKS, LEASE_EXPIRY_KEYS_PER_ENTRY, LEASE_TTL_MIN_TICKS,
};
use corekv_storage::lease::lease_shard;
use corekv_types::ids::ShardId;

/// The first peer protocol whose nodes apply lease operations.
const LEASE_PEER_PROTOCOL: u32 = 4;

/// The first peer protocol whose replicas apply computed transaction ops.
const COMPUTED_OPS_PEER_PROTOCOL: u32 = 5;

/// Leases in one checkpoint entry at most (16 bytes each).
const CHECKPOINT_LEASES_PER_ENTRY: usize = 65_536;

/// How long a leader waits before proposing again after raft refused a proposal, µs.
const LEASE_RETRY_US: u64 = 10_000;

/// Lease expiry entries a leader keeps proposed and not yet applied.
const LEASE_EXPIRY_ENTRIES_IN_FLIGHT: usize = 4;

/// Bytes of keys a time-to-live reply lists at most (the frame's limit, less room for the
/// rest), and what each key adds beyond its bytes (its table and offsets).
const TTL_REPLY_KEY_BYTES_MAX: usize = corekv_proto::constants::FRAME_BYTES_MAX - (1 << 20);
const KEY_OVERHEAD_BYTES: usize = 16;

/// What an applied lease operation did, for the leader's view (owned: it is handled after
/// the entry's apply, which borrows the state machine).
#[derive(Debug)]
pub(super) enum LeaseApplied {
    /// A lease was granted.
    Granted { lease: u64, deadline_ms: u64 },
    /// A revoke (of a lease that existed, or not).
    Revoked { lease: u64, found: bool },
    /// A checkpoint named these leases.
    Checkpointed(Vec<(u64, u64)>),
    /// An expiry ended these leases (each with the deadline it named).
    Expired(Vec<(u64, u64)>),
}

impl LeaseApplied {
    /// The lease event of an op's result, if it is one.
    pub(super) fn of(result: &OpResult<'_>) -> Option<Self> {
        Some(match *result {
            OpResult::LeaseGranted { lease, deadline_ms, .. } => {
                LeaseApplied::Granted { lease, deadline_ms }
            }
            OpResult::LeaseRevoked { lease, found, .. } => LeaseApplied::Revoked { lease, found },
            OpResult::LeaseCheckpointed(pairs) => LeaseApplied::Checkpointed(pairs.to_vec()),
            OpResult::LeaseExpired(Some(ended)) => LeaseApplied::Expired(ended.to_vec()),
            _ => return None,
        })
    }
}

/// A leader's view of its shard's leases. Built from the state machine when the replica
/// starts leading a term; empty (`term` 0) otherwise.
#[derive(Debug, Default)]
pub(super) struct Leases {
    /// The term this state belongs to; 0: none.
    term: u64,
    /// Each lease's deadline: the state machine's, or later where a keep-alive moved it.
    deadlines: HashMap<u64, u64>,
    /// The same, ordered: (deadline, lease).
    timers: BTreeSet<(u64, u64)>,
    /// Leases kept alive since they were last put in a checkpoint.
    dirty: BTreeSet<u64>,
    /// Leases whose expiry is proposed: the index of its entry.
    expiring: HashMap<u64, u64>,
    /// The indexes of the expiry entries proposed, oldest first (those applied go).
    expiry_entries: std::collections::VecDeque<u64>,
    /// When the next checkpoint may be proposed (the core's clock, µs).
    checkpoint_at_us: u64,
    /// Raft refused the last proposal: no other before this time (µs).
    retry_at_us: u64,
}

impl Leases {
    fn set(&mut self, lease: u64, deadline_ms: u64) {
        if let Some(old) = self.deadlines.insert(lease, deadline_ms) {
            self.timers.remove(&(old, lease));
        }
        self.timers.insert((deadline_ms, lease));
    }

    fn remove(&mut self, lease: u64) -> Option<u64> {
        let old = self.deadlines.remove(&lease)?;
        self.timers.remove(&(old, lease));
        self.dirty.remove(&lease);
        self.expiring.remove(&lease);
        Some(old)
    }
}

impl ShardCore {
    /// Whether every member applies lease operations (a member whose hello was not heard yet
    /// counts as a current one, as for deadlines).
    pub(super) fn leases_supported(&self) -> bool {
        if self.peer_protocols.values().all(|&p| p >= LEASE_PEER_PROTOCOL) {
            return true;
        }
        self.membership
            .members()
            .into_iter()
            .all(|id| self.peer_protocols.get(&id.get()).is_none_or(|&p| p >= LEASE_PEER_PROTOCOL))
    }

    /// Whether every member applies computed transaction ops (peer protocol 5), counted as
    /// for leases.
    pub(super) fn computed_ops_supported(&self) -> bool {
        if self.peer_protocols.values().all(|&p| p >= COMPUTED_OPS_PEER_PROTOCOL) {
            return true;
        }
        self.membership.members().into_iter().all(|id| {
            self.peer_protocols.get(&id.get()).is_none_or(|&p| p >= COMPUTED_OPS_PEER_PROTOCOL)
        })
    }

    /// A write's deadline (0: none) and lease (0: none), checked: not both; the lease on
    /// this shard.
    pub(super) fn ttl_or_lease(&self, ttl_ms: u64, lease: u64) -> Result<(u64, u64), Refusal> {
        if lease == 0 {
            return Ok((self.deadline(ttl_ms)?, 0));
        }
        if ttl_ms != 0 {
            return Err(Refusal::Invalid(
                "a write takes a time to live or a lease, not both".to_string(),
            ));
        }
        self.check_leases_supported()?;
        let shard = lease_shard(lease);
        if shard != self.cfg.shard.get() {
            return Err(Refusal::Invalid(format!(
                "lease {lease:016x} lives on shard {shard}, and this key on shard {}: keys \
                 attached to a lease must be on its shard (give them a hash tag, `{{tag}}`, \
                 that places them there, or grant the lease near the key)",
                self.cfg.shard
            )));
        }
        Ok((0, lease))
    }

    /// A request naming a lease (a revoke, a keep-alive, a time to live), checked: every
    /// member keeps leases, and the lease is this shard's (else the client routed it wrong).
    pub(super) fn check_lease_request(&self, lease: u64) -> Result<u64, Refusal> {
        if lease == 0 {
            return Err(Refusal::Invalid("lease 0 names no lease".to_string()));
        }
        self.check_leases_supported()?;
        let shard = lease_shard(lease);
        if shard != self.cfg.shard.get() {
            if shard >= self.cfg.shards {
                return Err(Refusal::Invalid(format!(
                    "lease {lease:016x} names shard {shard}; the cluster has {} shards",
                    self.cfg.shards
                )));
            }
            return Err(Refusal::WrongShard(ShardId(shard)));
        }
        Ok(lease)
    }

    pub(super) fn check_leases_supported(&self) -> Result<(), Refusal> {
        if self.leases_supported() {
            Ok(())
        } else {
            Err(Refusal::Unavailable(
                "a member of this shard runs an older corekv (peer protocol 3) that cannot keep \
                 leases: upgrade every node first"
                    .to_string(),
            ))
        }
    }

    /// How often the leader checkpoints kept-alive deadlines, µs.
    fn lease_checkpoint_us(&self) -> u64 {
        LEASE_CHECKPOINT_TICKS * self.cfg.tick_ms * 1000
    }

    /// The shortest time to live the leader grants, ms.
    pub(super) fn lease_ttl_min_ms(&self) -> u64 {
        LEASE_TTL_MIN_TICKS * self.cfg.tick_ms
    }

    /// Whether this replica keeps the leader's view of leases: it leads, is not shutting
    /// down, and every member applies lease operations.
    fn leads_leases(&self) -> bool {
        self.is_leader() && !self.shutting_down && self.leases_supported()
    }

    /// Builds the leader's view when this replica starts leading a term (from the state
    /// machine), and drops it when it stops. Only a change of leadership rebuilds it: its
    /// expiries in flight must be remembered for as long as their term lasts.
    pub(super) fn sync_leases(&mut self) {
        let term = if self.is_leader() && !self.shutting_down { self.raw.raft.term } else { 0 };
        if self.leases.term == term {
            return;
        }
        // A new leader checkpoints the first keep-alives it answers at once (then every
        // interval): a leader that leads only briefly still hands them on.
        self.leases =
            super::leases::Leases { term, checkpoint_at_us: self.now_us, ..Default::default() };
        if term != 0 {
            for (id, lease) in self.sm.leases().iter() {
                self.leases.set(id, lease.deadline_ms);
            }
        }
    }

    /// Keeps the leader's view in step with an applied lease operation, and counts it.
    pub(super) fn on_lease_applied(&mut self, event: LeaseApplied) {
        let current = self.leases.term != 0 && self.leases.term == self.raw.raft.term;
        match event {
            LeaseApplied::Granted { lease, deadline_ms } => {
                if current {
                    self.leases.set(lease, deadline_ms);
                }
            }
            LeaseApplied::Revoked { lease, found } => {
                if found {
                    self.metrics.leases_revoked.fetch_add(1, Relaxed);
                }
                if current {
                    self.leases.remove(lease);
                }
            }
            LeaseApplied::Checkpointed(pairs) => {
                if !current {
                    return;
                }
                for (lease, _) in pairs {
                    let Some(held) = self.sm.leases().get(lease).map(|l| l.deadline_ms) else {
                        continue;
                    };
                    let mine = self.leases.deadlines.get(&lease).copied().unwrap_or(0);
                    self.leases.set(lease, mine.max(held));
                }
            }
            LeaseApplied::Expired(ended) => {
                self.metrics.leases_expired.fetch_add(ended.len() as u64, Relaxed);
                let now = self.wall_ms();
                for (lease, seen_ms) in ended {
                    let deadline = if current { self.leases.remove(lease) } else { None };
                    if self.is_leader() {
                        let lag_ms = now.saturating_sub(deadline.unwrap_or(seen_ms));
                        self.metrics.lease_expiry_lag_us.record(lag_ms * 1000);
                    }
                }
            }
        }
    }

    /// On a leader, proposes the checkpoint of leases kept alive and the expiry of leases
    /// past their deadline (see the module docs).
    pub(super) fn propose_lease_work(&mut self) {
        let table = self.sm.leases();
        self.metrics.leases.store(table.len() as i64, Relaxed);
        self.metrics.lease_keys.store(table.attached_keys() as i64, Relaxed);
        self.sync_leases();
        let proposing = self.leads_leases() && self.now_us >= self.leases.retry_at_us;
        if self.leases.term == 0 || !proposing {
            return;
        }
        // Expiries whose entries applied are settled: the lease is gone, or its expiry was
        // refused and it is judged again below.
        let applied = self.sm.applied_index();
        self.leases.expiring.retain(|_, index| *index > applied);
        while self.leases.expiry_entries.front().is_some_and(|&index| index <= applied) {
            self.leases.expiry_entries.pop_front();
        }
        if self.now_us >= self.leases.checkpoint_at_us && !self.leases.dirty.is_empty() {
            self.propose_lease_checkpoint();
        }
        self.propose_lease_expiries();
    }

    fn propose_lease_checkpoint(&mut self) {
        let pairs: Vec<(u64, u64)> = self
            .leases
            .dirty
            .iter()
            .take(CHECKPOINT_LEASES_PER_ENTRY)
            .filter_map(|id| self.leases.deadlines.get(id).map(|&ms| (*id, ms)))
            .collect();
        let mut builder = BatchBuilder::new();
        builder.lease_checkpoint(pairs.iter().copied());
        if !self.propose_internal(&mut builder) {
            return;
        }
        self.metrics.lease_checkpoints.fetch_add(1, Relaxed);
        for (id, _) in &pairs {
            self.leases.dirty.remove(id);
        }
        self.leases.checkpoint_at_us = self.now_us + self.lease_checkpoint_us();
    }

    /// Lease expiry entries proposed and not yet applied.
    fn lease_expiries_in_flight(&self) -> usize {
        let applied = self.sm.applied_index();
        self.leases.expiry_entries.iter().filter(|&&index| index > applied).count()
    }

    /// Whether the leader may propose another lease expiry entry now.
    fn may_expire_leases(&self) -> bool {
        self.leases.expiring.len() < LEASES_EXPIRING_MAX
            && self.lease_expiries_in_flight() < LEASE_EXPIRY_ENTRIES_IN_FLIGHT
    }

    fn propose_lease_expiries(&mut self) {
        if !self.may_expire_leases() {
            return;
        }
        let now_ms = self.read_time_ms();
        let room = LEASES_EXPIRING_MAX.saturating_sub(self.leases.expiring.len());
        let mut due: Vec<(u64, u64)> = Vec::new();
        let mut keys = 0;
        for &(deadline, id) in &self.leases.timers {
            if deadline > now_ms || due.len() >= room || keys >= LEASE_EXPIRY_KEYS_PER_ENTRY {
                break;
            }
            if self.leases.expiring.contains_key(&id) {
                continue;
            }
            let Some(lease) = self.sm.leases().get(id) else { continue };
            keys += lease.keys.len().max(1);
            due.push((id, lease.deadline_ms));
        }
        if due.is_empty() {
            return;
        }
        let mut builder = BatchBuilder::new();
        builder.lease_expire(self.raw.raft.term, due.iter().copied());
        if !self.propose_internal(&mut builder) {
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        self.leases.expiry_entries.push_back(index);
        for (id, _) in due {
            self.leases.expiring.insert(id, index);
        }
    }

    /// Proposes an entry of the leader's own (no writer waits on it); whether raft took it.
    /// Only called while every member applies lease operations (`leads_leases`).
    fn propose_internal(&mut self, builder: &mut BatchBuilder) -> bool {
        let Some(data) = super::expiry::finish_batch(builder, self.batch_stamp()) else {
            return false;
        };
        if self.raw.propose(Vec::new(), data).is_err() {
            self.leases.retry_at_us = self.now_us + LEASE_RETRY_US;
            return false;
        }
        true
    }

    /// When (the core's clock, µs) this replica, as leader, next has lease work: a lease's
    /// deadline, or a checkpoint due; `None` when it has none or does not lead.
    pub(super) fn next_lease_wake_us(&self) -> Option<u64> {
        if self.leases.term == 0 || self.leases.term != self.raw.raft.term || !self.leads_leases() {
            return None;
        }
        if self.now_us < self.leases.retry_at_us {
            return Some(self.leases.retry_at_us);
        }
        let checkpoint = (!self.leases.dirty.is_empty()).then_some(self.leases.checkpoint_at_us);
        let applied = self.sm.applied_index();
        // With as many expiries in flight as it keeps, their applying wakes it.
        let may_expire = self.may_expire_leases();
        let deadline = self
            .leases
            .timers
            .iter()
            .filter(|_| may_expire)
            .find(|(_, id)| self.leases.expiring.get(id).is_none_or(|&index| index <= applied))
            .map(|&(deadline_ms, _)| {
                let now_ms = self.read_time_ms();
                self.now_us.saturating_add(deadline_ms.saturating_sub(now_ms).saturating_mul(1000))
            });
        let at = [checkpoint, deadline].into_iter().flatten().min()?;
        Some(at.max(self.leases.retry_at_us))
    }

    /// Answers a keep-alive, once a ReadIndex round confirmed this replica leads.
    pub(super) fn serve_keep_alive(&mut self, caller: Caller, lease: u64) {
        self.sync_leases();
        if self.leases.term == 0 {
            return self.reply_not_leader(caller);
        }
        let Some((ttl_ms, durable)) =
            self.sm.leases().get(lease).map(|l| (l.ttl_ms, l.deadline_ms))
        else {
            return self.reply_error(caller, &ErrorInfo::LeaseNotFound { lease });
        };
        if self.leases.expiring.contains_key(&lease) {
            let reason = "the lease's deadline passed and its expiry is being decided: retry";
            return self.reply_error(caller, &ErrorInfo::Unavailable { reason });
        }
        let now_ms = self.read_time_ms();
        let deadline = now_ms.saturating_add(ttl_ms);
        let current = self.leases.deadlines.get(&lease).copied().unwrap_or(0);
        if deadline > current {
            self.leases.set(lease, deadline);
            self.leases.dirty.insert(lease);
        }
        self.metrics.lease_keep_alives.fetch_add(1, Relaxed);
        let durable_ms = durable.saturating_sub(now_ms);
        let frame = self.encoder.lease_keep_alive(caller.id, lease, ttl_ms, durable_ms);
        push_reply(&mut self.out, caller.conn, frame);
        self.metrics.replied(caller.op, self.now_us.saturating_sub(caller.start_us));
    }

    /// Answers a time-to-live request, once a ReadIndex round confirmed this replica leads.
    pub(super) fn serve_lease_time_to_live(&mut self, caller: Caller, lease: u64, keys: bool) {
        self.sync_leases();
        if self.leases.term == 0 {
            return self.reply_not_leader(caller);
        }
        let Some(held) = self.sm.leases().get(lease) else {
            return self.reply_error(caller, &ErrorInfo::LeaseNotFound { lease });
        };
        let deadline = self.leases.deadlines.get(&lease).copied().unwrap_or(held.deadline_ms);
        let remaining_ms = deadline.saturating_sub(self.read_time_ms()).max(1);
        let attached: Vec<&[u8]> =
            if keys { held.keys.iter().map(|k| &k[..]).collect() } else { vec![] };
        let bytes: usize = attached.iter().map(|k| k.len() + KEY_OVERHEAD_BYTES).sum();
        if bytes > TTL_REPLY_KEY_BYTES_MAX {
            let error = ErrorInfo::TooLarge {
                what: "lease's key list (ask without the keys)",
                size: bytes as u64,
                limit: TTL_REPLY_KEY_BYTES_MAX as u64,
            };
            return self.reply_error(caller, &error);
        }
        let frame = self.encoder.lease_time_to_live(
            caller.id,
            lease,
            held.ttl_ms,
            remaining_ms,
            keys.then_some(&attached[..]),
        );
        push_reply(&mut self.out, caller.conn, frame);
        self.metrics.replied(caller.op, self.now_us.saturating_sub(caller.start_us));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use corekv_proto::client::{ErrorKind as WireErrorKind, Reply};
    use corekv_proto::frame::verify_reply;
    use corekv_storage::lease::lease_id;

    use super::super::test_support::{Replica, ReplyKind};
    use crate::constants::LEASE_CHECKPOINT_TICKS;

    /// Grants a lease of `ttl_ms` with `items` as request `id`; its id.
    fn grant(r: &mut Replica, id: u64, ttl_ms: u64, items: &[(&[u8], &[u8])]) -> u64 {
        let frame = r.encoder.lease_grant(id, ttl_ms, items).to_vec();
        r.send(7, &frame);
        r.settle();
        let reply = verify_reply(r.reply_to(id).expect("answered")).unwrap();
        reply.reply_as_lease_grant_reply().expect("a grant reply").lease()
    }

    /// The time left of `lease` (request `id`), or the error kind.
    fn remaining(r: &mut Replica, id: u64, lease: u64) -> Result<u64, WireErrorKind> {
        let frame = r.encoder.lease_time_to_live(id, lease, true).to_vec();
        r.send(7, &frame);
        r.settle();
        let reply = verify_reply(r.reply_to(id).expect("answered")).unwrap();
        match reply.reply_as_lease_time_to_live_reply() {
            Some(t) => Ok(t.remaining_ms()),
            None => Err(reply.reply_as_error_reply().unwrap().kind_type()),
        }
    }

    fn keep_alive(r: &mut Replica, id: u64, lease: u64) -> ReplyKind {
        let frame = r.encoder.lease_keep_alive(id, lease).to_vec();
        r.send(7, &frame);
        r.settle();
        r.reply_kinds().into_iter().find(|(i, _)| *i == id).expect("answered").1
    }

    // Shows: a lease granted with keys holds them until its deadline; keep-alives push the
    // deadline back without a log entry, the leader checkpoints them; once keep-alives stop
    // the leader expires the lease and its keys go as expiries (counted, lag measured); the
    // lease is then not found.
    #[test]
    fn a_lease_lives_while_kept_alive_and_expires_with_its_keys() {
        let mut r = Replica::new(1);
        let lease = grant(&mut r, 1, 2_000, &[(b"a", b"1"), (b"b", b"2")]);
        assert_eq!(lease, lease_id(0, 1));
        assert_eq!(remaining(&mut r, 2, lease), Ok(2_000));
        assert_eq!(r.core.next_deadline_us(), Some(1 + 2_000_000), "woken at the deadline");
        r.advance_ms(1_500);
        let before = r.core.raft().raft.raft_log.last_index();
        assert_eq!(keep_alive(&mut r, 3, lease), ReplyKind::Ok(Reply::LeaseKeepAliveReply));
        assert_eq!(r.core.raft().raft.raft_log.last_index(), before, "no log entry");
        let reply = verify_reply(r.reply_to(3).unwrap()).unwrap();
        let kept = reply.reply_as_lease_keep_alive_reply().unwrap();
        assert_eq!((kept.ttl_ms(), kept.durable_ms()), (2_000, 500), "the log holds the grant's");
        assert_eq!(remaining(&mut r, 4, lease), Ok(2_000));
        // A new leader checkpoints the first keep-alive it answers at once, moving the state
        // machine's deadline...
        let checkpoints = |r: &Replica| r.core.metrics.lease_checkpoints.load(Relaxed);
        let held = |r: &Replica| r.core.state_machine().leases().get(lease).map(|l| l.deadline_ms);
        assert_eq!(checkpoints(&r), 1);
        assert_eq!(
            held(&r),
            Some(1_500 + 2_000),
            "the keep-alive's deadline, by the leader's clock"
        );
        // ...and later ones a checkpoint interval after the last.
        let interval = LEASE_CHECKPOINT_TICKS * r.core.config().tick_ms;
        r.advance_ms(10);
        assert_eq!(keep_alive(&mut r, 5, lease), ReplyKind::Ok(Reply::LeaseKeepAliveReply));
        r.advance_ms(interval - 20);
        assert_eq!(checkpoints(&r), 1, "not before the interval");
        r.advance_ms(20);
        assert_eq!((checkpoints(&r), held(&r)), (2, Some(1_510 + 2_000)));
        r.advance_ms(1_000);
        assert!(r.core.state_machine().get(b"a").is_some(), "kept alive past the first deadline");
        r.advance_ms(1_000);
        r.settle();
        assert!(
            r.core.state_machine().get(b"a").is_none()
                && r.core.state_machine().get(b"b").is_none()
        );
        assert!(r.core.state_machine().leases().is_empty());
        assert_eq!(r.core.metrics.leases_expired.load(Relaxed), 1);
        assert_eq!(r.core.metrics.lease_expiry_lag_us.count(), 1);
        assert_eq!(remaining(&mut r, 5, lease), Err(WireErrorKind::LeaseNotFound));
        assert_eq!(keep_alive(&mut r, 6, lease), ReplyKind::Error(WireErrorKind::LeaseNotFound));
        assert_eq!(r.core.next_deadline_us(), None, "nothing left to expire");
    }

    // Shows: puts attach keys to a lease and a revoke deletes them in one entry; a put or a
    // revoke naming a missing lease is refused as LeaseNotFound; a lease of another shard,
    // a time to live with a lease, and a lease's time to live under the minimum are refused
    // as invalid.
    #[test]
    fn puts_attach_keys_and_bad_requests_are_refused() {
        let mut r = Replica::new(1);
        let lease = grant(&mut r, 1, 5_000, &[]);
        let frame = r.encoder.put_lease(2, b"k", b"v", lease).to_vec();
        r.send(7, &frame);
        let frame = r.encoder.put_lease(3, b"m", b"v", lease + 1).to_vec();
        r.send(7, &frame);
        let frame = r.encoder.put_lease(4, b"m", b"v", lease_id(1, 1)).to_vec();
        r.send(7, &frame);
        let frame = r.encoder.put_with(5, b"m", b"v", 1_000, lease).to_vec();
        r.send(7, &frame);
        let frame = r.encoder.lease_grant(6, 399, &[]).to_vec();
        r.send(7, &frame);
        r.settle();
        let invalid = ReplyKind::Error(WireErrorKind::InvalidRequest);
        let mut kinds = r.reply_kinds();
        kinds.sort_by_key(|(id, _)| *id);
        assert_eq!(
            kinds[1..],
            [
                (2, ReplyKind::Ok(Reply::PutReply)),
                (3, ReplyKind::Error(WireErrorKind::LeaseNotFound)),
                (4, invalid),
                (5, invalid),
                (6, invalid),
            ]
        );
        assert!(r.core.state_machine().get(b"m").is_none());
        let frame = r.encoder.lease_revoke(7, lease).to_vec();
        r.send(7, &frame);
        r.settle();
        let reply = verify_reply(r.reply_to(7).unwrap()).unwrap();
        assert_eq!(reply.reply_as_lease_revoke_reply().unwrap().keys(), 1);
        assert!(r.core.state_machine().get(b"k").is_none());
        assert_eq!(r.core.metrics.leases_revoked.load(Relaxed), 1);
        let frame = r.encoder.lease_revoke(8, lease).to_vec();
        r.send(7, &frame);
        r.settle();
        let kinds = r.reply_kinds();
        assert_eq!(kinds.last(), Some(&(8, ReplyKind::Error(WireErrorKind::LeaseNotFound))));
    }

    // Shows: while a member speaks the peer protocol before leases, lease requests are refused
    // as unavailable and the leader proposes no lease work; a grant admitted just before is
    // refused rather than proposed.
    #[test]
    fn leases_wait_for_every_member_to_apply_them() {
        let mut r = Replica::new(1);
        let lease = grant(&mut r, 1, 2_000, &[]);
        r.core.note_peer_protocol(1, 3);
        assert_eq!(r.core.next_deadline_us(), None);
        let frame = r.encoder.lease_grant(2, 2_000, &[]).to_vec();
        r.send(7, &frame);
        let frame = r.encoder.put_lease(3, b"k", b"v", lease).to_vec();
        r.send(7, &frame);
        r.settle();
        let unavailable = ReplyKind::Error(WireErrorKind::Unavailable);
        assert_eq!(r.reply_kinds()[1..], [(2, unavailable), (3, unavailable)]);
        r.advance_ms(3_000);
        r.settle();
        assert_eq!(r.core.state_machine().leases().len(), 1, "no expiry proposed meanwhile");
        // A grant admitted before such a member's hello arrives is not proposed either.
        r.core.note_peer_protocol(1, 4);
        let last = r.core.raft().raft.raft_log.last_index();
        let frame = r.encoder.lease_grant(4, 2_000, &[]).to_vec();
        r.send(7, &frame);
        r.core.note_peer_protocol(1, 3);
        r.settle();
        assert_eq!(r.reply_kinds().last(), Some(&(4, unavailable)));
        assert_eq!(r.core.raft().raft.raft_log.last_index(), last, "nothing appended");
    }
}
