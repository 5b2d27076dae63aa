//! The event loop: the seeded schedule of events, and what each event does.

use super::*;
use crate::replicas::insert_snapshot;

impl Sim {
    /// The run of `seed`; `members: false` leaves membership changes out (no spares, no
    /// operator).
    pub(crate) fn new(seed: u64, bug: Option<InjectedBug>, members: bool) -> Sim {
        let (mut opts, mut rng, wipe_rng, member_rng) = Options::for_seed(seed);
        if !members {
            opts.spares = 0;
            opts.operator_us = 0;
        }
        let mut keys = Vec::new();
        for shard in 0..opts.shards {
            let mut found = 0;
            for i in 0.. {
                let key = format!("key-{i}").into_bytes();
                if shard_for_key(&key, opts.shards).get() == shard {
                    keys.push(key);
                    found += 1;
                    if found == opts.keys_per_shard {
                        break;
                    }
                }
            }
        }
        let nodes = (1..=opts.all_nodes())
            .map(|id| {
                let skew = rng.range(0, opts.tick_skew_pct * 2) as i64 - opts.tick_skew_pct as i64;
                Node {
                    up: false,
                    incarnation: 0,
                    tick_us: (TICK_US as i64 * (100 + skew) / 100) as u64,
                    replicas: (0..opts.shards)
                        .map(|shard| Replica {
                            disk: MemSegments::new(
                                format!("node-{id}/shard-{shard}"),
                                SEGMENT_BYTES,
                            ),
                            history: MemSegments::new(
                                format!("node-{id}/shard-{shard}/history"),
                                SEGMENT_BYTES,
                            ),
                            snapshots: Vec::new(),
                            core: None,
                            flushing: None,
                            history_flushing: None,
                            drawn_for: (0, StateRole::Follower),
                            applied_seen: 0,
                        })
                        .collect(),
                    wiped: false,
                    // Spares start empty, waiting to be added.
                    join: id > opts.nodes,
                    wipes: 0,
                }
            })
            .collect();
        let clients = (0..opts.clients)
            .map(|i| Client {
                thread: i as u64,
                conns: HashMap::new(),
                leaders: HashMap::new(),
                pending: None,
                generation: 0,
                written: 0,
            })
            .collect();
        let values = vec![Vec::new(); keys.len()];
        let watchers = opts
            .watchers
            .iter()
            .map(|&(key, prev)| {
                watchers::Watcher::new(key.map(|k| keys[k].clone()), prev, opts.shards)
            })
            .collect();
        Sim {
            next_thread: opts.clients as u64,
            opts,
            rng,
            wipe_rng,
            member_rng,
            operator: Operator::default(),
            trace: std::env::var("SIM_TRACE").is_ok_and(|v| v == "1"),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            cut: BTreeSet::new(),
            faults: true,
            clients_active: true,
            clients,
            conns: HashMap::new(),
            next_conn: 1,
            next_request: 1,
            keys,
            values,
            history: History::new(),
            digests: HashMap::new(),
            acked: BTreeMap::new(),
            healed_at: None,
            served_after_heal: BTreeSet::new(),
            bug,
            out: Outputs::default(),
            encoder: RequestEncoder::new(),
            stats: Stats::default(),
            watchers,
            truth: HashMap::new(),
            conn_delivery: HashMap::new(),
            ttl: ttl::TtlLog::default(),
            leases: leases::LeaseLog::default(),
        }
    }

