//! The driver contract: what a shell calls on a [`ShardCore`], and in which order. The glommio
//! runtime (`runtime/startup.rs`, `runtime/driver.rs`), the simulator (`tests/simulator/`) and
//! the sans-IO tests (`tests/core_sans_io.rs`) are the three shells; each goes through these
//! calls and none repeats what they do inside.
//!
//! ```text
//!  shell                                                core
//!    │ open the WAL's segment files; load the newest
//!    │ snapshot file that validates (I/O: the shell's)
//!    │── ShardCore::recover(cfg, Recovery) ─────────────► log store from the WAL, made to
//!    │◄──────────────────────────────────────── core ──── agree with the snapshot; state
//!    │                                                    machine from the snapshot
//!    │── start(now) ────────────────────────────────────► campaign at once if preferred
//!    │
//!    │ loop, one thread, never across an await:
//!    │── inputs as they come (set_now first):
//!    │     on_client_frame, step, report_unreachable,
//!    │     on_snapshot_incoming, offer_snapshot, report_snapshot
//!    │── turn(now, ticks, &mut out) ────────────────────► ticks, the Ready loop (ready.rs)
//!    │◄─────────────────── out + Turn { snapshot, prune } ─
//!    │     send out.messages, write out.replies, close out.close, retire out.retire,
//!    │     drop out.garbage, read out.cold_fetches and out.history_reads, retire
//!    │     out.history_retire, watch out.drain_notify, build turn.snapshot, prune old files
//!    │
//!    │── take_flush_job() whenever no flush is in flight ─► everything appended, one job
//!    │     write + fdatasync
//!    │── on_flush_complete(job) | on_flush_failed(e) ──► durable: held messages go out
//!    │── on_snapshot_written(a) | on_snapshot_failed(e) ► new base, compaction
//!    │── on_cold_fetched(fetch, data) ──────────────────► raft-rs sends the entries
//!    │── take_history_flush_job() when due (history_flush_due_us), one at a time
//!    │── on_history_flush_complete(job) | _failed(e) ──► a held snapshot job may go
//!    │── on_history_read(job, data) ────────────────────► a catching-up watcher goes on
//!    │── on_client_drained(conn) (asked in out.drain_notify) ► its watchers go on
//!    │     (each completion is followed by a turn)
//!    │
//!    │ shutdown: shutdown_turn(now, give_up, &mut out) until it says drained, then
//!    │ flush what is buffered
//! ```
//!
//! Ticks are counted by the shell and handed to the next turn: a burst of inputs and the
//! ticks that elapsed meanwhile make one pass of the Ready loop, so requests that arrived
//! together become one raft entry.

use std::sync::Arc;

use corekv_proto::encode::ErrorInfo;
use corekv_storage::error::StorageError;
use corekv_storage::history::{HistoryLog, Retention};
use corekv_storage::raft_log::RaftLogStore;
use corekv_storage::snapshot::Archive;
use corekv_storage::state_machine::StateMachine;
use corekv_storage::wal::FlushJob;
use corekv_storage::wal::{RecoveryMode, SegmentIdentity, SegmentSource};
use raft::eraftpb::ConfState;

use corekv_types::membership::Membership;

use super::counters::ShardMetrics;
use super::membership;
use super::snapshots::reconcile_log_with_snapshot;
use super::{CoreConfig, Outputs, ShardCore, SnapshotJob};

/// What a shell hands [`ShardCore::recover`]: the replica's storage, opened.
pub struct Recovery {
    /// The WAL's segment files (or the simulator's disk).
    pub segments: Box<dyn SegmentSource>,
    /// Size of new segment files.
    pub segment_bytes: u64,
    /// Strict, or repairing a torn tail (`corekv-wal repair`).
    pub mode: RecoveryMode,
    /// The newest snapshot file that validated, if any.
    pub snapshot: Option<Arc<Archive>>,
    /// Bytes of log entries kept in memory; `None` for the default (tests make it small to
    /// have followers read from the WAL).
    pub entry_cache_bytes: Option<usize>,
    /// The watch history's segment files (`DATA_DIR/shard-S/history/`, or the simulator's
    /// disk), in the WAL's format.
    pub history: Box<dyn SegmentSource>,
    /// Size of new history segment files.
    pub history_segment_bytes: u64,
    /// How much watch history to keep.
    pub history_retention: Retention,
    /// Bytes of watch history kept in memory; `None` for the default (tests make it small to
    /// have watchers read from disk).
    pub history_cache_bytes: Option<usize>,
}

