//! Peer transport: shard `s` of this node talks to shard `s` of every other node.
//!
//! ```text
//!   this node (dialer)                           other node (acceptor, peer_port + s)
//!   peer_sender ── connect ─────────────────────► accept_peers
//!               ── Hello{cluster,node,shard,v} ──►  checks every field
//!               ◄─ HelloAck{accepted, reason} ───   (refusal: logged on both sides, closed)
//!               ── RaftBatch ... ────────────────►  inbound: verify, decode, step into core
//! ```
//!
//! Each node dials every peer for the traffic it sends, so a pair of nodes uses one
//! connection per direction. Outgoing messages wait in a bounded per-peer queue
//! ([`PEER_QUEUE_BYTES_MAX`]); everything one driver iteration produced for a peer is one
//! frame, and everything queued is written with one call. While a peer is unreachable its
//! messages are dropped and counted (raft retransmits what matters) and raft is told, so the
//! leader probes instead of streaming. Reconnects back off exponentially up to
//! [`PEER_BACKOFF_MAX_MS`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use corekv_proto::constants::PEER_PROTOCOL_VERSION;
use corekv_proto::encode::PeerEncoder;
use corekv_proto::frame::{verify_peer, FrameBuffer};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use raft::eraftpb::Message;

use super::notify::Notify;
use super::shard::Shard;
use crate::constants::{
    PEER_BACKOFF_MAX_MS, PEER_BACKOFF_MIN_MS, PEER_QUEUE_BYTES_MAX, SOCKET_READ_CHUNK_BYTES,
};
use crate::metrics::ShardMetrics;

/// How long a handshake may take before the connection is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The outgoing side of the link to one peer.
pub(crate) struct PeerLink {
    pub(crate) node_id: u64,
    addr: String,
    queue: RefCell<Vec<u8>>,
    connected: Cell<bool>,
    pub(crate) notify: Notify,
}

impl PeerLink {
    pub(crate) fn new(node_id: u64, addr: String) -> Self {
        PeerLink {
            node_id,
            addr,
            queue: RefCell::default(),
            connected: Cell::new(false),
            notify: Notify::default(),
        }
    }

    /// Queues one frame of `messages` raft messages; drops it (counted) when the peer is
    /// unreachable or the queue is full.
    pub(crate) fn send(&self, frame: &[u8], messages: usize, metrics: &ShardMetrics) {
        let mut queue = self.queue.borrow_mut();
        if !self.connected.get() || queue.len() + frame.len() > PEER_QUEUE_BYTES_MAX {
            metrics.dropped_messages.fetch_add(messages as u64, Relaxed);
            return;
        }
        queue.extend_from_slice(frame);
        metrics.messages_sent.fetch_add(messages as u64, Relaxed);
        drop(queue);
        self.notify.notify();
    }
}

/// Waits for `future`, giving up after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Reads one whole frame into `buffer`'s stream; returns its bytes.
async fn read_frame(stream: &mut TcpStream, buffer: &mut FrameBuffer) -> std::io::Result<Vec<u8>> {
    loop {
        match buffer.next_frame() {
            Ok(Some(frame)) => return Ok(frame.to_vec()),
            Ok(None) => {}
            Err(error) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
        }
        let n = stream.read(buffer.spare()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.commit(n);
    }
}

/// Keeps a connection to one peer and writes its queue to it, reconnecting with backoff.
pub(crate) async fn peer_sender(shard: Rc<Shard>, link: Rc<PeerLink>) {
    let mut backoff = PEER_BACKOFF_MIN_MS;
    let mut failures = 0u32;
    while !shard.stopping.get() {
        match connect(&shard, &link).await {
            Ok(stream) => {
                if failures > 0 {
                    tracing::info!(
                        shard = shard.shard,
                        peer = link.node_id,
                        "peer reachable again"
                    );
                }
                failures = 0;
                backoff = PEER_BACKOFF_MIN_MS;
                link.connected.set(true);
                shard.metrics.peer_connections.fetch_add(1, Relaxed);
                let error = pump(&shard, &link, stream).await;
                link.connected.set(false);
                link.queue.borrow_mut().clear();
                shard.metrics.peer_connections.fetch_sub(1, Relaxed);
                shard.core.borrow_mut().report_unreachable(link.node_id);
                shard.wake.notify();
                if let Err(error) = error {
                    tracing::warn!(shard = shard.shard, peer = link.node_id, %error, "peer connection lost");
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(shard = shard.shard, peer = link.node_id, addr = %link.addr, %error, "cannot reach peer; retrying with backoff");
                } else {
                    tracing::debug!(shard = shard.shard, peer = link.node_id, %error, "cannot reach peer");
                }
            }
        }
        if shard.stopping.get() {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(PEER_BACKOFF_MAX_MS);
    }
}

async fn connect(shard: &Shard, link: &PeerLink) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(link.addr.as_str()).await?;
        stream.set_nodelay(true)?;
        let hello =
            PeerEncoder::new().hello(&shard.registry.cluster, shard.node_id, shard.shard).to_vec();
        stream.write_all(&hello).await?;
        let mut buffer = FrameBuffer::new(4096);
        let frame = read_frame(&mut stream, &mut buffer).await?;
        let ack =
            verify_peer(&frame).ok().and_then(|f| f.message_as_hello_ack()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "expected a HelloAck")
            })?;
        if !ack.accepted() {
            let reason = ack.reason().unwrap_or("no reason given").to_string();
            tracing::error!(shard = shard.shard, peer = link.node_id, %reason, "peer refused our handshake");
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason));
        }
        if ack.node_id() != link.node_id {
            let reason = format!(
                "{} answered as node {}, expected node {}",
                link.addr,
                ack.node_id(),
                link.node_id
            );
            tracing::error!(shard = shard.shard, %reason, "peer handshake mismatch");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason));
        }
        Ok(stream)
    };
    within(HANDSHAKE_TIMEOUT, attempt).await.unwrap_or_else(|| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))
    })
}

