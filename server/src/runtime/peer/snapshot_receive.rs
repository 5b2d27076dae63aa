//! Receiving a snapshot: chunks into a temporary file, the whole file verified, then offered
//! to the core before the raft message that announces it is stepped.

use std::sync::Arc;

use corekv_proto::peer::SnapshotChunk;

use crate::runtime::disk::IncomingSnapshot;
use crate::runtime::state::Shard;

/// An acknowledgement to send: index, term, bytes received, done, error.
pub(super) type Ack = (u64, u64, u64, bool, Option<String>);

/// Writes one snapshot chunk; on the last one verifies and offers the snapshot to the core.
pub(super) async fn take_chunk(
    shard: &Shard,
    peer: u64,
    chunk: SnapshotChunk<'_>,
    incoming: &mut Option<IncomingSnapshot>,
) -> Option<Ack> {
    let (index, term, offset) = (chunk.index(), chunk.term(), chunk.offset());
    let data = chunk.data().bytes();
    let fail = |error: String| Some((index, term, 0, false, Some(error)));
    if offset == 0 {
        if let Some(old) = incoming.take() {
            old.abort().await;
        }
        tracing::info!(
            shard = %shard.shard,
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
    match complete.finish(&shard.registry.cluster, shard.shard.get()).await {
        Ok(archive) => {
            tracing::info!(
                shard = %shard.shard,
                peer,
                index,
                keys = archive.len(),
                "snapshot received and verified"
            );
            shard.core.borrow_mut().offer_snapshot(Arc::new(archive));
            Some((index, term, received, true, None))
        }
        Err(error) => {
            tracing::error!(shard = %shard.shard, peer, %error, "received snapshot refused");
            fail(error.to_string())
        }
    }
}
