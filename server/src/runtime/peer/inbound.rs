//! The receiving side of a peer link: accept, check the hello, then step raft batches into the
//! core and hand snapshot chunks to `snapshot_receive`.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use corekv_proto::encode::PeerEncoder;
use corekv_proto::frame::{verify_peer, FrameBuffer};
use corekv_proto::peer::RaftBatch;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use raft::eraftpb::{Message, MessageType};

use super::handshake::check_hello;
use super::snapshot_receive::take_chunk;
use super::{read_frame, within, HANDSHAKE_TIMEOUT};
use crate::constants::SOCKET_READ_CHUNK_BYTES;
use crate::runtime::disk::IncomingSnapshot;
use crate::runtime::net::{self, Stream};
use crate::runtime::state::Shard;

/// Accepts peer connections for the shard.
pub(crate) async fn accept_peers(shard: Rc<Shard>, listener: TcpListener) {
    while !shard.stopping.get() {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let tls = shard.tls.as_ref().map(|tls| tls.configs().peers_in.clone());
                    let Some(stream) = net::accept_logged(&shard, stream, tls, "peer").await
                    else {
                        return;
                    };
                    shard.metrics.peer_connections.fetch_add(1, Relaxed);
                    if let Err(error) = inbound(&shard, stream).await {
                        tracing::debug!(shard = %shard.shard, %error, "inbound peer connection closed");
                    }
                    shard.metrics.peer_connections.fetch_sub(1, Relaxed);
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(shard = %shard.shard, %error, "accepting a peer connection failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one inbound peer connection: handshake, then raft batches into the core and
/// snapshot chunks into a file.
async fn inbound(shard: &Shard, mut stream: Stream) -> std::io::Result<()> {
    let mut buffer = FrameBuffer::new(SOCKET_READ_CHUNK_BYTES);
    let first = within(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut buffer))
        .await
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()));
    let first = match first {
        Ok(first) => first,
        Err(error) => {
            if matches!(stream, Stream::Plain(_)) && net::looks_like_tls(buffer.pending()) {
                tracing::warn!(shard = %shard.shard, addr = ?stream.peer_addr(), "refused a peer that speaks TLS: this node's registry file has no [tls] section");
            }
            return Err(error);
        }
    };
    let mut encoder = PeerEncoder::new();
    let peer = match check_hello(shard, &stream, &first) {
        Ok(node) => node,
        Err(reason) => {
            shard.metrics.malformed_frames.fetch_add(1, Relaxed);
            tracing::warn!(shard = %shard.shard, addr = ?stream.peer_addr(), %reason, "refused a peer connection");
            let _ = stream.write_all(encoder.hello_ack(shard.node_id.get(), Some(&reason))).await;
            let _ = stream.flush().await;
            return Ok(());
        }
    };
    stream.write_all(encoder.hello_ack(shard.node_id.get(), None)).await?;
    stream.flush().await?;
    let mut incoming: Option<IncomingSnapshot> = None;
    let result = receive(shard, peer, &mut stream, &mut buffer, &mut incoming, &mut encoder).await;
    if let Some(partial) = incoming {
        tracing::info!(shard = %shard.shard, peer, snapshot = ?partial.id(), "snapshot transfer cut; discarding it");
        partial.abort().await;
    }
    result
}

async fn receive(
    shard: &Shard,
    peer: u64,
    stream: &mut Stream,
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
                    tracing::warn!(shard = %shard.shard, peer, %error, "closing a peer connection after a bad frame");
                    return Ok(());
                }
            };
            // Verified once, here; the chunk and the batch are read from the verified frame.
            let verified = match verify_peer(frame) {
                Ok(verified) => verified,
                Err(error) => {
                    shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                    tracing::warn!(shard = %shard.shard, peer, %error, "closing a peer connection after a bad frame");
                    return Ok(());
                }
            };
            if let Some(chunk) = verified.message_as_snapshot_chunk() {
                if let Some(ack) = take_chunk(shard, peer, chunk, incoming).await {
                    let (index, term, received, done, error) = ack;
                    let ack = encoder.snapshot_ack(index, term, received, done, error.as_deref());
                    stream.write_all(ack).await?;
                    stream.flush().await?;
                }
                continue;
            }
            let stepped_batch = match verified.message_as_raft_batch() {
                Some(batch) => step_batch(shard, peer, batch),
                None => {
                    Err(format!("unexpected {:?} frame", verified.message_type().variant_name()))
                }
            };
            if let Err(reason) = stepped_batch {
                shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                tracing::warn!(shard = %shard.shard, peer, %reason, "closing a peer connection after a bad frame");
                return Ok(());
            }
            stepped = true;
        }
        if stepped {
            shard.wake.notify();
        }
    }
}

/// Steps every raft message of one verified batch into the core. A `MsgSnapshot` whose file
/// did not arrive (or did not verify) is dropped: raft-rs retries after the transfer's failure.
fn step_batch(shard: &Shard, peer: u64, batch: RaftBatch<'_>) -> Result<(), String> {
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    for raw in batch.messages() {
        let message: Message = protobuf::Message::parse_from_bytes(raw.data().bytes())
            .map_err(|e| format!("raft message does not decode: {e}"))?;
        if message.from != peer || message.to != shard.node_id.get() {
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
                    shard = %shard.shard,
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
