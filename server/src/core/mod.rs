//! The shard core: one raft group replica and its state machine, without I/O.
//!
//! The core takes inputs — client frames, raft messages from peers, ticks, the clock, WAL
//! flush completions — and produces outputs — raft messages to send, reply frames, WAL flush
//! jobs, segments to retire. glommio, sockets and files are a thin shell around it
//! ([`crate::runtime`]); a simulator can drive the same code with simulated time, network and
//! disk. Every shell calls the core the same way: the driver contract in [`driver`] (recovery,
//! then turns and completions).
//!
//! # The Ready loop
//!
//! `ShardCore::process` (a [`ShardCore::turn`]) drives raft-rs's Ready in the order raft-rs requires, with
//! asynchronous persistence so that proposals keep batching while a flush is in flight:
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
//!     g. advance_append_async
//!  4. the shell takes a flush job (everything appended, one write + one fdatasync) when a
//!     held Ready needs it and none is in flight; appends keep arriving meanwhile
//!  5. on flush completion: send the held persisted_messages of every Ready now durable,
//!     call on_persist_ready with the last such number, and run the loop again
//! ```
//!
//! Entries raft hands out as committed are always durable on this replica (raft-rs applies
//! only up to the persisted index), so applying them in (e) before the current Ready's own
//! flush is safe.

pub mod driver;
mod health;
mod reads;
mod requests;
mod snapshots;
mod writes;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use corekv_proto::encode::{ErrorInfo, ReplyEncoder, StatusInfo};
use corekv_storage::raft_log::{ColdFetch, RaftLogStore};
use corekv_storage::state_machine::StateMachine;
use corekv_storage::wal::{FlushJob, Lsn};
use raft::eraftpb::{Entry, Message};
use raft::{Config, RawNode, StateRole};

use crate::constants::{
    COMMITTED_BYTES_PER_READY_MAX, LEADER_BALANCE_TICKS, RAFT_INFLIGHT_MESSAGES_MAX,
    RAFT_MESSAGE_BYTES_MAX, TRIM_BYTES_PER_TICK, TRIM_ENTRIES_PER_TICK, UNCOMMITTED_BYTES_MAX,
};
use crate::metrics::{Op, ShardMetrics};

pub use driver::{Recovery, RecoveryError, Turn};
pub use reads::Reads;
pub use snapshots::{SnapshotJob, SnapshotPolicy};
pub use writes::Writes;

/// Identifies a client connection within a shard; chosen by the shell.
pub type ConnId = u64;

/// Static facts a shard core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id (its raft id).
    pub node_id: u64,
    /// This shard's index.
    pub shard: u32,
    /// Shards per node.
    pub shards: u32,
    /// Cluster name, checked in client hellos.
    pub cluster: String,
    /// Every node of the cluster: id and the `host:port` of this shard's client port.
    pub nodes: Vec<(u64, String)>,
    /// The node this shard prefers as leader (DESIGN.md §4).
    pub preferred_leader: u64,
    /// raft-rs election timeout, in ticks.
    pub election_ticks: usize,
    /// raft-rs heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// Length of one tick, in milliseconds (for timeouts counted in ticks).
    pub tick_ms: u64,
    /// When to take a snapshot.
    pub snapshots: SnapshotPolicy,
    /// This replica lost its data (or is new to a running cluster): it catches up from the
    /// leader before it votes or campaigns. A replica also starts so when its log carries the
    /// rebuilding mark, and turns to it when it finds out itself (see [`ShardCore::step`]).
    pub join: bool,
}

/// What the core wants done. The shell drains it after every call into the core.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Raft messages to send, each to `message.to`.
    pub messages: Vec<Message>,
    /// Reply frames, back to back; `replies` says which bytes go to which connection.
    pub reply_bytes: Vec<u8>,
    /// `(connection, byte range in reply_bytes)`, in the order the replies were made.
    pub replies: Vec<(ConnId, Range<usize>)>,
    /// Connections to close once their replies are written (a refused hello).
    pub close: Vec<ConnId>,
    /// WAL segments the log no longer needs: recycle or delete them.
    pub retire: Vec<u64>,
    /// State the core let go of: drop it off the executor (freeing a large map takes time).
    pub garbage: Vec<corekv_storage::state_machine::Replaced>,
    /// Old log entries a lagging follower needs: read these WAL records off the executor and
    /// hand them to [`ShardCore::on_cold_fetched`].
    pub cold_fetches: Vec<ColdFetch>,
}

