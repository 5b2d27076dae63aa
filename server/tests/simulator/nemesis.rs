//! The nemesis: crashes (tearing the last write), wipes, partitions, heals.

use super::*;

impl Sim {
    pub(crate) fn nemesis(&mut self) -> SimResult<()> {
        let n = self.opts.nodes;
        let mut choices = vec![0u8];
        if self.opts.crashes {
            choices.extend([1, 1]);
        }
        if self.opts.partitions {
            choices.extend([2, 2, 3]);
        }
        match self.rng.pick(&choices) {
            0 => self.cut.clear(),
            1 => {
                let up: Vec<u64> = (1..=n).filter(|&id| self.nodes[id as usize - 1].up).collect();
                if !up.is_empty() {
                    let victim = self.rng.pick(&up);
                    self.crash(victim);
                    if self.opts.wipes && self.may_wipe(victim) && self.wipe_rng.chance(0.5) {
                        let join = self.wipe_rng.chance(0.5);
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
            replica.core = None;
        }
        self.stats.crashes += 1;
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
    }

    /// Whether wiping `victim` stays within what corekv promises to survive: no other node is
    /// rebuilding, and every other replica has a commit index past zero on disk. (A replica
    /// that would restart knowing of no commit could be elected with the wiped one's vote
    /// while the replicas holding the data are down — the case `ShardCore::step` documents as
    /// uncovered.)
    pub(crate) fn may_wipe(&self, victim: u64) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| {
            i as u64 + 1 == victim
                || (!node.wiped
                    && node.replicas.iter().all(|r| {
                        r.core.as_ref().is_some_and(|c| c.raft().store().durable_commit() > 0)
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
            replica.snapshots.clear();
        }
        self.stats.wipes += 1;
    }

    /// The operator of a wiped node: once every replica has caught up, the node is whole
    /// again (later crashes restart it without `--join`).
    pub(crate) fn tend_wiped(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if node.up
            && node.wiped
            && node.replicas.iter().all(|r| r.core.as_ref().is_some_and(|c| !c.catching_up()))
        {
            node.wiped = false;
            node.join = false;
        }
    }
}
