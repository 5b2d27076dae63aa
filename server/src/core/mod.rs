//! The shard core: one raft group replica and its state machine, without I/O.
//!
//! The core takes inputs — client frames, raft messages from peers, ticks, the clock, WAL
//! flush completions — and produces outputs — raft messages to send, reply frames, WAL flush
//! jobs, segments to retire. glommio, sockets and files are a thin shell around it
//! ([`crate::runtime`]); a simulator can drive the same code with simulated time, network and
//! disk. Every shell calls the core the same way: the driver contract in [`driver`] (recovery,
//! then turns and completions).
//!
//! | module | what |
//! |---|---|
//! | [`driver`] | the contract: recovery, turns, completions, shutdown |
//! | `ready` | the Ready loop, ticks, WAL flushes, failure, leader balancing |
//! | `appends` | a leader's appends kept within a peer frame (raft-rs's batching is not) |
//! | `catch_up` | a replica that may have lost data: fresh, joining, member |
//! | `requests` | client frames: hello, admission, dispatch to reads and writes |
//! | `reads`, `writes` | the read path (ReadIndex rounds) and the write path (batches) |
//! | `replies` | who waits for an answer, the one admission check, error replies |
//! | `kinds` | request kinds, error kinds, roles (what metrics label by) |
//! | [`counters`] | the shard's counters and histograms ([`crate::metrics`] renders them) |
//! | `snapshots` | when to snapshot, installing a leader's snapshot |
//! | `expiry`, `leases` | keys past their deadline; leases kept alive, checkpointed, expired |
//! | `watch` | watches: live changes, catching up from the watch history, slow watchers |
//! | [`membership`] | voters, learners and their addresses: changes proposed, checked, applied |
//! | `admin` | the operator's requests: the membership, a change, a leadership transfer |
//! | `status`, `health` | what a replica reports, and whether it serves |

mod access;
mod admin;
mod appends;
mod backup;
mod catch_up;
pub mod counters;
pub mod driver;
mod expiry;
mod health;
mod kinds;
mod leases;
pub mod membership;
mod reads;
mod ready;
mod replies;
mod requests;
mod snapshots;
mod status;
#[cfg(test)]
mod test_support;
mod watch;
mod writes;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use corekv_proto::encode::ReplyEncoder;
use corekv_storage::history::HistoryLog;
use corekv_storage::raft_log::{ColdFetch, RaftLogStore};
use corekv_storage::state_machine::StateMachine;
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::membership::Membership;
use corekv_types::registry::Node;
use raft::eraftpb::Message;
use raft::{Config, RawNode, StateRole};

use crate::constants::{
    COMMITTED_BYTES_PER_READY_MAX, RAFT_INFLIGHT_MESSAGES_MAX, RAFT_MESSAGE_BYTES_MAX,
    UNCOMMITTED_BYTES_MAX,
};
use counters::ShardMetrics;

pub use backup::BackupJob;
pub use corekv_types::membership::MembershipChange;
pub use corekv_types::status::{PeerProgress, ReplicaStatus, Role};
pub use driver::{Recovery, RecoveryError, Turn};
pub use kinds::{role_of, ErrorKind, Op};
pub use membership::ChangeRefused;
pub use reads::Reads;
pub use snapshots::{SnapshotJob, SnapshotPolicy};
pub use watch::{history_retention, HistoryReadJob};
pub use writes::Writes;

/// Identifies a client connection within a shard; chosen by the shell.
pub type ConnId = u64;