impl Outputs {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.replies.is_empty()
            && self.close.is_empty()
            && self.retire.is_empty()
            && self.cold_fetches.is_empty()
    }

    /// Empties every list, keeping the allocations.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.reply_bytes.clear();
        self.replies.clear();
        self.close.clear();
        self.retire.clear();
        self.garbage.clear();
        self.cold_fetches.clear();
    }
}

/// A Ready whose persisted messages wait for a WAL position to be durable.
#[derive(Debug)]
struct PersistWait {
    number: u64,
    /// `None` when the Ready needs no flush (only a commit index changed).
    lsn: Option<Lsn>,
    messages: Vec<Message>,
}

/// A snapshot of a replica's state, for `/status` and status replies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardStatus {
    /// Shard index.
    pub shard: u32,
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 when none.
    pub leader_id: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied.
    pub applied_index: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Bytes of WAL segments on disk.
    pub wal_bytes: u64,
    /// Index of the newest durable snapshot (0: none).
    pub snapshot_index: u64,
    /// WAL position known durable.
    pub wal_durable: String,
    /// Keys in the state machine.
    pub keys: u64,
    /// Per peer: node id and match index (leader only).
    pub peers: Vec<PeerProgress>,
    /// Why this replica stopped accepting writes, if it did.
    pub failure: Option<String>,
    /// Whether this replica serves (see `core::health`): a known leader it hears from, not
    /// catching up, its WAL working. What `/health` reports.
    pub serving: bool,
    /// Why it does not serve, when it does not.
    pub problem: Option<String>,
    /// Catching up from the leader before it takes part in elections again (it lost its data,
    /// or is new to a running cluster; see [`ShardCore::step`]).
    pub joining: bool,
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerProgress {
    /// The peer's node id.
    pub node_id: u64,
    /// Highest index known replicated there.
    pub match_index: u64,
    /// Whether the peer was heard from recently.
    pub recent_active: bool,
}

/// One shard replica. See the module docs.
pub struct ShardCore {
    cfg: CoreConfig,
    raw: RawNode<RaftLogStore>,
    sm: StateMachine,
    slots: Range<u32>,
    writes: Writes,
    reads: Reads,
    persist: VecDeque<PersistWait>,
    encoder: ReplyEncoder,
    out: Outputs,
    now_us: u64,
    ticks: u64,
    leader_id: u64,
    role: StateRole,
    metrics: Arc<ShardMetrics>,
    failure: Option<String>,
    shutting_down: bool,
    snapshots: snapshots::SnapshotState,
    /// Catching up before it votes or campaigns (see [`ShardCore::step`]); the log's
    /// rebuilding mark is set meanwhile.
    joining: bool,
    /// Started with an empty log and not joining: until it has caught up with a leader, it
    /// votes only for candidates that know of no committed entry (see [`ShardCore::step`]).
    fresh: bool,
    /// The highest commit index a leader has told this joining (or fresh) replica about.
    join_target: u64,
    /// A safety rule this replica breaks on purpose (the simulator's self-test); `None` in
    /// every real node.
    injected_bug: Option<InjectedBug>,
    /// What `/health` is judged on: whom this replica hears from, how far behind it is.
    health: health::Health,
}

/// A safety rule a test can make a core break, to show that the simulator notices. Nothing
/// outside the tests sets one.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// Send a Ready's persisted messages (append and vote responses) before the WAL flush
    /// that makes the Ready durable.
    PersistedMessagesBeforeFlush,
    /// Serve linearizable reads on the leader from its applied state, without confirming
    /// with a quorum that it still leads (no ReadIndex round).
    ReadsWithoutQuorumCheck,
}

