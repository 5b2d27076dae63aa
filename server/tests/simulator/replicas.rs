//! The simulated nodes' shard replicas: each a real core on a simulated disk, started and
//! driven through the core's driver contract as the runtime drives it.

use super::*;
use crate::checker::digest;
use corekv_types::ids::{NodeId, ShardId};

impl Sim {
    /// Opens every shard of `node` from its disk and snapshots, as the real node does at
    /// start-up (runtime/startup.rs, through `ShardCore::recover`), and starts its ticks.
    pub(crate) fn start_node(&mut self, id: u64) -> SimResult<()> {
        let voters: Vec<u64> = (1..=self.opts.nodes).collect();
        let join = self.nodes[id as usize - 1].join;
        for shard in 0..self.opts.shards {
            let replica = &mut self.nodes[id as usize - 1].replicas[shard as usize];
            let cfg = CoreConfig {
                node_id: NodeId(id),
                shard: ShardId(shard),
                shards: self.opts.shards,
                cluster: "sim".to_string(),
                registry: voters
                    .iter()
                    .copied()
                    .map(|n| Sim::member_addr(n).node(NodeId(n)))
                    .collect(),
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: HEARTBEAT_TICKS,
                tick_ms: TICK_US / 1000,
                snapshots: SnapshotPolicy {
                    entries: self.opts.snapshot_entries,
                    log_bytes: 1 << 30,
                    write_bytes_per_sec: 1 << 30,
                },
                wall_epoch_ms: ttl::wall_epoch_ms(&self.opts, id),
                join,
            };
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let recovery = Recovery {
                segments: Box::new(replica.disk.clone()),
                segment_bytes: SEGMENT_BYTES,
                mode: RecoveryMode::Strict,
                snapshot: replica.snapshots.last().cloned(),
                entry_cache_bytes: Some(self.opts.entry_cache_bytes),
                history: Box::new(replica.history.clone()),
                history_segment_bytes: SEGMENT_BYTES,
                history_retention: self.opts.history_retention,
                history_cache_bytes: Some(self.opts.history_cache_bytes),
            };
            let mut core =
                ShardCore::recover(cfg, recovery, Arc::new(ShardMetrics::default()), &logger)
                    .map_err(|e| format!("node {id} shard {shard}: {e}"))?;
            if let Some(bug) = self.bug {
                core.inject_bug_for_tests(bug);
            }
            core.record_history_for_tests();
            if let Some(bytes) = self.opts.slow_watchers {
                core.set_watch_queue_limit_for_tests(bytes);
            }
            core.start(self.now);
            replica.applied_seen = core.state_machine().applied_index();
            replica.drawn_for = (u64::MAX, StateRole::Follower);
            replica.core = Some(core);
            replica.flushing = None;
            replica.history_flushing = None;
        }
        let node = &mut self.nodes[id as usize - 1];
        node.up = true;
        let incarnation = node.incarnation;
        let first_tick = self.rng.range(0, TICK_US);
        self.schedule(first_tick, Event::Tick { node: id, incarnation });
        for shard in 0..self.opts.shards {
            self.drive(id, shard, 0)?;
        }
        Ok(())
    }

