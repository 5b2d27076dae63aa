//! Watches: a stream, on a client connection, of every change to a key, a prefix or a range of
//! this shard, in log order, served by the shard's leader (DESIGN.md §6, "Watch").
//!
//! A shard's revision is its raft log index, the same on every replica. Every replica records
//! what each applied entry changed in its watch history ([`corekv_storage::history`]: the
//! newest entries in memory, the rest on disk for a retention), which covers `[first,
//! through]`. A watch names the first index it wants (a cursor's next index, or "from now");
//! the leader sends the history from there, then each entry's changes as it applies them. So a
//! watcher that reconnects — to the same leader or, after an election, to the next one, which
//! recorded the same history — resumes with no gap and no duplicate, and one whose cursor is
//! older than the history is told `Compacted` (with the oldest index kept) instead of
//! missing changes.
//!
//! ```text
//!   WatchRequest{scope, start}   start < first ──► WatchEnded{Compacted, first_available}
//!        │                       start ≤ through ──► catching up     otherwise ──► live
//!   going live ──► WatchProgress{next - 1} (a watch from now learns where it starts)
//!        ▼
//!   catching up: the history from `next` ── cache: sent now ─┐
//!                                        └─ disk: a HistoryRead (the shell reads it off the
//!                                           executor) ── on_history_read ── sent ──┤
//!                reached `through` ──► live                                        │
//!   live: each applied entry's matching changes ──► WatchEvents{index, changes} ◄──┘
//!         nothing sent for progress_ms ──► WatchProgress{index}
//!   ends: CancelWatchRequest ──► WatchEnded{Cancelled}; leadership lost ──► WatchEnded{NotLeader}
//!         the history moved past `next` while catching up ──► WatchEnded{Compacted}
//!         the connection closes ──► dropped
//! ```
//!
//! Slow watchers cost bounded memory: the core counts the watch bytes it handed each
//! connection since the shell last said the connection's output was all written
//! ([`ShardCore::on_client_drained`]). A live watcher whose connection holds more than
//! [`WATCH_CONNECTION_QUEUE_BYTES_MAX`] unsent (or, with some unsent, while the shard's
//! connections together hold more than [`WATCH_SHARD_QUEUE_BYTES_MAX`]) stops getting live
//! events and catches up from the history once the connection drains — its changes wait in
//! the history, not in memory; it is never cancelled and never skips an event. One whose
//! place leaves the history meanwhile gets `Compacted` next, before anything else is queued.
//!
//! Events and progress are stream frames: they answer no request of their own (the shell does
//! not count them against the connection's requests in flight); the `WatchEnded` answers the
//! watch request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;

use corekv_proto::client::{WatchEndReason, WatchScope};
use corekv_proto::encode::{ChangeRef, ErrorInfo, ReplyEncoder, WatchEnd, WatchSpec};
use corekv_storage::history::{HistoryEntry, HistoryRead, Plan, ReadBack, Retention};
use corekv_storage::wal::Lsn;
use corekv_types::registry::WatchSettings;

use super::replies::{push_reply, push_stream, Caller};
use super::{ConnId, Op, Outputs, ShardCore};
use crate::constants::{
    WATCHERS_PER_CONNECTION_MAX, WATCHERS_PER_SHARD_MAX, WATCH_CATCH_UP_BYTES_PER_TURN,
    WATCH_CONNECTION_QUEUE_BYTES_MAX, WATCH_DRAIN_NOTICE_BYTES, WATCH_SHARD_QUEUE_BYTES_MAX,
};

/// The watch history's retention the registry's `[watch]` section asks for.
pub fn history_retention(settings: &WatchSettings) -> Retention {
    const MIB: u64 = 1024 * 1024;
    Retention {
        min_entries: settings.history_min_entries,
        min_bytes: settings.history_min_mib.saturating_mul(MIB),
        min_age_ms: settings.history_min_minutes.saturating_mul(60_000),
        max_bytes: settings.history_max_mib.saturating_mul(MIB),
    }
}

