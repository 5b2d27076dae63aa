//! The Ready loop, and what it runs into: ticks, WAL flushes, failure, leader balancing.
//!
//! `ShardCore::process` (run by every [`ShardCore::turn`]) drives raft-rs's Ready in the order
//! raft-rs requires, with asynchronous persistence so that proposals keep batching while a
//! flush is in flight:
//!
//! ```text
//!  1. propose the batch of writes that arrived since the last iteration (one raft entry)
//!  2. start a ReadIndex round for the linearizable reads that arrived since the last round
//!  3. while raft has a Ready (and the WAL has room for it):
//!     a. soft state: note leader and role changes (reads and writes fail over accordingly)
//!     b. messages(): send now — a leader replicates while it writes its own log
//!     c. entries() and the hard state: into the log store (visible to raft at once) and
//!        into the WAL buffer; note the WAL position that makes this Ready durable
//!     d. read states: mark ReadIndex rounds answered
//!     e. committed entries: apply to the state machine, reply to their writers, serve reads
//!        whose read index is now applied
//!     f. persisted_messages(): hold them, with the Ready's number, until the WAL position
//!        from (c) is durable
//!     g. advance_append_async, then advance_apply_to what (e) applied
//!  4. the shell takes a flush job (everything appended, one write + one fdatasync) when a
//!     held Ready needs it and none is in flight; appends keep arriving meanwhile
//!  5. on flush completion: send the held persisted_messages of every Ready now durable,
//!     call on_persist_ready with the last such number, and run the loop again
//! ```
//!
//! Entries raft hands out as committed are always durable on this replica (raft-rs applies
//! only up to the persisted index), so applying them in (e) before the current Ready's own
//! flush is safe.

use corekv_storage::raft_log::ColdFetch;
use corekv_storage::wal::{FlushJob, Lsn};
use corekv_types::ids::NodeId;
use raft::eraftpb::{Entry, Message};
use raft::StateRole;

use super::{appends, InjectedBug, Outputs, ShardCore};
use crate::constants::{
    LEADER_BALANCE_AFTER_MS, LEADER_BALANCE_TICKS, TRIM_BYTES_PER_TICK, TRIM_ENTRIES_PER_TICK,
};

/// A Ready whose persisted messages wait for a WAL position to be durable.
#[derive(Debug)]
pub(super) struct PersistWait {
    number: u64,
    /// `None` when the Ready needs no flush (only a commit index changed).
    lsn: Option<Lsn>,
    messages: Vec<Message>,
}

impl ShardCore {
    /// One raft tick, plus the timeouts counted in ticks.
    pub(super) fn tick(&mut self) {
        self.ticks += 1;
        self.health.tick(self.now_us, self.election_timeout_us());
        self.tick_catch_up();
        // A joining replica's election timer does not run: it must not campaign before it
        // caught up. Nor, for its first election timeout, does that of a replica that knows no
        // leader and is not the shard's preferred one (see `holds_first_election`).
        if !self.joining() && !self.holds_first_election() {
            self.raw.tick();
        }
        self.retry_reads();
        self.expire_requests();
        self.expire_admin();
        self.promote_caught_up_learners();
        self.watch_tick();
        if self.access.reloaded() {
            self.recheck_watches();
        }
        if self.ticks % LEADER_BALANCE_TICKS == 0 {
            self.balance_leadership();
        }
        if self.raw.store().needs_trim() {
            self.raw.mut_store().trim(TRIM_ENTRIES_PER_TICK, TRIM_BYTES_PER_TICK);
        }
    }

    /// Whether this replica's election timer waits: during its first election timeout's
    /// ticks, while it knows no leader, unless it is the shard's preferred leader. The
    /// preferred leader campaigns at start (`campaign_if_preferred`); when its peers were not
    /// listening yet, its votes were lost and it campaigns again after its election timeout,
    /// which now always comes before the others' (10–20 ticks against 20–30). Without the
    /// wait, a cluster started at once got a leader picked by the race of timers, and the
    /// leadership moved to the preferred one five seconds later, under the first load
    /// (`balance_leadership`). A node started alone waits half a second longer for its first
    /// election when the preferred leader is down; one that hears from a leader is unaffected.
    fn holds_first_election(&self) -> bool {
        let preferred = self.preferred_leader();
        self.ticks <= self.cfg.election_ticks as u64
            && self.raw.raft.leader_id == 0
            && preferred != NodeId::NONE
            && preferred != self.cfg.node_id
    }

