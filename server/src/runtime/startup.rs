//! Start-up of one shard: its WAL and watch history segments opened, the newest valid
//! snapshot loaded, the state recovered through the core's driver contract
//! ([`ShardCore::recover`]), a spare segment of each prepared, its two ports bound. The driver (`driver.rs`) then serves.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use corekv_storage::history::Retention;
use corekv_storage::snapshot::{self, Archive};
use corekv_storage::wal::{RecoveryMode, SegmentDir, SegmentIdentity};
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::registry::Registry;
use glommio::net::TcpListener;

use super::disk::DmaFlusher;
use super::notify::Notify;
use super::state::Shard;
use crate::constants::HISTORY_SEGMENT_BYTES_MAX;
use crate::core::{CoreConfig, Recovery, RecoveryError, ShardCore, SnapshotPolicy};
use crate::http::StatusSlot;
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
    /// Size of new WAL segment files (and of watch history segment files).
    pub wal_segment_bytes: u64,
    /// How much watch history to keep.
    pub history_retention: Retention,
    /// Catch up from the cluster before voting.
    pub join: bool,
    /// The cluster.
    pub registry: Arc<Registry>,
    /// This node.
    pub node_id: NodeId,
    /// This shard.
    pub shard: ShardId,
    /// `DATA_DIR/shard-S`.
    pub shard_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// Counters the HTTP endpoint reads.
    pub metrics: Arc<ShardMetrics>,
    /// Status the HTTP endpoint reads, refreshed every tick.
    pub status: StatusSlot,
    /// Every shard's status slot (this one's included), by shard.
    pub statuses: Arc<Vec<StatusSlot>>,
    /// Set by the signal handler: shut down cleanly.
    pub shutdown: Arc<AtomicBool>,
    /// The node's TLS; `None`: plaintext.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    /// The node's auth; `None`: every request allowed.
    pub auth: Option<Arc<crate::auth::NodeAuth>>,
    /// Told once the shard serves (or why it could not start).
    pub started: std::sync::mpsc::Sender<(u32, Result<(), String>)>,
}

pub(super) struct Listeners {
    pub(super) client: TcpListener,
    pub(super) peer: TcpListener,
    /// The Redis protocol port, when the node has one.
    pub(super) resp: Option<TcpListener>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) status: StatusSlot,
    pub(super) flusher: DmaFlusher,
    pub(super) history_flusher: DmaFlusher,
    pub(super) timing: Timing,
}

