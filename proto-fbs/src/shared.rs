//! Between the shared vocabulary (`corekv-types`) and the generated wire types: the one place
//! either side of the protocol converts a key's metadata, a role or a status reply.

use corekv_types::ids::{LogIndex, NodeId, ShardId, Term};
use corekv_types::membership::{MemberAddr, Membership, MembershipChange, ShardMembers};
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
        peers: peer_progress(reply.peers()),
        failure: reply.failure().map(str::to_string),
        serving: reply.serving(),
        problem: reply.problem().map(str::to_string),
        joining: reply.joining(),
        voters: node_ids(reply.voters()),
        learners: node_ids(reply.learners()),
        voters_outgoing: node_ids(reply.voters_outgoing()),
        pending_change: LogIndex(reply.pending_change()),
    }
}

fn node_ids(ids: Option<flatbuffers::Vector<'_, u64>>) -> Vec<NodeId> {
    ids.iter().flatten().map(NodeId).collect()
}

fn peer_progress(
    peers: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<c::PeerProgress<'_>>>>,
) -> Vec<PeerProgress> {
    peers
        .iter()
        .flatten()
        .map(|p| PeerProgress {
            node_id: NodeId(p.node_id()),
            match_index: LogIndex(p.match_index()),
            recent_active: p.recent_active(),
        })
        .collect()
}

fn member_addr(member: &c::Member<'_>) -> Result<MemberAddr, String> {
    let host = member.host().filter(|h| !h.is_empty()).ok_or("a member without a host")?;
    Ok(MemberAddr {
        host: host.to_string(),
        client_port: member.client_port(),
        peer_port: member.peer_port(),
        http_port: member.http_port(),
        resp_port: Some(member.resp_port()).filter(|&port| port != 0),
    })
}

/// The membership a verified members reply carries.
pub fn shard_members(reply: &c::MembersReply<'_>) -> ShardMembers {
    let ids = |list: Option<flatbuffers::Vector<'_, u64>>| {
        let mut ids: Vec<NodeId> = list.iter().flatten().map(NodeId).collect();
        ids.sort_unstable();
        ids
    };
    let addrs = reply
        .members()
        .iter()
        .flatten()
        .filter_map(|m| member_addr(&m).ok().map(|addr| (NodeId(m.node_id()), addr)))
        .collect();
    ShardMembers {
        node_id: NodeId(reply.node_id()),
        shard: ShardId(reply.shard()),
        leader_id: NodeId(reply.leader_id()),
        membership: Membership {
            voters: ids(reply.voters()),
            learners: ids(reply.learners()),
            voters_outgoing: ids(reply.voters_outgoing()),
            learners_next: ids(reply.learners_next()),
            auto_leave: false,
            promote: ids(reply.promote()),
            addrs,
        },
        peers: peer_progress(reply.peers()),
        last_index: LogIndex(reply.last_index()),
        applied_index: LogIndex(reply.applied_index()),
        pending_change: LogIndex(reply.pending_change()),
    }
}

/// The change a verified change request asks for; why it cannot be one when it cannot.
pub fn membership_change(request: &c::MemberChangeRequest<'_>) -> Result<MembershipChange, String> {
    let id = NodeId(request.node_id());
    if id == NodeId::NONE {
        return Err("a membership change names no node (node id 0)".to_string());
    }
    match request.kind() {
        c::MemberChangeKind::AddLearner => {
            let member = request.member().ok_or("adding a member needs its addresses")?;
            if member.node_id() != id.get() {
                return Err(format!(
                    "the member's addresses are node {}'s, not node {id}'s",
                    member.node_id()
                ));
            }
            let (addr, promote) = (member_addr(&member)?, request.promote());
            Ok(MembershipChange::AddLearner { id, addr, promote })
        }
        c::MemberChangeKind::Promote => Ok(MembershipChange::Promote { id }),
        c::MemberChangeKind::Remove => Ok(MembershipChange::Remove { id }),
        c::MemberChangeKind::Replace => {
            let new = NodeId(request.new_node_id());
            if new == NodeId::NONE || new == id {
                return Err(format!("replacing node {id} needs another node to take its place"));
            }
            Ok(MembershipChange::Replace { old: id, new })
        }
        other => Err(format!("membership change kind {} is not known to this node", other.0)),
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