    /// Runs the Ready loop (see the module docs) until raft has nothing more, or the WAL has
    /// no room for the next Ready (it continues after the flush in flight completes).
    pub(super) fn process(&mut self) {
        self.propose_batch();
        self.propose_expiries();
        self.propose_lease_work();
        self.start_read_round();
        self.pump_watchers();
        // Applying waits while the watch history has much left to flush: it records every
        // applied entry, and must never have to drop one.
        while self.raw.has_ready() && self.failure.is_none() && !self.history.backlogged() {
            let unstable: usize = self
                .raw
                .raft
                .raft_log
                .unstable_entries()
                .iter()
                .map(|e| e.data.len() + e.context.len() + 64)
                .sum();
            if !self.raw.store().has_room(unstable + 256) {
                break;
            }
            self.handle_ready();
        }
    }

    pub(super) fn handle_ready(&mut self) {
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        // (b) A leader's messages go out now, in parallel with its own log write (its appends
        // cut to a bounded size, see `appends`).
        let messages = appends::split_appends(ready.take_messages(), appends::APPEND_BYTES_MAX);
        self.out.messages.extend(messages);
        // (c) A snapshot from the leader replaces the log and the state; then entries and
        // hard state go into the store and the WAL buffer.
        if !ready.snapshot().is_empty() {
            let installed = self.install_snapshot(ready.snapshot());
            assert!(installed, "raft installs a snapshot whose file this replica never received");
        }
        // The first commit index this replica learns is made durable at once, not with the
        // next entries: a replica restarted with commit index 0 looks like a member of a new
        // cluster to an empty (maybe wiped) replica, which would vote for it (see `step`).
        let first_commit =
            ready.hs().is_some_and(|hs| hs.commit > 0) && self.raw.store().durable_commit() == 0;
        let needs_flush = !ready.entries().is_empty() || ready.must_sync() || first_commit;
        let store = self.raw.mut_store();
        let mut appended = store.append(ready.entries());
        if let (Ok(_), Some(hs)) = (&appended, ready.hs()) {
            appended = store.set_hard_state(hs);
        }
        if let Err(refused) = appended {
            // The room check above makes Full impossible; what is left is a failed WAL.
            self.fail(format!("WAL append refused: {refused:?}"));
        }
        let lsn = self.raw.store().wal().appended();
        // (d) Read states: rounds answered.
        for state in ready.take_read_states() {
            self.reads.answered(&state.request_ctx, state.index);
        }
        // (e) Committed entries: apply, reply; then serve every read whose index is applied
        // (a round answered with nothing new to apply is served here too).
        let committed = ready.take_committed_entries();
        let applied = self.apply_committed(committed);
        self.serve_reads();
        // (f) Persisted messages wait for the flush that covers this Ready — and, in order,
        // for those of earlier Readies. A heartbeat response from a Ready that itself persists
        // nothing (no entries, no new term or vote) promises nothing about this replica's log
        // or vote, so it goes out now: a leader's ReadIndex round waits for it, and holding it
        // behind an unrelated flush in flight tied linearizable reads to followers' disks.
        let mut held = ready.take_persisted_messages();
        if self.injected_bug == Some(InjectedBug::PersistedMessagesBeforeFlush) {
            self.out.messages.append(&mut held);
        }
        if !needs_flush {
            let (now, later): (Vec<Message>, Vec<Message>) = held.into_iter().partition(|m| {
                m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeatResponse
            });
            self.out.messages.extend(now);
            held = later;
        }
        let wait =
            PersistWait { number: ready.number(), lsn: needs_flush.then_some(lsn), messages: held };
        // (g) Then raft-rs learns what was applied: with a joint configuration to leave by
        // itself, it proposes the leave entry there, and no entry may join the unstable log
        // between a Ready and its advance (raft-rs checks the Ready's last entry is the log's).
        self.raw.advance_append_async(ready);
        if let Some(index) = applied {
            self.raw.advance_apply_to(index);
        }
        self.persist.push_back(wait);
        self.release_persisted();
    }