/// Writes queued frames until the connection fails or the shard stops.
async fn pump(shard: &Shard, link: &PeerLink, mut stream: TcpStream) -> std::io::Result<()> {
    let mut sending = Vec::new();
    loop {
        if shard.stopping.get() {
            return Ok(());
        }
        std::mem::swap(&mut sending, &mut *link.queue.borrow_mut());
        if sending.is_empty() {
            link.notify.wait().await;
            continue;
        }
        stream.write_all(&sending).await?;
        sending.clear();
    }
}

/// Accepts peer connections for the shard.
pub(crate) async fn accept_peers(shard: Rc<Shard>, listener: TcpListener) {
    while !shard.stopping.get() {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    shard.metrics.peer_connections.fetch_add(1, Relaxed);
                    if let Err(error) = inbound(&shard, stream).await {
                        tracing::debug!(shard = shard.shard, %error, "inbound peer connection closed");
                    }
                    shard.metrics.peer_connections.fetch_sub(1, Relaxed);
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(shard = shard.shard, %error, "accepting a peer connection failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Checks a peer's hello; the refusal reason when it does not belong.
fn check_hello(shard: &Shard, frame: &[u8]) -> Result<u64, String> {
    let frame = verify_peer(frame).map_err(|e| format!("bad hello frame: {e}"))?;
    let hello = frame.message_as_hello().ok_or("the first frame must be a Hello")?;
    if hello.cluster() != shard.registry.cluster {
        return Err(format!(
            "cluster mismatch: this node is in {:?}, the peer in {:?}",
            shard.registry.cluster,
            hello.cluster()
        ));
    }
    if hello.protocol_version() != PEER_PROTOCOL_VERSION {
        return Err(format!(
            "peer protocol {} not supported (this node speaks {PEER_PROTOCOL_VERSION})",
            hello.protocol_version()
        ));
    }
    if hello.shard() != shard.shard {
        return Err(format!(
            "shard mismatch: this port serves shard {}, the peer is shard {}",
            shard.shard,
            hello.shard()
        ));
    }
    let node = hello.node_id();
    if node == shard.node_id || shard.registry.node(node).is_none() {
        return Err(format!("node {node} is not another node of this cluster"));
    }
    Ok(node)
}

/// Serves one inbound peer connection: handshake, then raft batches into the core.
async fn inbound(shard: &Shard, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = FrameBuffer::new(SOCKET_READ_CHUNK_BYTES);
    let first = within(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut buffer))
        .await
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))?;
    let mut encoder = PeerEncoder::new();
    let peer = match check_hello(shard, &first) {
        Ok(node) => node,
        Err(reason) => {
            shard.metrics.malformed_frames.fetch_add(1, Relaxed);
            tracing::warn!(shard = shard.shard, addr = ?stream.peer_addr().ok(), %reason, "refused a peer connection");
            let _ = stream.write_all(encoder.hello_ack(shard.node_id, Some(&reason))).await;
            return Ok(());
        }
    };
    stream.write_all(encoder.hello_ack(shard.node_id, None)).await?;
    loop {
        let n = stream.read(buffer.spare()).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.commit(n);
        let mut stepped = false;
        loop {
            let frame = match buffer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
                }
            };
            if let Err(reason) = step_frame(shard, peer, frame) {
                shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                tracing::warn!(shard = shard.shard, peer, %reason, "closing a peer connection after a bad frame");
                return Ok(());
            }
            stepped = true;
        }
        if stepped {
            shard.wake.notify();
        }
    }
}

/// Steps every raft message of one frame into the core.
fn step_frame(shard: &Shard, peer: u64, frame: &[u8]) -> Result<(), String> {
    let frame = verify_peer(frame).map_err(|e| e.to_string())?;
    let Some(batch) = frame.message_as_raft_batch() else {
        return Err(format!("unexpected {:?} frame", frame.message_type().variant_name()));
    };
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    for raw in batch.messages() {
        let message: Message = protobuf::Message::parse_from_bytes(raw.data().bytes())
            .map_err(|e| format!("raft message does not decode: {e}"))?;
        if message.from != peer || message.to != shard.node_id {
            return Err(format!(
                "message from {} to {} on the link from {peer}",
                message.from, message.to
            ));
        }
        shard.metrics.messages_received.fetch_add(1, Relaxed);
        core.step(message);
    }
    Ok(())
}
