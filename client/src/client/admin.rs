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

/// How often a client asks the nodes for each shard's members.
pub const MEMBERS_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

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
        self.learn_members(&members);
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

    /// Takes in what a node said of its shard's members: their addresses, and the list the
    /// client picks nodes from.
    pub(super) fn learn_members(&self, members: &ShardMembers) {
        let shard = members.shard;
        for (&id, addr) in &members.membership.addrs {
            self.learn_addr(id, shard, &addr.node(id).client_addr(shard));
        }
        let ids = members.membership.members();
        if ids.is_empty() || shard.get() >= self.registry().shards {
            return;
        }
        let mut known = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
        known.shards[shard.get() as usize] = ids.into();
    }

    /// The members of `shard` the client knows of.
    pub(super) fn shard_nodes(&self, shard: ShardId) -> std::sync::Arc<[NodeId]> {
        let known = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
        match known.shards.get(shard.get() as usize) {
            Some(nodes) => nodes.clone(),
            None => self.inner.nodes.clone().into(),
        }
    }

    /// A node could not be reached: the membership may have changed; ask at the next call.
    pub(super) fn members_changed(&self) {
        let mut known = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
        known.refreshed = None;
    }

    /// The members of `shard` the client knows of, for a call; under the same lock, notes
    /// whether the members are due for a refresh and starts one (see
    /// [`Client::refresh_members`]).
    pub(super) fn nodes_for_call(&self, shard: ShardId) -> std::sync::Arc<[NodeId]> {
        let (nodes, refresh) = {
            let mut known = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
            let due = known.refreshed.is_none_or(|at| at.elapsed() >= MEMBERS_REFRESH);
            let refresh = due && !known.refreshing;
            known.refreshing |= refresh;
            (known.shards.get(shard.get() as usize).cloned(), refresh)
        };
        if refresh {
            self.refresh_members();
        }
        nodes.unwrap_or_else(|| self.inner.nodes.clone().into())
    }

    /// Asks every shard for its members, in the background (called when the last time is
    /// more than [`MEMBERS_REFRESH`] ago, or a node could not be reached since): a client
    /// started with a registry whose nodes have all been replaced since keeps finding the
    /// shards.
    fn refresh_members(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime nothing can run it; the next call in one asks again.
            let mut known = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
            known.refreshing = false;
            return;
        };
        let client = self.clone();
        runtime.spawn(async move {
            for shard in (0..client.registry().shards).map(ShardId) {
                let _ = client.members(shard).await;
            }
            let mut known = client.inner.members.lock().unwrap_or_else(|p| p.into_inner());
            known.refreshing = false;
            known.refreshed = Some(std::time::Instant::now());
        });
    }

    /// `shard` when the cluster has it, else `InvalidArgument` naming the shards there are.
    pub(super) fn check_shard(&self, shard: ShardId) -> Result<()> {
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
