//! Reads: linearizable reads through batched ReadIndex rounds, and stale reads.
//!
//! ```text
//!   reads arrive ──► queued ──(next process())──► round r: read_index(ctx = r)
//!                                                    │  raft confirms leadership with a
//!                                                    │  heartbeat round, answers ReadState
//!                                                    ▼  { ctx = r, index = commit index }
//!                                   applied >= index ──► every read of round r is served
//! ```
//!
//! One round serves every read that arrived before it started; rounds pipeline (a new round
//! can start while earlier ones are unanswered). raft-rs drops a ReadIndex request it cannot
//! serve yet — a new leader that has not committed an entry of its term (DESIGN.md §9) — so a
//! round without an answer is issued again after [`READ_RETRY_TICKS`]. A replica that stops
//! being leader answers its waiting reads `NotLeader`.
//!
//! Stale reads skip all of this and are served at once from the applied state of any replica;
//! their replies say `stale` and carry the applied index they saw.

use std::collections::VecDeque;
use std::ops::Bound;

use corekv_proto::constants::FRAME_BYTES_MAX;
use corekv_proto::encode::{EntryRef, ErrorInfo};

use super::replies::{push_reply, Caller};
use super::writes::ttl_left;
use super::ShardCore;
use crate::constants::{READS_WAITING_MAX, READ_RETRY_TICKS, SCAN_REPLY_BYTES_MAX};

/// Bytes a reply adds per entry beyond key and value (flatbuffers tables and offsets).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// What a read asks for, owned (it may wait for a round).
#[derive(Debug, Clone)]
pub enum ReadQuery {
    /// One key.
    Get(Vec<u8>),
    /// Several keys, answered in order.
    BatchGet(Vec<Vec<u8>>),
    /// A range.
    Scan(ScanQuery),
    /// A lease's keep-alive (answered by a leader that confirmed it leads).
    LeaseKeepAlive(u64),
    /// A lease's time to live, and its keys when asked.
    LeaseTimeToLive {
        /// The lease.
        lease: u64,
        /// Whether to list its keys.
        keys: bool,
    },
    /// A snapshot of the whole shard, for a backup.
    Backup {
        /// Most bytes per second to stream it at (0: the snapshot write rate).
        bytes_per_sec: u64,
    },
}

/// A scan, with its bounds already combined from start, end, prefix and continuation.
#[derive(Debug, Clone)]
pub struct ScanQuery {
    /// Lower bound.
    pub lower: Bound<Vec<u8>>,
    /// Upper bound.
    pub upper: Bound<Vec<u8>>,
    /// Most entries.
    pub limit: usize,
    /// Leave values out.
    pub keys_only: bool,
}

/// A client waiting for a read.
#[derive(Debug, Clone)]
pub struct ReadWaiter {
    pub(super) caller: Caller,
    pub(super) query: ReadQuery,
}

#[derive(Debug)]
struct Round {
    ctx: u64,
    waiters: Vec<ReadWaiter>,
    issued_tick: u64,
    read_index: Option<u64>,
}

/// The read path's state.
#[derive(Debug, Default)]
pub struct Reads {
    queued: Vec<ReadWaiter>,
    rounds: VecDeque<Round>,
    next_ctx: u64,
    waiting: usize,
}

impl Reads {
    /// Marks the round with context `ctx` answered at `index`.
    pub(super) fn answered(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else { return };
        let ctx = u64::from_le_bytes(bytes);
        if let Some(round) = self.rounds.iter_mut().find(|r| r.ctx == ctx) {
            round.read_index = Some(round.read_index.map_or(index, |i| i.max(index)));
        }
    }

    /// Takes every waiting read (shutdown, leadership loss).
    pub(super) fn drain_all(&mut self) -> Vec<ReadWaiter> {
        let mut all: Vec<ReadWaiter> = self.rounds.drain(..).flat_map(|r| r.waiters).collect();
        all.append(&mut self.queued);
        self.waiting = 0;
        all
    }

