//! The sending side of a peer link: dial (with backoff), hand over the queued frames, and take
//! the receiver's snapshot acknowledgements.

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use corekv_proto::frame::{verify_peer, FrameBuffer};
use futures_lite::io::{AsyncRead, AsyncWrite};

use super::handshake::connect;
use crate::constants::{PEER_BACKOFF_MAX_MS, PEER_BACKOFF_MIN_MS};
use crate::runtime::net::Stream;
use crate::runtime::state::{PeerLink, Shard};

/// Keeps a connection to one peer and writes its queue to it, reconnecting with backoff.
pub(crate) async fn peer_sender(shard: Rc<Shard>, link: Rc<PeerLink>) {
    let mut backoff = PEER_BACKOFF_MIN_MS;
    let mut failures = 0u32;
    while !shard.stopping.get() && !link.retired.get() {
        match connect(&shard, &link).await {
            Ok(stream) => {
                if failures > 0 {
                    tracing::info!(
                        shard = %shard.shard,
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
                    tracing::warn!(shard = %shard.shard, peer = link.node_id, %error, "peer connection lost");
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(shard = %shard.shard, peer = link.node_id, addr = %link.addr, %error, "cannot reach peer; retrying with backoff");
                } else {
                    tracing::debug!(shard = %shard.shard, peer = link.node_id, %error, "cannot reach peer");
                }
            }
        }
        if shard.stopping.get() || link.retired.get() {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(PEER_BACKOFF_MAX_MS);
    }
}

/// Writes queued frames, and reads the receiver's snapshot acknowledgements, until the
/// connection fails or the shard stops.
async fn pump(shard: &Shard, link: &PeerLink, mut stream: Stream) -> std::io::Result<()> {
    let mut sending: Vec<u8> = Vec::new();
    let mut unflushed = false;
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
                    unflushed = true;
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => break,
            }
        }
        // TLS keeps what it could not send yet; pushed out once all is written.
        if written == sending.len() && unflushed {
            match Pin::new(&mut stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
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
        if shard.stopping.get() || link.retired.get() {
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