    /// Prints `what` happened now, when tracing.
    pub(crate) fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>10}us {}", self.now, what());
        }
    }

    pub(crate) fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + delay, seq: self.seq, event }));
    }

    /// Runs the whole scenario and every check.
    pub(crate) fn run(&mut self) -> SimResult<Stats> {
        for id in 1..=self.opts.all_nodes() {
            self.start_node(id)?;
        }
        for client in 0..self.clients.len() {
            let delay = self.rng.range(100_000, 300_000);
            self.schedule(delay, Event::ClientWake { client, generation: 0 });
        }
        let first = self.rng.range(0, self.opts.nemesis_us * 2);
        self.schedule(first, Event::Nemesis);
        if self.opts.spares > 0 {
            let first = self.member_rng.range(0, self.opts.operator_us * 2);
            self.schedule(first, Event::Operator);
        }
        self.schedule(self.opts.fault_us, Event::EndFaults);
        self.start_watchers();
        let mut converge_deadline = None;
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.at;
            self.handle(next.event)?;
            if let Some(healed) = self.healed_at {
                if self.clients_active {
                    if self.served_after_heal.len() == self.opts.shards as usize {
                        self.clients_active = false;
                    } else if self.now > healed + LIVENESS_US {
                        let missing: Vec<u32> = (0..self.opts.shards)
                            .filter(|s| !self.served_after_heal.contains(s))
                            .collect();
                        return Err(format!(
                            "liveness: shards {missing:?} served no write within {} ms after the \
                             faults stopped ({})",
                            LIVENESS_US / 1000,
                            self.describe_roles()
                        ));
                    }
                } else if self.clients.iter().all(|c| c.pending.is_none()) {
                    let deadline = *converge_deadline.get_or_insert(self.now + CONVERGE_US);
                    if self.converged() {
                        break;
                    }
                    if self.now > deadline {
                        return Err(format!(
                            "replicas did not converge within {} ms after the clients stopped ({})",
                            CONVERGE_US / 1000,
                            self.describe_roles()
                        ));
                    }
                }
            }
        }
        self.check_acknowledged()?;
        self.check_watchers()?;
        self.check_ttl()?;
        self.check_leases()?;
        let checked = self.history.check()?;
        self.stats.operations = checked.operations as u64;
        self.stats.computed = checked.computed as u64;
        self.stats.open = checked.open as u64;
        Ok(self.stats)
    }

    pub(crate) fn handle(&mut self, event: Event) -> SimResult<()> {
        match event {
            Event::Tick { node, incarnation } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                for shard in 0..self.opts.shards {
                    self.drive(node, shard, 1)?;
                }
                let period = self.nodes[node as usize - 1].tick_us;
                self.schedule(period, Event::Tick { node, incarnation });
                self.tend_joined(node);
            }
            Event::Deliver { from, to, shard, message, archive } => {
                self.deliver(from, to, shard, *message, archive)?;
            }
            Event::SnapshotReport { node, shard, incarnation, peer, delivered } => {
                if self.alive(node, incarnation) {
                    let now = self.now;
                    if let Some(core) = self.core(node, shard) {
                        core.set_now(now);
                        core.report_snapshot(peer, delivered);
                    }
                    self.drive(node, shard, 0)?;
                }
            }
            Event::FlushDone { node, shard, incarnation } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                let replica = &mut self.nodes[node as usize - 1].replicas[shard as usize];
                let job = replica.flushing.take().expect("a flush was in flight");
                replica.disk.run(&job);
                if let Some(core) = replica.core.as_mut() {
                    core.set_now(now);
                    core.on_flush_complete(job);
                }
                self.drive(node, shard, 0)?;
            }
            Event::HistoryFlushDone { node, shard, incarnation } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                let replica = &mut self.nodes[node as usize - 1].replicas[shard as usize];
                let job = replica.history_flushing.take().expect("a history flush was in flight");
                replica.history.run(&job);
                if let Some(core) = replica.core.as_mut() {
                    core.set_now(now);
                    core.on_history_flush_complete(job);
                }
                self.drive(node, shard, 0)?;
            }
            Event::HistoryRead { node, shard, incarnation, job } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                let replica = &mut self.nodes[node as usize - 1].replicas[shard as usize];
                let data = replica.history.read_at(job.read.seq, job.read.offset, job.read.len);
                if let Some(core) = replica.core.as_mut() {
                    core.set_now(now);
                    core.on_history_read(job, data);
                }
                self.drive(node, shard, 0)?;
            }
            Event::Drained { node, shard, incarnation, conn } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                if let Some(core) = self.core(node, shard) {
                    core.set_now(now);
                    core.on_client_drained(conn);
                }
                self.drive(node, shard, 0)?;
            }
            Event::ColdFetched { node, shard, incarnation, fetch, data } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                if let Some(core) = self.core(node, shard) {
                    core.set_now(now);
                    core.on_cold_fetched(*fetch, data);
                }
                self.drive(node, shard, 0)?;
            }
            Event::SnapshotDone { node, shard, incarnation, archive } => {
                if !self.alive(node, incarnation) {
                    return Ok(());
                }
                let now = self.now;
                let replica = &mut self.nodes[node as usize - 1].replicas[shard as usize];
                let core = replica.core.as_mut().expect("a live replica has a core");
                core.set_now(now);
                match archive {
                    Ok(archive) => {
                        insert_snapshot(&mut replica.snapshots, archive.clone());
                        core.on_snapshot_written(archive);
                    }
                    Err(error) => core.on_snapshot_failed(&error),
                }
                self.drive(node, shard, 0)?;
            }
            Event::Request { conn, frame } => self.on_request(conn, &frame)?,
            Event::Reply { conn, frame } => self.on_reply(conn, &frame)?,
            Event::ClientWake { client, generation } => {
                if self.clients[client].generation != generation {
                    return Ok(());
                }
                if self.clients[client].pending.is_some() {
                    self.give_up(client);
                    self.next_op_later(client);
                } else if self.clients_active {
                    self.issue(client);
                }
            }
            Event::Nemesis => {
                if self.faults {
                    self.nemesis()?;
                    let delay =
                        self.rng.range(self.opts.nemesis_us / 2, self.opts.nemesis_us * 3 / 2);
                    self.schedule(delay, Event::Nemesis);
                }
            }
            Event::Operator => self.operator_turn(),
            Event::WatcherWake { watcher, shard, generation } => {
                self.watcher_wake(watcher, shard, generation)
            }
            Event::Restart { node } => {
                if !self.nodes[node as usize - 1].up {
                    self.trace(|| {
                        format!("restart n{node} (join: {})", self.nodes[node as usize - 1].join)
                    });
                    self.start_node(node)?;
                }
            }
            Event::EndFaults => {
                self.faults = false;
                self.cut.clear();
                for id in 1..=self.opts.all_nodes() {
                    if !self.nodes[id as usize - 1].up {
                        self.start_node(id)?;
                    }
                }
                self.healed_at = Some(self.now);
            }
        }
        Ok(())
    }

    pub(crate) fn alive(&self, node: u64, incarnation: u64) -> bool {
        let n = &self.nodes[node as usize - 1];
        n.up && n.incarnation == incarnation
    }

    pub(crate) fn core(&mut self, node: u64, shard: u32) -> Option<&mut ShardCore> {
        let n = &mut self.nodes[node as usize - 1];
        if !n.up {
            return None;
        }
        n.replicas[shard as usize].core.as_mut()
    }
}
