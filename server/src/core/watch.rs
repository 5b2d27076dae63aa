//! Watches: a stream, on a client connection, of every change to a key, a prefix or a range of
//! this shard, in log order, served by the shard's leader (DESIGN.md §6, "Watch").
//!
//! A shard's revision is its raft log index, the same on every replica. Every replica records
//! what each applied entry changed (the state machine reports each key's change with the value
//! before it) in a history bounded by [`WATCH_HISTORY_BYTES_MAX`]; the history covers the
//! indexes `[first, applied]` (entries that changed nothing take no room). A watch names the
//! first index it wants (a cursor's next index, or "from now"); the leader sends what the
//! history holds from there, then each entry's changes as it applies them. So a watcher that
//! reconnects — to the same leader or, after an election, to the next one, which recorded the
//! same history — resumes with no gap and no duplicate, and one whose cursor is older than the
//! history is told `Compacted` (with the oldest index kept) instead of missing changes.
//!
//! ```text
//!   WatchRequest{scope, start}   start < first  ──► WatchEnded{Compacted, first_available}
//!        │                       otherwise: the history's changes from start ──► WatchEvents…
//!        ▼
//!   live: each applied entry's matching changes ──► WatchEvents{index, changes}
//!         nothing sent for progress_ms          ──► WatchProgress{index}
//!   ends: CancelWatchRequest ──► WatchEnded{Cancelled}; leadership lost ──► WatchEnded{NotLeader}
//!         the connection closes ──► dropped
//! ```
//!
//! Events and progress are stream frames: they answer no request of their own (the shell does
//! not count them against the connection's requests in flight); the `WatchEnded` answers the
//! watch request.

use std::collections::{BTreeMap, VecDeque};

use corekv_proto::client::{WatchEndReason, WatchScope};
use corekv_proto::encode::{ChangeRef, ErrorInfo, WatchEnd, WatchSpec};
use corekv_storage::state_machine::Change;

use super::replies::{push_reply, push_stream, Caller};
use super::{ConnId, Op, ShardCore};
use crate::constants::{
    WATCHERS_PER_CONNECTION_MAX, WATCHERS_PER_SHARD_MAX, WATCH_HISTORY_BYTES_MAX,
};

/// The keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// What one applied entry changed.
#[derive(Debug)]
struct Applied {
    index: u64,
    changes: Vec<Change>,
    bytes: usize,
}

/// The shard's watches and its history of changes (see the module docs).
#[derive(Debug)]
pub(super) struct Watches {
    /// By (connection, request id).
    watchers: BTreeMap<(ConnId, u64), Watcher>,
    history: VecDeque<Applied>,
    history_bytes: usize,
    /// The oldest index the history covers: every change from here to the applied index is
    /// in it.
    first: u64,
    /// Bytes of history kept ([`WATCH_HISTORY_BYTES_MAX`] unless a test sets less).
    history_bytes_max: usize,
}

impl Watches {
    /// A history that covers nothing before `next_index` (the entry after the state's).
    pub(super) fn new(next_index: u64) -> Self {
        Watches {
            watchers: BTreeMap::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            first: next_index,
            history_bytes_max: WATCH_HISTORY_BYTES_MAX,
        }
    }

