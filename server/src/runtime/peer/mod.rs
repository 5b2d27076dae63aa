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

pub(crate) use inbound::accept_peers;
pub(crate) use snapshot_send::start_snapshot_send;

use std::rc::Rc;

use corekv_types::ids::NodeId;

use crate::runtime::state::{PeerLink, Shard};
use sender::peer_sender;

/// Where node `id`'s peer listener for this shard is: its member address, else the one its
/// hello said, else the registry's.
fn peer_addr(shard: &Shard, id: u64) -> Option<String> {
    let node = NodeId(id);
    let member = shard.core.borrow().membership().addrs.get(&node).map(|a| a.node(node));
    member
        .map(|n| n.peer_addr(shard.shard))
        .or_else(|| shard.hello_addrs.borrow().get(&id).cloned())
        .or_else(|| shard.registry.node(node).map(|n| n.peer_addr(shard.shard)))
}

/// The link to node `id`, made (and its connection task started) when there is none yet.
pub(crate) fn link_to(shard: &Rc<Shard>, id: u64) -> Option<Rc<PeerLink>> {
    if id == shard.node_id.get() || id == 0 {
        return None;
    }
    if let Some(link) = shard.peers.borrow().get(&id) {
        return Some(link.clone());
    }
    let link = Rc::new(PeerLink::new(id, peer_addr(shard, id)?));
    shard.peers.borrow_mut().insert(id, link.clone());
    glommio::spawn_local(peer_sender(shard.clone(), link.clone())).detach();
    Some(link)
}

/// Keeps the links in step with the membership, when it changed: a link to every other
/// member; links to nodes that left it, or whose address changed, retired (a link a raft
/// message needs again is made again by [`link_to`]).
pub(crate) fn sync_links(shard: &Rc<Shard>) {
    let epoch = shard.core.borrow().membership_epoch();
    if shard.links_epoch.replace(epoch) == epoch {
        return;
    }
    let members = shard.core.borrow().membership().members();
    if !members.is_empty() {
        let core = shard.core.borrow();
        let stale: Vec<Rc<PeerLink>> = shard
            .peers
            .borrow()
            .values()
            .filter(|link| {
                !core.keeps_link(link.node_id)
                    || peer_addr(shard, link.node_id).is_some_and(|addr| addr != link.addr)
            })
            .cloned()
            .collect();
        drop(core);
        for link in stale {
            tracing::info!(shard = %shard.shard, peer = link.node_id, "closing the link to a node that left the shard (or moved)");
            link.retired.set(true);
            link.wake();
            shard.peers.borrow_mut().remove(&link.node_id);
        }
    }
    for id in members {
        link_to(shard, id.get());
    }
}

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
    stream: &mut crate::runtime::net::Stream,
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
