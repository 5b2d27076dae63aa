//! Keys with a deadline, on the core's side: the wall clock batches are stamped with, the
//! deadline a write with a time to live gets, and the leader's expiry of keys past their
//! deadline (the state machine's side is in `corekv_storage::state_machine`).
//!
//! Time is the leader's wall clock (`wall_epoch_ms` plus the core's monotonic clock, so a
//! step of the system clock after start-up moves nothing). A write's deadline is fixed when
//! the leader admits it; every batch carries the leader's clock, and applying goes by the
//! largest stamp seen, so replicas agree on which keys exist whatever their own clocks say.
//! Reads go by the serving node's clock, never earlier than that largest stamp: a key is
//! never read after its deadline as that node's clock tells it, and nodes' clocks apart by
//! δ make a read on another node than the proposer see a key up to δ longer (or shorter); a
//! past leader whose clock ran ahead moves every node's reads and deadlines ahead with it
//! (docs/DESIGN.md, "Time").
//!
//! Each turn a leader looks at the keys whose deadline passed and proposes `EXPIRE` entries
//! for them — up to [`EXPIRY_KEYS_PER_ENTRY`] keys each, [`EXPIRY_ENTRIES_IN_FLIGHT`] at a
//! time, each key with the mod index it has (a write in between keeps the key). A pass goes
//! on from where the last stopped while its entries are in flight, and starts over once they
//! applied or were lost (a new term, a timeout).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use corekv_proto::constants::TTL_MS_MAX;
use corekv_storage::command::BatchBuilder;

use super::ShardCore;
use crate::constants::{EXPIRY_ENTRIES_IN_FLIGHT, EXPIRY_KEYS_PER_ENTRY, PROPOSAL_TIMEOUT_MS};

/// The first peer protocol whose nodes read stamped batches.
const STAMPED_PEER_PROTOCOL: u32 = 3;

/// Bytes of keys one expiry entry carries at most.
const EXPIRY_KEY_BYTES_PER_ENTRY: usize = 1024 * 1024;

/// How long a leader waits before proposing expiries again after raft refused one (a
/// leadership transfer under way, too many uncommitted bytes), µs.
const EXPIRY_RETRY_US: u64 = 10_000;

/// A leader's expiry passes.
#[derive(Debug, Default)]
pub(super) struct Expiry {
    /// The timer key after which the pass goes on, while its entries are in flight.
    cursor: Option<Vec<u8>>,
    /// The expiry entries proposed and not yet applied: index, term, when proposed (µs).
    in_flight: VecDeque<(u64, u64, u64)>,
    /// Raft refused the last proposal: no other before this time (the core's clock, µs).
    retry_at_us: u64,
}

impl ShardCore {
    /// This node's wall clock (ms since the Unix epoch).
    pub(super) fn wall_ms(&self) -> u64 {
        self.cfg.wall_epoch_ms + self.now_us / 1000
    }

    /// The time reads go by: this node's clock, never before the state machine's.
    pub(super) fn read_time_ms(&self) -> u64 {
        self.wall_ms().max(self.sm.clock_ms())
    }

    /// Whether every member reads stamped batches (a member whose hello was not heard yet
    /// counts as a current one, as for membership changes).
    pub(super) fn stamps_batches(&self) -> bool {
        // The common case, asked on every turn, without listing the members.
        if self.peer_protocols.values().all(|&p| p >= STAMPED_PEER_PROTOCOL) {
            return true;
        }
        self.membership.members().into_iter().all(|id| {
            self.peer_protocols.get(&id.get()).is_none_or(|&p| p >= STAMPED_PEER_PROTOCOL)
        })
    }