/// The keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Scope {
    Key(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// `[start, end)`; an empty end has no end.
    Range(Box<[u8]>, Box<[u8]>),
}

impl Scope {
    fn of(spec: &WatchSpec<'_>) -> Option<Scope> {
        Some(match spec.scope {
            WatchScope::Key => Scope::Key(spec.key.into()),
            WatchScope::Prefix => Scope::Prefix(spec.key.into()),
            WatchScope::Range => Scope::Range(spec.key.into(), spec.range_end.into()),
            _ => return None,
        })
    }

    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Scope::Key(k) => **k == *key,
            Scope::Prefix(p) => key.starts_with(p),
            Scope::Range(start, end) => **start <= *key && (end.is_empty() || *key < **end),
        }
    }
}

/// How a watcher gets its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each applied entry's changes as it applies.
    Live,
    /// From the history, from `next` on: `reading` while a disk read is out for it; `cont`,
    /// where its last disk read ended.
    CatchingUp { reading: bool, cont: Option<Lsn> },
}

/// One running watch.
#[derive(Debug)]
struct Watcher {
    scope: Scope,
    prev: bool,
    /// The next index whose changes it is to get: everything before was sent.
    next: u64,
    progress_us: u64,
    /// When a frame last went to it (µs, the core's clock).
    last_sent_us: u64,
    mode: Mode,
}

/// Watch bytes handed to each connection and not known to be written yet.
#[derive(Debug)]
struct Backlog {
    /// Per connection with watches: bytes, and whether the shell was asked to say when its
    /// output is all written.
    conns: HashMap<ConnId, (usize, bool)>,
    total: usize,
    /// A connection's budget: [`WATCH_CONNECTION_QUEUE_BYTES_MAX`] (the simulator sets less,
    /// to make its watchers catch up often).
    limit: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog { conns: HashMap::new(), total: 0, limit: WATCH_CONNECTION_QUEUE_BYTES_MAX }
    }
}

impl Backlog {
    /// Whether a watcher on `conn` must wait for the connection to drain.
    fn over(&self, conn: ConnId) -> bool {
        let unsent = self.conns.get(&conn).map_or(0, |c| c.0);
        unsent >= self.limit || (unsent > 0 && self.total >= WATCH_SHARD_QUEUE_BYTES_MAX)
    }

    /// Queues a watch frame for `conn`, counting it, and asks for a drain notice once enough
    /// waits.
    fn stream(&mut self, out: &mut Outputs, conn: ConnId, frame: &[u8]) {
        push_stream(out, conn, frame);
        let entry = self.conns.entry(conn).or_default();
        entry.0 += frame.len();
        self.total += frame.len();
        if entry.0 >= WATCH_DRAIN_NOTICE_BYTES.min(self.limit / 2) {
            Self::ask_notice(entry, out, conn);
        }
    }

    fn ask_notice(entry: &mut (usize, bool), out: &mut Outputs, conn: ConnId) {
        if !entry.1 {
            entry.1 = true;
            out.drain_notify.push(conn);
        }
    }
}

/// A read of the watch history one catching-up watcher waits for: the shell reads it off the
/// executor and hands the bytes to [`ShardCore::on_history_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryReadJob {
    /// Names the read in the answer.
    pub id: u64,
    /// What to read.
    pub read: HistoryRead,
}

/// Live watchers of one connection that follow the same keys the same way: they get the same
/// frames (one for all, the others' ids in it) and stand at the same index.
type GroupKey = (ConnId, Scope, bool);

/// A group of live watchers (see [`GroupKey`]).
#[derive(Debug)]
struct Group {
    ids: BTreeSet<u64>,
    /// The next index its watchers are to get: what their `next` is while they are in it.
    next: u64,
    /// When a frame last went to it (µs, the core's clock).
    last_sent_us: u64,
}

