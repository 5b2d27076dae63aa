//! One shard on its own glommio executor: the shell around [`ShardCore`].
//!
//! Tasks on the executor, all sharing one `Shard` (`Rc`, never locked — one thread):
//!
//! ```text
//!   client conns ──on_client_frame──►┐                       ┌──► peer senders (one per peer)
//!   peer inbound ──step─────────────►├─► core ──► driver ────┤
//!   tick task ──pending_ticks───────►┘     ▲     (process,   └──► client conns (replies)
//!                                          │      dispatch)
//!   flush task ◄──take_flush_job───────────┘
//!        └── DMA write + fdatasync ──► on_flush_complete ──► driver
//! ```
//!
//! The calls into the core follow its driver contract (`core/driver.rs`): start-up recovers
//! through `ShardCore::recover`; inputs go straight into the core and wake the driver, which
//! runs one `turn` for everything that arrived meanwhile (so a burst of requests becomes one
//! raft entry) and sends the outputs. The flush task runs one WAL flush at a time; while it waits on the disk, new
//! writes accumulate for the next one (group commit). No borrow of the core is ever held across
//! an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk::{self, DmaFlusher};
use anyhow::Context;
use corekv_proto::encode::PeerEncoder;
use corekv_storage::raft_log::{ColdFetch, ColdRead};
use corekv_storage::snapshot::{self, Archive};
use corekv_storage::wal::{RecoveryMode, SegmentDir, SegmentIdentity, SegmentSource};
use corekv_types::registry::Registry;
use glommio::net::TcpListener;
use raft::eraftpb::Message;

use super::background;
use super::client::{accept_clients, ClientConn};
use super::notify::Notify;
use super::peer::{accept_peers, peer_sender, start_snapshot_send, PeerLink};
use crate::constants::{FRAME_SPLIT_BYTES, SHUTDOWN_DRAIN_MS, SNAPSHOT_FILES_KEPT};
use crate::core::{
    ConnId, CoreConfig, Outputs, Recovery, RecoveryError, ShardCore, SnapshotJob, SnapshotPolicy,
};
use crate::http::{Published, StatusSlot};
use crate::metrics::ShardMetrics;

/// Raft timing, overridable for tests (`COREKV_TICK_MS`, see [`crate::runtime::Timing`]).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Tick period.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
}

/// What a shard's executor thread is started with (everything here is `Send`).
pub struct ShardContext {
    /// When to take snapshots.
    pub snapshots: SnapshotPolicy,
    /// Size of new WAL segment files.
    pub wal_segment_bytes: u64,
    /// Catch up from the cluster before voting.
    pub join: bool,
    /// The cluster.
    pub registry: Arc<Registry>,
    /// This node.
    pub node_id: u64,
    /// This shard.
    pub shard: u32,
    /// `DATA_DIR/shard-S`.
    pub shard_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// Counters the HTTP endpoint reads.
    pub metrics: Arc<ShardMetrics>,
    /// Status the HTTP endpoint reads, refreshed every tick.
    pub status: StatusSlot,
    /// Set by the signal handler: shut down cleanly.
    pub shutdown: Arc<AtomicBool>,
    /// Told once the shard serves (or why it could not start).
    pub started: std::sync::mpsc::Sender<(u32, Result<(), String>)>,
}

/// State shared by a shard's tasks.
pub(crate) struct Shard {
    pub(crate) core: RefCell<ShardCore>,
    /// Wakes the driver.
    pub(crate) wake: Notify,
    /// Wakes the flush task.
    pub(crate) flush_wake: Notify,
    pub(crate) conns: RefCell<HashMap<ConnId, Rc<ClientConn>>>,
    pub(crate) peers: HashMap<u64, Rc<PeerLink>>,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) node_id: u64,
    pub(crate) shard: u32,
    /// `DATA_DIR/shard-S/snap`.
    pub(crate) snap_dir: PathBuf,
    /// The WAL's segment files, for reading old entries back off the executor.
    segments: SegmentDir,
    pending_ticks: Cell<u64>,
    retire: RefCell<Vec<u64>>,
    clock: Instant,
    /// Set once shutdown has answered everything: tasks exit.
    pub(crate) stopping: Cell<bool>,
    next_conn: Cell<ConnId>,
}

