//! Between the shared vocabulary (`corekv-types`) and the generated wire types: the one place
//! either side of the protocol converts a key's metadata, a role or a status reply.

use corekv_types::ids::{LogIndex, NodeId, ShardId, Term};
use corekv_types::meta;
use corekv_types::status::{PeerProgress, ReplicaStatus, Role};

use crate::client as c;

impl From<meta::KeyMeta> for c::KeyMeta {
    fn from(m: meta::KeyMeta) -> Self {
        c::KeyMeta::new(m.create_index, m.mod_index, m.version)
    }
}

impl From<&c::KeyMeta> for meta::KeyMeta {
    fn from(m: &c::KeyMeta) -> Self {
        meta::KeyMeta {
            create_index: m.create_index(),
            mod_index: m.mod_index(),
            version: m.version(),
        }
    }
}

impl From<Role> for c::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Follower => c::Role::Follower,
            Role::Candidate => c::Role::Candidate,
            Role::PreCandidate => c::Role::PreCandidate,
            Role::Leader => c::Role::Leader,
        }
    }
}

impl From<c::Role> for Role {
    /// A role this version does not know (from a newer node) reads as a follower: not a
    /// leader this client could send writes to.
    fn from(role: c::Role) -> Self {
        match role {
            c::Role::Leader => Role::Leader,
            c::Role::Candidate => Role::Candidate,
            c::Role::PreCandidate => Role::PreCandidate,
            _ => Role::Follower,
        }
    }
}

/// The status a verified status reply carries. Its node id is the reply's own
/// (`reply.node_id()`).
pub fn replica_status(reply: &c::StatusReply<'_>) -> ReplicaStatus {
    ReplicaStatus {
        shard: ShardId(reply.shard()),
        role: reply.role().into(),
        term: Term(reply.term()),
        leader_id: NodeId(reply.leader_id()),
        commit_index: LogIndex(reply.commit_index()),
        applied_index: LogIndex(reply.applied_index()),
        first_index: LogIndex(reply.first_index()),
        last_index: LogIndex(reply.last_index()),
        wal_bytes: reply.wal_bytes(),
        snapshot_index: LogIndex(reply.snapshot_index()),
        wal_durable: reply.wal_durable().unwrap_or_default().to_string(),
        keys: reply.keys(),
        peers: reply
            .peers()
            .iter()
            .flatten()
            .map(|p| PeerProgress {
                node_id: NodeId(p.node_id()),
                match_index: LogIndex(p.match_index()),
                recent_active: p.recent_active(),
            })
            .collect(),
        failure: reply.failure().map(str::to_string),
        serving: reply.serving(),
        problem: reply.problem().map(str::to_string),
        joining: reply.joining(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows metadata and roles survive the trip to the wire's types and back.
    #[test]
    fn metadata_and_roles_round_trip() {
        let m = meta::KeyMeta { create_index: 3, mod_index: 9, version: 4 };
        assert_eq!(meta::KeyMeta::from(&c::KeyMeta::from(m)), m);
        for role in [Role::Follower, Role::Candidate, Role::PreCandidate, Role::Leader] {
            assert_eq!(Role::from(c::Role::from(role)), role);
        }
        assert_eq!(Role::from(c::Role(200)), Role::Follower, "an unknown role leads nothing");
    }
}
