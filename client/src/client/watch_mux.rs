//! Watch connections: one per node and shard of a client (more when it runs more than a node
//! takes on one, [`WATCHES_PER_CONNECTION_MAX`]), carrying every watch the client runs there, apart from the connections calls use (a watch's stream never waits behind
//! calls, nor calls behind it).
//!
//! The reader decodes each frame once and puts it straight into the stream of every watch it
//! is for (a node sends the watches of one connection that follow the same keys one frame for
//! all), noting under the watch's lock the index after it, where the watch's shard task
//! resumes when the attempt ends; only a watch's end goes through that task. When a stream's
//! queue is full the reader waits, so a watch whose stream is not read holds up the others on
//! its connection, then TCP pushes back on the node, which catches them all up from its
//! history once they read again. A watch that must not wait for another belongs to a client
//! of its own.

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
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Client;
use crate::connection::{hello, Greeting, OpenError};
use crate::error::{Error, Result as ClientResult};
use crate::types::KeyValue;
use crate::watch::{Change, ChangeKind, PrevValue, WatchEvent, WatchMessage};

/// What a frame says to a watch.
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

/// Frames queued for the writer.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// Read buffer chunk.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Where the reader puts one watch attempt's messages: its stream, and how far it got.
pub(super) struct Route {
    sink: mpsc::Sender<ClientResult<WatchMessage>>,
    /// Whether progress messages go into the stream (the caller asked for them); they move
    /// the watch's place on either way.
    progress: bool,
    place: Mutex<Place>,
}

/// A watch attempt's place: the index after the last message passed on (0: from now, none
/// yet), and whether the attempt is over (nothing more is passed on).
struct Place {
    next: u64,
    over: bool,
}

impl Route {
    /// A route into `sink` for an attempt starting at `next` (0: from now).
    pub(super) fn new(
        sink: mpsc::Sender<ClientResult<WatchMessage>>,
        progress: bool,
        next: u64,
    ) -> Arc<Route> {
        Arc::new(Route { sink, progress, place: Mutex::new(Place { next, over: false }) })
    }

    /// Ends the attempt: nothing more goes into the stream through this route. Returns the
    /// index after the last message passed on (0: none, from now).
    pub(super) fn finish(&self) -> u64 {
        let mut place = self.place.lock().unwrap_or_else(|p| p.into_inner());
        place.over = true;
        place.next
    }

    /// Whether the stream was dropped.
    pub(super) fn is_dropped(&self) -> bool {
        self.sink.is_closed()
    }

    /// Passes `message` on (if any) and moves the place to `next`, unless the attempt is
    /// over or the stream dropped; waits while the stream's queue is full.
    async fn pass_on(&self, message: Option<WatchMessage>, next: u64, blocked: &AtomicBool) {
        let permit = match message {
            None => None,
            Some(message) => {
                let permit = match self.sink.try_reserve() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        blocked.store(true, Ordering::Relaxed);
                        let reserved = self.sink.reserve().await;
                        blocked.store(false, Ordering::Relaxed);
                        match reserved {
                            Ok(permit) => permit,
                            Err(_) => return,
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return,
                };
                Some((permit, message))
            }
        };
        // The message and the place move together: an attempt that ends sees either both or
        // neither, so the next one neither repeats nor skips it.
        let mut place = self.place.lock().unwrap_or_else(|p| p.into_inner());
        if place.over {
            return;
        }
        if let Some((permit, message)) = permit {
            permit.send(Ok(message));
        }
        place.next = place.next.max(next);
    }
}

/// A watch's route and the channel its end goes to (dropped when the connection closes,
/// which the watch's task hears as the end).
struct Routed {
    route: Arc<Route>,
    end: mpsc::Sender<Delivery>,
}

type Routes = Arc<Mutex<HashMap<u64, Routed>>>;

/// A client's watch connections to one node and shard, and how new ones are opened: one at a
/// time, so watches that start together (a thousand at once, or all of them resuming at a new
/// leader) share the connection the first of them opens instead of each opening its own — the
/// node then sends each change once per connection, not once per watch.
#[derive(Default)]
pub(super) struct Muxes {
    open: Vec<Arc<WatchMux>>,
    /// Held while a connection is being opened.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Opens finished (either way), and how the last one failed: the watches that waited for
    /// it take its failure instead of each trying again at once.
    rounds: u64,
    failed: Option<OpenError>,
}