    pub(super) fn on_soft_state(&mut self, leader_id: u64, role: StateRole) {
        if leader_id != self.leader_id {
            self.metrics.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if leader_id == 0 {
                tracing::info!(
                    shard = %self.cfg.shard,
                    previous_leader = self.leader_id,
                    term = self.raw.raft.term,
                    "no leader known (an election is under way)"
                );
            } else {
                tracing::info!(
                    shard = %self.cfg.shard,
                    leader = leader_id,
                    term = self.raw.raft.term,
                    "leader changed"
                );
            }
        }
        if matches!(role, StateRole::Candidate | StateRole::PreCandidate)
            && !matches!(self.role, StateRole::Candidate | StateRole::PreCandidate)
        {
            self.metrics.elections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let was_leader = self.role == StateRole::Leader;
        self.leader_id = leader_id;
        self.role = role;
        if was_leader && role != StateRole::Leader {
            // Writes not yet proposed never will be here; reads cannot be confirmed.
            self.fail_unproposed_writes();
            self.fail_reads_not_leader();
            self.end_watches(corekv_proto::client::WatchEndReason::NotLeader);
        }
        if !was_leader && role == StateRole::Leader {
            self.elected_catch_up();
            self.led_since_us = self.now_us;
            // raft-rs campaigns on MsgTimeoutNow at the next term: leading in that term means
            // leadership was handed over.
            let term = self.raw.raft.term;
            self.led_by_transfer = self.timeout_now_term.is_some_and(|t| t + 1 == term);
            self.after_conf_change();
        }
        self.admin_on_leader_change(was_leader);
    }

    /// Applies committed entries; the last one's index, for raft-rs's applied index (see
    /// `handle_ready`).
    pub(super) fn apply_committed(&mut self, entries: Vec<Entry>) -> Option<u64> {
        self.sm.refill_prev_budget(corekv_storage::constants::PREV_VALUE_BYTES_PER_BATCH_MAX);
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            self.apply_entry(&entry);
        }
        last
    }

    /// Sends the persisted messages of every Ready whose flush is done, in order, and tells
    /// raft-rs which Readies are persisted.
    pub(super) fn release_persisted(&mut self) {
        let durable = self.raw.store().wal().durable();
        let mut number = None;
        while let Some(wait) = self.persist.front() {
            if wait.lsn.is_some_and(|lsn| lsn > durable) {
                break;
            }
            let wait = self.persist.pop_front().expect("non-empty");
            self.out.messages.extend(wait.messages);
            number = Some(wait.number);
        }
        if let Some(number) = number {
            self.raw.on_persist_ready(number);
            // A leader's snapshot, once installed and durable, is applied: tell raft-rs, whose
            // applied index otherwise stays before the snapshot until the next entry applies.
            // Until then raft-rs would look for unapplied entries the snapshot compacted away
            // (when campaigning or on a leadership transfer) and panic.
            let applied = self.sm.applied_index();
            let log = &self.raw.raft.raft_log;
            if log.applied < applied && applied <= log.committed.min(log.persisted) {
                self.raw.advance_apply_to(applied);
            }
        }
    }

    /// A flush job when a held Ready needs one and none is in flight. Records that raft does
    /// not wait for (a commit index alone) ride along with the next needed flush.
    pub fn take_flush_job(&mut self) -> Option<FlushJob> {
        let durable = self.raw.store().wal().durable();
        let needed = self.persist.iter().any(|w| w.lsn.is_some_and(|lsn| lsn > durable))
            || (self.shutting_down && self.raw.store().wal().has_unflushed());
        if !needed {
            return None;
        }
        self.raw.mut_store().take_flush_job()
    }

