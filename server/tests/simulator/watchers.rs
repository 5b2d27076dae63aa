//! The simulated watchers: clients that watch every key, or one, on every shard, from now,
//! and follow the shard's leader as a real client does — watching again from the index after
//! the last one they got when leadership moves, a node crashes or goes silent, and from now
//! (a new run) when told the history moved past them.
//!
//! What every replica's watch history recorded, per index, is the ground truth: replicas
//! that recorded the same index must have recorded the same changes (applying is
//! deterministic), and each watcher's run, on each shard, must be exactly the truth's changes
//! in its scope from where the run started to where it got — nothing missed, nothing
//! repeated, nothing out of order, across every leader it went through.

use super::*;
use corekv_storage::history::HistoryEntry;

/// The `client` of watchers' connections: `WATCHER_BASE + index`.
pub(crate) const WATCHER_BASE: usize = usize::MAX / 2;

/// A watcher that heard nothing (not even progress) for this long watches again elsewhere.
const WATCH_SILENCE_US: u64 = 1_500_000;

/// What a change did to a key, as compared: the key, the value and metadata after (none for
/// a delete), before when the watcher asked for it, and whether it was an expiry.
pub(crate) type SimChange =
    (Vec<u8>, Option<(Vec<u8>, [u64; 3])>, Option<(Option<Vec<u8>>, [u64; 3])>, bool);

/// A watch events frame as compared: its index and changes.
pub(crate) type SimEvent = (u64, Vec<SimChange>);

/// A run of events: where it started, where it got to (the next index), its events.
pub(crate) type Run = (u64, u64, Vec<SimEvent>);

pub(crate) struct Watcher {
    /// The one key it watches, or `None` for every key.
    key: Option<Vec<u8>>,
    prev: bool,
    shards: Vec<WatchShard>,
}

#[derive(Default)]
pub(crate) struct WatchShard {
    conn: Option<ConnId>,
    request: u64,
    /// The node to try next (a leader named by a refusal or an end).
    hint: Option<u64>,
    /// The next index it is to get; `None` until a watch from now said where it starts.
    next: Option<u64>,
    /// Where the current run started.
    run_start: Option<u64>,
    events: Vec<SimEvent>,
    /// Finished runs (a `Compacted` ends one): (start, next, events).
    runs: Vec<Run>,
    last_heard: u64,
    generation: u64,
}

impl Watcher {
    pub(crate) fn new(key: Option<Vec<u8>>, prev: bool, shards: u32) -> Self {
        Watcher { key, prev, shards: (0..shards).map(|_| WatchShard::default()).collect() }
    }
}

fn meta3(meta: corekv_storage::state_machine::KeyMeta) -> [u64; 3] {
    [meta.create_index, meta.mod_index, meta.version]
}

/// What a history entry says, in the simulator's terms.
pub(crate) fn truth_of(entry: &HistoryEntry) -> Vec<SimChange> {
    entry
        .changes()
        .map(|c| {
            let put = c.put.map(|(v, m)| (v.to_vec(), meta3(m)));
            let prev = c.prev.map(|(m, v)| (v.map(<[u8]>::to_vec), meta3(m)));
            (c.key.to_vec(), put, prev, c.expired)
        })
        .collect()
}

impl Sim {
    /// Records what replicas recorded in their watch histories, checking that replicas agree.
    pub(crate) fn note_history(&mut self, node: u64, shard: u32) -> SimResult<()> {
        let Some(core) = self.core(node, shard) else { return Ok(()) };
        let recorded = core.take_history_for_tests();
        for entry in recorded {
            let changes = truth_of(&entry);
            match self.truth.get(&(shard, entry.index)) {
                Some((other, known)) if *known != changes => {
                    return Err(format!(
                        "shard {shard} index {}: nodes {other} and {node} recorded different \
                         changes in their watch histories",
                        entry.index
                    ));
                }
                Some(_) => {}
                None => {
                    self.truth.insert((shard, entry.index), (node, changes));
                }
            }
        }
        Ok(())
    }

    /// Starts every watcher on every shard its scope covers (a key's: one).
    pub(crate) fn start_watchers(&mut self) {
        for w in 0..self.watchers.len() {
            let only =
                self.watchers[w].key.as_ref().map(|k| shard_for_key(k, self.opts.shards).get());
            for shard in 0..self.opts.shards {
                if only.is_some_and(|s| s != shard) {
                    continue;
                }
                let delay = self.rng.range(50_000, 300_000);
                self.schedule(delay, Event::WatcherWake { watcher: w, shard, generation: 0 });
            }
        }
    }

