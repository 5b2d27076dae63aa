//! What a replica reports about itself: the status shape (`/status`, status replies, the
//! metrics' raft position) and whether it serves (`core::health` judges).

use corekv_proto::encode::StatusInfo;

use super::replies::push_reply;
use super::{health, ConnId, Op, Role, ShardCore};

/// A snapshot of a replica's state, for `/status` and status replies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardStatus {
    /// Shard index.
    pub shard: u32,
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: Role,
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

impl ShardCore {
    /// Why this replica does not serve, `None` when it does (see `core::health`).
    pub(super) fn health_problem(&self, role: &str) -> Option<String> {
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
            joining: self.joining(),
            fresh: self.catch_up == super::catch_up::CatchUp::Fresh,
        })
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
        let role = Role::from(self.role);
        let problem = self.health_problem(role.label());
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
            joining: self.joining(),
        }
    }

    pub(super) fn status_reply(&mut self, conn: ConnId, id: u64) {
        let status = self.status();
        let peers: Vec<(u64, u64)> =
            status.peers.iter().map(|p| (p.node_id, p.match_index)).collect();
        let role = match status.role {
            Role::Leader => corekv_proto::client::Role::Leader,
            Role::Candidate => corekv_proto::client::Role::Candidate,
            Role::PreCandidate => corekv_proto::client::Role::PreCandidate,
            Role::Follower => corekv_proto::client::Role::Follower,
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

    /// The leader is sending this replica a snapshot of index `index` (its first chunk
    /// arrived): until it has applied that far, it does not count as serving.
    pub fn on_snapshot_incoming(&mut self, index: u64) {
        self.health.snapshot_incoming(index);
    }
}