/// Static facts a shard core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id (its raft id).
    pub node_id: NodeId,
    /// This shard's index.
    pub shard: ShardId,
    /// Shards per node.
    pub shards: u32,
    /// Cluster name, checked in client hellos.
    pub cluster: String,
    /// The registry's nodes: a new cluster's first voters, and the addresses of members a
    /// version 1 snapshot names without them. The shard's members are its
    /// [`membership`](ShardCore::membership).
    pub registry: Vec<Node>,
    /// raft-rs election timeout, in ticks.
    pub election_ticks: usize,
    /// raft-rs heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// Length of one tick, in milliseconds (for timeouts counted in ticks).
    pub tick_ms: u64,
    /// When to take a snapshot.
    pub snapshots: SnapshotPolicy,
    /// The wall clock (ms since the Unix epoch) when the core's clock read 0: the watch
    /// history's retention by age goes by it.
    pub wall_epoch_ms: u64,
    /// This replica lost its data (or is new to a running cluster): it catches up from the
    /// leader before it votes or campaigns. A replica also starts so when its log carries the
    /// rebuilding mark, and turns to it when it finds out itself (see `catch_up`).
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
    /// The positions in `replies`, ascending, of stream frames: frames that do not answer a
    /// request of their own (a watch's events and progress), so the shell does not count
    /// them against the connection's requests in flight.
    pub streamed: Vec<usize>,
    /// Connections to close once their replies are written (a refused hello).
    pub close: Vec<ConnId>,
    /// WAL segments the log no longer needs: recycle or delete them.
    pub retire: Vec<u64>,
    /// State the core let go of: drop it off the executor (freeing a large map takes time).
    pub garbage: Vec<corekv_storage::state_machine::Replaced>,
    /// Old log entries a lagging follower needs: read these WAL records off the executor and
    /// hand them to [`ShardCore::on_cold_fetched`].
    pub cold_fetches: Vec<ColdFetch>,
    /// Watch history a catching-up watcher needs: read these off the executor and hand them
    /// to [`ShardCore::on_history_read`].
    pub history_reads: Vec<HistoryReadJob>,
    /// Watch history segments no longer kept: recycle or delete them (as WAL segments).
    pub history_retire: Vec<u64>,
    /// Connections whose output the core wants to hear about once it is all written
    /// ([`ShardCore::on_client_drained`]).
    pub drain_notify: Vec<ConnId>,
    /// Snapshots to stream to clients that asked for a backup; the shell reports each end
    /// ([`ShardCore::on_backup_streamed`]).
    pub backups: Vec<BackupJob>,
}

impl Outputs {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.replies.is_empty()
            && self.close.is_empty()
            && self.retire.is_empty()
            && self.cold_fetches.is_empty()
            && self.history_reads.is_empty()
            && self.history_retire.is_empty()
            && self.drain_notify.is_empty()
            && self.backups.is_empty()
    }

    /// Empties every list, keeping the allocations.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.reply_bytes.clear();
        self.replies.clear();
        self.streamed.clear();
        self.close.clear();
        self.retire.clear();
        self.garbage.clear();
        self.cold_fetches.clear();
        self.history_reads.clear();
        self.history_retire.clear();
        self.drain_notify.clear();
        self.backups.clear();
    }
}

