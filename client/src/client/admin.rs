//! The operator's calls: a shard's membership, a membership change, a leadership transfer.
//! Each goes to the shard's leader (found and followed like any write's); a change is
//! answered once applied on the leader, a transfer once leadership moved.

use corekv_types::ids::{NodeId, ShardId};
use corekv_types::membership::{MembershipChange, ShardMembers};

use crate::error::{Error, Result};
use crate::retry::Retry;
use crate::types::Consistency;

use super::wire_map::protocol;
use super::Client;

impl Client {
    /// The membership of `shard`, as its leader reports it (with each member's progress);
    /// when no leader answers, as the first replica that does.
    pub async fn members(&self, shard: ShardId) -> Result<ShardMembers> {
        self.check_shard(shard)?;
        let reply =
            self.call(shard, Retry::Read, None, Consistency::Linearizable, |id, e| e.members(id));
        let reply = reply.await?;
        let members = reply.reply().reply_as_members_reply().ok_or_else(|| protocol("members"))?;
        let members = corekv_proto::shared::shard_members(&members);
        for (&id, addr) in &members.membership.addrs {
            self.learn_addr(id, shard, &addr.node(id).client_addr(shard));
        }
        let leader = members.leader_id;
        if leader == members.node_id || leader == NodeId::NONE {
            return Ok(members);
        }
        // A follower answered: the leader's view has the members' progress.
        self.inner.leaders[shard.get() as usize]
            .store(leader.get(), std::sync::atomic::Ordering::Relaxed);
        let again =
            self.call(shard, Retry::Read, None, Consistency::Linearizable, |id, e| e.members(id));
        match again.await {
            Ok(reply) => match reply.reply().reply_as_members_reply() {
                Some(m) => Ok(corekv_proto::shared::shard_members(&m)),
                None => Err(protocol("members")),
            },
            Err(_) => Ok(members),
        }
    }

    /// Asks `shard`'s leader for `change`; the index of its entry once it is applied there.
    /// A refusal comes back as [`Error::ChangeRefused`] with the leader's reason; a change
    /// whose outcome became unknown (the leader changed meanwhile) as
    /// [`Error::Indeterminate`]: read [`Client::members`] to find out.
    pub async fn change_membership(
        &self,
        shard: ShardId,
        change: &MembershipChange,
    ) -> Result<u64> {
        self.check_shard(shard)?;
        let reply = self
            .call(shard, Retry::Once, None, Consistency::Linearizable, |id, e| {
                e.member_change(id, change)
            })
            .await?;
        let done = reply
            .reply()
            .reply_as_member_change_reply()
            .ok_or_else(|| protocol("member change"))?;
        Ok(done.index())
    }

    /// Asks `shard`'s leader to hand leadership to `to`; the new leader once it has.
    pub async fn transfer_leader(&self, shard: ShardId, to: NodeId) -> Result<NodeId> {
        self.check_shard(shard)?;
        let reply = self
            .call(shard, Retry::Once, None, Consistency::Linearizable, |id, e| {
                e.transfer_leader(id, to)
            })
            .await?;
        let moved = reply
            .reply()
            .reply_as_transfer_leader_reply()
            .ok_or_else(|| protocol("leader transfer"))?;
        let leader = NodeId(moved.leader_id());
        self.inner.leaders[shard.get() as usize]
            .store(leader.get(), std::sync::atomic::Ordering::Relaxed);
        Ok(leader)
    }

    fn check_shard(&self, shard: ShardId) -> Result<()> {
        let shards = self.registry().shards;
        if shard.get() >= shards {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} does not exist (the cluster has shards 0 to {})",
                shards - 1
            )));
        }
        Ok(())
    }
}
