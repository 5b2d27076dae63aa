//! What a turn of the core leaves the shell to do, done: raft messages onto the peer links,
//! replies onto their connections, retired segments to the flush task, old WAL records read
//! back for a lagging follower.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use corekv_proto::encode::PeerEncoder;
use corekv_storage::raft_log::{ColdFetch, ColdRead};
use corekv_storage::wal::SegmentSource;
use raft::eraftpb::Message;

use super::background;
use super::peer::{link_to, start_snapshot_send};
use super::state::Shard;
use crate::constants::FRAME_SPLIT_BYTES;
use crate::core::{HistoryReadJob, Outputs};

/// Sends the core's outputs: raft messages to peer queues (one frame per peer per call),
/// replies to their connections, retired segments to the flush task.
pub(super) fn dispatch(shard: &Rc<Shard>, out: &mut Outputs, encoder: &mut PeerEncoder) {
    if !out.messages.is_empty() {
        // Stable: keeps each peer's messages in order.
        out.messages.sort_by_key(|m| m.to);
        let mut start = 0;
        while start < out.messages.len() {
            let to = out.messages[start].to;
            let end = start + out.messages[start..].iter().take_while(|m| m.to == to).count();
            send_to_peer(shard, to, &out.messages[start..end], encoder);
            start = end;
        }
    }
    if !out.replies.is_empty() {
        let conns = shard.conns.borrow();
        let mut streamed = out.streamed.iter().peekable();
        for (i, (conn, range)) in out.replies.drain(..).enumerate() {
            let stream = streamed.next_if_eq(&&i).is_some();
            if let Some(c) = conns.get(&conn) {
                c.push_reply(&out.reply_bytes[range], !stream);
            }
        }
        out.streamed.clear();
        for conn in out.close.drain(..) {
            if let Some(c) = conns.get(&conn) {
                c.close_after_output();
            }
        }
    }
    if !out.retire.is_empty() {
        shard.retire.borrow_mut().append(&mut out.retire);
    }
    if !out.history_retire.is_empty() {
        shard.history_retire.borrow_mut().append(&mut out.history_retire);
    }
    if !out.drain_notify.is_empty() {
        let conns = shard.conns.borrow();
        for conn in out.drain_notify.drain(..) {
            if let Some(c) = conns.get(&conn) {
                c.notify_when_drained();
            }
        }
    }
    for job in out.history_reads.drain(..) {
        glommio::spawn_local(read_history(shard.clone(), job)).detach();
    }
    if !out.garbage.is_empty() {
        background::free_replaced(std::mem::take(&mut out.garbage));
    }
    for job in out.backups.drain(..) {
        glommio::spawn_local(super::backup::stream_backup(shard.clone(), job)).detach();
    }
    for fetch in out.cold_fetches.drain(..) {
        glommio::spawn_local(read_cold_records(shard.clone(), fetch)).detach();
    }
    shard.flush_wake.notify();
    shard.history_flush_wake.notify();
}

/// Reads watch history a catching-up watcher needs on glommio's blocking pool (a plain
/// `pread`; the records are checksummed), then hands it to the core.
async fn read_history(shard: Rc<Shard>, job: HistoryReadJob) {
    let segments = shard.history_segments.clone();
    let read = job.read;
    let data = glommio::executor()
        .spawn_blocking(move || segments.read_at(read.seq, read.offset, read.len))
        .await;
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    core.on_history_read(job, data);
    drop(core);
    shard.wake.notify();
}

/// Reads the WAL records a lagging follower needs on glommio's blocking pool (plain `pread`s:
/// the records are whole and checksummed, and the shard's executor goes on serving), then
/// hands them to the core, which sends them.
pub(super) async fn read_cold_records(shard: Rc<Shard>, fetch: ColdFetch) {
    let reads: Vec<ColdRead> = fetch.reads().to_vec();
    let segments = shard.segments.clone();
    let data = glommio::executor()
        .spawn_blocking(move || {
            reads.iter().map(|r| segments.read_at(r.seq, r.offset, r.len)).collect::<Vec<_>>()
        })
        .await;
    shard.metrics.cold_records_read.fetch_add(data.len() as u64, Ordering::Relaxed);
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    core.on_cold_fetched(fetch, data);
    drop(core);
    shard.wake.notify();
}

pub(super) fn send_to_peer(
    shard: &Rc<Shard>,
    to: u64,
    messages: &[Message],
    encoder: &mut PeerEncoder,
) {
    let Some(link) = link_to(shard, to) else {
        tracing::warn!(shard = %shard.shard, to,
            "raft message for a node whose address is not known dropped");
        return;
    };
    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(messages.len());
    let mut bytes = 0;
    for message in messages {
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            // Sent with its file, by a transfer task.
            start_snapshot_send(shard, &link, message.clone());
            continue;
        }
        let data = protobuf::Message::write_to_bytes(message).expect("raft messages always encode");
        // Keep frames well under the frame limit: a big batch of appends becomes several.
        if bytes + data.len() > FRAME_SPLIT_BYTES && !encoded.is_empty() {
            link.send(
                encoder.raft_batch(encoded.iter().map(Vec::as_slice)),
                encoded.len(),
                &shard.metrics,
            );
            encoded.clear();
            bytes = 0;
        }
        bytes += data.len();
        encoded.push(data);
    }
    if !encoded.is_empty() {
        link.send(
            encoder.raft_batch(encoded.iter().map(Vec::as_slice)),
            encoded.len(),
            &shard.metrics,
        );
    }
}