    /// The deadline of a write that asks for `ttl_ms` (0: none), or why it is refused.
    pub(super) fn deadline_for(&self, ttl_ms: u64) -> Result<u64, DeadlineRefused> {
        if ttl_ms == 0 {
            return Ok(0);
        }
        if ttl_ms > TTL_MS_MAX {
            return Err(DeadlineRefused::Invalid(format!(
                "a time to live of {ttl_ms} ms is over the limit of {TTL_MS_MAX} ms (ten years)"
            )));
        }
        if !self.stamps_batches() {
            return Err(DeadlineRefused::Unavailable(
                "a member of this shard runs an older corekv (peer protocol 2) that cannot \
                 keep deadlines: upgrade every node first"
                    .to_string(),
            ));
        }
        Ok(self.read_time_ms().saturating_add(ttl_ms))
    }

    /// The stamp for a batch proposed now: this node's clock, when every member reads
    /// stamps.
    pub(super) fn batch_stamp(&self) -> Option<u64> {
        self.stamps_batches().then(|| self.wall_ms())
    }

    /// On a leader, proposes the expiry of keys past their deadline (see the module docs).
    pub(super) fn propose_expiries(&mut self) {
        self.metrics.timed_keys.store(self.sm.timed_keys() as i64, Relaxed);
        let ahead = self.sm.clock_ms().saturating_sub(self.wall_ms());
        self.metrics.clock_behind_ms.store(ahead as i64, Relaxed);
        if !self.can_expire() {
            self.expiry = Expiry::default();
            return;
        }
        if self.now_us < self.expiry.retry_at_us {
            return;
        }
        let (applied, term, now_us) = (self.sm.applied_index(), self.raw.raft.term, self.now_us);
        let expiry = &mut self.expiry;
        while expiry.in_flight.front().is_some_and(|&(index, _, _)| index <= applied) {
            expiry.in_flight.pop_front();
        }
        let lost = expiry
            .in_flight
            .iter()
            .any(|&(_, t, at)| t != term || now_us.saturating_sub(at) > PROPOSAL_TIMEOUT_MS * 1000);
        if lost || expiry.in_flight.is_empty() {
            expiry.in_flight.clear();
            expiry.cursor = None;
        }
        let now_ms = self.read_time_ms();
        while self.expiry.in_flight.len() < EXPIRY_ENTRIES_IN_FLIGHT {
            let mut keys: Vec<(&[u8], u64)> = Vec::new();
            let mut bytes = 0;
            let mut last = None;
            for (key, _, timer) in self.sm.due(now_ms, self.expiry.cursor.as_deref()) {
                if keys.len() == EXPIRY_KEYS_PER_ENTRY || bytes >= EXPIRY_KEY_BYTES_PER_ENTRY {
                    break;
                }
                if let Some(value) = self.sm.get(key) {
                    keys.push((key, value.meta.mod_index));
                    bytes += key.len() + 12;
                }
                last = Some(timer);
            }
            let Some(last) = last else { break };
            let mut builder = BatchBuilder::new();
            builder.expire(term, keys.iter().copied());
            let cursor = last.to_vec();
            let Some(data) = finish_batch(&mut builder, self.batch_stamp()) else { break };
            if self.raw.propose(Vec::new(), data).is_err() {
                self.expiry.retry_at_us = now_us + EXPIRY_RETRY_US;
                break;
            }
            self.metrics.expiry_proposals.fetch_add(1, Relaxed);
            let index = self.raw.raft.raft_log.last_index();
            self.expiry.in_flight.push_back((index, term, now_us));
            self.expiry.cursor = Some(cursor);
        }
    }

    /// When (the core's clock, µs) this replica, as leader, next has a key to expire that it
    /// can propose; `None` when it has none, or cannot now (not leading, or as many expiry
    /// entries in flight as it keeps). The shell wakes the core then (a tick would be up to
    /// 50 ms late when no requests arrive).
    pub fn next_deadline_us(&self) -> Option<u64> {
        [self.next_key_deadline_us(), self.next_lease_wake_us()].into_iter().flatten().min()
    }