    /// A watcher's timer: connect when not connected; watch again elsewhere when the node it
    /// watches at went silent.
    pub(crate) fn watcher_wake(&mut self, w: usize, shard: u32, generation: u64) {
        let ws = &mut self.watchers[w].shards[shard as usize];
        if ws.generation != generation {
            return;
        }
        if ws.conn.is_some() && self.now.saturating_sub(ws.last_heard) < WATCH_SILENCE_US {
            let wake = ws.last_heard + WATCH_SILENCE_US - self.now;
            self.schedule(wake, Event::WatcherWake { watcher: w, shard, generation });
            return;
        }
        if let Some(conn) = ws.conn.take() {
            self.conns.remove(&conn);
            self.stats.watch_resumes += 1;
        }
        self.watch_connect(w, shard);
    }

    fn watch_connect(&mut self, w: usize, shard: u32) {
        let node = match self.watchers[w].shards[shard as usize].hint.take() {
            Some(node) => node,
            None => self.rng.range(1, self.opts.all_nodes()),
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let incarnation = self.nodes[node as usize - 1].incarnation;
        let client = WATCHER_BASE + w;
        self.conns.insert(conn, Conn { client, node, shard, incarnation, greeted: false });
        let request = self.next_request;
        self.next_request += 1;
        let watcher = &self.watchers[w];
        let (scope, key) = match &watcher.key {
            Some(key) => (corekv_proto::client::WatchScope::Key, key.clone()),
            None => (corekv_proto::client::WatchScope::Prefix, Vec::new()),
        };
        let ws = &watcher.shards[shard as usize];
        let spec = corekv_proto::encode::WatchSpec {
            scope,
            key: &key,
            range_end: b"",
            start_index: ws.next.unwrap_or(0),
            prev_value: watcher.prev,
            progress_ms: 200,
        };
        let frame = self.encoder.watch(request, &spec).to_vec();
        let hello = self.encoder.hello(0, "sim", self.opts.shards).to_vec();
        let ws = &mut self.watchers[w].shards[shard as usize];
        ws.conn = Some(conn);
        ws.request = request;
        ws.last_heard = self.now;
        ws.generation += 1;
        let generation = ws.generation;
        let delay = self.rng.range(20, 500);
        self.schedule(delay, Event::Request { conn, frame: hello });
        self.schedule(delay, Event::Request { conn, frame });
        self.schedule(WATCH_SILENCE_US, Event::WatcherWake { watcher: w, shard, generation });
    }

    /// The watcher's connection is done: watch again soon, at `hint` when one was named.
    fn watch_again(&mut self, w: usize, shard: u32, hint: Option<u64>) {
        let ws = &mut self.watchers[w].shards[shard as usize];
        if let Some(conn) = ws.conn.take() {
            self.conns.remove(&conn);
        }
        ws.hint = hint.filter(|&h| h != 0);
        ws.generation += 1;
        let generation = ws.generation;
        self.stats.watch_resumes += 1;
        let delay = self.rng.range(1_000, 50_000);
        self.schedule(delay, Event::WatcherWake { watcher: w, shard, generation });
    }

    /// A watcher's request found its node down.
    pub(crate) fn watcher_conn_refused(&mut self, w: usize, shard: u32, conn: ConnId) {
        if self.watchers[w].shards[shard as usize].conn == Some(conn) {
            self.watch_again(w, shard, None);
        }
    }

    /// A crashed node's watch connections are gone.
    pub(crate) fn watchers_lost_node(&mut self, node: u64) {
        for w in 0..self.watchers.len() {
            for shard in 0..self.opts.shards {
                let conn = self.watchers[w].shards[shard as usize].conn;
                if conn.is_some_and(|c| self.conns.get(&c).is_some_and(|c| c.node == node)) {
                    self.watch_again(w, shard, None);
                }
            }
        }
    }

    /// A frame on a watcher's connection.
    pub(crate) fn on_watch_reply(&mut self, conn: ConnId, frame: &[u8]) -> SimResult<()> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let (w, shard, node) = (c.client - WATCHER_BASE, c.shard, c.node);
        let ws = &mut self.watchers[w].shards[shard as usize];
        if ws.conn != Some(conn) {
            return Ok(());
        }
        let reply = verify_reply(frame).map_err(|e| format!("bad watch frame: {e}"))?;
        if reply.reply_type() == Reply::HelloReply {
            return Ok(());
        }
        if reply.id() != ws.request {
            return Err(format!(
                "watch frame for request {} on a watch of {}",
                reply.id(),
                ws.request
            ));
        }
        ws.last_heard = self.now;
        match reply.reply_type() {
            Reply::WatchEvents => {
                let events = reply.reply_as_watch_events().expect("typed");
                let index = events.index();
                if ws.next.is_none_or(|next| index < next) {
                    return Err(format!(
                        "watcher {w} shard {shard}: events at {index} from node {node}, expected \
                         from {:?} on (a repeat, a reorder, or no start said)",
                        ws.next
                    ));
                }
                let changes = events.changes().map(|c| c.iter().map(|c| sim_change(&c)).collect());
                ws.events.push((index, changes.unwrap_or_default()));
                ws.next = Some(index + 1);
                self.stats.watch_events += 1;
            }
            Reply::WatchProgress => {
                let index = reply.reply_as_watch_progress().expect("typed").index();
                ws.run_start.get_or_insert(index + 1);
                ws.next = Some(ws.next.unwrap_or(0).max(index + 1));
            }
            Reply::WatchEnded => {
                let end = reply.reply_as_watch_ended().expect("typed");
                // The node may be further on than the last event (entries with nothing in
                // scope), never behind it.
                if ws.next.is_some_and(|next| next > end.next_index()) {
                    return Err(format!(
                        "watcher {w} shard {shard}: node {node} ended the watch saying it resumes \
                         at {}, the watcher got up to {:?}",
                        end.next_index(),
                        ws.next
                    ));
                }
                if ws.next.is_some() {
                    ws.next = Some(end.next_index());
                }
                if end.reason() == corekv_proto::client::WatchEndReason::Compacted {
                    self.stats.watch_compacted += 1;
                    let ws = &mut self.watchers[w].shards[shard as usize];
                    if let (Some(start), Some(next)) = (ws.run_start.take(), ws.next.take()) {
                        let events = std::mem::take(&mut ws.events);
                        ws.runs.push((start, next, events));
                    }
                }
                self.watch_again(w, shard, Some(end.leader_id()));
            }
            Reply::ErrorReply => {
                let error = reply.reply_as_error_reply().expect("typed");
                match error.kind_type() {
                    ErrorKind::NotLeader => {
                        let hint = error.kind_as_not_leader().map_or(0, |h| h.leader_id());
                        self.watch_again(w, shard, Some(hint));
                    }
                    ErrorKind::NotMember | ErrorKind::Unavailable | ErrorKind::Busy => {
                        self.watch_again(w, shard, None)
                    }
                    other => {
                        return Err(format!("node {node} refused a valid watch: {other:?}"));
                    }
                }
            }
            other => return Err(format!("unexpected reply {other:?} on a watch")),
        }
        Ok(())
    }