impl ShardCore {
    /// A core over a recovered log store and the state machine rebuilt from it.
    pub(super) fn new(
        cfg: CoreConfig,
        store: RaftLogStore,
        sm: StateMachine,
        metrics: Arc<ShardMetrics>,
        logger: &slog::Logger,
    ) -> raft::Result<Self> {
        let config = Config {
            id: cfg.node_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: sm.applied_index(),
            max_size_per_msg: RAFT_MESSAGE_BYTES_MAX,
            max_inflight_msgs: RAFT_INFLIGHT_MESSAGES_MAX,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            max_committed_size_per_ready: COMMITTED_BYTES_PER_READY_MAX,
            ..Default::default()
        };
        let raw = RawNode::new(&config, store, logger)?;
        let slots = corekv_types::placement::slot_range(cfg.shard, cfg.shards);
        let mut core = ShardCore {
            cfg,
            raw,
            sm,
            slots,
            writes: Writes::default(),
            reads: Reads::default(),
            persist: VecDeque::new(),
            encoder: ReplyEncoder::new(),
            out: Outputs::default(),
            now_us: 0,
            ticks: 0,
            leader_id: 0,
            role: StateRole::Follower,
            metrics,
            failure: None,
            shutting_down: false,
            snapshots: snapshots::SnapshotState::default(),
            joining: false,
            fresh: false,
            join_target: 0,
            injected_bug: None,
            health: health::Health::default(),
        };
        if let Some(target) = core.raw.store().rebuilding() {
            // Restarted part way through catching up: on towards the same target.
            core.joining = true;
            core.join_target = target;
        } else if core.cfg.join {
            // Joining even if the WAL refused the mark: `tick` sets it later.
            core.start_joining();
            core.joining = true;
        } else {
            core.fresh = core.raw.raft.raft_log.last_index() == 0;
        }
        core.init_snapshots();
        Ok(core)
    }

    /// Starts an election at once if this node is the shard's preferred leader and knows of
    /// none, so a new cluster has its leaders in place within one round trip. Pre-vote makes
    /// this harmless when a healthy leader exists.
    pub(super) fn campaign_if_preferred(&mut self) {
        if self.cfg.preferred_leader == self.cfg.node_id && self.raw.raft.leader_id == 0 {
            let _ = self.raw.campaign();
        }
    }

    /// Sets the clock, in microseconds since an arbitrary start. Call before each input.
    pub fn set_now(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// The static configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The raft node (for tests and the simulator).
    pub fn raft(&self) -> &RawNode<RaftLogStore> {
        &self.raw
    }

    /// Makes this core break a safety rule, for the simulator's self-test only.
    #[doc(hidden)]
    pub fn inject_bug_for_tests(&mut self, bug: InjectedBug) {
        self.injected_bug = Some(bug);
    }

    /// Mutable raft node (the simulator re-draws election timeouts from its seed).
    pub fn raft_mut(&mut self) -> &mut RawNode<RaftLogStore> {
        &mut self.raw
    }

    /// The state machine.
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Whether this replica is still catching up before it votes like any other (it is
    /// joining, or started with an empty log; see [`ShardCore::step`]).
    pub fn catching_up(&self) -> bool {
        self.joining || self.fresh
    }

    /// Whether this replica is joining: catching up before it votes or campaigns at all.
    pub fn joining(&self) -> bool {
        self.joining
    }

    /// Makes the log's rebuilding mark say what this replica is doing: joining, towards
    /// `join_target`, or not. Retried on the next call while the WAL refuses it.
    fn sync_rebuilding_mark(&mut self) {
        let mark = self.joining.then_some(self.join_target);
        if self.raw.store().rebuilding() != mark {
            let _ = self.raw.mut_store().set_rebuilding(mark);
        }
    }

    /// Turns this replica to joining, and sets the log's rebuilding mark so that a restart
    /// before it has caught up goes on joining. False (and still not joining) when the WAL
    /// refused the mark; the caller then drops the message that called for it.
    fn start_joining(&mut self) -> bool {
        if let Err(refused) = self.raw.mut_store().set_rebuilding(Some(self.join_target)) {
            tracing::debug!(shard = self.cfg.shard, ?refused, "the rebuilding mark waits");
            return false;
        }
        self.joining = true;
        self.fresh = false;
        true
    }

    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }

    /// The leader this replica knows of, 0 for none.
    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }

    /// Why the replica stopped accepting writes (a failed WAL flush), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// One raft tick, plus the timeouts counted in ticks.
    pub(super) fn tick(&mut self) {
        self.ticks += 1;
        self.health.tick(self.now_us, self.election_timeout_us());
        let caught_up = self.join_target > 0 && self.sm.applied_index() >= self.join_target;
        if self.joining && caught_up {
            self.joining = false;
            tracing::info!(
                shard = self.cfg.shard,
                applied = self.sm.applied_index(),
                "caught up with the cluster; taking part in elections again"
            );
        }
        self.sync_rebuilding_mark();
        if self.fresh && caught_up {
            self.fresh = false;
            tracing::debug!(
                shard = self.cfg.shard,
                applied = self.sm.applied_index(),
                "started empty and caught up with the leader; votes in every election now"
            );
        }
        // A joining replica's election timer does not run: it must not campaign before it
        // caught up.
        if !self.joining {
            self.raw.tick();
        }
        self.retry_reads();
        self.expire_requests();
        if self.ticks % LEADER_BALANCE_TICKS == 0 {
            self.balance_leadership();
        }
        if self.raw.store().needs_trim() {
            self.raw.mut_store().trim(TRIM_ENTRIES_PER_TICK, TRIM_BYTES_PER_TICK);
        }
    }

    /// A raft message from a peer. Messages raft refuses (from unknown peers, local types) are
    /// dropped.
    ///
    /// # Replicas that lost their data
    ///
    /// A replica whose data directory was wiped or replaced has lost entries it acknowledged,
    /// and its vote: voting with what is left could elect a leader that lacks a committed
    /// write (with three replicas, its vote and a stale replica's make a majority). So a
    /// replica that may have lost data takes no part in elections — it neither votes, nor
    /// campaigns, nor takes a leadership transfer — until it has applied what a leader said
    /// was committed. That is *joining*; it starts so with `--join`, and turns to it itself:
    ///
    /// - when a leader's heartbeat commits past its log: a leader only tells a follower to
    ///   commit what the follower acknowledged having, so the replica lost acknowledged
    ///   entries (the commit index is then capped to its log until it has caught up);
    /// - when, with an empty log, it receives entries or a snapshot from a leader whose commit
    ///   index is past zero: the cluster has committed data this replica does not hold (it was
    ///   wiped, or is new to a running cluster).
    ///
    /// Joining sets the log's rebuilding mark ([`RaftLogStore::set_rebuilding`]) with the
    /// commit index it catches up to, durable before any entry that arrives with it, so a
    /// replica restarted part way through catching up goes on joining towards the same target
    /// instead of taking its partial log for a whole one (and one restarted after it reached
    /// the target, before the mark was cleared, counts itself caught up at once).
    ///
    /// Before a leader has told it anything, a replica that started with an empty log is
    /// *fresh*: it may be new, or wiped with no leader left that remembers what it
    /// acknowledged. It leaves (pre-)vote requests unanswered from any candidate that knows of
    /// a committed entry (vote requests carry the candidate's commit index), but votes for
    /// candidates that know of none and campaigns itself — that is how a new cluster elects
    /// its first leader, also when the first one died before its first entry committed. (So
    /// that a restart cannot make a replica forget it knew of a commit, the first commit index
    /// a replica learns is flushed at once; see `handle_ready`.) Left uncovered (`--join`
    /// covers them): a candidate that knows of no commit in a cluster that has committed data
    /// (a replica cut off since the cluster was created, voted for by a wiped fresh one while
    /// the replicas holding the data are down); and, with five replicas or more, a new leader
    /// whose first commit index lags entries it inherited, so that a joining replica stops
    /// joining too early.
    pub fn step(&mut self, mut message: Message) {
        use raft::eraftpb::MessageType;
        self.health.heard(&message, self.now_us);
        let last = self.raw.raft.raft_log.last_index();
        let kind = message.get_msg_type();
        let mut ask_to_probe = None;
        if kind == MessageType::MsgHeartbeat && message.commit > last {
            ask_to_probe = Some((message.from, message.commit));
            // What the leader counts on this replica holding is where catching up ends (the
            // commit index passed on to raft is capped to the log below).
            self.join_target = self.join_target.max(message.commit);
            if !self.joining {
                if !self.start_joining() {
                    return;
                }
                tracing::warn!(
                    shard = self.cfg.shard,
                    leader = message.from,
                    leader_commit = message.commit,
                    last_index = last,
                    "this replica lost acknowledged data (its log ends before what the leader \
                     counts on it holding): rebuilding it from the leader, taking no part in \
                     elections until it has caught up"
                );
            }
            message.commit = last;
        }
        let committed_elsewhere = (kind == MessageType::MsgAppend && message.commit > 0)
            || kind == MessageType::MsgSnapshot;
        if self.fresh && last == 0 && committed_elsewhere {
            if !self.start_joining() {
                return;
            }
            tracing::info!(
                shard = self.cfg.shard,
                leader = message.from,
                leader_commit = message.commit,
                "this replica has an empty log and the cluster has committed data: catching up \
                 from the leader, taking no part in elections until it has"
            );
        }
        match kind {
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.fresh && message.commit > 0 =>
            {
                self.metrics.votes_withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    shard = self.cfg.shard,
                    candidate = message.from,
                    candidate_commit = message.commit,
                    "not voting: this replica started with an empty log and has not caught up \
                     with a leader, and the candidate knows of committed entries this replica \
                     may have acknowledged before losing its data (a wiped node should start \
                     with --join)"
                );
                return;
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote if self.joining => {
                self.metrics.votes_withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            MessageType::MsgTimeoutNow if self.joining => return,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                if self.joining || self.fresh =>
            {
                let commit = message.commit.max(message.get_snapshot().get_metadata().index);
                self.join_target = self.join_target.max(commit).max(1);
                // Before the entries this message brings, so durable no later than they are.
                self.sync_rebuilding_mark();
            }
            _ => {}
        }
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(shard = self.cfg.shard, %error, "raft refused a message");
        }
        if let Some((leader, commit)) = ask_to_probe {
            self.ask_leader_to_probe(leader, commit);
        }
    }

