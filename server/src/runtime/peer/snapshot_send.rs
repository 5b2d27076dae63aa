//! Sending a snapshot: the file in chunks, paced by the receiver's acknowledgements, then the
//! raft message that announces it; the outcome goes to raft-rs.

use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv_proto::encode::PeerEncoder;
use raft::eraftpb::Message;

use super::within;
use crate::constants::{SNAPSHOT_CHUNK_BYTES, SNAPSHOT_STALL_TIMEOUT_MS, SNAPSHOT_WINDOW_BYTES};
use crate::runtime::state::{PeerLink, Shard, SnapshotProgress};

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
            tracing::warn!(shard = %shard.shard, peer = link.node_id, index, %reason, "snapshot transfer failed");
        } else {
            tracing::info!(shard = %shard.shard, peer = link.node_id, index, term, "snapshot delivered");
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