    /// Whether WAL bytes are buffered or a flush is in flight.
    pub fn flush_pending(&self) -> bool {
        let wal = self.raw.store().wal();
        wal.has_unflushed() || wal.flush_in_flight()
    }

    /// Tells raft that the connection to `node` failed, so its leader stops streaming to it
    /// and probes instead.
    pub fn report_unreachable(&mut self, node: u64) {
        self.raw.report_unreachable(node);
    }

    /// The flush job is durable.
    pub fn on_flush_complete(&mut self, job: FlushJob) {
        let done = self.raw.mut_store().on_flush_complete(job);
        self.out.retire.extend(done.retire);
        self.release_persisted();
        self.process();
    }

    /// The flush job failed: this replica can no longer make anything durable. It stops
    /// accepting writes and linearizable reads, answers writes in flight as outcome-unknown,
    /// and hands leadership to a follower.
    pub fn on_flush_failed(&mut self, error: String) {
        self.raw.mut_store().on_flush_failed(error.clone());
        self.fail(format!("WAL flush failed: {error}"));
    }

    pub(super) fn fail(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        tracing::error!(shard = %self.cfg.shard, %reason, "shard stops accepting writes");
        self.failure = Some(reason);
        self.fail_unproposed_writes();
        self.fail_proposed_writes_unknown();
        self.fail_reads_not_leader();
        let reason = self.failure.clone().unwrap_or_default();
        self.fail_waiting_backups(&reason);
        if self.is_leader() {
            let best = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(&id, _)| id != self.cfg.node_id.get())
                .max_by_key(|(_, p)| p.matched)
                .map(|(&id, _)| id);
            if let Some(transferee) = best {
                self.raw.transfer_leader(transferee);
            }
        }
    }

    /// Moves the leadership to the preferred leader once it is caught up (DESIGN.md §4) — when
    /// this replica won it by an election. Leadership handed over (an operator's `leader
    /// transfer`) stays where it was sent until the next election.
    pub(super) fn balance_leadership(&mut self) {
        let preferred = self.preferred_leader().get();
        let me = self.cfg.node_id.get();
        if !self.is_leader() || self.led_by_transfer || preferred == me || self.failure.is_some() {
            return;
        }
        if self.now_us.saturating_sub(self.led_since_us) < LEADER_BALANCE_AFTER_MS * 1000 {
            return;
        }
        // Replicating and fully caught up. (raft-rs's `recent_active` is not used: raft-rs
        // clears it at every quorum check, so a periodic look may always find it false.)
        let last = self.raw.raft.raft_log.last_index();
        let caught_up = self
            .raw
            .raft
            .prs()
            .get(preferred)
            .is_some_and(|p| p.matched == last && p.state == raft::ProgressState::Replicate);
        if caught_up && self.raw.raft.lead_transferee.is_none() {
            tracing::info!(
                shard = %self.cfg.shard,
                to = preferred,
                "handing leadership to the preferred leader"
            );
            self.raw.transfer_leader(preferred);
        }
    }

    /// Takes the outputs produced so far, swapping in `spare` (cleared) so allocations are
    /// reused.
    pub(super) fn take_outputs(&mut self, spare: &mut Outputs) {
        // raft-rs asks the store for entries while stepping and ticking too, not only in the
        // Ready loop: collect the reads it left waiting from wherever they came.
        let fetches = self.raw.mut_store().take_cold_fetches();
        self.out.cold_fetches.extend(fetches);
        spare.clear();
        std::mem::swap(&mut self.out, spare);
    }

    /// The WAL records of `fetch` were read, one result per read, in order (a failed read
    /// makes raft-rs send that follower a snapshot instead). raft-rs sends the entries now.
    pub fn on_cold_fetched(
        &mut self,
        fetch: ColdFetch,
        data: Vec<corekv_storage::error::Result<Vec<u8>>>,
    ) {
        let context = self.raw.mut_store().on_cold_fetched(fetch, data);
        self.raw.on_entries_fetched(context);
        self.process();
    }
}