    /// Tells the leader that this replica's log is not what it thinks. A leader that believes
    /// a follower holds its whole log sends it nothing but heartbeats until the next write, so
    /// a replica that lost data would wait for one. These are the rejections raft-rs's leader
    /// takes as "probe this follower again, from its real end": while replicating, it accepts
    /// any rejected index above the follower's match index (which only the leader knows, hence
    /// the largest index); while probing, the index it last probed at, which is the match
    /// index — what a heartbeat's commit index is, unless the leader's commit lags it. The
    /// leader ignores the other one as stale, and both while it sends a snapshot.
    fn ask_leader_to_probe(&mut self, leader: u64, heartbeat_commit: u64) {
        use raft::eraftpb::MessageType;
        let raft = &self.raw.raft;
        for rejected in [heartbeat_commit, u64::MAX] {
            let mut message = Message::default();
            message.set_msg_type(MessageType::MsgAppendResponse);
            message.to = leader;
            message.from = self.cfg.node_id;
            message.term = raft.term;
            message.reject = true;
            message.index = rejected;
            message.reject_hint = raft.raft_log.last_index();
            message.commit = raft.raft_log.committed;
            self.out.messages.push(message);
        }
    }

    /// Runs the Ready loop (see the module docs) until raft has nothing more, or the WAL has
    /// no room for the next Ready (it continues after the flush in flight completes).
    pub(super) fn process(&mut self) {
        self.propose_batch();
        self.start_read_round();
        while self.raw.has_ready() && self.failure.is_none() {
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

    fn handle_ready(&mut self) {
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        // (b) A leader's messages go out now, in parallel with its own log write.
        self.out.messages.extend(ready.take_messages());
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
        self.apply_committed(committed);
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
        // (g)
        self.raw.advance_append_async(ready);
        self.persist.push_back(wait);
        self.release_persisted();
    }

    fn on_soft_state(&mut self, leader_id: u64, role: StateRole) {
        if leader_id != self.leader_id {
            self.metrics.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if leader_id == 0 {
                tracing::info!(
                    shard = self.cfg.shard,
                    previous_leader = self.leader_id,
                    term = self.raw.raft.term,
                    "no leader known (an election is under way)"
                );
            } else {
                tracing::info!(
                    shard = self.cfg.shard,
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
        }
        if !was_leader && role == StateRole::Leader {
            // Elected, its log is the shard's: nothing left to catch up with.
            self.fresh = false;
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) {
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            self.apply_entry(&entry);
        }
        if let Some(index) = last {
            self.raw.advance_apply_to(index);
        }
    }

    /// Sends the persisted messages of every Ready whose flush is done, in order, and tells
    /// raft-rs which Readies are persisted.
    fn release_persisted(&mut self) {
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

    fn fail(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        tracing::error!(shard = self.cfg.shard, %reason, "shard stops accepting writes");
        self.failure = Some(reason);
        self.fail_unproposed_writes();
        self.fail_proposed_writes_unknown();
        self.fail_reads_not_leader();
        if self.is_leader() {
            let best = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(&id, _)| id != self.cfg.node_id)
                .max_by_key(|(_, p)| p.matched)
                .map(|(&id, _)| id);
            if let Some(transferee) = best {
                self.raw.transfer_leader(transferee);
            }
        }
    }

    /// Moves the leadership to the preferred leader once it is caught up (DESIGN.md §4).
    fn balance_leadership(&mut self) {
        let preferred = self.cfg.preferred_leader;
        if !self.is_leader() || preferred == self.cfg.node_id || self.failure.is_some() {
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
                shard = self.cfg.shard,
                to = preferred,
                "handing leadership to the preferred leader"
            );
            self.raw.transfer_leader(preferred);
        }
    }

    /// The election timeout raft-rs is configured with, in microseconds (the shortest one it
    /// draws).
    fn election_timeout_us(&self) -> u64 {
        self.cfg.election_ticks as u64 * self.cfg.tick_ms * 1000
    }

    /// The leader is sending this replica a snapshot of index `index` (its first chunk
    /// arrived): until it has applied that far, it does not count as serving.
    pub fn on_snapshot_incoming(&mut self, index: u64) {
        self.health.snapshot_incoming(index);
    }

    /// Why this replica does not serve, `None` when it does (see `core::health`).
    fn health_problem(&self, role: &str) -> Option<String> {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
        // A majority of the voters, and in a joint configuration of the outgoing ones too.
        let is_quorum = |nodes: &std::collections::HashSet<u64>| {
            let majority = |ids: &[u64]| {
                ids.is_empty() || ids.iter().filter(|id| nodes.contains(id)).count() > ids.len() / 2
            };
            majority(conf.get_voters()) && majority(conf.get_voters_outgoing())
        };
        self.health.problem(&health::Replica {
            now_us: self.now_us,
            election_timeout_us: self.election_timeout_us(),
            node_id: self.cfg.node_id,
            leader_id: self.leader_id,
            is_leader: self.is_leader(),
            role,
            term: raft.term,
            voters: &voters,
            is_quorum: &is_quorum,
            applied_index: self.sm.applied_index(),
            failure: self.failure.as_deref(),
            shutting_down: self.shutting_down,
            joining: self.joining,
            fresh: self.fresh,
        })
    }

    /// Ticks elapsed since the core started.
    pub fn ticks(&self) -> u64 {
        self.ticks
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

    /// Begins shutdown: stops taking new requests, proposes what is batched, and makes the
    /// next flush take everything buffered.
    pub(super) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.process();
    }

    /// Whether writes are still waiting for their entries to apply.
    pub(super) fn has_writes_in_flight(&self) -> bool {
        self.writes.in_flight() > 0
    }

    /// Ends shutdown: answers every request still waiting — reads and unproposed writes with
    /// `Unavailable`, proposed writes with `Timeout` (their outcome is unknown).
    pub(super) fn finish_shutdown(&mut self) {
        self.fail_unproposed_writes();
        self.fail_proposed_writes_unknown();
        let reason = "the node is shutting down";
        for waiter in self.reads.drain_all() {
            self.reply_error(
                waiter.conn,
                waiter.id,
                waiter.op,
                waiter.start_us,
                &ErrorInfo::Unavailable { reason },
            );
        }
    }

    /// The replica's state.
    pub fn status(&self) -> ShardStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let peers = if self.is_leader() {
            let mut peers: Vec<PeerProgress> = raft
                .prs()
                .iter()
                .map(|(&node_id, p)| PeerProgress {
                    node_id,
                    match_index: p.matched,
                    recent_active: p.recent_active,
                })
                .collect();
            peers.sort_by_key(|p| p.node_id);
            peers
        } else {
            Vec::new()
        };
        let role = match self.role {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre_candidate",
        };
        let problem = self.health_problem(role);
        ShardStatus {
            shard: self.cfg.shard,
            role,
            term: raft.term,
            leader_id: self.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.sm.applied_index(),
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            wal_bytes: store.segment_count() as u64 * store.wal().segment_bytes(),
            snapshot_index: self.snapshots.newest,
            wal_durable: store.wal().durable().to_string(),
            keys: self.sm.len() as u64,
            peers,
            failure: self.failure.clone(),
            serving: problem.is_none(),
            problem,
            joining: self.joining,
        }
    }

    fn status_reply(&mut self, conn: ConnId, id: u64) {
        let status = self.status();
        let peers: Vec<(u64, u64)> =
            status.peers.iter().map(|p| (p.node_id, p.match_index)).collect();
        let role = match status.role {
            "leader" => corekv_proto::client::Role::Leader,
            "candidate" => corekv_proto::client::Role::Candidate,
            "pre_candidate" => corekv_proto::client::Role::PreCandidate,
            _ => corekv_proto::client::Role::Follower,
        };
        let info = StatusInfo {
            node_id: self.cfg.node_id,
            shard: self.cfg.shard,
            role,
            term: status.term,
            leader_id: status.leader_id,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            first_index: status.first_index,
            last_index: status.last_index,
            wal_bytes: status.wal_bytes,
            keys: status.keys,
            peers: &peers,
        };
        let frame = self.encoder.status(id, &info);
        push_reply(&mut self.out, conn, frame);
        self.metrics.replied(Op::Status, 0);
    }

    /// The `NotLeader` error for this shard, with the leader's address when known.
    fn not_leader(&self) -> (u64, Option<String>) {
        let addr = self
            .cfg
            .nodes
            .iter()
            .find(|(id, _)| *id == self.leader_id && self.leader_id != 0)
            .map(|(_, addr)| addr.clone());
        (self.leader_id, addr)
    }

    fn reply_error(&mut self, conn: ConnId, id: u64, op: Op, start_us: u64, error: &ErrorInfo<'_>) {
        let kind = match error {
            ErrorInfo::NotLeader { .. } => 0,
            ErrorInfo::WrongShard { .. } => 1,
            ErrorInfo::Unavailable { .. } => 2,
            ErrorInfo::Timeout => 3,
            ErrorInfo::InvalidRequest { .. } => 4,
            ErrorInfo::TooLarge { .. } => 5,
            ErrorInfo::CompareFailed { .. } => 6,
            ErrorInfo::Busy { .. } => 7,
        };
        self.metrics.error(kind);
        self.metrics.replied(op, self.now_us.saturating_sub(start_us));
        let frame = self.encoder.error(id, error);
        push_reply(&mut self.out, conn, frame);
    }

    fn reply_not_leader(&mut self, conn: ConnId, id: u64, op: Op, start_us: u64) {
        let (leader_id, addr) = self.not_leader();
        let error = ErrorInfo::NotLeader { leader_id, leader_addr: addr.as_deref() };
        self.reply_error(conn, id, op, start_us, &error);
    }
}

/// Appends one reply frame to the outputs.
fn push_reply(out: &mut Outputs, conn: ConnId, frame: &[u8]) {
    let start = out.reply_bytes.len();
    out.reply_bytes.extend_from_slice(frame);
    out.replies.push((conn, start..out.reply_bytes.len()));
}