    /// Takes the reads that have waited longer than `timeout_us`.
    pub(super) fn expire(&mut self, now_us: u64, timeout_us: u64) -> Vec<ReadWaiter> {
        self.take_where(|w| now_us.saturating_sub(w.caller.start_us) > timeout_us)
    }

    /// Drops the backups connection `conn` asked for (it closed): a backup served after its
    /// round would hold a place and force a snapshot for no one. Other reads are cheap to
    /// answer into the void.
    pub(super) fn drop_backups_of(&mut self, conn: super::ConnId) {
        self.take_where(|w| w.caller.conn == conn && matches!(w.query, ReadQuery::Backup { .. }));
    }

    /// Takes the waiting reads `take` picks, queued or in a round.
    fn take_where(&mut self, take: impl Fn(&ReadWaiter) -> bool) -> Vec<ReadWaiter> {
        let mut taken: Vec<ReadWaiter> = Vec::new();
        for round in &mut self.rounds {
            let (gone, kept): (Vec<_>, Vec<_>) = round.waiters.drain(..).partition(&take);
            round.waiters = kept;
            taken.extend(gone);
        }
        self.rounds.retain(|r| !r.waiters.is_empty());
        let (gone, kept): (Vec<_>, Vec<_>) = self.queued.drain(..).partition(&take);
        self.queued = kept;
        taken.extend(gone);
        self.waiting -= taken.len();
        taken
    }
}

/// Bytes an entry adds to a reply.
fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
}

impl ShardCore {
    /// Admits a read: stale reads are served now, linearizable ones wait for a round.
    pub(super) fn enqueue_read(&mut self, waiter: ReadWaiter, stale: bool) {
        if stale {
            let read_index = self.sm.applied_index();
            return self.execute_read(&waiter, true, read_index);
        }
        if !self.admit(waiter.caller, self.reads.waiting >= READS_WAITING_MAX) {
            return;
        }
        self.reads.waiting += 1;
        self.reads.queued.push(waiter);
    }