/// The shard's watches (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Watches {
    /// By (connection, request id).
    watchers: BTreeMap<(ConnId, u64), Watcher>,
    /// The live ones, grouped: an applied entry costs a frame per group, not per watcher.
    /// Ordered, so the frames of an entry go out in the same order on every run (the
    /// simulator replays seeds exactly).
    live: BTreeMap<GroupKey, Group>,
    /// Caught up, but starting after an index not applied yet (a cursor past the applied
    /// index), or behind a group of the same kind that moved on: they join once applying
    /// reaches them.
    waiting: BTreeSet<(ConnId, u64)>,
    backlog: Backlog,
    /// Disk reads out, and whom each is for.
    reads: HashMap<u64, (ConnId, u64)>,
    next_read: u64,
}

impl Watches {
    /// Running watches.
    pub(super) fn len(&self) -> usize {
        self.watchers.len()
    }
}

/// Where a watch's frames go: the shard (named in them), the connection, the watch's id.
#[derive(Debug, Clone, Copy)]
struct Destination {
    shard: u32,
    conn: ConnId,
    id: u64,
}

impl ShardCore {
    /// A watch request (see the module docs).
    pub(super) fn watch_request(&mut self, caller: Caller, spec: &WatchSpec<'_>) {
        if !self.admit(caller, false) {
            return;
        }
        let Some(scope) = Scope::of(spec) else {
            let reason = format!("unknown watch scope {}", spec.scope.0);
            return self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
        };
        let on_conn = self.watches.watchers.range((caller.conn, 0)..=(caller.conn, u64::MAX));
        if on_conn.count() >= WATCHERS_PER_CONNECTION_MAX
            || self.watches.len() >= WATCHERS_PER_SHARD_MAX
        {
            // Over a limit for now (watches end all the time): the client tries again.
            let error = ErrorInfo::Busy { retry_after_ms: crate::constants::BUSY_RETRY_AFTER_MS };
            return self.reply_error(caller, &error);
        }
        if let Some(reason) = self.watch_refusal(caller, spec) {
            return self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
        }
        let applied = self.sm.applied_index();
        // From now: after what is applied — or, while a restarted replica applies its log
        // again, from the oldest change its history still holds.
        let start = if spec.start_index == 0 {
            (applied + 1).max(self.history.first())
        } else {
            spec.start_index
        };
        let catching_up = start <= self.history.through();
        let watcher = Watcher {
            scope,
            prev: spec.prev_value,
            next: start,
            progress_us: u64::from(spec.progress_ms) * 1000,
            last_sent_us: self.now_us,
            mode: Mode::CatchingUp { reading: false, cont: None },
        };
        if start < self.history.first() {
            let first = self.history.first();
            return self.end_watch(
                caller.conn,
                caller.id,
                &watcher,
                WatchEndReason::Compacted,
                first,
            );
        }
        self.metrics.watches_started.fetch_add(1, Relaxed);
        let key = (caller.conn, caller.id);
        self.watches.backlog.conns.entry(caller.conn).or_default();
        self.watches.watchers.insert(key, watcher);
        if catching_up && spec.start_index == 0 {
            // From now, with history this replica recorded before it applied it again (a
            // restart): the client learns where the watch starts before any event.
            let frame = self.encoder.watch_progress(key.1, self.cfg.shard.get(), start - 1);
            self.watches.backlog.stream(&mut self.out, key.0, frame);
        }
        self.pump(key);
    }

    /// Makes a caught-up watcher live: it joins its group (or starts one) and is told how
    /// far it has everything (a watch from now learns where it starts; a catching-up one,
    /// that it caught up). One whose next index is not the group's waits (see
    /// [`Watches::waiting`]).
    fn go_live(&mut self, key: (ConnId, u64)) {
        let Watches { watchers, live, waiting, backlog, .. } = &mut self.watches;
        let Some(watcher) = watchers.get_mut(&key) else { return };
        let group_key = (key.0, watcher.scope.clone(), watcher.prev);
        let ready = watcher.next == self.history.through() + 1;
        match live.get_mut(&group_key) {
            Some(group) if ready && group.next == watcher.next => {
                group.ids.insert(key.1);
            }
            None if ready => {
                let group =
                    Group { ids: BTreeSet::from([key.1]), next: watcher.next, last_sent_us: 0 };
                live.insert(group_key, group);
            }
            _ => {
                waiting.insert(key);
                return;
            }
        }
        waiting.remove(&key);
        watcher.mode = Mode::Live;
        let frame = self.encoder.watch_progress(key.1, self.cfg.shard.get(), watcher.next - 1);
        backlog.stream(&mut self.out, key.0, frame);
        watcher.last_sent_us = self.now_us;
    }