    /// Runs a replica's core after an input: the Ready loop, flushes, snapshots, and its
    /// outputs — messages into the network, replies to the clients, retired segments off disk.
    pub(crate) fn drive(&mut self, node: u64, shard: u32, ticks: u64) -> SimResult<()> {
        let now = self.now;
        let mut out = std::mem::take(&mut self.out);
        let (flush, history_flush, snapshot_job, redraw, applied) = {
            let n = &mut self.nodes[node as usize - 1];
            if !n.up {
                self.out = out;
                return Ok(());
            }
            let replica = &mut n.replicas[shard as usize];
            let Some(core) = replica.core.as_mut() else {
                self.out = out;
                return Ok(());
            };
            let turn = core.turn(now, ticks, &mut out);
            let mut flush = false;
            if replica.flushing.is_none() {
                if let Some(job) = core.take_flush_job() {
                    replica.flushing = Some(job);
                    flush = true;
                }
            }
            let mut history_flush = false;
            if replica.history_flushing.is_none() {
                if let Some(job) = core.take_history_flush_job() {
                    replica.history_flushing = Some(job);
                    history_flush = true;
                }
            }
            for seq in &out.history_retire {
                replica.history.remove(*seq);
            }
            let snapshot_job = turn.snapshot;
            if turn.prune && replica.snapshots.len() > SNAPSHOTS_KEPT {
                let excess = replica.snapshots.len() - SNAPSHOTS_KEPT;
                replica.snapshots.drain(..excess);
            }
            for seq in &out.retire {
                replica.disk.remove(*seq);
            }
            let raft = &core.raft().raft;
            let role = (raft.term, raft.state);
            let redraw = role != replica.drawn_for;
            if redraw {
                replica.drawn_for = role;
            }
            let applied = core.state_machine().applied_index();
            let applied = (applied != replica.applied_seen).then(|| {
                replica.applied_seen = applied;
                (applied, digest(core))
            });
            (flush, history_flush, snapshot_job, redraw, applied)
        };
        if redraw {
            let timeout = self.rng.range(ELECTION_TICKS as u64, 2 * ELECTION_TICKS as u64 - 1);
            let core = self.core(node, shard).expect("driven above");
            core.raft_mut().raft.set_randomized_election_timeout(timeout as usize);
            if core.is_leader() {
                self.stats.leader_changes += 1;
            }
        }
        if let Some((index, digest)) = applied {
            match self.digests.get(&(shard, index)) {
                Some(&(other, expected)) if expected != digest => {
                    return Err(format!(
                        "shard {shard}: nodes {other} and {node} applied index {index} but hold \
                         different state"
                    ));
                }
                Some(_) => {}
                None => {
                    self.digests.insert((shard, index), (node, digest));
                }
            }
        }
        if flush {
            let latency = self.rng.range(self.opts.disk_us.0, self.opts.disk_us.1);
            let incarnation = self.nodes[node as usize - 1].incarnation;
            self.schedule(latency, Event::FlushDone { node, shard, incarnation });
        }
        let incarnation = self.nodes[node as usize - 1].incarnation;
        if history_flush {
            let latency = self.rng.range(self.opts.disk_us.0, self.opts.disk_us.1);
            self.schedule(latency, Event::HistoryFlushDone { node, shard, incarnation });
        }
        for job in std::mem::take(&mut out.history_reads) {
            let latency = self.rng.range(self.opts.disk_us.0, self.opts.disk_us.1);
            self.stats.history_reads += 1;
            self.schedule(latency, Event::HistoryRead { node, shard, incarnation, job });
        }
        for conn in std::mem::take(&mut out.drain_notify) {
            let watcher = self
                .conns
                .get(&conn)
                .is_some_and(|c| c.client >= watchers::WATCHER_BASE && c.client != OPERATOR);
            let delay = match self.opts.slow_watchers {
                Some(_) if watcher => self.rng.range(1_000, 200_000),
                _ => 10,
            };
            self.schedule(delay, Event::Drained { node, shard, incarnation, conn });
        }
        if let Some(job) = snapshot_job {
            let archive = Archive::build(
                job.meta,
                &job.membership,
                job.frozen.base.as_deref(),
                &job.frozen.overlay,
                job.frozen.clock_ms,
                &job.frozen.leases,
            )
            .map(Arc::new)
            .map_err(|e| e.to_string());
            let latency = self.rng.range(self.opts.disk_us.0, self.opts.disk_us.1 * 4);
            let incarnation = self.nodes[node as usize - 1].incarnation;
            self.schedule(latency, Event::SnapshotDone { node, shard, incarnation, archive });
        }
        for fetch in std::mem::take(&mut out.cold_fetches) {
            let replica = &self.nodes[node as usize - 1].replicas[shard as usize];
            let data: ColdData = fetch
                .reads()
                .iter()
                .map(|r| replica.disk.read_at(r.seq, r.offset, r.len))
                .collect();
            let latency = self.rng.range(self.opts.disk_us.0, self.opts.disk_us.1);
            let incarnation = self.nodes[node as usize - 1].incarnation;
            let fetch = Box::new(fetch);
            self.stats.cold_fetches += 1;
            self.schedule(latency, Event::ColdFetched { node, shard, incarnation, fetch, data });
        }
        for message in out.messages.drain(..) {
            self.send(node, shard, message);
        }
        for (conn, range) in std::mem::take(&mut out.replies) {
            let frame = out.reply_bytes[range].to_vec();
            self.note_acknowledgement(node, shard, &frame)?;
            // A connection is a stream: a reply never overtakes an earlier one.
            let at = (self.now + self.rng.range(20, 500))
                .max(self.conn_delivery.get(&conn).map_or(0, |t| t + 1));
            self.conn_delivery.insert(conn, at);
            self.schedule(at - self.now, Event::Reply { conn, frame });
        }
        self.note_history(node, shard)?;
        out.clear();
        self.out = out;
        Ok(())
    }
}

pub(crate) fn insert_snapshot(snapshots: &mut Vec<Arc<Archive>>, archive: Arc<Archive>) {
    let key = |a: &Arc<Archive>| (a.meta().index, a.meta().term);
    if snapshots.iter().any(|a| key(a) == key(&archive)) {
        return;
    }
    snapshots.push(archive);
    snapshots.sort_by_key(key);
}