    /// As [`ShardCore::next_deadline_us`], for keys only.
    fn next_key_deadline_us(&self) -> Option<u64> {
        if !self.can_expire() {
            return None;
        }
        // Entries this turn applied still count in `in_flight` until the next pass.
        let applied = self.sm.applied_index();
        let in_flight = self.expiry.in_flight.iter().filter(|&&(i, _, _)| i > applied).count();
        if in_flight >= EXPIRY_ENTRIES_IN_FLIGHT {
            return None;
        }
        let cursor = if in_flight == 0 { None } else { self.expiry.cursor.as_deref() };
        let (_, deadline_ms, _) = self.sm.due(u64::MAX, cursor).next()?;
        let now_ms = self.read_time_ms();
        let at =
            self.now_us.saturating_add(deadline_ms.saturating_sub(now_ms).saturating_mul(1000));
        Some(at.max(self.expiry.retry_at_us))
    }

    /// Whether this replica proposes expiries: it leads, is not shutting down, and every
    /// member reads stamped batches.
    fn can_expire(&self) -> bool {
        self.is_leader() && !self.shutting_down && self.stamps_batches()
    }

    /// Counts what an applied expiry deleted: keys, and on the leader how long after its
    /// deadline each went.
    pub(super) fn note_expired(&self, deadlines: &[u64]) {
        self.metrics.expired_keys.fetch_add(deadlines.len() as u64, Relaxed);
        if self.is_leader() {
            let now = self.wall_ms();
            for &deadline in deadlines {
                self.metrics.expiry_lag_us.record(now.saturating_sub(deadline) * 1000);
            }
        }
    }
}

/// Why a write's time to live is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DeadlineRefused {
    /// Over the limit.
    Invalid(String),
    /// A member cannot keep deadlines yet.
    Unavailable(String),
}