impl Shard {
    pub(crate) fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }
}

/// Opens the shard's storage, binds its ports, and serves until shutdown.
pub async fn run(ctx: ShardContext) {
    let shard_index = ctx.shard;
    let started = ctx.started.clone();
    match start(ctx).await {
        Ok((shard, listeners)) => {
            let _ = started.send((shard_index, Ok(())));
            serve(shard, listeners).await;
        }
        Err(error) => {
            let _ = started.send((shard_index, Err(format!("{error:#}"))));
        }
    }
}

struct Listeners {
    client: TcpListener,
    peer: TcpListener,
    shutdown: Arc<AtomicBool>,
    status: StatusSlot,
    flusher: DmaFlusher,
    timing: Timing,
}

async fn start(ctx: ShardContext) -> anyhow::Result<(Rc<Shard>, Listeners)> {
    let registry = ctx.registry.clone();
    let node = registry.node(ctx.node_id).context("node id not in the registry")?.clone();
    let identity = SegmentIdentity { cluster: registry.cluster.clone(), shard: ctx.shard };
    let wal_dir = ctx.shard_dir.join("wal");
    let segments = SegmentDir::open(&wal_dir, identity.clone(), ctx.wal_segment_bytes)
        .with_context(|| format!("shard {}: opening {}", ctx.shard, wal_dir.display()))?;
    let snap_dir = ctx.shard_dir.join("snap");
    let snapshot = load_newest_snapshot(&snap_dir, &registry.cluster, ctx.shard).await?;
    let cfg = CoreConfig {
        node_id: ctx.node_id,
        shard: ctx.shard,
        shards: registry.shards,
        cluster: registry.cluster.clone(),
        nodes: registry.nodes.iter().map(|n| (n.id, n.client_addr(ctx.shard))).collect(),
        preferred_leader: registry.preferred_leader(ctx.shard),
        election_ticks: ctx.timing.election_ticks,
        heartbeat_ticks: ctx.timing.heartbeat_ticks,
        tick_ms: ctx.timing.tick_ms,
        snapshots: ctx.snapshots,
        join: ctx.join,
    };
    let logger = crate::logging::raft_logger(ctx.node_id, ctx.shard);
    let recovery = Recovery {
        segments: Box::new(segments.clone()),
        segment_bytes: ctx.wal_segment_bytes,
        mode: RecoveryMode::Strict,
        snapshot: snapshot.map(Arc::new),
        entry_cache_bytes: None,
    };
    let core = ShardCore::recover(cfg, recovery, ctx.metrics.clone(), &logger).map_err(|e| {
        let hint = match e {
            RecoveryError::NoSnapshotReaches { .. } => {
                format!(" — remove {} to have it rebuilt from the cluster", ctx.shard_dir.display())
            }
            _ => String::new(),
        };
        anyhow::anyhow!("shard {}: {e}{hint}", ctx.shard)
    })?;
    let flusher = DmaFlusher::new(segments.clone());
    flusher
        .ensure_spares_before_serving()
        .await
        .with_context(|| format!("shard {}: preparing a WAL segment", ctx.shard))?;
    let client_addr = format!("{}:{}", node.host, node.client_port as u32 + ctx.shard);
    let peer_addr = format!("{}:{}", node.host, node.peer_port as u32 + ctx.shard);
    let client = listen(&client_addr).map_err(|e| {
        anyhow::anyhow!("shard {}: cannot listen for clients on {client_addr}: {e}", ctx.shard)
    })?;
    let peer = listen(&peer_addr).map_err(|e| {
        anyhow::anyhow!("shard {}: cannot listen for peers on {peer_addr}: {e}", ctx.shard)
    })?;
    let peers = registry
        .nodes
        .iter()
        .filter(|n| n.id != ctx.node_id)
        .map(|n| (n.id, Rc::new(PeerLink::new(n.id, n.peer_addr(ctx.shard)))))
        .collect();
    let shard = Rc::new(Shard {
        core: RefCell::new(core),
        wake: Notify::default(),
        flush_wake: Notify::default(),
        conns: RefCell::default(),
        peers,
        metrics: ctx.metrics,
        registry,
        node_id: ctx.node_id,
        shard: ctx.shard,
        snap_dir,
        segments,
        pending_ticks: Cell::new(0),
        retire: RefCell::default(),
        clock: Instant::now(),
        stopping: Cell::new(false),
        next_conn: Cell::new(1),
    });
    let listeners = Listeners {
        client,
        peer,
        shutdown: ctx.shutdown,
        status: ctx.status,
        flusher,
        timing: ctx.timing,
    };
    Ok((shard, listeners))
}