    /// Starts one ReadIndex round for every read queued since the last one.
    pub(super) fn start_read_round(&mut self) {
        if self.reads.queued.is_empty() || !self.is_leader() {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        if self.injected_bug == Some(super::InjectedBug::ReadsWithoutQuorumCheck) {
            let waiters = std::mem::take(&mut self.reads.queued);
            let read_index = Some(self.sm.applied_index());
            self.reads.rounds.push_back(Round {
                ctx,
                waiters,
                issued_tick: self.ticks,
                read_index,
            });
            self.serve_reads();
            return;
        }
        self.raw.read_index(ctx.to_le_bytes().to_vec());
        self.metrics.read_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiters = std::mem::take(&mut self.reads.queued);
        self.reads.rounds.push_back(Round {
            ctx,
            waiters,
            issued_tick: self.ticks,
            read_index: None,
        });
    }

    /// Issues unanswered rounds again (raft-rs drops requests it cannot serve yet).
    pub(super) fn retry_reads(&mut self) {
        if !self.is_leader() {
            return;
        }
        let ticks = self.ticks;
        let mut retry = Vec::new();
        for round in &mut self.reads.rounds {
            if round.read_index.is_none() && ticks - round.issued_tick >= READ_RETRY_TICKS {
                round.issued_tick = ticks;
                retry.push(round.ctx);
            }
        }
        for ctx in retry {
            self.raw.read_index(ctx.to_le_bytes().to_vec());
            self.metrics.read_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Serves the reads of every round whose read index is applied.
    pub(super) fn serve_reads(&mut self) {
        let applied = self.sm.applied_index();
        let mut i = 0;
        while i < self.reads.rounds.len() {
            if self.reads.rounds[i].read_index.is_some_and(|index| index <= applied) {
                let round = self.reads.rounds.remove(i).expect("in range");
                self.reads.waiting -= round.waiters.len();
                for waiter in &round.waiters {
                    self.execute_read(waiter, false, applied);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Answers every waiting read `NotLeader` (this replica lost the leadership or failed).
    pub(super) fn fail_reads_not_leader(&mut self) {
        for waiter in self.reads.drain_all() {
            self.reply_not_leader(waiter.caller);
        }
    }

    /// Reads from the state machine and encodes the reply.
    pub(super) fn execute_read(&mut self, waiter: &ReadWaiter, stale: bool, read_index: u64) {
        match waiter.query {
            ReadQuery::LeaseKeepAlive(lease) => return self.serve_keep_alive(waiter.caller, lease),
            ReadQuery::LeaseTimeToLive { lease, keys } => {
                return self.serve_lease_time_to_live(waiter.caller, lease, keys)
            }
            ReadQuery::Backup { bytes_per_sec } => {
                return self.serve_backup(waiter.caller, read_index, bytes_per_sec)
            }
            _ => {}
        }
        let now_ms = self.read_time_ms();
        let (sm, encoder, out) = (&self.sm, &mut self.encoder, &mut self.out);
        let too_large;
        match &waiter.query {
            ReadQuery::Get(key) => {
                let found = sm.get_at(key, now_ms).map(|v| EntryRef {
                    key,
                    value: Some(v.value),
                    meta: v.meta.into(),
                    ttl_ms: ttl_left(v.expires_ms, now_ms),
                    lease: sm.leases().lease_of(key).unwrap_or(0),
                });
                let frame = encoder.get(waiter.caller.id, found.as_ref(), stale, read_index);
                push_reply(out, waiter.caller.conn, frame);
                too_large = None;
            }
            ReadQuery::BatchGet(keys) => {
                let found: Vec<Option<EntryRef<'_>>> = keys
                    .iter()
                    .map(|key| {
                        sm.get_at(key, now_ms).map(|v| EntryRef {
                            key,
                            value: Some(v.value),
                            meta: v.meta.into(),
                            ttl_ms: ttl_left(v.expires_ms, now_ms),
                            lease: sm.leases().lease_of(key).unwrap_or(0),
                        })
                    })
                    .collect();
                let size: usize = found.iter().flatten().map(|e| entry_bytes(e.key, e.value)).sum();
                if size + keys.len() * ENTRY_OVERHEAD_BYTES > FRAME_BYTES_MAX {
                    too_large = Some(size);
                } else {
                    let frame = encoder.batch_get(waiter.caller.id, found, stale, read_index);
                    push_reply(out, waiter.caller.conn, frame);
                    too_large = None;
                }
            }
            ReadQuery::LeaseKeepAlive(_)
            | ReadQuery::LeaseTimeToLive { .. }
            | ReadQuery::Backup { .. } => {
                unreachable!("served above")
            }
            ReadQuery::Scan(scan) => {
                let mut entries: Vec<EntryRef<'_>> = Vec::new();
                let mut bytes = 0;
                let lower = as_ref_bound(&scan.lower);
                let upper = as_ref_bound(&scan.upper);
                let end = sm.scan(lower, upper, now_ms, |key, v| {
                    let value = (!scan.keys_only).then_some(v.value);
                    let size = entry_bytes(key, value);
                    if entries.len() >= scan.limit
                        || (!entries.is_empty() && bytes + size > SCAN_REPLY_BYTES_MAX)
                    {
                        return false;
                    }
                    bytes += size;
                    let ttl_ms = ttl_left(v.expires_ms, now_ms);
                    let lease = sm.leases().lease_of(key).unwrap_or(0);
                    entries.push(EntryRef { key, value, meta: v.meta.into(), ttl_ms, lease });
                    true
                });
                // After the last entry, or past the keys the scan skipped after it.
                let continuation = match end.skipped_to {
                    Some(key) => Some(key),
                    None if end.more => entries.last().map(|e| e.key),
                    None => None,
                };
                let frame = encoder.scan(
                    waiter.caller.id,
                    entries.iter().copied(),
                    continuation,
                    stale,
                    read_index,
                );
                push_reply(out, waiter.caller.conn, frame);
                too_large = None;
            }
        }
        if let Some(size) = too_large {
            let error = ErrorInfo::TooLarge {
                what: "reply (split the batch)",
                size: size as u64,
                limit: FRAME_BYTES_MAX as u64,
            };
            return self.reply_error(waiter.caller, &error);
        }
        self.metrics.replied(waiter.caller.op, self.now_us.saturating_sub(waiter.caller.start_us));
    }
}

fn as_ref_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use corekv_proto::client::{Consistency, ErrorKind as WireErrorKind, Reply};

    use super::super::replies::Caller;
    use super::super::test_support::{Replica, ReplyKind};
    use super::super::Op;
    use super::{ReadQuery, ReadWaiter, Reads};
    use crate::constants::READS_WAITING_MAX;

    // Shows: a linearizable read on the leader sees the write answered before it.
    #[test]
    fn a_linearizable_read_sees_the_write_before_it() {
        let mut r = Replica::new(1);
        let put = r.encoder.put(1, b"k", b"v1").to_vec();
        r.send(7, &put);
        r.settle();
        let get = r.encoder.get(2, b"k", Consistency::Linearizable).to_vec();
        r.send(7, &get);
        r.settle();
        let (_, frame) = r.replies.last().expect("a reply").clone();
        let reply = corekv_proto::frame::verify_reply(&frame).expect("valid");
        let get = reply.reply_as_get_reply().expect("a get reply");
        assert!(!get.stale());
        assert_eq!(get.entry().and_then(|e| e.value()).map(|v| v.bytes()), Some(&b"v1"[..]));
    }

    // Shows: without a leader, a stale read is served from the applied state and a
    // linearizable one is refused.
    #[test]
    fn without_a_leader_stale_reads_are_served_and_linearizable_ones_refused() {
        let mut r = Replica::new(3);
        let stale = r.encoder.get(1, b"k", Consistency::Stale).to_vec();
        r.send(7, &stale);
        let linearizable = r.encoder.get(2, b"k", Consistency::Linearizable).to_vec();
        r.send(7, &linearizable);
        r.settle();
        assert_eq!(
            r.reply_kinds(),
            vec![
                (1, ReplyKind::Ok(Reply::GetReply)),
                (2, ReplyKind::Error(WireErrorKind::NotLeader))
            ]
        );
    }

    // Shows: past the limit of waiting reads, a read is answered Busy at once.
    #[test]
    fn reads_past_the_waiting_limit_are_busy() {
        let mut r = Replica::new(1);
        let count = READS_WAITING_MAX as u64 + 1;
        for id in 1..=count {
            let get = r.encoder.get(id, b"k", Consistency::Linearizable).to_vec();
            r.send(7, &get);
        }
        r.settle();
        let (gets, refused): (Vec<_>, Vec<_>) =
            r.reply_kinds().into_iter().partition(|(_, k)| *k == ReplyKind::Ok(Reply::GetReply));
        assert_eq!(refused, vec![(count, ReplyKind::Error(WireErrorKind::Busy))], "only the last");
        assert_eq!(gets.len(), READS_WAITING_MAX, "the round answered every read it admitted");
    }

    // Shows: reads waiting longer than the timeout are taken out, queued or in a round, and
    // the count of waiting reads follows.
    #[test]
    fn expired_reads_leave_the_queue_and_the_rounds() {
        let waiter = |id, start_us| ReadWaiter {
            caller: Caller { conn: 1, id, op: Op::Get, start_us },
            query: ReadQuery::Get(b"k".to_vec()),
        };
        let mut reads = Reads {
            queued: vec![waiter(1, 0), waiter(2, 900)],
            rounds: [super::Round {
                ctx: 0,
                waiters: vec![waiter(3, 0)],
                issued_tick: 0,
                read_index: None,
            }]
            .into(),
            waiting: 3,
            ..Reads::default()
        };
        let mut expired: Vec<u64> = reads.expire(1_000, 500).iter().map(|w| w.caller.id).collect();
        expired.sort_unstable();
        assert_eq!(expired, vec![1, 3]);
        assert_eq!(reads.waiting, 1);
        assert!(reads.rounds.is_empty(), "a round with no reader left goes");
        assert_eq!(reads.queued.len(), 1);
    }
}
