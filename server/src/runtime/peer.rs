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
//! connection per direction. The only traffic against the direction of a connection is the
//! receiver's acknowledgement of snapshot chunks.
//!
//! Snapshots travel as the file's bytes: when raft-rs wants to send a follower a snapshot
//! (`MsgSnapshot`), the sender streams the snapshot file in [`SNAPSHOT_CHUNK_BYTES`] chunks,
//! at most [`SNAPSHOT_WINDOW_BYTES`] ahead of the receiver's acknowledgements, then sends the
//! raft message itself. The receiver writes the chunks to a temporary file, verifies it
//! whole (checksum, rkyv validation), renames it into place, and only then lets the raft
//! message through; it answers `done` or an error, and the sender reports the outcome to
//! raft-rs. A transfer cut by a disconnect is dropped on both sides (the temporary file is
//! removed) and raft-rs starts a new one from the beginning. Outgoing messages wait in a bounded per-peer queue
//! ([`PEER_QUEUE_BYTES_MAX`]); everything one driver iteration produced for a peer is one
//! frame, and everything queued is written with one call. While a peer is unreachable its
//! messages are dropped and counted (raft retransmits what matters) and raft is told, so the
//! leader probes instead of streaming. Reconnects back off exponentially up to
//! [`PEER_BACKOFF_MAX_MS`].

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::disk::IncomingSnapshot;
use corekv_proto::constants::PEER_PROTOCOL_VERSION;
use corekv_proto::encode::PeerEncoder;
use corekv_proto::frame::{verify_peer, FrameBuffer};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use raft::eraftpb::{Message, MessageType};

use super::notify::Notify;
use super::shard::Shard;
use crate::constants::{
    PEER_BACKOFF_MAX_MS, PEER_BACKOFF_MIN_MS, PEER_QUEUE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_STALL_TIMEOUT_MS, SNAPSHOT_WINDOW_BYTES, SOCKET_READ_CHUNK_BYTES,
};
use crate::metrics::ShardMetrics;

/// How long a handshake may take before the connection is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the receiver last said about the snapshot being sent to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SnapshotProgress {
    index: u64,
    term: u64,
    received: u64,
    done: bool,
    error: Option<String>,
}

/// The outgoing side of the link to one peer.
pub(crate) struct PeerLink {
    pub(crate) node_id: u64,
    addr: String,
    queue: RefCell<Vec<u8>>,
    connected: Cell<bool>,
    /// The connection task, waiting for something to send.
    waker: RefCell<Option<Waker>>,
    /// Acknowledgements of the snapshot being sent, and who waits for them.
    progress: RefCell<SnapshotProgress>,
    progress_changed: Notify,
    /// A snapshot transfer to this peer is under way.
    sending_snapshot: Cell<bool>,
}

impl PeerLink {
    pub(crate) fn new(node_id: u64, addr: String) -> Self {
        PeerLink {
            node_id,
            addr,
            queue: RefCell::default(),
            connected: Cell::new(false),
            waker: RefCell::default(),
            progress: RefCell::default(),
            progress_changed: Notify::default(),
            sending_snapshot: Cell::new(false),
        }
    }

    /// Queues one frame of `messages` raft messages; drops it (counted) when the peer is
    /// unreachable or the queue is full. Returns whether it was queued.
    pub(crate) fn send(&self, frame: &[u8], messages: usize, metrics: &ShardMetrics) -> bool {
        let mut queue = self.queue.borrow_mut();
        if !self.connected.get() || queue.len() + frame.len() > PEER_QUEUE_BYTES_MAX {
            metrics.dropped_messages.fetch_add(messages as u64, Relaxed);
            return false;
        }
        queue.extend_from_slice(frame);
        metrics.messages_sent.fetch_add(messages as u64, Relaxed);
        drop(queue);
        self.wake();
        true
    }