/// Binds a listening socket with `SO_REUSEADDR` (as std does), so a restarted node can bind
/// its ports while connections of its previous life linger in TIME_WAIT. glommio's own `bind`
/// uses `SO_REUSEPORT` instead, which would also let a second process bind the same port and
/// silently take half of its connections.
fn listen(addr: &str) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    // SAFETY: the descriptor comes from a listener we own and give up here.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

async fn serve(shard: Rc<Shard>, listeners: Listeners) {
    let Listeners { client, peer, shutdown, status, flusher, timing } = listeners;
    glommio::spawn_local(accept_clients(shard.clone(), client)).detach();
    glommio::spawn_local(accept_peers(shard.clone(), peer)).detach();
    for link in shard.peers.values() {
        glommio::spawn_local(peer_sender(shard.clone(), link.clone())).detach();
    }
    let flush_task = glommio::spawn_local(flush_loop(shard.clone(), flusher));
    glommio::spawn_local(tick_loop(shard.clone(), timing.tick_ms)).detach();
    shard.core.borrow_mut().start(shard.now_us());
    shard.wake.notify();
    drive(&shard, &shutdown, &status).await;
    shut_down(&shard).await;
    shard.stopping.set(true);
    shard.flush_wake.notify();
    for link in shard.peers.values() {
        link.wake();
    }
    flush_task.await;
    *status.lock().unwrap_or_else(|p| p.into_inner()) = None;
    tracing::info!(shard = shard.shard, "shard stopped");
}