    /// Running watches.
    pub(super) fn len(&self) -> usize {
        self.watchers.len()
    }
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
        let too_many = if on_conn.count() >= WATCHERS_PER_CONNECTION_MAX {
            Some(format!("{WATCHERS_PER_CONNECTION_MAX} watches on one connection"))
        } else if self.watches.len() >= WATCHERS_PER_SHARD_MAX {
            Some(format!("{WATCHERS_PER_SHARD_MAX} watches on one shard"))
        } else {
            None
        };
        if let Some(limit) = too_many {
            let reason = format!("watch refused: at most {limit}");
            return self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
        }
        if self.watches.watchers.contains_key(&(caller.conn, caller.id)) {
            let reason = format!("request id {} names a running watch already", caller.id);
            return self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
        }
        let applied = self.sm.applied_index();
        let last = self.raw.raft.raft_log.last_index();
        let start = if spec.start_index == 0 { applied + 1 } else { spec.start_index };
        if start > last + 1 {
            let reason = format!(
                "watch start index {start} is past this shard's log (its last index is {last})"
            );
            return self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
        }
        let mut watcher = Watcher {
            scope,
            prev: spec.prev_value,
            next: start,
            progress_us: u64::from(spec.progress_ms) * 1000,
            last_sent_us: self.now_us,
        };
        if start < self.watches.first {
            let first = self.watches.first;
            return self.end_watch(
                caller.conn,
                caller.id,
                &watcher,
                WatchEndReason::Compacted,
                first,
            );
        }
        self.metrics.watches_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to = Destination { shard: self.cfg.shard.get(), conn: caller.conn, id: caller.id };
        let (watches, encoder, out) = (&self.watches, &mut self.encoder, &mut self.out);
        let mut sent = 0;
        for applied in watches.history.iter().filter(|a| a.index >= start) {
            sent += u64::from(send_changes(encoder, out, to, &mut watcher, applied, self.now_us));
        }
        self.metrics.watch_events.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        watcher.next = watcher.next.max(applied + 1);
        self.watches.watchers.insert((caller.conn, caller.id), watcher);
    }

    /// A cancel request: ends the watch request `watch_id` of the same connection started.
    pub(super) fn cancel_watch_request(&mut self, caller: Caller, watch_id: u64) {
        let found = self.watches.watchers.remove(&(caller.conn, watch_id));
        if let Some(watcher) = &found {
            self.end_watch(caller.conn, watch_id, watcher, WatchEndReason::Cancelled, 0);
        }
        self.metrics.replied(Op::CancelWatch, self.now_us.saturating_sub(caller.start_us));
        let frame = self.encoder.cancel_watch(caller.id, found.is_some());
        push_reply(&mut self.out, caller.conn, frame);
    }

    /// Entry `index` was applied: records what it changed and sends each watcher its share.
    pub(super) fn watch_applied(&mut self, index: u64) {
        let applied = Applied { index, changes: self.sm.take_changes(), bytes: 0 };
        let shard = self.cfg.shard.get();
        let (watches, encoder, out) = (&mut self.watches, &mut self.encoder, &mut self.out);
        let mut sent = 0;
        for (&(conn, id), watcher) in watches.watchers.iter_mut() {
            let to = Destination { shard, conn, id };
            sent += u64::from(send_changes(encoder, out, to, watcher, &applied, self.now_us));
            watcher.next = watcher.next.max(index + 1);
        }
        if sent > 0 {
            self.metrics.watch_events.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
        self.remember(applied);
    }

    /// Keeps `applied` in the history, dropping the oldest entries past the byte bound.
    fn remember(&mut self, mut applied: Applied) {
        if applied.changes.is_empty() {
            return;
        }
        applied.bytes = applied.changes.iter().map(Change::bytes).sum::<usize>() + 64;
        let history = &mut self.watches;
        history.history_bytes += applied.bytes;
        history.history.push_back(applied);
        while history.history_bytes > history.history_bytes_max {
            let Some(old) = history.history.pop_front() else { break };
            history.history_bytes -= old.bytes;
            history.first = old.index + 1;
        }
    }

    /// Changes how many bytes of history watches are served from (tests use a small one to
    /// reach its end); the oldest changes past it are dropped at the next entry.
    pub fn set_watch_history_bytes(&mut self, bytes: usize) {
        self.watches.history_bytes_max = bytes;
    }

    /// The state was replaced by a snapshot at `index`: the history before it is gone.
    pub(super) fn watch_restored(&mut self, index: u64) {
        let _ = self.sm.take_changes();
        self.watches.history.clear();
        self.watches.history_bytes = 0;
        self.watches.first = index + 1;
    }

    /// Sends a progress reply to every watch that asked for one and got nothing for as long;
    /// publishes the watch gauges.
    pub(super) fn watch_progress(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.watches.store(self.watches.len() as i64, Relaxed);
        self.metrics.watch_history_bytes.store(self.watches.history_bytes as i64, Relaxed);
        let now = self.now_us;
        let shard = self.cfg.shard.get();
        let (watches, encoder, out) = (&mut self.watches, &mut self.encoder, &mut self.out);
        for (&(conn, id), watcher) in watches.watchers.iter_mut() {
            if watcher.progress_us > 0
                && now.saturating_sub(watcher.last_sent_us) >= watcher.progress_us
            {
                let frame = encoder.watch_progress(id, shard, watcher.next - 1);
                push_stream(out, conn, frame);
                watcher.last_sent_us = now;
            }
        }
    }

    /// Every watch ends (this replica stopped leading, or shuts down), saying where to resume.
    pub(super) fn end_watches(&mut self, reason: WatchEndReason) {
        let watchers = std::mem::take(&mut self.watches.watchers);
        for ((conn, id), watcher) in watchers {
            self.end_watch(conn, id, &watcher, reason, 0);
        }
    }

    /// Connection `conn` closed: its watches end with it.
    pub fn on_client_closed(&mut self, conn: ConnId) {
        self.watches.watchers.retain(|&(c, _), _| c != conn);
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
            self.metrics.watches_compacted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let frame = self.encoder.watch_ended(id, self.cfg.shard.get(), &end);
        push_reply(&mut self.out, conn, frame);
    }
}

/// Where a watch's frames go: the shard (named in them), the connection, the watch's id.
#[derive(Debug, Clone, Copy)]
struct Destination {
    shard: u32,
    conn: ConnId,
    id: u64,
}

/// Sends `watcher` the changes of `applied` it follows (if it has not had them), as one
/// events frame.
fn send_changes(
    encoder: &mut corekv_proto::encode::ReplyEncoder,
    out: &mut super::Outputs,
    to: Destination,
    watcher: &mut Watcher,
    applied: &Applied,
    now_us: u64,
) -> bool {
    if applied.index < watcher.next {
        return false;
    }
    let changes: Vec<ChangeRef<'_>> = applied
        .changes
        .iter()
        .filter(|c| watcher.scope.matches(&c.key))
        .map(|c| ChangeRef {
            key: &c.key,
            put: c.put.as_ref().map(|(value, meta)| (&**value, (*meta).into())),
            prev: c
                .prev
                .as_ref()
                .filter(|_| watcher.prev)
                .map(|(value, meta)| (&**value, (*meta).into())),
        })
        .collect();
    watcher.next = applied.index + 1;
    if changes.is_empty() {
        return false;
    }
    let frame = encoder.watch_events(to.id, to.shard, applied.index, &changes);
    push_stream(out, to.conn, frame);
    watcher.last_sent_us = now_us;
    true
}