    /// Wakes the connection task (new frames, or shutdown).
    pub(crate) fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
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
                link.progress_changed.notify();
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
        let hello = PeerEncoder::new()
            .hello(&shard.registry.cluster, shard.node_id, shard.shard, shard.registry.shards)
            .to_vec();
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

/// Writes queued frames, and reads the receiver's snapshot acknowledgements, until the
/// connection fails or the shard stops.
async fn pump(shard: &Shard, link: &PeerLink, mut stream: TcpStream) -> std::io::Result<()> {
    let mut sending: Vec<u8> = Vec::new();
    let mut written = 0usize;
    let mut input = FrameBuffer::new(4096);
    poll_fn(|cx| loop {
        let mut progress = false;
        if written == sending.len() {
            sending.clear();
            written = 0;
            std::mem::swap(&mut sending, &mut *link.queue.borrow_mut());
        }
        while written < sending.len() {
            match Pin::new(&mut stream).poll_write(cx, &sending[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut stream).poll_read(cx, input.spare()) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
            }
            Poll::Ready(Ok(n)) => {
                input.commit(n);
                progress = true;
                if let Err(error) = take_acks(link, &mut input) {
                    shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                    return Poll::Ready(Err(error));
                }
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        if shard.stopping.get() {
            return Poll::Ready(Ok(()));
        }
        if !progress {
            *link.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
    })
    .await
}

/// Records the snapshot acknowledgements a receiver sent back.
fn take_acks(link: &PeerLink, input: &mut FrameBuffer) -> std::io::Result<()> {
    let invalid = |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
    while let Some(frame) = input.next_frame().map_err(|e| invalid(e.to_string()))? {
        let frame = verify_peer(frame).map_err(|e| invalid(e.to_string()))?;
        let ack = frame
            .message_as_snapshot_ack()
            .ok_or_else(|| invalid("unexpected frame from the receiver".into()))?;
        let mut progress = link.progress.borrow_mut();
        if (ack.index(), ack.term()) == (progress.index, progress.term) {
            progress.received = progress.received.max(ack.received());
            progress.done |= ack.done();
            if let Some(error) = ack.error() {
                progress.error = Some(error.to_string());
            }
            drop(progress);
            link.progress_changed.notify();
        }
    }
    Ok(())
}

/// Starts sending the snapshot a `MsgSnapshot` refers to, unless one is already on its way.
pub(crate) fn start_snapshot_send(shard: &Rc<Shard>, link: &Rc<PeerLink>, message: Message) {
    if link.sending_snapshot.replace(true) {
        return;
    }
    let (shard, link) = (shard.clone(), link.clone());
    glommio::spawn_local(async move {
        let (index, term) = {
            let meta = message.get_snapshot().get_metadata();
            (meta.index, meta.term)
        };
        let outcome = send_snapshot(&shard, &link, message).await;
        if let Err(reason) = &outcome {
            tracing::warn!(shard = shard.shard, peer = link.node_id, index, %reason, "snapshot transfer failed");
        } else {
            tracing::info!(shard = shard.shard, peer = link.node_id, index, term, "snapshot delivered");
        }
        link.sending_snapshot.set(false);
        let mut core = shard.core.borrow_mut();
        core.set_now(shard.now_us());
        core.report_snapshot(link.node_id, outcome.is_ok());
        drop(core);
        shard.wake.notify();
    })
    .detach();
}

/// Waits until the receiver's progress satisfies `ready`, failing on an error, a lost
/// connection, or no progress for [`SNAPSHOT_STALL_TIMEOUT_MS`].
async fn await_progress(
    link: &PeerLink,
    ready: impl Fn(&SnapshotProgress) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(SNAPSHOT_STALL_TIMEOUT_MS);
    loop {
        {
            let progress = link.progress.borrow();
            if let Some(error) = &progress.error {
                return Err(format!("the receiver refused it: {error}"));
            }
            if ready(&progress) {
                return Ok(());
            }
        }
        if !link.connected.get() {
            return Err("the connection to the peer was lost".to_string());
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or("the receiver stopped answering")?;
        let limit = left.min(Duration::from_millis(100));
        within(limit, link.progress_changed.wait()).await;
    }
}

async fn send_snapshot(shard: &Shard, link: &PeerLink, message: Message) -> Result<(), String> {
    let meta = message.get_snapshot().get_metadata();
    let (index, term) = (meta.index, meta.term);
    let path = shard.snap_dir.join(corekv_storage::snapshot::file_name(index, term));
    let file = glommio::io::DmaFile::open(&path)
        .await
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let size = file.file_size().await.map_err(|e| format!("{}: {e}", path.display()))?;
    *link.progress.borrow_mut() = SnapshotProgress { index, term, ..Default::default() };
    let mut encoder = PeerEncoder::new();
    let mut offset = 0u64;
    let result = async {
        while offset < size {
            await_progress(link, |p| offset.saturating_sub(p.received) <= SNAPSHOT_WINDOW_BYTES)
                .await?;
            let len = (size - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            let chunk = file
                .read_at_aligned(offset, len)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let last = offset + chunk.len() as u64 == size;
            let frame = encoder.snapshot_chunk(index, term, offset, size, &chunk, last);
            if !link.send(frame, 0, &shard.metrics) {
                return Err("the peer queue refused a chunk (disconnected)".to_string());
            }
            offset += chunk.len() as u64;
        }
        // The raft message announcing the snapshot follows the file on the same connection.
        let data = protobuf::Message::write_to_bytes(&message).map_err(|e| e.to_string())?;
        if !link.send(encoder.raft_batch([data.as_slice()]), 1, &shard.metrics) {
            return Err("the peer queue refused the snapshot message".to_string());
        }
        await_progress(link, |p| p.done).await
    }
    .await;
    let _ = file.close().await;
    result
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
    if hello.shards() != 0 && hello.shards() != shard.registry.shards {
        return Err(format!(
            "shard count mismatch: this node runs {} shards, node {} runs {} (their registry \
             files differ)",
            shard.registry.shards,
            hello.node_id(),
            hello.shards()
        ));
    }
    let node = hello.node_id();
    if node == shard.node_id || shard.registry.node(node).is_none() {
        return Err(format!("node {node} is not another node of this cluster"));
    }
    Ok(node)
}

/// Serves one inbound peer connection: handshake, then raft batches into the core and
/// snapshot chunks into a file.
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
    let mut incoming: Option<IncomingSnapshot> = None;
    let result = receive(shard, peer, &mut stream, &mut buffer, &mut incoming, &mut encoder).await;
    if let Some(partial) = incoming {
        tracing::info!(shard = shard.shard, peer, snapshot = ?partial.id(), "snapshot transfer cut; discarding it");
        partial.abort().await;
    }
    result
}

async fn receive(
    shard: &Shard,
    peer: u64,
    stream: &mut TcpStream,
    buffer: &mut FrameBuffer,
    incoming: &mut Option<IncomingSnapshot>,
    encoder: &mut PeerEncoder,
) -> std::io::Result<()> {
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
            let chunk = match verify_peer(frame) {
                Ok(f) if f.message_as_snapshot_chunk().is_some() => Some(frame.to_vec()),
                _ => None,
            };
            match chunk {
                Some(chunk) => {
                    if let Some(ack) = take_chunk(shard, peer, &chunk, incoming).await {
                        let (index, term, received, done, error) = ack;
                        stream
                            .write_all(encoder.snapshot_ack(
                                index,
                                term,
                                received,
                                done,
                                error.as_deref(),
                            ))
                            .await?;
                    }
                }
                None => {
                    if let Err(reason) = step_frame(shard, peer, frame) {
                        shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                        tracing::warn!(shard = shard.shard, peer, %reason, "closing a peer connection after a bad frame");
                        return Ok(());
                    }
                    stepped = true;
                }
            }
        }
        if stepped {
            shard.wake.notify();
        }
    }
}

/// An acknowledgement to send: index, term, bytes received, done, error.
type Ack = (u64, u64, u64, bool, Option<String>);

/// Writes one snapshot chunk; on the last one verifies and offers the snapshot to the core.
async fn take_chunk(
    shard: &Shard,
    peer: u64,
    frame: &[u8],
    incoming: &mut Option<IncomingSnapshot>,
) -> Option<Ack> {
    let frame = verify_peer(frame).ok()?;
    let chunk = frame.message_as_snapshot_chunk()?;
    let (index, term, offset) = (chunk.index(), chunk.term(), chunk.offset());
    let data = chunk.data().bytes();
    let fail = |error: String| Some((index, term, 0, false, Some(error)));
    if offset == 0 {
        if let Some(old) = incoming.take() {
            old.abort().await;
        }
        tracing::info!(
            shard = shard.shard,
            peer,
            index,
            term,
            bytes = chunk.total_size(),
            "receiving a snapshot"
        );
        {
            let mut core = shard.core.borrow_mut();
            core.set_now(shard.now_us());
            core.on_snapshot_incoming(index);
        }
        match IncomingSnapshot::start(&shard.snap_dir, index, term, chunk.total_size(), data).await
        {
            Ok(started) => *incoming = Some(started),
            Err(error) => return fail(error.to_string()),
        }
    } else {
        let Some(current) = incoming.as_mut().filter(|i| i.id() == (index, term)) else {
            return fail(format!("chunk at {offset} of a snapshot this replica is not receiving"));
        };
        if let Err(error) = current.append(offset, data).await {
            if let Some(broken) = incoming.take() {
                broken.abort().await;
            }
            return fail(error.to_string());
        }
    }
    let received = incoming.as_ref().map_or(0, IncomingSnapshot::received);
    if !chunk.last() {
        return Some((index, term, received, false, None));
    }
    let complete = incoming.take()?;
    match complete.finish(&shard.registry.cluster, shard.shard).await {
        Ok(archive) => {
            tracing::info!(
                shard = shard.shard,
                peer,
                index,
                keys = archive.len(),
                "snapshot received and verified"
            );
            shard.core.borrow_mut().offer_snapshot(Arc::new(archive));
            Some((index, term, received, true, None))
        }
        Err(error) => {
            tracing::error!(shard = shard.shard, peer, %error, "received snapshot refused");
            fail(error.to_string())
        }
    }
}

/// Steps every raft message of one frame into the core. A `MsgSnapshot` whose file did not
/// arrive (or did not verify) is dropped: raft-rs retries after the transfer's failure.
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
        if message.get_msg_type() == MessageType::MsgSnapshot {
            let meta = message.get_snapshot().get_metadata();
            if !core.has_offered_snapshot(meta.index, meta.term) {
                tracing::warn!(
                    shard = shard.shard,
                    peer,
                    index = meta.index,
                    "snapshot message without its file; dropped"
                );
                continue;
            }
        }
        core.step(message);
    }
    Ok(())
}