/// The driver: runs the core's loop whenever something happened, until shutdown is asked for.
async fn drive(shard: &Rc<Shard>, shutdown: &AtomicBool, status: &StatusSlot) {
    let mut out = Outputs::default();
    let mut encoder = PeerEncoder::new();
    loop {
        shard.wake.wait().await;
        let ticks = shard.pending_ticks.replace(0);
        let turn = {
            let mut core = shard.core.borrow_mut();
            let turn = core.turn(shard.now_us(), ticks, &mut out);
            if ticks > 0 {
                let current = core.status();
                shard.metrics.set_raft_position(&current);
                *status.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Published { at: Instant::now(), status: current });
            }
            turn
        };
        dispatch(shard, &mut out, &mut encoder);
        if let Some(job) = turn.snapshot {
            glommio::spawn_local(make_snapshot(shard.clone(), job)).detach();
        }
        if turn.prune {
            let dir = shard.snap_dir.clone();
            let shard_index = shard.shard;
            let pruned = background::run("snapshot-prune".to_string(), move || {
                if let Err(error) = snapshot::prune(&dir, SNAPSHOT_FILES_KEPT) {
                    tracing::warn!(shard = shard_index, %error, "removing old snapshot files failed");
                }
            });
            if let Err(error) = pruned {
                tracing::warn!(shard = shard_index, %error, "removing old snapshot files failed");
            }
        }
        if ticks > 0 && shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// The newest snapshot file that validates, trying older ones when a file is damaged (each
/// refusal is logged with the file and the reason).
async fn load_newest_snapshot(
    dir: &std::path::Path,
    cluster: &str,
    shard: u32,
) -> anyhow::Result<Option<Archive>> {
    let files =
        snapshot::list(dir).with_context(|| format!("listing snapshots in {}", dir.display()))?;
    for (_, _, path) in files {
        let (file, cluster_name) = (path.clone(), cluster.to_string());
        let loaded = glommio::executor()
            .spawn_blocking(move || Archive::load(&file, &cluster_name, shard))
            .await;
        match loaded {
            Ok(archive) => return Ok(Some(archive)),
            Err(error) => {
                tracing::error!(shard, %error, "snapshot refused; trying an older one");
            }
        }
    }
    Ok(None)
}

/// Builds the snapshot of a frozen state off the executor, writes it with direct I/O, and
/// reports the outcome to the core.
async fn make_snapshot(shard: Rc<Shard>, job: SnapshotJob) {
    let began = Instant::now();
    let dir = shard.snap_dir.clone();
    let write_bytes_per_sec = shard.core.borrow().config().snapshots.write_bytes_per_sec;
    let result: anyhow::Result<Arc<Archive>> = async {
        let SnapshotJob { frozen, meta, voters } = job;
        // Merging and serializing touch every key: off the executor, at the lowest priority.
        let built = background::run(format!("snapshot-{}", meta.shard), move || {
            Archive::build(meta, voters, frozen.base.as_deref(), &frozen.overlay)
        })?;
        let archive = built.await.context("the snapshot thread died")??;
        let archive = Arc::new(archive);
        disk::write_snapshot_file(&dir, &archive, write_bytes_per_sec).await?;
        Ok(archive)
    }
    .await;
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    match result {
        Ok(archive) => {
            shard.metrics.snapshot_duration_us.record(began.elapsed().as_micros() as u64);
            tracing::info!(
                shard = shard.shard,
                index = archive.meta().index,
                keys = archive.len(),
                bytes = archive.file_bytes().len(),
                elapsed_ms = began.elapsed().as_millis() as u64,
                "snapshot written"
            );
            core.on_snapshot_written(archive);
        }
        Err(error) => core.on_snapshot_failed(&format!("{error:#}")),
    }
    drop(core);
    shard.wake.notify();
}

/// Shutdown: no new requests; writes in flight get up to [`SHUTDOWN_DRAIN_MS`] to apply;
/// what is left is answered; the WAL is flushed; replies get a moment to go out.
async fn shut_down(shard: &Rc<Shard>) {
    tracing::info!(shard = shard.shard, "shutting down");
    let mut out = Outputs::default();
    let mut encoder = PeerEncoder::new();
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
    loop {
        let give_up = Instant::now() >= deadline;
        let drained = shard.core.borrow_mut().shutdown_turn(shard.now_us(), give_up, &mut out);
        dispatch(shard, &mut out, &mut encoder);
        if drained {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Let the flush task write what is buffered, and the connections what they were given.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let flushing = shard.core.borrow().flush_pending();
        let writing = shard.conns.borrow().values().any(|c| c.has_output());
        if !flushing && !writing {
            break;
        }
        shard.flush_wake.notify();
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends the core's outputs: raft messages to peer queues (one frame per peer per call),
/// replies to their connections, retired segments to the flush task.
pub(crate) fn dispatch(shard: &Rc<Shard>, out: &mut Outputs, encoder: &mut PeerEncoder) {
    if !out.messages.is_empty() {
        // Stable: keeps each peer's messages in order.
        out.messages.sort_by_key(|m| m.to);
        let mut start = 0;
        while start < out.messages.len() {
            let to = out.messages[start].to;
            let end = start + out.messages[start..].iter().take_while(|m| m.to == to).count();
            send_to_peer(shard, to, &out.messages[start..end], encoder);
            start = end;
        }
    }
    if !out.replies.is_empty() {
        let conns = shard.conns.borrow();
        for (conn, range) in out.replies.drain(..) {
            if let Some(c) = conns.get(&conn) {
                c.push_reply(&out.reply_bytes[range]);
            }
        }
        for conn in out.close.drain(..) {
            if let Some(c) = conns.get(&conn) {
                c.close_after_output();
            }
        }
    }
    if !out.retire.is_empty() {
        shard.retire.borrow_mut().append(&mut out.retire);
    }
    if !out.garbage.is_empty() {
        background::free_replaced(std::mem::take(&mut out.garbage));
    }
    for fetch in out.cold_fetches.drain(..) {
        glommio::spawn_local(read_cold_records(shard.clone(), fetch)).detach();
    }
    shard.flush_wake.notify();
}

/// Reads the WAL records a lagging follower needs on glommio's blocking pool (plain `pread`s:
/// the records are whole and checksummed, and the shard's executor goes on serving), then
/// hands them to the core, which sends them.
async fn read_cold_records(shard: Rc<Shard>, fetch: ColdFetch) {
    let reads: Vec<ColdRead> = fetch.reads().to_vec();
    let segments = shard.segments.clone();
    let data = glommio::executor()
        .spawn_blocking(move || {
            reads.iter().map(|r| segments.read_at(r.seq, r.offset, r.len)).collect::<Vec<_>>()
        })
        .await;
    shard.metrics.cold_records_read.fetch_add(data.len() as u64, Ordering::Relaxed);
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    core.on_cold_fetched(fetch, data);
    drop(core);
    shard.wake.notify();
}

fn send_to_peer(shard: &Rc<Shard>, to: u64, messages: &[Message], encoder: &mut PeerEncoder) {
    let Some(link) = shard.peers.get(&to) else {
        tracing::warn!(shard = shard.shard, to, "raft message for an unknown node dropped");
        return;
    };
    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(messages.len());
    let mut bytes = 0;
    for message in messages {
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            // Sent with its file, by a transfer task.
            start_snapshot_send(shard, link, message.clone());
            continue;
        }
        let data = protobuf::Message::write_to_bytes(message).expect("raft messages always encode");
        // Keep frames well under the frame limit: a big batch of appends becomes several.
        if bytes + data.len() > FRAME_SPLIT_BYTES && !encoded.is_empty() {
            link.send(
                encoder.raft_batch(encoded.iter().map(Vec::as_slice)),
                encoded.len(),
                &shard.metrics,
            );
            encoded.clear();
            bytes = 0;
        }
        bytes += data.len();
        encoded.push(data);
    }
    if !encoded.is_empty() {
        link.send(
            encoder.raft_batch(encoded.iter().map(Vec::as_slice)),
            encoded.len(),
            &shard.metrics,
        );
    }
}

/// Counts ticks for the driver.
async fn tick_loop(shard: Rc<Shard>, tick_ms: u64) {
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        shard.pending_ticks.set(shard.pending_ticks.get() + 1);
        shard.wake.notify();
    }
}

/// Runs WAL flush jobs one at a time, retires segments between them, keeps spares ready.
async fn flush_loop(shard: Rc<Shard>, mut flusher: DmaFlusher) {
    loop {
        let retire = std::mem::take(&mut *shard.retire.borrow_mut());
        for seq in retire {
            if let Err(error) = flusher.retire(seq).await {
                tracing::warn!(shard = shard.shard, seq, %error, "retiring a WAL segment failed");
            }
        }
        let job = shard.core.borrow_mut().take_flush_job();
        let Some(job) = job else {
            if shard.stopping.get() {
                break;
            }
            shard.flush_wake.wait().await;
            continue;
        };
        let began = Instant::now();
        let bytes = job.bytes() as u64;
        let rolled_over = job.writes.iter().any(|w| w.activate);
        let result = flusher.run(&job).await;
        let metrics = &shard.metrics;
        match result {
            Ok(()) => {
                metrics.wal_flush_latency_us.record(began.elapsed().as_micros() as u64);
                metrics.wal_flushes.fetch_add(1, Ordering::Relaxed);
                metrics.wal_bytes_written.fetch_add(bytes, Ordering::Relaxed);
                let mut core = shard.core.borrow_mut();
                core.set_now(shard.now_us());
                core.on_flush_complete(job);
            }
            Err(error) => {
                metrics.wal_flush_errors.fetch_add(1, Ordering::Relaxed);
                shard.core.borrow_mut().on_flush_failed(error.to_string());
            }
        }
        shard.wake.notify();
        if rolled_over {
            let spares = DmaFlusher::new(flusher.dir().clone());
            let shard_index = shard.shard;
            glommio::spawn_local(async move {
                if let Err(error) = spares.ensure_spares().await {
                    tracing::warn!(shard = shard_index, %error, "preparing a spare WAL segment failed");
                }
            })
            .detach();
        }
    }
    flusher.close().await;
}