    /// Takes a live watcher out of its group, its next index the group's; returns it.
    fn leave_live(&mut self, key: (ConnId, u64)) -> Option<u64> {
        let watcher = self.watches.watchers.get_mut(&key)?;
        if watcher.mode != Mode::Live {
            return Some(watcher.next);
        }
        let group_key = (key.0, watcher.scope.clone(), watcher.prev);
        if let Some(group) = self.watches.live.get_mut(&group_key) {
            watcher.next = group.next;
            group.ids.remove(&key.1);
            if group.ids.is_empty() {
                self.watches.live.remove(&group_key);
            }
        }
        watcher.mode = Mode::CatchingUp { reading: false, cont: None };
        Some(watcher.next)
    }

    /// Why a watch request cannot start, if it cannot: an id in use, a start past the log
    /// (a cursor no watch handed out; or, for an election timeout at most, this replica still
    /// believing it leads without a log as long as the leader's).
    fn watch_refusal(&self, caller: Caller, spec: &WatchSpec<'_>) -> Option<String> {
        if self.watches.watchers.contains_key(&(caller.conn, caller.id)) {
            return Some(format!("request id {} names a running watch already", caller.id));
        }
        let last = self.raw.raft.raft_log.last_index();
        (spec.start_index > last + 1).then(|| {
            format!(
                "watch start index {} is past this shard's log (its last index is {last})",
                spec.start_index
            )
        })
    }

    /// A cancel request: ends the watch request `watch_id` of the same connection started.
    pub(super) fn cancel_watch_request(&mut self, caller: Caller, watch_id: u64) {
        let key = (caller.conn, watch_id);
        self.leave_live(key);
        self.watches.waiting.remove(&key);
        self.watches.reads.retain(|_, reader| *reader != key);
        let found = self.watches.watchers.remove(&(caller.conn, watch_id));
        if let Some(watcher) = &found {
            self.end_watch(caller.conn, watch_id, watcher, WatchEndReason::Cancelled, 0);
        }
        self.metrics.replied(Op::CancelWatch, self.now_us.saturating_sub(caller.start_us));
        let frame = self.encoder.cancel_watch(caller.id, found.is_some());
        push_reply(&mut self.out, caller.conn, frame);
    }