    /// Every watcher's runs against the truth (see the module docs).
    pub(crate) fn check_watchers(&self) -> SimResult<()> {
        for (w, watcher) in self.watchers.iter().enumerate() {
            for (shard, ws) in watcher.shards.iter().enumerate() {
                let shard = shard as u32;
                let mut runs: Vec<(u64, u64, &[SimEvent])> =
                    ws.runs.iter().map(|(s, n, e)| (*s, *n, e.as_slice())).collect();
                if let (Some(start), Some(next)) = (ws.run_start, ws.next) {
                    runs.push((start, next, &ws.events));
                }
                for (start, next, got) in runs {
                    let want = self.truth_between(shard, start, next, watcher);
                    if want.as_slice() != got {
                        let wanted: Vec<u64> = want.iter().map(|e| e.0).collect();
                        let seen: Vec<u64> = got.iter().map(|e| e.0).collect();
                        return Err(format!(
                            "watcher {w} ({:?}) shard {shard} from {start} to {next}: got changes \
                             at {seen:?}, the histories recorded {wanted:?}",
                            watcher.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned())
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The truth's changes in `watcher`'s scope for the indexes `[start, next)` of `shard`.
    fn truth_between(&self, shard: u32, start: u64, next: u64, watcher: &Watcher) -> Vec<SimEvent> {
        let mut want = Vec::new();
        for index in start..next {
            let Some((_, changes)) = self.truth.get(&(shard, index)) else { continue };
            let scoped: Vec<SimChange> = changes
                .iter()
                .filter(|c| watcher.key.as_ref().is_none_or(|k| *k == c.0))
                .map(|(key, put, prev, expired)| {
                    (key.clone(), put.clone(), prev.clone().filter(|_| watcher.prev), *expired)
                })
                .collect();
            if !scoped.is_empty() {
                want.push((index, scoped));
            }
        }
        want
    }
}

fn sim_change(c: &corekv_proto::client::Change<'_>) -> SimChange {
    let meta = |m: &corekv_proto::client::KeyMeta| [m.create_index(), m.mod_index(), m.version()];
    let put = (c.kind() == corekv_proto::client::ChangeKind::Put).then(|| {
        let value = c.value().map(|v| v.bytes().to_vec()).unwrap_or_default();
        (value, c.meta().map(meta).unwrap_or_default())
    });
    let prev = c.prev_meta().map(|m| (c.prev_value().map(|v| v.bytes().to_vec()), meta(m)));
    (c.key().bytes().to_vec(), put, prev, c.expired())
}
