//! Membership frames (client protocol 3), both directions: the requests an operator's tool
//! sends (the membership, a change, a leadership transfer) and the node's replies.

use corekv_types::ids::NodeId;
use corekv_types::membership::{MemberAddr, MembershipChange, ShardMembers};
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{ReplyEncoder, RequestEncoder};
use crate::client as c;

fn member<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    id: NodeId,
    addr: &MemberAddr,
) -> WIPOffset<c::Member<'b>> {
    let host = Some(fbb.create_string(&addr.host));
    c::Member::create(
        fbb,
        &c::MemberArgs {
            node_id: id.get(),
            host,
            client_port: addr.client_port,
            peer_port: addr.peer_port,
            http_port: addr.http_port,
            resp_port: addr.resp_port.unwrap_or(0),
        },
    )
}

impl RequestEncoder {
    /// Asks a replica for its shard's membership.
    pub fn members(&mut self, id: u64) -> &[u8] {
        self.fbb.reset();
        let request = c::MembersRequest::create(&mut self.fbb, &c::MembersRequestArgs {});
        self.finish(id, c::Request::MembersRequest, request.as_union_value())
    }

    /// Asks the shard's leader for a membership change.
    pub fn member_change(&mut self, id: u64, change: &MembershipChange) -> &[u8] {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let promote = matches!(change, MembershipChange::AddLearner { promote: true, .. });
        let (kind, node_id, new_node_id, added) = match change {
            MembershipChange::AddLearner { id, addr, .. } => {
                (c::MemberChangeKind::AddLearner, *id, NodeId::NONE, Some(member(fbb, *id, addr)))
            }
            MembershipChange::Promote { id } => {
                (c::MemberChangeKind::Promote, *id, NodeId::NONE, None)
            }
            MembershipChange::Remove { id } => {
                (c::MemberChangeKind::Remove, *id, NodeId::NONE, None)
            }
            MembershipChange::Replace { old, new } => {
                (c::MemberChangeKind::Replace, *old, *new, None)
            }
        };
        let args = c::MemberChangeRequestArgs {
            kind,
            node_id: node_id.get(),
            new_node_id: new_node_id.get(),
            member: added,
            promote,
        };
        let request = c::MemberChangeRequest::create(fbb, &args);
        self.finish(id, c::Request::MemberChangeRequest, request.as_union_value())
    }

    /// Asks the shard's leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, id: u64, to: NodeId) -> &[u8] {
        self.fbb.reset();
        let args = c::TransferLeaderRequestArgs { node_id: to.get() };
        let request = c::TransferLeaderRequest::create(&mut self.fbb, &args);
        self.finish(id, c::Request::TransferLeaderRequest, request.as_union_value())
    }
}

impl ReplyEncoder {
    /// Answers a membership request.
    pub fn members(&mut self, id: u64, members: &ShardMembers) -> &[u8] {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let m = &members.membership;
        let mut ids = |list: &[NodeId]| {
            let ids: Vec<u64> = list.iter().map(|id| id.get()).collect();
            fbb.create_vector(&ids)
        };
        let (voters, learners) = (ids(&m.voters), ids(&m.learners));
        let (voters_outgoing, learners_next) = (ids(&m.voters_outgoing), ids(&m.learners_next));
        let promote = ids(&m.promote);
        let tables: Vec<_> = m.addrs.iter().map(|(&id, addr)| member(fbb, id, addr)).collect();
        let addrs = fbb.create_vector(&tables);
        let peers: Vec<_> = members
            .peers
            .iter()
            .map(|p| {
                let args = c::PeerProgressArgs {
                    node_id: p.node_id.get(),
                    match_index: p.match_index.get(),
                    recent_active: p.recent_active,
                };
                c::PeerProgress::create(fbb, &args)
            })
            .collect();
        let peers = fbb.create_vector(&peers);
        let args = c::MembersReplyArgs {
            node_id: members.node_id.get(),
            shard: members.shard.get(),
            leader_id: members.leader_id.get(),
            voters: Some(voters),
            learners: Some(learners),
            voters_outgoing: Some(voters_outgoing),
            learners_next: Some(learners_next),
            members: Some(addrs),
            promote: Some(promote),
            peers: Some(peers),
            last_index: members.last_index.get(),
            applied_index: members.applied_index.get(),
            pending_change: members.pending_change.get(),
        };
        let reply = c::MembersReply::create(fbb, &args);
        self.finish(id, c::Reply::MembersReply, reply.as_union_value())
    }

    /// A membership change is applied on the leader, at `index`.
    pub fn member_change(&mut self, id: u64, index: u64) -> &[u8] {
        self.fbb.reset();
        let reply =
            c::MemberChangeReply::create(&mut self.fbb, &c::MemberChangeReplyArgs { index });
        self.finish(id, c::Reply::MemberChangeReply, reply.as_union_value())
    }

    /// Leadership moved to `leader`.
    pub fn transfer_leader(&mut self, id: u64, leader: NodeId) -> &[u8] {
        self.fbb.reset();
        let args = c::TransferLeaderReplyArgs { leader_id: leader.get() };
        let reply = c::TransferLeaderReply::create(&mut self.fbb, &args);
        self.finish(id, c::Reply::TransferLeaderReply, reply.as_union_value())
    }
}