    /// Entry `index` was applied: records what it changed in the history and sends each live
    /// watcher its share (a watcher whose connection is backed up switches to catching up).
    /// Live watchers of one connection that follow the same keys the same way share one
    /// frame (the others' ids ride in it), so a thousand watchers of one prefix on one
    /// connection cost one encoding, not a thousand.
    pub(super) fn watch_applied(&mut self, index: u64) {
        let changes = self.sm.take_changes();
        let time_ms = self.wall_ms();
        let entry = self.history.record(index, time_ms, changes, self.now_us);
        if let (Some(recorded), Some(entry)) = (&mut self.recorded_for_tests, &entry) {
            recorded.push(entry.clone());
        }
        let Watches { live, backlog, .. } = &mut self.watches;
        let shard = self.cfg.shard.get();
        let (mut sent, mut switched) = (0, Vec::new());
        for (group_key, group) in live.iter_mut() {
            if group.next > index {
                continue;
            }
            if let Some(entry) = &entry {
                // Decided before the group's frame is queued: one frame does not tip its own
                // group into catching up.
                if backlog.over(group_key.0) {
                    switched.push(group_key.clone());
                    continue;
                }
                let ids: Vec<u64> = group.ids.iter().copied().collect();
                let to = Destination { shard, conn: group_key.0, id: ids[0] };
                let (scope, prev) = (&group_key.1, group_key.2);
                if let Some(frame) =
                    encode_entry(&mut self.encoder, to, &ids[1..], scope, prev, entry)
                {
                    backlog.stream(&mut self.out, group_key.0, frame);
                    group.last_sent_us = self.now_us;
                    sent += 1;
                }
            }
            group.next = index + 1;
        }
        let mut caught = Vec::new();
        for group_key in switched {
            let Some(group) = self.watches.live.remove(&group_key) else { continue };
            for id in group.ids {
                if let Some(watcher) = self.watches.watchers.get_mut(&(group_key.0, id)) {
                    watcher.next = group.next;
                    watcher.mode = Mode::CatchingUp { reading: false, cont: None };
                    caught.push((group_key.0, id));
                }
            }
        }
        // Each waits for its connection to drain (pumping asks for the notice).
        for &key in &caught {
            self.pump(key);
        }
        let caught = caught.len() as u64;
        self.metrics.watch_events.fetch_add(sent, Relaxed);
        self.metrics.watch_catch_ups.fetch_add(caught, Relaxed);
        if !self.watches.waiting.is_empty() {
            let waiting: Vec<(ConnId, u64)> = self.watches.waiting.iter().copied().collect();
            for key in waiting {
                self.pump(key);
            }
        }
    }

    /// Moves a catching-up watcher on: from the cache at once, from the disk by a read, until
    /// it reaches the history's end (then it is live), its connection backs up (it waits for
    /// the drain), or it has had its share of this turn (the next turn goes on).
    fn pump(&mut self, key: (ConnId, u64)) {
        let mut budget = WATCH_CATCH_UP_BYTES_PER_TURN;
        let to = Destination { shard: self.cfg.shard.get(), conn: key.0, id: key.1 };
        let now = self.now_us;
        loop {
            let Watches { watchers, backlog, reads, next_read, .. } = &mut self.watches;
            let Some(watcher) = watchers.get_mut(&key) else { return };
            let Mode::CatchingUp { reading: false, cont } = watcher.mode else { return };
            if backlog.over(key.0) {
                if let Some(entry) = backlog.conns.get_mut(&key.0) {
                    Backlog::ask_notice(entry, &mut self.out, key.0);
                }
                return;
            }
            if budget == 0 {
                self.pending_pumps = true;
                return;
            }
            match self.history.plan(watcher.next, cont) {
                Plan::Compacted { first } => {
                    let watcher = watchers.remove(&key).expect("found above");
                    let reason = WatchEndReason::Compacted;
                    return self.end_watch(key.0, key.1, &watcher, reason, first);
                }
                Plan::UpToDate => return self.go_live(key),
                Plan::Disk(read) => {
                    watcher.mode = Mode::CatchingUp { reading: true, cont };
                    let id = *next_read;
                    *next_read += 1;
                    reads.insert(id, key);
                    self.out.history_reads.push(HistoryReadJob { id, read });
                    self.metrics.history_reads.fetch_add(1, Relaxed);
                    return;
                }
                Plan::Cache => {
                    let (mut sent, mut complete) = (0, true);
                    for entry in self.history.cached(watcher.next) {
                        if backlog.over(key.0) || budget == 0 {
                            complete = false;
                            break;
                        }
                        budget = budget.saturating_sub(entry.bytes());
                        let (encoder, out) = (&mut self.encoder, &mut self.out);
                        sent +=
                            u64::from(send_entry(encoder, out, backlog, to, watcher, entry, now));
                    }
                    self.metrics.watch_events.fetch_add(sent, Relaxed);
                    if complete {
                        // Entries after the last cached one changed nothing.
                        watcher.next = watcher.next.max(self.history.through() + 1);
                        return self.go_live(key);
                    }
                }
            }
        }
    }

