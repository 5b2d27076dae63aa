//! What a replica reports about itself, in the shared status shape
//! (`corekv_types::status::ReplicaStatus`: `/status`, status replies, the metrics' raft
//! position), and whether it serves (`core::health` judges).

use corekv_types::ids::{LogIndex, NodeId, Term};

use super::replies::push_reply;
use super::{health, role_of, ConnId, Op, PeerProgress, ReplicaStatus, ShardCore};

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
            node_id: self.cfg.node_id.get(),
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
            removed: self.removed(),
        })
    }

    /// The replica's state.
    pub fn status(&self) -> ReplicaStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let peers = self.peer_progress();
        let role = role_of(self.role);
        let problem = self.health_problem(role.as_str());
        ReplicaStatus {
            shard: self.cfg.shard,
            role,
            term: Term(raft.term),
            leader_id: NodeId(self.leader_id),
            commit_index: LogIndex(raft.raft_log.committed),
            applied_index: LogIndex(self.sm.applied_index()),
            first_index: LogIndex(raft.raft_log.first_index()),
            last_index: LogIndex(raft.raft_log.last_index()),
            wal_bytes: store.segment_count() as u64 * store.wal().segment_bytes(),
            snapshot_index: LogIndex(self.snapshots.newest),
            wal_durable: store.wal().durable().to_string(),
            keys: self.sm.len() as u64,
            peers,
            failure: self.failure.clone(),
            serving: problem.is_none(),
            problem,
            joining: self.joining(),
            voters: self.membership.voters.clone(),
            learners: self.membership.learners.clone(),
            voters_outgoing: self.membership.voters_outgoing.clone(),
            pending_change: LogIndex(self.pending_change()),
        }
    }

    /// On the leader, each member's progress, by node id (empty elsewhere): its match index,
    /// and whether it is active (this leader, or a member it heard from within an election
    /// timeout).
    pub(super) fn peer_progress(&self) -> Vec<PeerProgress> {
        if !self.is_leader() {
            return Vec::new();
        }
        let timeout = self.election_timeout_us();
        let mut peers: Vec<PeerProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(&id, p)| PeerProgress {
                node_id: NodeId(id),
                match_index: LogIndex(p.matched),
                recent_active: id == self.cfg.node_id.get()
                    || self.health.heard_within(id, self.now_us, timeout),
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        peers
    }

    /// On the leader: the index of a membership change proposed and not applied yet (0: none).
    pub(super) fn pending_change(&self) -> u64 {
        let raft = &self.raw.raft;
        if self.is_leader() && raft.has_pending_conf() {
            raft.pending_conf_index
        } else {
            0
        }
    }

    pub(super) fn status_reply(&mut self, conn: ConnId, id: u64) {
        let status = self.status();
        let frame = self.encoder.status(id, self.cfg.node_id.get(), &status);
        push_reply(&mut self.out, conn, frame);
        self.metrics.replied(Op::Status, 0);
    }

    /// The leader is sending this replica a snapshot of index `index` (its first chunk
    /// arrived): until it has applied that far, it does not count as serving.
    pub fn on_snapshot_incoming(&mut self, index: u64) {
        self.health.snapshot_incoming(index);
    }
}