/// Why a replica's state could not be recovered.
#[derive(Debug)]
pub enum RecoveryError {
    /// The WAL could not be read back.
    Wal(StorageError),
    /// The log could not be made to agree with the snapshot.
    Reconcile(String),
    /// The log starts after an index that no valid snapshot reaches.
    NoSnapshotReaches {
        /// Where the log starts.
        compacted: u64,
        /// The index of the newest valid snapshot, if there is one.
        newest: Option<u64>,
    },
    /// raft-rs refused the recovered state.
    Raft(raft::Error),
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryError::Wal(error) => write!(f, "recovering the WAL: {error}"),
            RecoveryError::Reconcile(error) => write!(f, "{error}"),
            RecoveryError::NoSnapshotReaches { compacted, newest } => write!(
                f,
                "the log starts after index {compacted}, but no valid snapshot reaches it \
                 (newest valid: {newest:?}); this replica cannot rebuild its state locally"
            ),
            RecoveryError::Raft(error) => write!(f, "starting raft: {error}"),
        }
    }
}

impl std::error::Error for RecoveryError {}

/// What a turn leaves the shell to do besides the outputs.
#[derive(Debug, Default)]
pub struct Turn {
    /// A snapshot to build and write (one at a time: the next comes after
    /// [`ShardCore::on_snapshot_written`] or [`ShardCore::on_snapshot_failed`]).
    pub snapshot: Option<SnapshotJob>,
    /// Old snapshot files can be removed (all but the newest few).
    pub prune: bool,
}

impl ShardCore {
    /// Recovery: the log store from the WAL; when a snapshot reaches the log's start, the log
    /// made to agree with it (`reconcile_log_with_snapshot`) and the state machine built on
    /// it; then raft-rs on top. The log entries after the snapshot apply once the core runs
    /// (those its hard state says are committed at once, the rest as a leader commits them).
    pub fn recover(
        cfg: CoreConfig,
        recovery: Recovery,
        metrics: Arc<ShardMetrics>,
        logger: &slog::Logger,
    ) -> Result<ShardCore, RecoveryError> {
        let began = std::time::Instant::now();
        let identity = SegmentIdentity { cluster: cfg.cluster.clone(), shard: cfg.shard.get() };
        let (mut store, recovered) = RaftLogStore::open(
            recovery.segments,
            identity,
            recovery.segment_bytes,
            ConfState::default(),
            recovery.mode,
        )
        .map_err(RecoveryError::Wal)?;
        if let Some(bytes) = recovery.entry_cache_bytes {
            store.set_cache_limit(bytes);
        }
        let compacted = store.compacted().0;
        let (sm, membership) = match recovery.snapshot {
            Some(archive) if archive.meta().index >= compacted => {
                let (index, term) = (archive.meta().index, archive.meta().term);
                let membership =
                    membership::with_registry_addrs(archive.membership().clone(), &cfg.registry);
                let conf = membership::conf_state(&membership);
                reconcile_log_with_snapshot(&mut store, index, term, &conf)
                    .map_err(RecoveryError::Reconcile)?;
                (StateMachine::from_snapshot(archive), membership)
            }
            None if compacted == 0 => {
                // A node added to a running cluster starts knowing no member: its membership
                // comes with the leader's snapshot (see `catch_up`). Any other replica without
                // a snapshot is one of the cluster's first voters.
                let empty = raft::Storage::last_index(&store).unwrap_or(0) == 0;
                let membership = if cfg.join && empty {
                    Membership::default()
                } else {
                    Membership::bootstrap(&cfg.registry)
                };
                (StateMachine::new(), membership)
            }
            newest => {
                let newest = newest.map(|a| a.meta().index);
                return Err(RecoveryError::NoSnapshotReaches { compacted, newest });
            }
        };
        tracing::info!(
            shard = %cfg.shard,
            snapshot_index = sm.applied_index(),
            snapshot_keys = sm.len(),
            wal_records = recovered.records,
            wal_segments = recovered.segments.len(),
            log_last_index = raft::Storage::last_index(&store).unwrap_or(0),
            log_commit_index = store.hard_state().commit,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "state recovered: snapshot loaded, the WAL read back; the log entries after the \
             snapshot apply next"
        );
        store.set_conf_state(membership::conf_state(&membership));
        let history_identity =
            SegmentIdentity { cluster: cfg.cluster.clone(), shard: cfg.shard.get() };
        let opened = HistoryLog::open(
            recovery.history.as_ref(),
            history_identity,
            recovery.history_segment_bytes,
            sm.applied_index(),
            recovery.history_retention,
        );
        if let Some(why) = &opened.restarted {
            tracing::warn!(shard = %cfg.shard, %why, first_index = opened.log.first(),
                "the watch history starts anew (watchers from older cursors are told Compacted)");
        }
        let mut history = opened.log;
        if let Some(bytes) = recovery.history_cache_bytes {
            history.set_cache_limit(bytes);
        }
        let mut core = ShardCore::new(cfg, store, sm, history, membership, metrics, logger)
            .map_err(RecoveryError::Raft)?;
        core.out.history_retire.extend(opened.discard);
        Ok(core)
    }

