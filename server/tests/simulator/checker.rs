//! What the simulator checks besides linearizability: acknowledged writes stay, replicas
//! converge, and replicas that applied the same index hold the same state.

use super::*;
use corekv_types::ids::NodeId;
use corekv_types::membership::Membership;

impl Sim {
    /// Records the log entry of an acknowledged write, with its term on the replica that
    /// acknowledged it.
    pub(crate) fn note_acknowledgement(
        &mut self,
        node: u64,
        shard: u32,
        frame: &[u8],
    ) -> SimResult<()> {
        let reply =
            verify_reply(frame).map_err(|e| format!("node {node} sent a bad reply: {e}"))?;
        let index = match reply.reply_type() {
            Reply::PutReply => reply.reply_as_put_reply().map(|r| r.meta().mod_index()),
            Reply::BatchPutReply => reply
                .reply_as_batch_put_reply()
                .and_then(|r| r.metas().iter().next().map(|m| m.mod_index())),
            Reply::DeleteReply => reply.reply_as_delete_reply().map(|r| r.index()),
            Reply::TxnReply => reply.reply_as_txn_reply().map(|r| r.index()),
            _ => None,
        };
        let Some(index) = index else { return Ok(()) };
        let core = self.core(node, shard).expect("a replying replica is up");
        let term = core.raft().raft.raft_log.term(index).map_err(|e| {
            format!("node {node} shard {shard} acknowledged index {index} it cannot find: {e}")
        })?;
        if let Some(&(other_term, other)) = self.acked.get(&(shard, index)) {
            if other_term != term {
                return Err(format!(
                    "shard {shard} index {index}: node {other} acknowledged a write there in term \
                     {other_term}, node {node} in term {term}"
                ));
            }
        }
        self.acked.insert((shard, index), (term, node));
        Ok(())
    }

    /// Every shard has a leader, and every member replica (as that leader knows them) is up,
    /// applied the same index, and holds the same state.
    pub(crate) fn converged(&self) -> bool {
        (0..self.opts.shards).all(|shard| {
            let Some((_, membership)) = self.leader_view(shard) else { return false };
            let members = membership.members();
            let states: BTreeSet<Option<(u64, u64)>> = members
                .iter()
                .map(|id| {
                    let core =
                        self.nodes[id.get() as usize - 1].replicas[shard as usize].core.as_ref();
                    core.map(|core| (core.state_machine().applied_index(), digest(core)))
                })
                .collect();
            states.len() == 1 && !states.contains(&None)
        })
    }

    /// Each shard's membership as its leader knows it (see [`Sim::leader_view`]).
    pub(crate) fn leader_views(&self) -> Vec<Option<Membership>> {
        (0..self.opts.shards).map(|s| self.leader_view(s).map(|(_, m)| m)).collect()
    }

    /// Whether `node` is a member by `view` (a shard's [`Sim::leader_views`] entry); with no
    /// leader known, whether it is one of the first voters.
    pub(crate) fn is_member(&self, view: &Option<Membership>, node: u64) -> bool {
        view.as_ref().map_or(node <= self.opts.nodes, |m| m.contains(NodeId(node)))
    }

    /// Every acknowledged write's entry is in every member replica's log with the term it
    /// was acknowledged in (or compacted into a snapshot after being committed), and
    /// committed.
    pub(crate) fn check_acknowledged(&self) -> SimResult<()> {
        let views = self.leader_views();
        for (&(shard, index), &(term, acker)) in &self.acked {
            for (i, node) in self.nodes.iter().enumerate() {
                if !self.is_member(&views[shard as usize], i as u64 + 1) {
                    continue;
                }
                let Some(core) = node.replicas[shard as usize].core.as_ref() else { continue };
                let log = &core.raft().raft.raft_log;
                if log.committed < index {
                    return Err(format!(
                        "lost write: node {acker} acknowledged shard {shard} index {index}, but \
                         node {} has committed only up to {}",
                        i + 1,
                        log.committed
                    ));
                }
                if index >= log.first_index() && index <= log.last_index() {
                    let found = log.term(index).unwrap_or(0);
                    if found != term {
                        return Err(format!(
                            "lost write: node {acker} acknowledged shard {shard} index {index} in \
                             term {term}, but node {} holds term {found} there",
                            i + 1
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn describe_roles(&self) -> String {
        let mut parts = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for (s, replica) in node.replicas.iter().enumerate() {
                match &replica.core {
                    Some(core) => {
                        let st = core.status();
                        let m = core.membership();
                        let ids = |l: &[corekv_types::ids::NodeId]| {
                            l.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
                        };
                        parts.push(format!(
                            "n{}/s{s}:{} t{} c{} a{}{} v[{}]{}{}{}",
                            i + 1,
                            st.role.as_str(),
                            st.term,
                            st.commit_index,
                            st.applied_index,
                            st.failure.map(|f| format!(" FAILED({f})")).unwrap_or_default(),
                            ids(&m.voters),
                            if m.learners.is_empty() {
                                String::new()
                            } else {
                                format!(" l[{}]", ids(&m.learners))
                            },
                            if m.voters_outgoing.is_empty() {
                                String::new()
                            } else {
                                format!(" out[{}]", ids(&m.voters_outgoing))
                            },
                            if core.joining() { " joining" } else { "" },
                        ));
                    }
                    None => parts.push(format!("n{}/s{s}:down", i + 1)),
                }
            }
        }
        parts.join(", ")
    }
}

/// A hash of everything a replica's state holds, and of its membership (both as of its
/// applied index).
pub(crate) fn digest(core: &ShardCore) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let m = core.membership();
    (&m.voters, &m.learners, &m.voters_outgoing, &m.learners_next, m.auto_leave).hash(&mut hasher);
    for (key, value) in core.state_machine().iter() {
        key.hash(&mut hasher);
        value.value.hash(&mut hasher);
        value.meta.hash(&mut hasher);
        value.expires_ms.hash(&mut hasher);
    }
    core.state_machine().clock_ms().hash(&mut hasher);
    let leases = core.state_machine().leases();
    leases.last_counter().hash(&mut hasher);
    for (id, lease) in leases.iter() {
        (id, lease.ttl_ms, lease.deadline_ms, &lease.keys).hash(&mut hasher);
    }
    hasher.finish()
}
