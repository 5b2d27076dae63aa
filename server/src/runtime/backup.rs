//! Backup streams: the bytes of a snapshot file (already in memory: the archive is read in
//! place) sent to the client that asked, in chunks under its request id, at most the job's
//! rate (by default the snapshot write rate), each chunk queued only once the connection has
//! written out all but [`BACKUP_QUEUED_BYTES_MAX`] of what it holds. A connection that closes,
//! a client that takes nothing for [`BACKUP_STALL_MS`], or a node that stops ends the stream;
//! the client starts that shard over.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use corekv_proto::encode::{ChunkPlace, ReplyEncoder};

use super::state::Shard;
use crate::constants::{BACKUP_CHUNK_BYTES, BACKUP_QUEUED_BYTES_MAX, BACKUP_STALL_MS};
use crate::core::BackupJob;

/// How often a stream looks again at a connection whose output is full.
const BACKUP_POLL: Duration = Duration::from_millis(2);

/// Streams `job`'s snapshot, then tells the core the stream is over.
pub(super) async fn stream_backup(shard: Rc<Shard>, job: BackupJob) {
    let sent = send(&shard, &job).await;
    if !sent {
        tracing::info!(shard = %shard.shard, conn = job.conn, "backup stream ended early");
    }
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    core.on_backup_streamed(sent);
}

/// Sends every chunk; false when the connection or the node went away first.
async fn send(shard: &Shard, job: &BackupJob) -> bool {
    let bytes = job.archive.file_bytes();
    let meta = job.archive.meta();
    let total = bytes.len() as u64;
    let rate = job.bytes_per_sec.max(1) as f64;
    let began = Instant::now();
    let mut encoder = ReplyEncoder::new();
    let mut offset = 0usize;
    let mut progress = Instant::now();
    loop {
        if shard.stopping.get() {
            return false;
        }
        let Some(conn) = shard.conns.borrow().get(&job.conn).cloned() else { return false };
        if conn.out.borrow().len() > BACKUP_QUEUED_BYTES_MAX {
            if progress.elapsed() > Duration::from_millis(BACKUP_STALL_MS) {
                tracing::warn!(shard = %shard.shard, conn = job.conn, offset,
                    "a backup's client took nothing for a minute; its stream is given up");
                return false;
            }
            glommio::timer::sleep(BACKUP_POLL).await;
            continue;
        }
        progress = Instant::now();
        // Paced: the bytes sent so far may not run ahead of the rate.
        let due = Duration::from_secs_f64(offset as f64 / rate);
        if let Some(wait) = due.checked_sub(began.elapsed()).filter(|w| !w.is_zero()) {
            glommio::timer::sleep(wait).await;
            continue;
        }
        let end = (offset + BACKUP_CHUNK_BYTES).min(bytes.len());
        let last = end == bytes.len();
        let place = ChunkPlace {
            shard: meta.shard,
            index: meta.index,
            term: meta.term,
            offset: offset as u64,
            total,
        };
        conn.push_reply(encoder.backup_chunk(job.id, place, &bytes[offset..end], last), last);
        shard.metrics.backup_bytes_sent.fetch_add((end - offset) as u64, Relaxed);
        offset = end;
        if last {
            return true;
        }
    }
}