/// One shard replica. See the module docs.
pub struct ShardCore {
    cfg: CoreConfig,
    raw: RawNode<RaftLogStore>,
    sm: StateMachine,
    slots: Range<u32>,
    writes: Writes,
    reads: Reads,
    persist: VecDeque<ready::PersistWait>,
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
    /// Backups waiting for a snapshot, and the streams under way (see [`backup`]).
    backups: backup::Backups,
    /// Fresh, joining or a member (see `catch_up`).
    catch_up: catch_up::CatchUp,
    /// The highest commit index a leader has told this joining (or fresh) replica about.
    join_target: u64,
    /// A safety rule this replica breaks on purpose (the simulator's self-test); `None` in
    /// every real node.
    injected_bug: Option<InjectedBug>,
    /// Under [`InjectedBug::ConfChangeBeforeCommit`]: the index of the change applied when
    /// proposed (skipped when it commits).
    applied_before_commit: Option<u64>,
    /// What `/health` is judged on: whom this replica hears from, how far behind it is.
    health: health::Health,
    /// Voters, learners and their addresses, as of the applied index (see [`membership`]).
    membership: Membership,
    /// Counts changes of `membership` (the shell re-syncs its peer links when it moves).
    membership_epoch: u64,
    /// The peer protocol each node's hello said it speaks.
    peer_protocols: std::collections::BTreeMap<u64, u32>,
    /// Operators' changes and transfers waiting for their outcome.
    admin: admin::Admin,
    /// Nodes this leader removed: the index up to which they hold the log, and when they
    /// were last told (see `membership::tell_removed`).
    removed_peers: std::collections::BTreeMap<u64, (u64, u64)>,
    /// When this replica last became leader (µs, the core's clock).
    led_since_us: u64,
    /// The term in which the leader last told this replica to take over (MsgTimeoutNow).
    timeout_now_term: Option<u64>,
    /// Whether this replica leads because its predecessor handed leadership over (an
    /// operator's transfer, or the balancing itself), not by an election: then it keeps it
    /// (see `balance_leadership`).
    led_by_transfer: bool,
    /// Running watches (see [`watch`]).
    watches: watch::Watches,
    /// What every applied entry changed, for watches (see [`corekv_storage::history`]).
    history: HistoryLog,
    /// A catching-up watcher spent its share of a turn: the next turn pumps them again.
    pending_pumps: bool,
    /// The history entries recorded since the simulator last took them (`None` outside it).
    recorded_for_tests: Option<Vec<Arc<corekv_storage::history::HistoryEntry>>>,
    /// The leader's expiry of keys past their deadline (see [`expiry`]).
    expiry: expiry::Expiry,
    /// The leader's view of leases: deadlines kept alive, checkpoints, expiries (see
    /// `leases`).
    leases: leases::Leases,
    /// Who each client connection is and what it may do (see [`access`]).
    access: access::AccessControl,
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
    /// Apply a membership change on the leader when it is proposed, not once it commits.
    ConfChangeBeforeCommit,
}

impl ShardCore {
    /// A core over a recovered log store and the state machine rebuilt from it.
    pub(super) fn new(
        cfg: CoreConfig,
        store: RaftLogStore,
        sm: StateMachine,
        history: HistoryLog,
        membership: Membership,
        metrics: Arc<ShardMetrics>,
        logger: &slog::Logger,
    ) -> raft::Result<Self> {
        let config = Config {
            id: cfg.node_id.get(),
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
        let mut sm = sm;
        sm.record_changes(true);
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
            backups: backup::Backups::default(),
            catch_up: catch_up::CatchUp::Member,
            join_target: 0,
            injected_bug: None,
            applied_before_commit: None,
            health: health::Health::default(),
            membership,
            membership_epoch: 0,
            peer_protocols: Default::default(),
            admin: admin::Admin::default(),
            removed_peers: Default::default(),
            led_since_us: 0,
            timeout_now_term: None,
            led_by_transfer: false,
            watches: watch::Watches::default(),
            history,
            pending_pumps: false,
            recorded_for_tests: None,
            expiry: Default::default(),
            leases: Default::default(),
            access: Default::default(),
        };
        core.init_catch_up();
        core.init_snapshots();
        Ok(core)
    }

    /// Starts an election at once if this node is the shard's preferred leader and knows of
    /// none, so a new cluster has its leaders in place within one round trip. Pre-vote makes
    /// this harmless when a healthy leader exists. Only a voter that is not joining campaigns
    /// (raft-rs 0.7 lets any replica campaign, and one that knows no voter wins alone).
    pub(super) fn campaign_if_preferred(&mut self) {
        let me = self.cfg.node_id;
        let may_campaign = self.membership.is_voter(me) && !self.joining();
        if may_campaign && self.preferred_leader() == me && self.raw.raft.leader_id == 0 {
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

    /// Whether this replica is the leader: as the last Ready said, and still in raft-rs. A
    /// leader that steps down on a message of a higher term (a vote request, the new leader's
    /// append) is a follower in raft-rs at once, before its next Ready says so; in between it
    /// must neither admit nor propose (raft-rs would forward the proposal to the new leader and
    /// report it taken, and nothing here would then answer its writers).
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader && self.raw.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of, 0 for none.
    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }

    /// Why the replica stopped accepting writes (a failed WAL flush), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The election timeout raft-rs is configured with, in microseconds (the shortest one it
    /// draws).
    fn election_timeout_us(&self) -> u64 {
        self.cfg.election_ticks as u64 * self.cfg.tick_ms * 1000
    }

    /// Ticks elapsed since the core started.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}
