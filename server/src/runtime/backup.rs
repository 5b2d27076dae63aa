//! Backup streams: the bytes of a snapshot file (already in memory: the archive is read in
//! place) sent to the client that asked, in chunks under its request id, at most the job's
//! rate (by default the snapshot write rate). A chunk is queued only while the connection's
//! output buffer holds at most [`BACKUP_QUEUED_BYTES_MAX`] (the buffer empties once all of it
//! is written), so a slow client holds no more than that of copies. A connection that
//! closes ends the stream; a node that stops, or a client that lets its buffer stay full for
//! [`BACKUP_STALL_MS`], ends it with an `Unavailable` reply, and the client starts that shard
//! over.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use corekv_proto::encode::{ChunkPlace, ErrorInfo, ReplyEncoder};

use super::state::{ClientConn, Shard};
use crate::constants::{BACKUP_CHUNK_BYTES, BACKUP_QUEUED_BYTES_MAX, BACKUP_STALL_MS};
use crate::core::BackupJob;

/// How often a stream looks again at a connection whose output is full (a 1 MiB chunk takes
/// 30 ms at the default rate: polling costs a hundred wake-ups a second, only while blocked).
const BACKUP_POLL: Duration = Duration::from_millis(10);

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

/// Sends every chunk; false when the stream ended first.
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
        let Some(conn) = shard.conns.borrow().get(&job.conn).cloned() else { return false };
        if shard.stopping.get() {
            end_stream(&conn, job.id, "the node is shutting down");
            return false;
        }
        if conn.out.borrow().len() > BACKUP_QUEUED_BYTES_MAX {
            if progress.elapsed() > Duration::from_millis(BACKUP_STALL_MS) {
                tracing::warn!(shard = %shard.shard, conn = job.conn, offset,
                    "a backup's client took nothing for a minute; its stream is given up");
                end_stream(&conn, job.id, "the backup's client took nothing for a minute");
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

/// Ends a stream before its last chunk: the request is answered `Unavailable`, why.
fn end_stream(conn: &ClientConn, id: u64, reason: &str) {
    let frame = ReplyEncoder::new().error(id, &ErrorInfo::Unavailable { reason }).to_vec();
    conn.push_reply(&frame, true);
}
