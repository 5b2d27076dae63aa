//! Online backup in the shard core. A leader answers a backup request with a snapshot of its
//! state at an index it applied after the request came: a ReadIndex round first (as for a
//! linearizable read), so the snapshot holds every write acknowledged before the request;
//! then the newest snapshot when it reaches that index, else a fresh one taken for it (the
//! ordinary snapshot path: built off the executor, written at the snapshot pace, and the
//! state's base from then on). The shell streams the file's bytes (`runtime::backup`).
//!
//! ```text
//!  BackupRequest ──► ReadIndex round ──► newest snapshot ≥ read index? ──yes──► BackupJob
//!                                              │ no                               ▲
//!                                              ▼                                  │
//!                               waiting; the next snapshot is due ──► durable ────┘
//! ```

use std::sync::Arc;

use corekv_proto::encode::ErrorInfo;
use corekv_storage::snapshot::Archive;

use super::replies::Caller;
use super::{ConnId, ShardCore};
use crate::constants::{BACKUP_STREAMS_MAX, BUSY_RETRY_AFTER_MS};

/// A snapshot for the shell to stream to a client.
#[derive(Debug)]
pub struct BackupJob {
    /// The connection that asked.
    pub conn: ConnId,
    /// The request's id: every chunk carries it.
    pub id: u64,
    /// The snapshot: immutable, so the stream goes on whatever the shard does meanwhile.
    pub archive: Arc<Archive>,
    /// Most bytes per second to send.
    pub bytes_per_sec: u64,
}

/// A backup request past its ReadIndex round, waiting for a snapshot that reaches `index`.
#[derive(Debug)]
struct Waiting {
    caller: Caller,
    index: u64,
    bytes_per_sec: u64,
}

/// Backups of a core.
#[derive(Debug, Default)]
pub(super) struct Backups {
    waiting: Vec<Waiting>,
    /// Streams the shell is sending.
    streaming: usize,
}

impl ShardCore {
    /// A backup request whose ReadIndex round is over at `read_index`: answered from the
    /// newest snapshot when it reaches that far, else when the one taken for it is durable.
    pub(super) fn serve_backup(&mut self, caller: Caller, read_index: u64, bytes_per_sec: u64) {
        if self.backups.streaming + self.backups.waiting.len() >= BACKUP_STREAMS_MAX {
            let error = ErrorInfo::Busy { retry_after_ms: BUSY_RETRY_AFTER_MS };
            return self.reply_error(caller, &error);
        }
        let rate = match bytes_per_sec {
            0 => self.cfg.snapshots.write_bytes_per_sec,
            rate => rate,
        };
        self.backups.waiting.push(Waiting { caller, index: read_index, bytes_per_sec: rate });
        self.serve_waiting_backups();
    }

    /// Whether a backup waits for a snapshot newer than the newest (which makes one due).
    pub(super) fn backup_wants_snapshot(&self) -> bool {
        let newest = self.snapshots.newest;
        self.backups.waiting.iter().any(|w| w.index > newest)
    }

    /// Hands the shell every waiting backup the state's snapshot now reaches.
    pub(super) fn serve_waiting_backups(&mut self) {
        let Some(base) = self.sm.base().cloned() else { return };
        let reached = base.meta().index;
        let (ready, waiting): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.backups.waiting).into_iter().partition(|w| w.index <= reached);
        self.backups.waiting = waiting;
        for w in ready {
            self.metrics.replied(w.caller.op, self.now_us.saturating_sub(w.caller.start_us));
            self.backups.streaming += 1;
            tracing::info!(
                shard = %self.cfg.shard,
                index = reached,
                bytes = base.file_bytes().len(),
                "streaming a snapshot for a backup"
            );
            self.out.backups.push(BackupJob {
                conn: w.caller.conn,
                id: w.caller.id,
                archive: base.clone(),
                bytes_per_sec: w.bytes_per_sec,
            });
        }
    }

    /// No snapshot will come for the waiting backups (the one taken failed, the node shuts
    /// down, the shard failed): they are answered why, and the client asks again (this node
    /// or another).
    pub(super) fn fail_waiting_backups(&mut self, why: &str) {
        let reason = format!("no snapshot for the backup: {why}");
        for w in std::mem::take(&mut self.backups.waiting) {
            self.reply_error(w.caller, &ErrorInfo::Unavailable { reason: &reason });
        }
    }

    /// The shell finished a backup stream (`sent`: every byte was handed to the connection).
    pub fn on_backup_streamed(&mut self, sent: bool) {
        self.backups.streaming = self.backups.streaming.saturating_sub(1);
        if sent {
            self.metrics.backups_streamed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A connection closed: its backups, waiting for a ReadIndex round or a snapshot, are
    /// dropped.
    pub(super) fn drop_backups_of(&mut self, conn: ConnId) {
        self.reads.drop_backups_of(conn);
        self.backups.waiting.retain(|w| w.caller.conn != conn);
    }
}

#[cfg(test)]
mod tests;
