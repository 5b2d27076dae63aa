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

mod handshake;
mod inbound;
mod sender;
mod snapshot_receive;
mod snapshot_send;

use std::time::Duration;

use corekv_proto::frame::FrameBuffer;
use futures_lite::io::AsyncReadExt;
use glommio::net::TcpStream;

pub(crate) use inbound::accept_peers;
pub(crate) use sender::peer_sender;
pub(crate) use snapshot_send::start_snapshot_send;

/// How long a handshake may take before the connection is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

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
pub(crate) async fn read_frame(
    stream: &mut TcpStream,
    buffer: &mut FrameBuffer,
) -> std::io::Result<Vec<u8>> {
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