    /// Pumps every catching-up watcher that spent its share of the last turn.
    pub(super) fn pump_watchers(&mut self) {
        if !std::mem::take(&mut self.pending_pumps) {
            return;
        }
        let keys: Vec<(ConnId, u64)> = self
            .watches
            .watchers
            .iter()
            .filter(|(_, w)| matches!(w.mode, Mode::CatchingUp { reading: false, .. }))
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.pump(key);
        }
    }

    /// A history read came back (`data`: its bytes, or why not): the watcher it was for gets
    /// its entries and goes on. Followed by a turn, as every completion.
    pub fn on_history_read(
        &mut self,
        job: HistoryReadJob,
        data: corekv_storage::error::Result<Vec<u8>>,
    ) {
        let Some(key) = self.watches.reads.remove(&job.id) else { return };
        let Some(watcher) = self.watches.watchers.get_mut(&key) else { return };
        let Mode::CatchingUp { reading: true, cont } = watcher.mode else { return };
        let parsed = match data {
            Ok(bytes) => self.history.parse(&job.read, &bytes, watcher.next),
            // The segment was retired while the read was out (its file renamed away).
            Err(_) if !self.history.holds_segment(job.read.seq) => Ok(ReadBack::Gone),
            Err(error) => Err(error.to_string()),
        };
        watcher.mode = Mode::CatchingUp { reading: false, cont: None };
        match parsed {
            Ok(ReadBack::Gone) => {}
            Ok(ReadBack::Larger(len)) => {
                watcher.mode = Mode::CatchingUp { reading: true, cont };
                self.watches.reads.insert(job.id, key);
                let read = HistoryRead { len, ..job.read };
                self.out.history_reads.push(HistoryReadJob { id: job.id, read });
                return;
            }
            Ok(ReadBack::Entries { entries, next, next_index }) => {
                let to = Destination { shard: self.cfg.shard.get(), conn: key.0, id: key.1 };
                let backlog = &mut self.watches.backlog;
                let (encoder, out) = (&mut self.encoder, &mut self.out);
                let mut sent = 0;
                for entry in &entries {
                    let now = self.now_us;
                    sent += u64::from(send_entry(encoder, out, backlog, to, watcher, entry, now));
                }
                self.metrics.watch_events.fetch_add(sent, Relaxed);
                watcher.next = watcher.next.max(next_index);
                watcher.mode = Mode::CatchingUp { reading: false, cont: Some(next) };
            }
            Err(why) => self.history_damaged(job.read.seq, &why),
        }
        self.pump(key);
    }

    /// A history segment did not read back: the history gives it up, and everything before.
    fn history_damaged(&mut self, seq: u64, why: &str) {
        tracing::error!(shard = %self.cfg.shard, seq, %why,
            "a watch history segment did not read back; the history now starts after it");
        let retired = self.history.cut_through(seq);
        self.out.history_retire.extend(retired);
    }

    /// The shell wrote everything queued on `conn`: its watchers waiting for that go on.
    pub fn on_client_drained(&mut self, conn: ConnId) {
        let backlog = &mut self.watches.backlog;
        if let Some(entry) = backlog.conns.get_mut(&conn) {
            backlog.total -= entry.0;
            *entry = (0, false);
        }
        let keys: Vec<(ConnId, u64)> =
            self.watches.watchers.range((conn, 0)..=(conn, u64::MAX)).map(|(&k, _)| k).collect();
        for key in keys {
            self.pump(key);
        }
    }

    /// Sets the watch history's retention and the bytes of it kept in memory (tests make
    /// them small, to reach the disk and the history's end).
    pub fn set_history_limits(&mut self, retention: Retention, cache_bytes: usize) {
        self.history.set_retention(retention);
        self.history.set_cache_limit(cache_bytes);
    }

    /// Sets how many watch bytes a connection may have queued before its watchers catch up
    /// instead (the simulator sets a small budget, to exercise that path under faults).
    #[doc(hidden)]
    pub fn set_watch_queue_limit_for_tests(&mut self, bytes: usize) {
        self.watches.backlog.limit = bytes.max(1);
    }

    /// Has the core keep every history entry it records for
    /// [`ShardCore::take_history_for_tests`] (the simulator's ground truth).
    #[doc(hidden)]
    pub fn record_history_for_tests(&mut self) {
        self.recorded_for_tests = Some(Vec::new());
    }

    /// The history entries recorded since the last call.
    #[doc(hidden)]
    pub fn take_history_for_tests(&mut self) -> Vec<std::sync::Arc<HistoryEntry>> {
        self.recorded_for_tests.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The oldest index the watch history covers, and the newest.
    pub fn history_range(&self) -> (u64, u64) {
        (self.history.first(), self.history.through())
    }

    /// The state was replaced by a snapshot at `index`: the history before it is gone.
    pub(super) fn watch_restored(&mut self, index: u64) {
        let _ = self.sm.take_changes();
        self.history.reset(index);
    }

    /// Sends a progress reply to every live watch that asked for one and got nothing for as
    /// long; retires history segments past the retention; publishes the watch gauges.
    pub(super) fn watch_tick(&mut self) {
        let now = self.now_us;
        let shard = self.cfg.shard.get();
        let Watches { watchers, live, backlog, .. } = &mut self.watches;
        let (encoder, out) = (&mut self.encoder, &mut self.out);
        let mut catching_up = 0;
        for (&(conn, id), watcher) in watchers.iter_mut() {
            // A catching-up watcher hears how far it has got too, so its client can tell a
            // long catch-up (or a wait for its turn) from a node gone quiet.
            let (next, last) = if watcher.mode == Mode::Live {
                let Some(group) = live.get(&(conn, watcher.scope.clone(), watcher.prev)) else {
                    continue;
                };
                (group.next, watcher.last_sent_us.max(group.last_sent_us))
            } else {
                catching_up += 1;
                (watcher.next, watcher.last_sent_us)
            };
            if watcher.progress_us > 0
                && now.saturating_sub(last) >= watcher.progress_us
                && !backlog.over(conn)
            {
                let frame = encoder.watch_progress(id, shard, next - 1);
                backlog.stream(out, conn, frame);
                watcher.last_sent_us = now;
            }
        }
        let retired = self.history.retire(self.cfg.wall_epoch_ms + now / 1000);
        self.out.history_retire.extend(retired);
        self.publish_watch_gauges(catching_up);
    }

    fn publish_watch_gauges(&self, catching_up: i64) {
        let m = &self.metrics;
        m.watches.store(self.watches.len() as i64, Relaxed);
        m.watches_catching_up.store(catching_up, Relaxed);
        m.watch_queued_bytes.store(self.watches.backlog.total as i64, Relaxed);
        m.history_disk_bytes.store(self.history.disk_bytes() as i64, Relaxed);
        m.history_cache_bytes.store(self.history.cache_bytes() as i64, Relaxed);
        m.history_first_index.store(self.history.first() as i64, Relaxed);
        let stats = self.history.stats();
        m.history_resets.store(stats.resets, Relaxed);
        m.history_cut_by_size.store(stats.cut_by_size, Relaxed);
    }

    /// Every watch ends (this replica stopped leading, or shuts down), saying where to resume.
    pub(super) fn end_watches(&mut self, reason: WatchEndReason) {
        let keys: Vec<(ConnId, u64)> = self.watches.watchers.keys().copied().collect();
        for key in keys {
            self.leave_live(key);
        }
        let watchers = std::mem::take(&mut self.watches.watchers);
        self.watches.reads.clear();
        self.watches.waiting.clear();
        for ((conn, id), watcher) in watchers {
            self.end_watch(conn, id, &watcher, reason, 0);
        }
    }

    /// The auth policy was reloaded: each running watch whose user may no longer read all it
    /// follows ends with `PermissionDenied`.
    pub(super) fn recheck_watches(&mut self) {
        let mut refused = Vec::new();
        for (&(conn, id), watcher) in &self.watches.watchers {
            let (start, end): (&[u8], Option<Vec<u8>>) = match &watcher.scope {
                Scope::Key(key) => (key, Some([key.as_ref(), &[0]].concat())),
                Scope::Prefix(prefix) => (prefix, corekv_types::auth::prefix_end(prefix)),
                Scope::Range(start, end) => (start, (!end.is_empty()).then(|| end.to_vec())),
            };
            if let Err(reason) = self.access.may_read_range(conn, start, end.as_deref()) {
                refused.push((conn, id, reason));
            }
        }
        for (conn, id, reason) in refused {
            let key = (conn, id);
            self.leave_live(key);
            self.watches.waiting.remove(&key);
            self.watches.reads.retain(|_, reader| *reader != key);
            self.watches.watchers.remove(&key);
            self.permission_denied(
                Caller { conn, id, op: Op::Watch, start_us: self.now_us },
                &reason,
            );
        }
    }

    /// Connection `conn` closed: its watches (and its backups waiting for a snapshot) end
    /// with it.
    pub fn on_client_closed(&mut self, conn: ConnId) {
        self.access.closed(conn);
        self.drop_backups_of(conn);
        self.watches.watchers.retain(|&(c, _), _| c != conn);
        self.watches.live.retain(|(c, _, _), _| *c != conn);
        self.watches.waiting.retain(|&(c, _)| c != conn);
        self.watches.reads.retain(|_, &mut (c, _)| c != conn);
        if let Some((unsent, _)) = self.watches.backlog.conns.remove(&conn) {
            self.watches.backlog.total -= unsent;
        }
    }

    fn end_watch(
        &mut self,
        conn: ConnId,
        id: u64,
        watcher: &Watcher,
        reason: WatchEndReason,
        first_available: u64,
    ) {
        let end = WatchEnd {
            reason,
            next_index: watcher.next,
            first_available,
            leader_id: if reason == WatchEndReason::NotLeader { self.leader_id } else { 0 },
        };
        if reason == WatchEndReason::Compacted {
            self.metrics.watches_compacted.fetch_add(1, Relaxed);
        }
        let frame = self.encoder.watch_ended(id, self.cfg.shard.get(), &end);
        push_reply(&mut self.out, conn, frame);
    }
}

