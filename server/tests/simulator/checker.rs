//! What the simulator checks besides linearizability: acknowledged writes stay, replicas
//! converge, and replicas that applied the same index hold the same state.

use super::*;

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

    /// Every replica of every shard is up, applied the same index, and holds the same state.
    pub(crate) fn converged(&self) -> bool {
        (0..self.opts.shards).all(|shard| {
            let states: BTreeSet<(u64, u64)> = self
                .nodes
                .iter()
                .filter_map(|n| n.replicas[shard as usize].core.as_ref())
                .map(|core| (core.state_machine().applied_index(), digest(core.state_machine())))
                .collect();
            let leader = self.nodes.iter().any(|n| {
                n.replicas[shard as usize].core.as_ref().is_some_and(ShardCore::is_leader)
            });
            leader && states.len() == 1
        })
    }

    /// Every acknowledged write's entry is in every replica's log with the term it was
    /// acknowledged in (or compacted into a snapshot after being committed), and committed.
    pub(crate) fn check_acknowledged(&self) -> SimResult<()> {
        for (&(shard, index), &(term, acker)) in &self.acked {
            for (i, node) in self.nodes.iter().enumerate() {
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
                        parts.push(format!(
                            "n{}/s{s}:{} t{} c{} a{}{}",
                            i + 1,
                            st.role.as_str(),
                            st.term,
                            st.commit_index,
                            st.applied_index,
                            st.failure.map(|f| format!(" FAILED({f})")).unwrap_or_default()
                        ));
                    }
                    None => parts.push(format!("n{}/s{s}:down", i + 1)),
                }
            }
        }
        parts.join(", ")
    }
}

/// A hash of everything a replica's state holds.
pub(crate) fn digest(sm: &StateMachine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (key, value) in sm.iter() {
        key.hash(&mut hasher);
        value.value.hash(&mut hasher);
        value.meta.hash(&mut hasher);
    }
    hasher.finish()
}
