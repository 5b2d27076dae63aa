//! The nemesis: crashes (tearing the last write), wipes, partitions, heals.

use super::*;
use corekv_types::ids::NodeId;

impl Sim {
    pub(crate) fn nemesis(&mut self) -> SimResult<()> {
        let n = self.opts.all_nodes();
        let mut choices = vec![0u8];
        if self.opts.crashes {
            choices.extend([1, 1]);
        }
        if self.opts.partitions {
            choices.extend([2, 2, 3]);
        }
        match self.rng.pick(&choices) {
            0 => {
                self.trace(|| "heal".to_string());
                self.cut.clear();
            }
            1 => {
                let up: Vec<u64> = (1..=n).filter(|&id| self.nodes[id as usize - 1].up).collect();
                if !up.is_empty() {
                    let victim = self.rng.pick(&up);
                    self.trace(|| format!("crash n{victim}"));
                    self.crash(victim);
                    if self.opts.wipes && self.may_wipe(victim) && self.wipe_rng.chance(0.5) {
                        // In membership runs the registry's first voters may not be the
                        // members any more: a wiped node restarts with `--join`.
                        let join = self.wipe_rng.chance(0.5) || self.opts.spares > 0;
                        self.trace(|| format!("wipe n{victim}"));
                        self.wipe(victim, join);
                    }
                    let down = self.rng.range(10_000, 1_500_000);
                    self.schedule(down, Event::Restart { node: victim });
                }
            }
            2 => {
                // A random split into two sides.
                self.cut.clear();
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(0.5)).collect();
                let one_way = self.opts.asymmetric && self.rng.chance(0.5);
                for a in 1..=n {
                    for b in 1..=n {
                        if side[a as usize - 1] && !side[b as usize - 1] {
                            self.cut.insert((a, b));
                            if !one_way {
                                self.cut.insert((b, a));
                            }
                        }
                    }
                }
                self.stats.partitions += 1;
                self.trace(|| format!("partition {:?}", self.cut));
            }
            _ => {
                // One node cut off (in one direction, or both).
                let victim = self.rng.range(1, n);
                let dirs = if self.opts.asymmetric { self.rng.below(3) } else { 2 };
                for other in (1..=n).filter(|&o| o != victim) {
                    if dirs != 1 {
                        self.cut.insert((victim, other));
                    }
                    if dirs != 0 {
                        self.cut.insert((other, victim));
                    }
                }
                self.stats.partitions += 1;
                self.trace(|| format!("cut off n{victim}: {:?}", self.cut));
            }
        }
        Ok(())
    }

    /// Kills `id`: what its disks hold is what completed flushes wrote (plus, maybe, part of
    /// the flush in flight); everything else is gone.
    pub(crate) fn crash(&mut self, id: u64) {
        let torn = self.opts.torn_writes;
        let node = &mut self.nodes[id as usize - 1];
        node.up = false;
        node.incarnation += 1;
        for replica in &mut node.replicas {
            if let Some(job) = replica.flushing.take() {
                if torn && self.rng.chance(0.5) {
                    let bytes = self.rng.below(job.bytes() as u64 + 1) as usize;
                    replica.disk.run_torn(&job, bytes);
                }
            }
            if let Some(job) = replica.history_flushing.take() {
                if torn && self.rng.chance(0.5) {
                    let bytes = self.rng.below(job.bytes() as u64 + 1) as usize;
                    replica.history.run_torn(&job, bytes);
                }
            }
            replica.core = None;
        }
        self.stats.crashes += 1;
        self.watchers_lost_node(id);
        // Clients waiting on this node see their connection drop.
        let waiting: Vec<usize> = (0..self.clients.len())
            .filter(|&c| {
                self.clients[c]
                    .pending
                    .as_ref()
                    .is_some_and(|p| self.conns.get(&p.conn).is_some_and(|conn| conn.node == id))
            })
            .collect();
        for client in waiting {
            self.give_up(client);
            self.next_op_later(client);
        }
        let lost = self.operator.pending.as_ref().map(|p| p.conn);
        if let Some(conn) = lost.filter(|c| self.conns.get(c).is_some_and(|c| c.node == id)) {
            self.operator_conn_lost(conn);
        }
    }

    /// Whether wiping `victim` stays within what corekv promises to survive: no other node is
    /// rebuilding, every other member replica has a commit index past zero on disk and is not
    /// catching up (a replica that started empty and is still joining withholds its vote just
    /// as a wiped one does: wiping another then leaves a group of three one voter, for good —
    /// seed 9708 did that, a fresh replica cut off at the start still joining when the
    /// leader was wiped), and in each shard the other voters make a majority. (A replica that would restart knowing of no
    /// commit could be elected with the wiped one's vote while the replicas holding the data
    /// are down — the case `ShardCore::step` documents as uncovered.) Replicas of nodes that
    /// are not members of their shard (spares not added yet, removed nodes) do not count.
    pub(crate) fn may_wipe(&self, victim: u64) -> bool {
        let views = self.leader_views();
        if self.opts.spares > 0 && views.iter().any(Option::is_none) {
            // Who the members are is not known for sure without a leader.
            return false;
        }
        // Nor while the members change: losing a disk while a voter is removed is two
        // faults at once, more than three voters survive.
        let changing = self.operator.pending.is_some()
            || self.nodes.iter().flat_map(|n| &n.replicas).any(|r| {
                r.core.as_ref().is_some_and(|c| c.is_leader() && c.raft().raft.has_pending_conf())
            });
        if changing {
            return false;
        }
        // The victim takes no part in elections until it caught up: the other voters must
        // still make a majority (of each half of a joint configuration).
        let majority_left = |voters: &[NodeId]| {
            !voters.contains(&NodeId(victim)) || voters.len() - 1 > voters.len() / 2
        };
        let other_voter = views.iter().all(|v| {
            v.as_ref().map_or(self.opts.nodes > 1, |m| {
                majority_left(&m.voters) && majority_left(&m.voters_outgoing)
            })
        });
        other_voter
            && self.nodes.iter().enumerate().all(|(i, node)| {
                let id = i as u64 + 1;
                id == victim
                    || (!node.wiped
                        && node.replicas.iter().enumerate().all(|(s, r)| {
                            !self.is_member(&views[s], id)
                                || r.core.as_ref().is_some_and(|c| {
                                    c.raft().store().durable_commit() > 0 && !c.catching_up()
                                })
                        }))
            })
    }

    /// Replaces the (crashed) node's disks and snapshot files with empty ones.
    pub(crate) fn wipe(&mut self, id: u64, join: bool) {
        let node = &mut self.nodes[id as usize - 1];
        node.wipes += 1;
        node.wiped = true;
        node.join = join;
        for (shard, replica) in node.replicas.iter_mut().enumerate() {
            replica.disk = MemSegments::new(
                format!("node-{id}/shard-{shard}/wiped-{}", node.wipes),
                SEGMENT_BYTES,
            );
            replica.history = MemSegments::new(
                format!("node-{id}/shard-{shard}/history-wiped-{}", node.wipes),
                SEGMENT_BYTES,
            );
            replica.snapshots.clear();
        }
        self.stats.wipes += 1;
    }

    /// The operator of a node started with `--join` (wiped, or a spare): once each of its
    /// replicas that is a member of its shard (as the shard's leader knows; for a shard with
    /// no leader, as the replica's own membership says) has caught up, the node is whole
    /// again, and later restarts go without `--join` (as the runbook says). A node never
    /// added anywhere keeps `--join`. (Waiting for every shard's leader instead left a spare
    /// promoted in one shard marked as joining while another shard had no leader; it crashed,
    /// came back with `--join`, and withheld the vote its two-voter shard needed, for good:
    /// seed 14794.)
    pub(crate) fn tend_joined(&mut self, id: u64) {
        let node = &self.nodes[id as usize - 1];
        if !node.up || !node.join {
            return;
        }
        let mut member_somewhere = false;
        for shard in 0..self.opts.shards {
            let replica = &node.replicas[shard as usize];
            let member = match self.leader_view(shard) {
                Some((_, m)) => m.contains(NodeId(id)),
                None => match replica.core.as_ref() {
                    Some(core) => core.membership().contains(NodeId(id)),
                    None => return,
                },
            };
            if !member {
                continue;
            }
            member_somewhere = true;
            let caught_up = replica
                .core
                .as_ref()
                .is_some_and(|c| !c.catching_up() && c.membership().contains(NodeId(id)));
            if !caught_up {
                return;
            }
        }
        if member_somewhere || id <= self.opts.nodes {
            let node = &mut self.nodes[id as usize - 1];
            node.wiped = false;
            node.join = false;
        }
    }
}