/// Opens and recovers the shard, binds its ports: the shared state and the listeners.
pub(super) async fn start(ctx: ShardContext) -> anyhow::Result<(Rc<Shard>, Listeners)> {
    let registry = ctx.registry.clone();
    let node = registry.node(ctx.node_id).context("node id not in the registry")?.clone();
    let identity = SegmentIdentity { cluster: registry.cluster.clone(), shard: ctx.shard.get() };
    let wal_dir = ctx.shard_dir.join("wal");
    let segments = SegmentDir::open(&wal_dir, identity, ctx.wal_segment_bytes)
        .with_context(|| format!("shard {}: opening {}", ctx.shard, wal_dir.display()))?;
    let history_dir = ctx.shard_dir.join("history");
    let history_identity =
        SegmentIdentity { cluster: registry.cluster.clone(), shard: ctx.shard.get() };
    let history_segment_bytes = ctx.wal_segment_bytes.min(HISTORY_SEGMENT_BYTES_MAX);
    let history_segments = SegmentDir::open(&history_dir, history_identity, history_segment_bytes)
        .with_context(|| format!("shard {}: opening {}", ctx.shard, history_dir.display()))?
        .sparse();
    let snap_dir = ctx.shard_dir.join("snap");
    // The core's clock reads 0 now; the wall clock at that moment dates the watch history.
    let clock = Instant::now();
    let wall_epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut core = recover(&ctx, &segments, &history_segments, &snap_dir, wall_epoch_ms).await?;
    core.set_auth(ctx.auth.clone());
    let flusher = DmaFlusher::new(segments.clone());
    flusher
        .ensure_spares_before_serving()
        .await
        .with_context(|| format!("shard {}: preparing a WAL segment", ctx.shard))?;
    // The history's spare is prepared in the background: the shard serves without it (the
    // first history flush makes its segment if need be).
    let history_flusher = DmaFlusher::new(history_segments.clone());
    let spares = DmaFlusher::new(history_segments.clone());
    let shard_index = ctx.shard;
    glommio::spawn_local(async move {
        if let Err(error) = spares.ensure_spares().await {
            tracing::warn!(shard = %shard_index, %error, "preparing a watch history segment failed");
        }
    })
    .detach();
    let client_addr = format!("{}:{}", node.host, node.client_port as u32 + ctx.shard.get());
    let peer_addr = format!("{}:{}", node.host, node.peer_port as u32 + ctx.shard.get());
    let client = listen(&client_addr).map_err(|e| {
        anyhow::anyhow!("shard {}: cannot listen for clients on {client_addr}: {e}", ctx.shard)
    })?;
    let peer = listen(&peer_addr).map_err(|e| {
        anyhow::anyhow!("shard {}: cannot listen for peers on {peer_addr}: {e}", ctx.shard)
    })?;
    let resp = match node.resp_addr(ctx.shard) {
        Some(addr) => Some(listen(&addr).map_err(|e| {
            anyhow::anyhow!("shard {}: cannot listen for redis clients on {addr}: {e}", ctx.shard)
        })?),
        None => None,
    };
    let cursor_seed = wall_epoch_ms.wrapping_mul(1_000_003) % (1 << 40);
    let shard = Rc::new(Shard {
        core: RefCell::new(core),
        wake: Notify::default(),
        flush_wake: Notify::default(),
        conns: RefCell::default(),
        peers: RefCell::default(),
        hello_addrs: RefCell::default(),
        links_epoch: Cell::new(u64::MAX),
        metrics: ctx.metrics,
        registry,
        node_id: ctx.node_id,
        shard: ctx.shard,
        snap_dir,
        segments,
        history_segments,
        history_retire: RefCell::default(),
        history_flush_wake: Notify::default(),
        deadline_wake: Notify::default(),
        armed_deadline: Cell::new(None),
        pending_ticks: Cell::new(0),
        retire: RefCell::default(),
        clock,
        stopping: Cell::new(false),
        next_conn: Cell::new(1),
        tls: ctx.tls,
        statuses: ctx.statuses,
        resp_cursors: RefCell::new(crate::resp::cursors::Cursors::new(cursor_seed)),
    });
    let (shutdown, status, timing) = (ctx.shutdown, ctx.status, ctx.timing);
    let listeners =
        Listeners { client, peer, resp, shutdown, status, flusher, history_flusher, timing };
    Ok((shard, listeners))
}

/// The core, recovered through the driver contract from the WAL in `segments` and the newest
/// valid snapshot file in `snap_dir`.
async fn recover(
    ctx: &ShardContext,
    segments: &SegmentDir,
    history: &SegmentDir,
    snap_dir: &Path,
    wall_epoch_ms: u64,
) -> anyhow::Result<ShardCore> {
    let registry = &ctx.registry;
    let snapshot = load_newest_snapshot(snap_dir, &registry.cluster, ctx.shard.get()).await?;
    let cfg = CoreConfig {
        node_id: ctx.node_id,
        shard: ctx.shard,
        shards: registry.shards,
        cluster: registry.cluster.clone(),
        registry: registry.nodes.clone(),
        election_ticks: ctx.timing.election_ticks,
        heartbeat_ticks: ctx.timing.heartbeat_ticks,
        tick_ms: ctx.timing.tick_ms,
        snapshots: ctx.snapshots,
        wall_epoch_ms,
        join: ctx.join,
    };
    let logger = crate::logging::raft_logger(ctx.node_id, ctx.shard);
    let recovery = Recovery {
        segments: Box::new(segments.clone()),
        segment_bytes: ctx.wal_segment_bytes,
        mode: RecoveryMode::Strict,
        snapshot: snapshot.map(Arc::new),
        entry_cache_bytes: None,
        history: Box::new(history.clone()),
        history_segment_bytes: history.segment_bytes(),
        history_retention: ctx.history_retention,
        history_cache_bytes: None,
    };
    ShardCore::recover(cfg, recovery, ctx.metrics.clone(), &logger).map_err(|e| {
        let hint = match e {
            RecoveryError::NoSnapshotReaches { .. } => {
                format!(" — remove {} to have it rebuilt from the cluster", ctx.shard_dir.display())
            }
            _ => String::new(),
        };
        anyhow::anyhow!("shard {}: {e}{hint}", ctx.shard)
    })
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

/// The newest snapshot file that validates, trying older ones when a file is damaged (each
/// refusal is logged with the file and the reason).
async fn load_newest_snapshot(
    dir: &std::path::Path,
    cluster: &str,
    shard: u32,
) -> anyhow::Result<Option<Archive>> {
    snapshot::remove_temp_files(dir)
        .with_context(|| format!("removing unfinished snapshots in {}", dir.display()))?;
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
