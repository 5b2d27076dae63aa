//! Watch connections: one per node and shard of a client (more when it runs more than a node
//! takes on one, [`WATCHES_PER_CONNECTION_MAX`]), carrying every watch the client runs there, apart from the connections calls use (a watch's stream never waits behind
//! calls, nor calls behind it).
//!
//! The reader decodes each frame once and hands it to every watch it is for (a node sends
//! the watches of one connection that follow the same keys one frame for all). Each watch
//! has a bounded queue; when one is full the reader waits, so a watch whose stream is not
//! read holds up the others on its connection, then TCP pushes back on the node, which
//! catches them all up from its history once they read again. A watch that must not wait
//! for another belongs to a client of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corekv_proto::client::{
    self as wire, ChangeKind as WireKind, ErrorKind, Reply, WatchEndReason,
};
use corekv_proto::constants::WATCHES_PER_CONNECTION_MAX;
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::{FrameBuffer, VerifiedReply};
use corekv_types::ids::{NodeId, ShardId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Client;
use crate::connection::{hello, OpenError};
use crate::error::Error;
use crate::types::KeyValue;
use crate::watch::{Change, ChangeKind, PrevValue};

/// What the reader hands a watch.
#[derive(Debug, Clone)]
pub(super) enum Delivery {
    /// The changes of the entry at `index`.
    Events { index: u64, changes: Arc<[Change]> },
    /// Everything up to `index` was sent.
    Progress(u64),
    /// The node ended the watch.
    Ended { reason: WatchEndReason, next: u64, first_available: u64, leader: Option<NodeId> },
    /// The node refused the watch.
    Refused(Refusal),
}

/// Why a node refused a watch.
#[derive(Debug, Clone)]
pub(super) enum Refusal {
    /// Not the shard's leader (and who is, when it knows, with its address).
    NotLeader { leader: Option<NodeId>, addr: Option<String> },
    /// Retrying cannot help.
    Fatal(Error),
    /// Not now: no quorum, busy, shutting down, not a member.
    Later,
}

/// Messages queued for one watch before the reader waits.
const ROUTE_QUEUE: usize = 256;

/// Frames queued for the writer.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// Read buffer chunk.
const READ_CHUNK_BYTES: usize = 256 * 1024;

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Delivery>>>>;

/// A client's watch connections to one node and shard.
pub(super) type Muxes = Vec<Arc<WatchMux>>;

/// See the module docs.
pub(super) struct WatchMux {
    /// Watches placed on it (see [`Lease`]).
    placed: AtomicUsize,
    /// When the reader last read from the socket (µs, [`now_us`]), and whether it is
    /// waiting for a watch's queue to have room: a connection is silent only when neither
    /// (a watch not being read holds up the others; that is not the node's silence).
    heard_us: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
    frames: mpsc::Sender<Vec<u8>>,
    routes: Routes,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    tasks: [AbortHandle; 2],
}

impl WatchMux {
    async fn open(
        addr: &str,
        cluster: &str,
        shards: u32,
        timeout: Duration,
    ) -> Result<Arc<WatchMux>, OpenError> {
        let connect = tokio::time::timeout(timeout, TcpStream::connect(addr));
        let mut stream = match connect.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(OpenError::Refused(addr.to_string()))
            }
            Ok(Err(e)) => return Err(OpenError::Unreachable(format!("{addr}: {e}"))),
            Err(_) => return Err(OpenError::Unreachable(format!("{addr}: connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        hello(&mut stream, addr, cluster, shards, timeout).await?;
        let (read, write) = stream.into_split();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let routes: Routes = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (heard_us, blocked) = (Arc::new(AtomicU64::new(now_us())), Arc::default());
        let activity = Activity { heard_us: Arc::clone(&heard_us), blocked: Arc::clone(&blocked) };
        let reader = tokio::spawn(read_loop(read, routes.clone(), closed.clone(), activity));
        let writer = tokio::spawn(write_loop(write, queue, routes.clone(), closed.clone()));
        Ok(Arc::new(WatchMux {
            placed: AtomicUsize::new(0),
            heard_us,
            blocked,
            frames,
            routes,
            next_id: AtomicU64::new(1),
            closed,
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }))
    }

    /// Starts a watch: `request` makes its frame for a fresh id. Returns the id and the
    /// watch's queue (which ends when the connection does), or `None` when the connection is
    /// closed.
    pub(super) async fn start(
        &self,
        request: impl FnOnce(u64) -> Vec<u8>,
    ) -> Option<(u64, mpsc::Receiver<Delivery>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(ROUTE_QUEUE);
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, sender);
        if self.closed.load(Ordering::Acquire) || self.frames.send(request(id)).await.is_err() {
            self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return None;
        }
        Some((id, receiver))
    }

    /// Ends watch `id` on the node (if it still runs) and forgets it.
    pub(super) fn cancel(&self, id: u64) {
        let known = self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if known.is_some() {
            let id_of_cancel = self.next_id.fetch_add(1, Ordering::Relaxed);
            let frame = RequestEncoder::new().cancel_watch(id_of_cancel, id).to_vec();
            if let Err(mpsc::error::TrySendError::Full(frame)) = self.frames.try_send(frame) {
                // The writer is behind: the cancel still goes, after what is queued.
                let frames = self.frames.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { frames.send(frame).await });
                }
            }
        }
    }

    /// Whether nothing came from the node for `silence` while the reader was free to read.
    pub(super) fn silent_for(&self, silence: Duration) -> bool {
        let quiet = now_us().saturating_sub(self.heard_us.load(Ordering::Relaxed));
        !self.blocked.load(Ordering::Relaxed) && quiet >= silence.as_micros() as u64
    }

    /// Gives up on the connection (the node went silent): every watch on it hears it end.
    pub(super) fn abort(&self) {
        close(&self.routes, &self.closed);
        for task in &self.tasks {
            task.abort();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Places a watch on it, if it has room (a node runs at most
    /// [`WATCHES_PER_CONNECTION_MAX`] on one connection).
    fn place(self: &Arc<Self>) -> Option<Lease> {
        if self.is_closed() || self.placed.load(Ordering::Acquire) >= WATCHES_PER_CONNECTION_MAX {
            return None;
        }
        self.placed.fetch_add(1, Ordering::AcqRel);
        Some(Lease(self.clone()))
    }
}

/// A watch's place on a [`WatchMux`], given back when dropped (the attempt that held it
/// ended, however).
pub(super) struct Lease(Arc<WatchMux>);

impl std::ops::Deref for Lease {
    type Target = Arc<WatchMux>;

    fn deref(&self) -> &Arc<WatchMux> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.placed.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Client {
    /// A watch connection to node `node` for shard `shard` with room for a watch: one the
    /// client has, or a new one.
    pub(super) async fn watch_mux(&self, node: NodeId, shard: ShardId) -> Result<Lease, OpenError> {
        let key = (node, shard);
        {
            let mut muxes = self.inner.watch_muxes.lock().unwrap_or_else(|p| p.into_inner());
            let open = muxes.entry(key).or_default();
            open.retain(|mux| !mux.is_closed());
            if let Some(lease) = open.iter().find_map(WatchMux::place) {
                return Ok(lease);
            }
        }
        let addr = self
            .client_addr(node, shard)
            .ok_or_else(|| OpenError::Unreachable(format!("no address known for node {node}")))?;
        let config = &self.inner.config;
        let (cluster, shards) = (&config.registry.cluster, config.registry.shards);
        let mux = WatchMux::open(&addr, cluster, shards, config.connect_timeout).await?;
        let lease = mux.place().expect("a new connection has room");
        let mut muxes = self.inner.watch_muxes.lock().unwrap_or_else(|p| p.into_inner());
        muxes.entry(key).or_default().push(mux);
        Ok(lease)
    }
}

fn close(routes: &Routes, closed: &AtomicBool) {
    closed.store(true, Ordering::Release);
    routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

async fn write_loop(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    routes: Routes,
    closed: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while let Some(frame) = queue.recv().await {
        batch.extend_from_slice(&frame);
        while let Ok(frame) = queue.try_recv() {
            batch.extend_from_slice(&frame);
        }
        if write.write_all(&batch).await.is_err() {
            break;
        }
        batch.clear();
    }
    close(&routes, &closed);
}

/// What the reader tells its watches about the connection (see [`WatchMux::silent_for`]).
struct Activity {
    heard_us: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
}

/// Microseconds since the first call in this process: a clock atomics can hold.
fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    routes: Routes,
    closed: Arc<AtomicBool>,
    activity: Activity,
) {
    let mut buffer = FrameBuffer::new(READ_CHUNK_BYTES);
    'read: loop {
        match read.read(buffer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.commit(n),
        }
        activity.heard_us.store(now_us(), Ordering::Relaxed);
        loop {
            let frame = match buffer.next_frame() {
                Ok(Some(frame)) => frame.to_vec(),
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let Ok(reply) = VerifiedReply::new(frame) else { break 'read };
            let Some((ids, delivery)) = delivery(&reply) else { continue };
            let last = matches!(delivery, Delivery::Ended { .. } | Delivery::Refused(_));
            // One lock for the frame's watches (a frame may name a thousand), then each one's
            // queue: at once when it has room, else waiting for it (the backpressure the
            // module docs describe).
            let targets: Vec<(u64, mpsc::Sender<Delivery>)> = {
                let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                ids.iter().filter_map(|id| routes.get(id).map(|r| (*id, r.clone()))).collect()
            };
            let mut gone = Vec::new();
            for (id, route) in targets {
                let sent = match route.try_send(delivery.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(d)) => {
                        activity.blocked.store(true, Ordering::Relaxed);
                        let sent = route.send(d).await.is_ok();
                        activity.blocked.store(false, Ordering::Relaxed);
                        activity.heard_us.store(now_us(), Ordering::Relaxed);
                        sent
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                };
                if !sent || last {
                    gone.push(id);
                }
            }
            if !gone.is_empty() {
                let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                for id in gone {
                    routes.remove(&id);
                }
            }
        }
    }
    close(&routes, &closed);
}

/// The watches a reply is for, and what it says; `None` for replies no watch waits on (a
/// cancel's answer).
fn delivery(reply: &VerifiedReply) -> Option<(Vec<u64>, Delivery)> {
    let reply = reply.reply();
    let id = reply.id();
    let delivery = match reply.reply_type() {
        Reply::WatchEvents => {
            let events = reply.reply_as_watch_events()?;
            let mut ids = vec![id];
            ids.extend(events.also_ids().iter().flat_map(|v| v.iter()));
            let changes = events.changes().map(|c| c.iter().map(|c| change(&c)).collect());
            let delivery =
                Delivery::Events { index: events.index(), changes: changes.unwrap_or_default() };
            return Some((ids, delivery));
        }
        Reply::WatchProgress => Delivery::Progress(reply.reply_as_watch_progress()?.index()),
        Reply::WatchEnded => {
            let end = reply.reply_as_watch_ended()?;
            Delivery::Ended {
                reason: end.reason(),
                next: end.next_index(),
                first_available: end.first_available(),
                leader: Some(NodeId(end.leader_id())).filter(|&l| l != NodeId::NONE),
            }
        }
        Reply::ErrorReply => Delivery::Refused(refusal(&reply.reply_as_error_reply()?)),
        _ => return None,
    };
    Some((vec![id], delivery))
}

fn refusal(error: &wire::ErrorReply<'_>) -> Refusal {
    match error.kind_type() {
        ErrorKind::NotLeader => {
            let hint = error.kind_as_not_leader();
            Refusal::NotLeader {
                leader: hint.map(|h| NodeId(h.leader_id())).filter(|&l| l != NodeId::NONE),
                addr: hint.and_then(|h| h.leader_addr()).map(str::to_string),
            }
        }
        ErrorKind::InvalidRequest => {
            let reason = error.kind_as_invalid_request().and_then(|e| e.reason());
            Refusal::Fatal(Error::InvalidRequest(reason.unwrap_or("no reason given").into()))
        }
        ErrorKind::TooLarge => Refusal::Fatal(Error::InvalidRequest("watch too large".into())),
        ErrorKind::WrongShard => {
            let shard = error.kind_as_wrong_shard().map_or(0, |w| w.shard());
            Refusal::Fatal(Error::WrongShard { shard: ShardId(shard) })
        }
        _ => Refusal::Later,
    }
}

fn change(c: &wire::Change<'_>) -> Change {
    let key = c.key().bytes().to_vec();
    let put = c.kind() == WireKind::Put;
    let value = put.then(|| KeyValue {
        key: key.clone(),
        value: c.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
        meta: c.meta().map(Into::into).unwrap_or_default(),
    });
    let prev = c.prev_meta().map(|meta| PrevValue {
        meta: meta.into(),
        value: c.prev_value().map(|v| v.bytes().to_vec()),
    });
    Change { kind: if put { ChangeKind::Put } else { ChangeKind::Delete }, key, value, prev }
}