    /// A watch history flush job when one is due and none is in flight (the shell runs it
    /// like a WAL flush job, then calls [`ShardCore::on_history_flush_complete`] or
    /// [`ShardCore::on_history_flush_failed`]); [`ShardCore::history_flush_due_us`] says when
    /// to ask again.
    pub fn take_history_flush_job(&mut self) -> Option<FlushJob> {
        self.history.take_flush_job(self.now_us)
    }

    /// When a history flush job is next due (µs, the core's clock), if one will be.
    pub fn history_flush_due_us(&self) -> Option<u64> {
        self.history.flush_due_us()
    }

    /// A history flush job finished. Followed by a turn (a snapshot may wait for it).
    pub fn on_history_flush_complete(&mut self, job: FlushJob) {
        self.history.on_flush_complete(job);
    }

    /// A history flush job failed: the history keeps going in memory only.
    pub fn on_history_flush_failed(&mut self, error: String) {
        self.metrics.wal_flush_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.history.on_flush_failed(error);
    }

    /// The first call after recovery: the clock, and an election at once if this node is the
    /// shard's preferred leader and knows of none.
    pub fn start(&mut self, now_us: u64) {
        self.set_now(now_us);
        self.campaign_if_preferred();
    }

    /// One turn of the driver: `ticks` raft ticks, the Ready loop over everything that arrived
    /// since the last turn, and what came of it into `out` (swapped in, so its allocations are
    /// reused).
    pub fn turn(&mut self, now_us: u64, ticks: u64, out: &mut Outputs) -> Turn {
        self.set_now(now_us);
        for _ in 0..ticks {
            self.tick();
        }
        self.process();
        self.take_outputs(out);
        Turn { snapshot: self.take_snapshot_job(), prune: self.take_prune() }
    }

    /// One turn of shutdown: the first stops taking requests; each runs the Ready loop so
    /// writes in flight can apply; once none is left, or the shell gives up waiting, every
    /// request still waiting is answered. True when no write is in flight any more.
    pub fn shutdown_turn(&mut self, now_us: u64, give_up: bool, out: &mut Outputs) -> bool {
        self.set_now(now_us);
        if !self.shutting_down {
            self.begin_shutdown();
        }
        self.process();
        if !self.has_writes_in_flight() || give_up {
            self.finish_shutdown();
        }
        self.take_outputs(out);
        !self.has_writes_in_flight()
    }

    /// Begins shutdown: stops taking new requests, proposes what is batched, and makes the
    /// next flush take everything buffered.
    pub(super) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.end_watches(corekv_proto::client::WatchEndReason::ShuttingDown);
        self.process();
    }

    /// Whether writes are still waiting for their entries to apply.
    pub(super) fn has_writes_in_flight(&self) -> bool {
        self.writes.in_flight() > 0
    }

    /// Ends shutdown: answers every request still waiting — reads and unproposed writes with
    /// `Unavailable`, proposed writes with `Timeout` (their outcome is unknown).
    pub(super) fn finish_shutdown(&mut self) {
        self.fail_unproposed_writes();
        self.fail_proposed_writes_unknown();
        self.admin_shutdown();
        let reason = "the node is shutting down";
        for waiter in self.reads.drain_all() {
            self.reply_error(waiter.caller, &ErrorInfo::Unavailable { reason });
        }
        self.fail_waiting_backups(reason);
    }
}