/// The bytes of the batch in `builder`, stamped with `stamp` when there is one; `None` when
/// it needs a stamp and there is none (a member cannot read stamps). The builder is left
/// empty either way.
pub(super) fn finish_batch(builder: &mut BatchBuilder, stamp: Option<u64>) -> Option<Vec<u8>> {
    match stamp {
        Some(stamp) => Some(builder.take(stamp)),
        None => builder.take_plain(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use corekv_proto::client::{Consistency, ErrorKind as WireErrorKind, Reply};
    use corekv_proto::constants::TTL_MS_MAX;
    use corekv_proto::frame::verify_reply;

    use super::super::test_support::{Replica, ReplyKind};

    /// A linearizable get of `key` as request `id`: the entry's value and ttl, if found.
    fn get(r: &mut Replica, id: u64, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        let frame = r.encoder.get(id, key, Consistency::Linearizable).to_vec();
        r.send(7, &frame);
        r.settle();
        let frame = r.reply_to(id).expect("answered");
        let reply = verify_reply(frame).unwrap();
        let entry = reply.reply_as_get_reply().expect("a get reply").entry()?;
        Some((entry.value().unwrap().bytes().to_vec(), entry.ttl_ms()))
    }

    // Shows: a key written with a time to live reads with the time left, is gone for reads at
    // its deadline, and the leader's expiry deletes it as an expiry (counted, and its lag
    // measured) without another write; a key without one is untouched.
    #[test]
    fn keys_expire_at_their_deadline() {
        let mut r = Replica::new(1);
        let put = r.encoder.put_ttl(1, b"t", b"v", 1_000).to_vec();
        r.send(7, &put);
        let put = r.encoder.put(2, b"plain", b"v").to_vec();
        r.send(7, &put);
        r.settle();
        assert_eq!(
            r.reply_kinds(),
            [(1, ReplyKind::Ok(Reply::PutReply)), (2, ReplyKind::Ok(Reply::PutReply))]
        );
        let (value, ttl) = get(&mut r, 3, b"t").unwrap();
        assert_eq!((value, ttl), (b"v".to_vec(), 1_000));
        // The shell is told when to wake the core for it: at the deadline.
        assert_eq!(r.core.next_deadline_us(), Some(1 + 1_000_000));
        assert_eq!(get(&mut r, 4, b"plain").unwrap().1, 0, "no deadline: 0");
        r.advance_ms(600);
        assert_eq!(get(&mut r, 5, b"t").unwrap().1, 400);
        assert_eq!(r.core.next_deadline_us(), Some(1 + 1_000_000));
        assert_eq!(r.core.metrics.expired_keys.load(Relaxed), 0);
        r.advance_ms(400);
        assert_eq!(get(&mut r, 6, b"t"), None, "gone at its deadline");
        assert!(r.core.state_machine().get(b"t").is_none(), "deleted, not only hidden");
        assert_eq!(r.core.metrics.expired_keys.load(Relaxed), 1);
        assert_eq!(r.core.metrics.expiry_lag_us.count(), 1);
        assert!(get(&mut r, 7, b"plain").is_some());
        assert_eq!(r.core.state_machine().timed_keys(), 0);
        assert_eq!(r.core.next_deadline_us(), None, "nothing left to expire");
    }

    // Shows: many keys due at once expire in entries of at most EXPIRY_KEYS_PER_ENTRY keys,
    // all of them.
    #[test]
    fn many_keys_due_at_once_expire_in_several_entries() {
        let mut r = Replica::new(1);
        let n = crate::constants::EXPIRY_KEYS_PER_ENTRY * 2 + 17;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:06}").into_bytes()).collect();
        for (i, chunk) in keys.chunks(5_000).enumerate() {
            let items: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &b"v"[..])).collect();
            let put = r.encoder.batch_put_ttl(i as u64 + 1, &items, 50).to_vec();
            r.send(7, &put);
            r.settle();
        }
        assert_eq!(r.core.state_machine().timed_keys(), n);
        let before = r.core.metrics.expiry_proposals.load(Relaxed);
        r.advance_ms(50);
        r.settle();
        assert_eq!(r.core.state_machine().len(), 0);
        assert_eq!(r.core.metrics.expired_keys.load(Relaxed), n as u64);
        assert_eq!(r.core.metrics.expiry_proposals.load(Relaxed) - before, 3);
    }

    // Shows: a time to live past the limit is refused; while a member speaks the older peer
    // protocol, writes with one are refused as unavailable and batches go unstamped, which
    // that member reads.
    #[test]
    fn deadlines_wait_for_every_member_to_read_them() {
        let mut r = Replica::new(1);
        let put = r.encoder.put_ttl(1, b"k", b"v", TTL_MS_MAX + 1).to_vec();
        r.send(7, &put);
        r.settle();
        assert_eq!(r.reply_kinds(), [(1, ReplyKind::Error(WireErrorKind::InvalidRequest))]);
        let put = r.encoder.put_ttl(9, b"early", b"v", 1_000).to_vec();
        r.send(7, &put);
        r.settle();
        assert!(r.core.next_deadline_us().is_some());
        r.replies.clear();
        r.core.note_peer_protocol(1, 2);
        // Expiries wait too: the shell is not asked to wake the core for them.
        assert_eq!(r.core.next_deadline_us(), None);
        let put = r.encoder.put_ttl(2, b"k", b"v", 1_000).to_vec();
        r.send(7, &put);
        let put = r.encoder.put(3, b"k", b"v").to_vec();
        r.send(7, &put);
        r.settle();
        let kinds = r.reply_kinds();
        assert_eq!(kinds[0], (2, ReplyKind::Error(WireErrorKind::Unavailable)));
        assert_eq!(kinds[1], (3, ReplyKind::Ok(Reply::PutReply)));
        let put = r.encoder.put_ttl(4, b"k", b"v", TTL_MS_MAX + 1).to_vec();
        r.send(7, &put);
        r.settle();
        let last = r.reply_kinds().last().copied();
        assert_eq!(
            last,
            Some((4, ReplyKind::Error(WireErrorKind::InvalidRequest))),
            "still over the limit"
        );
        let last = r.core.raft().raft.raft_log.last_index();
        let context = raft::GetEntriesContext::empty(false);
        let entry = &r.core.raft().raft.raft_log.entries(last, None, context).unwrap()[0];
        assert_eq!(entry.data[0], corekv_storage::command::BATCH_VERSION_PLAIN);
    }
}