impl Muxes {
    /// A place on one of the open connections, if one has room.
    fn place(&mut self) -> Option<Lease> {
        self.open.retain(|mux| !mux.is_closed());
        self.open.iter().find_map(WatchMux::place)
    }
}

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
        greeting: Greeting<'_>,
        shard: ShardId,
        tls: Option<&crate::net::TlsConfig>,
        timeout: Duration,
    ) -> Result<Arc<WatchMux>, OpenError> {
        let mut stream = crate::net::open(addr, tls, timeout).await?;
        hello(&mut stream, addr, greeting, timeout).await?;
        let (read, write) = stream.into_split();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let routes: Routes = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (heard_us, blocked) = (Arc::new(AtomicU64::new(now_us())), Arc::default());
        let activity = Activity { heard_us: Arc::clone(&heard_us), blocked: Arc::clone(&blocked) };
        let reader = tokio::spawn(read_loop(read, shard, routes.clone(), closed.clone(), activity));
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

    /// Starts a watch whose messages go through `route`: `request` makes its frame for a
    /// fresh id. Returns the id and where its end comes (`Ended` or `Refused`; closed when the
    /// connection is), or `None` when the connection is closed.
    pub(super) async fn start(
        &self,
        request: impl FnOnce(u64) -> Vec<u8>,
        route: Arc<Route>,
    ) -> Option<(u64, mpsc::Receiver<Delivery>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (end, receiver) = mpsc::channel(1);
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Routed { route, end });
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
        let muxes = || self.inner.watch_muxes.lock().unwrap_or_else(|p| p.into_inner());
        let (gate, rounds) = {
            let mut muxes = muxes();
            let set = muxes.entry(key).or_default();
            if let Some(lease) = set.place() {
                return Ok(lease);
            }
            (set.gate.clone(), set.rounds)
        };
        let _opening = gate.lock().await;
        {
            let mut muxes = muxes();
            let set = muxes.entry(key).or_default();
            if let Some(lease) = set.place() {
                return Ok(lease);
            }
            if set.rounds != rounds {
                if let Some(failed) = &set.failed {
                    return Err(failed.clone());
                }
            }
        }
        let opened = self.open_watch_mux(node, shard).await;
        let mut muxes = muxes();
        let set = muxes.entry(key).or_default();
        set.rounds += 1;
        match opened {
            Ok(mux) => {
                set.failed = None;
                let lease = mux.place().expect("a new connection has room");
                set.open.push(mux);
                Ok(lease)
            }
            Err(error) => {
                set.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn open_watch_mux(
        &self,
        node: NodeId,
        shard: ShardId,
    ) -> Result<Arc<WatchMux>, OpenError> {
        let addr = self
            .client_addr(node, shard)
            .ok_or_else(|| OpenError::Unreachable(format!("no address known for node {node}")))?;
        let config = &self.inner.config;
        let tls = self.tls()?;
        WatchMux::open(&addr, config.greeting(), shard, tls, config.connect_timeout).await
    }
}

fn close(routes: &Routes, closed: &AtomicBool) {
    closed.store(true, Ordering::Release);
    routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

async fn write_loop(
    mut write: crate::net::WriteHalf,
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
        if write.write_all(&batch).await.is_err() || write.flush().await.is_err() {
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
    mut read: crate::net::ReadHalf,
    shard: ShardId,
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
            let (message, next) = match delivery {
                Delivery::Events { index, changes } => {
                    let event = WatchEvent { shard, index, changes };
                    (WatchMessage::Event(event), index + 1)
                }
                Delivery::Progress(index) => (WatchMessage::Progress { shard, index }, index + 1),
                end @ (Delivery::Ended { .. } | Delivery::Refused(_)) => {
                    // The watch's task takes it from here; the route goes.
                    let routed = routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&ids[0]);
                    if let Some(routed) = routed {
                        let _ = routed.end.try_send(end);
                    }
                    continue;
                }
            };
            // One lock for the frame's watches (a frame may name a thousand), then each one's
            // stream: at once when it has room, else waiting for it (the backpressure the
            // module docs describe).
            let targets: Vec<Arc<Route>> = {
                let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                ids.iter().filter_map(|id| routes.get(id).map(|r| r.route.clone())).collect()
            };
            // A route whose attempt is over or whose stream was dropped takes nothing; its
            // task forgets it (and cancels the watch on the node) as it ends.
            for route in targets {
                let wanted = match &message {
                    WatchMessage::Progress { .. } if !route.progress => None,
                    message => Some(message.clone()),
                };
                route.pass_on(wanted, next, &activity.blocked).await;
            }
            activity.heard_us.store(now_us(), Ordering::Relaxed);
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
        ErrorKind::PermissionDenied => {
            let reason = error.kind_as_permission_denied().and_then(|e| e.reason());
            Refusal::Fatal(Error::PermissionDenied(reason.unwrap_or("no reason given").into()))
        }
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
        ttl: None,
        lease: None,
    });
    let prev = c.prev_meta().map(|meta| PrevValue {
        meta: meta.into(),
        value: c.prev_value().map(|v| v.bytes().to_vec()),
    });
    let kind = if put { ChangeKind::Put } else { ChangeKind::Delete };
    Change { kind, key, value, prev, expired: !put && c.expired() }
}