/// Sends `watcher` the changes of `entry` it follows (if it has not had them), as one events
/// frame. Returns whether a frame went.
fn send_entry(
    encoder: &mut ReplyEncoder,
    out: &mut Outputs,
    backlog: &mut Backlog,
    to: Destination,
    watcher: &mut Watcher,
    entry: &HistoryEntry,
    now_us: u64,
) -> bool {
    if entry.index < watcher.next {
        return false;
    }
    watcher.next = entry.index + 1;
    let Some(frame) = encode_entry(encoder, to, &[], &watcher.scope, watcher.prev, entry) else {
        return false;
    };
    backlog.stream(out, to.conn, frame);
    watcher.last_sent_us = now_us;
    true
}

/// The events frame of the changes of `entry` in `scope` (with the values before when
/// `prev`), for watch `to.id` and the watches `also`; `None` when none is in scope.
fn encode_entry<'e>(
    encoder: &'e mut ReplyEncoder,
    to: Destination,
    also: &[u64],
    scope: &Scope,
    prev: bool,
    entry: &HistoryEntry,
) -> Option<&'e [u8]> {
    let changes: Vec<ChangeRef<'_>> = entry
        .changes()
        .filter(|c| scope.matches(c.key))
        .map(|c| ChangeRef {
            key: c.key,
            put: c.put.map(|(value, meta)| (value, meta.into())),
            prev: c.prev.filter(|_| prev).map(|(meta, value)| (value, meta.into())),
            expired: c.expired,
        })
        .collect();
    if changes.is_empty() {
        return None;
    }
    Some(encoder.watch_events(to.id, also, to.shard, entry.index, &changes))
}
