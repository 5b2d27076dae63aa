//! What a replica reports about itself: one shape for the node's `/status`, the status reply
//! on the wire, the client's `status()` and `corekvctl status`, so no side maps it by hand
//! into a shape of its own.

use serde::{Deserialize, Serialize};

use crate::ids::{LogIndex, NodeId, ShardId, Term};

/// A replica's raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning: asking for votes.
    Candidate,
    /// Asking whether it could win an election before campaigning (pre-vote).
    PreCandidate,
    /// Leads the shard.
    Leader,
}

impl Role {
    /// `follower`, `candidate`, `pre_candidate` or `leader`: the name `/status`, the metrics
    /// and `corekvctl` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
            Role::Leader => "leader",
        }
    }
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The peer's node id.
    pub node_id: NodeId,
    /// Highest index known replicated there.
    pub match_index: LogIndex,
    /// Whether the leader heard from the peer within the last election timeout.
    pub recent_active: bool,
}

/// The state of one shard replica, as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Shard index.
    pub shard: ShardId,
    /// Raft role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader, [`NodeId::NONE`] when none.
    pub leader_id: NodeId,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index applied.
    pub applied_index: LogIndex,
    /// First index in the log.
    pub first_index: LogIndex,
    /// Last index in the log.
    pub last_index: LogIndex,
    /// Bytes of WAL segments on disk.
    pub wal_bytes: u64,
    /// Index of the newest durable snapshot (0: none).
    pub snapshot_index: LogIndex,
    /// WAL position known durable (`segment:offset`).
    pub wal_durable: String,
    /// Keys in the state machine.
    pub keys: u64,
    /// Per peer: node id and match index, sorted by node id; known on the leader only.
    pub peers: Vec<PeerProgress>,
    /// Why this replica stopped accepting writes, if it did.
    pub failure: Option<String>,
    /// Whether this replica serves: a known leader it hears from, not catching up, its WAL
    /// working (DESIGN.md, "What serving means"). What `/health` reports.
    pub serving: bool,
    /// Why it does not serve, when it does not.
    pub problem: Option<String>,
    /// Catching up from the leader before it takes part in elections again (it lost its data,
    /// or is new to a running cluster).
    pub joining: bool,
    /// The shard's voters, as this replica has applied its membership (in a joint
    /// configuration: the incoming ones).
    #[serde(default)]
    pub voters: Vec<NodeId>,
    /// The shard's learners.
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// In a joint configuration, the outgoing voters (empty otherwise).
    #[serde(default)]
    pub voters_outgoing: Vec<NodeId>,
    /// On the leader: the index of a membership change proposed and not applied yet (0:
    /// none).
    #[serde(default)]
    pub pending_change: LogIndex,
}

impl ReplicaStatus {
    /// Entries the slowest peer lacks of this replica's log (leader only; 0 elsewhere).
    pub fn replication_lag(&self) -> u64 {
        self.peers.iter().map(|p| self.last_index.since(p.match_index)).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows the role names are the ones /status and corekvctl print, and serde agrees.
    #[test]
    fn role_names_match_serde() {
        for role in [Role::Follower, Role::Candidate, Role::PreCandidate, Role::Leader] {
            let json = serde_json::to_string(&role).expect("serializing a role");
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
    }

    // Shows the lag is the slowest peer's, and 0 with no peers known (a follower).
    #[test]
    fn replication_lag_is_the_slowest_peers() {
        let peer = |node_id, match_index| PeerProgress {
            node_id: NodeId(node_id),
            match_index: LogIndex(match_index),
            recent_active: true,
        };
        let mut status: ReplicaStatus = serde_json::from_value(serde_json::json!({
            "shard": 0, "role": "leader", "term": 2, "leader_id": 1, "commit_index": 10,
            "applied_index": 10, "first_index": 1, "last_index": 10, "wal_bytes": 0,
            "snapshot_index": 0, "wal_durable": "0:0", "keys": 0, "peers": [], "failure": null,
            "serving": true, "problem": null, "joining": false
        }))
        .expect("a status from JSON");
        assert_eq!(status.replication_lag(), 0);
        status.peers = vec![peer(1, 10), peer(2, 7), peer(3, 9)];
        assert_eq!(status.replication_lag(), 3);
    }
}
