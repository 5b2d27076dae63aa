//! Snapshots in the shard core: when to take one, what to do when it is durable, and
//! installing a leader's snapshot.
//!
//! ```text
//!  applied entries ──► threshold reached? ──► freeze the state machine ──► SnapshotJob
//!                                                                            │ (shell: build the
//!                                                                            │  archive off-thread,
//!                                                                            ▼  write it, sync it)
//!  on_snapshot_written ◄─────────────────────────────────────────────────── durable file
//!    │ the archive becomes the state's base; raft-rs hands it to followers that need it
//!    └ the log is compacted up to the *previous* snapshot, so a damaged newest file can
//!      always fall back to the older one plus the log after it
//! ```
//!
//! A follower that needs entries its leader compacted gets the leader's snapshot file: the
//! shell receives and verifies it, offers it here ([`ShardCore::offer_snapshot`]), and only
//! then steps raft's `MsgSnapshot`; the Ready that carries the snapshot replaces the log and
//! the state.

use std::sync::Arc;

use corekv_proto::encode::ErrorInfo;
use corekv_storage::raft_log::RaftLogStore;
use corekv_storage::snapshot::{Archive, SnapshotMeta};
use corekv_storage::state_machine::FrozenState;
use raft::eraftpb::{ConfState, Snapshot};
use raft::SnapshotStatus;

use corekv_types::membership::Membership;

use super::{membership, ShardCore};

/// A snapshot for the shell to build and write.
#[derive(Debug)]
pub struct SnapshotJob {
    /// The frozen state to archive.
    pub frozen: FrozenState,
    /// Its identity.
    pub meta: SnapshotMeta,
    /// The membership as of its index, to record.
    pub membership: Membership,
}

impl SnapshotJob {
    /// Builds the snapshot's archive: the frozen state merged and serialized. It touches
    /// every key, so the shell runs it off the executor.
    pub fn build(self) -> corekv_storage::Result<Archive> {
        let SnapshotJob { frozen, meta, membership } = self;
        let base = frozen.base.as_deref();
        Archive::build(meta, &membership, base, &frozen.overlay, frozen.clock_ms, &frozen.leases)
    }
}

/// When to snapshot: the first threshold reached wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries applied since the last snapshot.
    pub entries: u64,
    /// Bytes of entry data applied since the last snapshot.
    pub log_bytes: u64,
    /// How fast the shell writes the snapshot file, in bytes per second.
    pub write_bytes_per_sec: u64,
}

/// Snapshot bookkeeping of a core.
#[derive(Debug, Default)]
pub(super) struct SnapshotState {
    /// Index of the newest durable snapshot (0: none).
    pub(super) newest: u64,
    /// Index of the one before it: the log is compacted up to here.
    pub(super) previous: u64,
    /// Index of the snapshot being made.
    pub(super) in_progress: Option<u64>,
    /// Entry bytes applied since the last snapshot was started.
    pub(super) applied_bytes: u64,
    /// Don't start another snapshot before this tick (after a failure).
    pub(super) retry_tick: u64,
    /// A verified snapshot from the leader, waiting for its `MsgSnapshot`.
    pub(super) offered: Option<Arc<Archive>>,
    /// Whether snapshot files beyond the newest two can be removed.
    pub(super) prune: bool,
    /// Whether the next snapshot waits this replica's stagger on top of the thresholds (the
    /// first one after start-up or after installing a leader's snapshot).
    pub(super) staggered: bool,
    /// A job made and held until the watch history is durable through its index.
    pub(super) held: Option<SnapshotJob>,
}

/// Ticks to wait after a failed snapshot before trying again.
const SNAPSHOT_RETRY_TICKS: u64 = 100;

fn raft_snapshot(index: u64, term: u64, conf: &ConfState) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().set_conf_state(conf.clone());
    snapshot
}

/// At start-up, makes the recovered log agree with the newest snapshot file `(index, term)`
/// (which must not be older than the log's compaction point).
///
/// When the log holds the snapshot's entry, everything up to it is committed. When it does not
/// — a leader's snapshot was received and its file made durable, but the crash came before
/// the WAL recorded the reset to it, or the data directory was made by `corekv restore` and
/// has no WAL — the log is reset to the snapshot now: its entries were either older than the
/// snapshot or from a branch the leader's log does not contain, and raft-rs refuses to start
/// with a commit index past the end of the log. The hard state's term is raised to the
/// snapshot's when it is lower (a restored directory's is 0): a replica's term is never
/// below its last entry's, else the first leader of a restored cluster would append entries
/// of a lower term after the snapshot, and a replica holding only the snapshot would count
/// as more up to date than those holding them — it could win an election and overwrite
/// committed entries.
pub(super) fn reconcile_log_with_snapshot(
    store: &mut RaftLogStore,
    index: u64,
    term: u64,
    conf: &ConfState,
) -> Result<(), String> {
    use raft::Storage;
    if store.hard_state().term < term {
        let mut hard_state = store.hard_state().clone();
        hard_state.term = term;
        hard_state.vote = raft::INVALID_ID;
        store
            .set_hard_state(&hard_state)
            .map_err(|refused| format!("raising the term to snapshot {index}'s: {refused:?}"))?;
    }
    if store.term(index).is_ok_and(|t| t == term) {
        store.ensure_committed(index);
        return Ok(());
    }
    tracing::info!(
        index,
        term,
        "the log lacks the newest snapshot's entry; resetting it to the snapshot"
    );
    store
        .reset_to_snapshot(raft_snapshot(index, term, conf))
        .map_err(|refused| format!("resetting the log to snapshot {index}: {refused:?}"))?;
    store.ensure_committed(index);
    Ok(())
}

impl ShardCore {
    /// Sets up snapshot bookkeeping after start-up: the newest snapshot is the state machine's
    /// base, and the log is already compacted to the previous one.
    pub(super) fn init_snapshots(&mut self) {
        if let Some(base) = self.sm.base().cloned() {
            let meta = base.meta();
            self.snapshots.newest = meta.index;
            let conf = membership::conf_state(&self.snapshot_membership(&base));
            let snapshot = raft_snapshot(meta.index, meta.term, &conf);
            self.raw.mut_store().set_snapshot(snapshot);
        }
        self.snapshots.previous = self.raw.store().compacted().0;
        self.snapshots.staggered = true;
    }

    /// The membership `archive` records, with the addresses a version 1 file lacks.
    fn snapshot_membership(&self, archive: &Archive) -> Membership {
        membership::with_registry_addrs(archive.membership().clone(), &self.cfg.registry)
    }

    /// The thresholds for the next snapshot. Every replica applies the same entries, so with
    /// equal thresholds all of a group's replicas would snapshot at the same index, at the same
    /// time: each one's CPU and disk busy at once, commits slowed on the leader and on every
    /// follower a quorum could use. Instead, the first snapshot of a replica (after start-up,
    /// or after it installed its leader's snapshot and so shares its leader's phase) comes
    /// `rank / replicas` of a period later, rank being its place among the voters; later ones
    /// follow a whole period apart, and the replicas stay that far out of step.
    fn snapshot_thresholds(&self) -> (u64, u64) {
        let policy = self.cfg.snapshots;
        if !self.snapshots.staggered {
            return (policy.entries, policy.log_bytes);
        }
        // Called on every pass of the shard loop: counted, not sorted into a new list.
        let voters = &self.membership.voters;
        let rank = voters.iter().filter(|&&id| id < self.cfg.node_id).count() as u64;
        let replicas = voters.len().max(1) as u64;
        let delay = |period: u64| period.saturating_add(period / replicas * rank);
        (delay(policy.entries), delay(policy.log_bytes))
    }

    /// Counts applied entry bytes toward the snapshot threshold.
    pub(super) fn note_applied_bytes(&mut self, bytes: usize) {
        self.snapshots.applied_bytes += bytes as u64;
    }

    /// A snapshot to make, when a threshold is reached and none is under way. A job goes out
    /// only once the watch history is durable through its index (a restart rebuilds the state
    /// from the snapshot, and keeps the history only when it reaches that far): until then
    /// the core holds it and has the history flushed.
    pub(super) fn take_snapshot_job(&mut self) -> Option<SnapshotJob> {
        if let Some(held) = self.snapshots.held.take() {
            if self.history.durable_through() >= held.meta.index {
                return Some(held);
            }
            self.snapshots.held = Some(held);
            return None;
        }
        let job = self.new_snapshot_job()?;
        if self.history.durable_through() >= job.meta.index {
            return Some(job);
        }
        self.history.want_durable(job.meta.index);
        self.snapshots.held = Some(job);
        None
    }

    fn new_snapshot_job(&mut self) -> Option<SnapshotJob> {
        let applied = self.sm.applied_index();
        let (entries, log_bytes) = self.snapshot_thresholds();
        let state = &self.snapshots;
        // A follower that needs a snapshot the newest one is not (see
        // `RaftLogStore::take_snapshot_wanted`) has one taken for it.
        let wanted = self.raw.mut_store().take_snapshot_wanted() && applied > state.newest;
        let due = applied.saturating_sub(state.newest) >= entries
            || state.applied_bytes >= log_bytes
            || wanted
            || (self.backup_wants_snapshot() && applied > state.newest);
        if !due
            || state.in_progress.is_some()
            || self.ticks < state.retry_tick
            || self.shutting_down
        {
            return None;
        }
        let frozen = self.sm.freeze()?;
        self.snapshots.in_progress = Some(frozen.index);
        self.snapshots.applied_bytes = 0;
        self.snapshots.staggered = false;
        let meta = SnapshotMeta {
            cluster: self.cfg.cluster.clone(),
            shard: self.cfg.shard.get(),
            index: frozen.index,
            term: frozen.term,
        };
        tracing::info!(shard = %self.cfg.shard, index = frozen.index, "taking a snapshot");
        Some(SnapshotJob { frozen, meta, membership: self.membership.clone() })
    }

    /// The job's snapshot is durable as `archive`: it becomes the state's base, raft-rs may
    /// send it to followers, and the log is compacted up to the previous snapshot.
    pub fn on_snapshot_written(&mut self, archive: Arc<Archive>) {
        let (index, term) = (archive.meta().index, archive.meta().term);
        let conf = membership::conf_state(&self.snapshot_membership(&archive));
        self.snapshots.in_progress = None;
        let Some(replaced) = self.sm.adopt_snapshot(archive, index) else {
            // A leader's snapshot replaced the state meanwhile; this one is out of date.
            return;
        };
        self.out.garbage.push(replaced);
        let previous = std::mem::replace(&mut self.snapshots.newest, index);
        self.snapshots.previous = previous;
        self.raw.mut_store().set_snapshot(raft_snapshot(index, term, &conf));
        // What raft-rs wished for while this one was being made, this one may be.
        let _ = self.raw.mut_store().take_snapshot_wanted();
        if previous > self.raw.store().compacted().0 {
            if let Err(refused) = self.raw.mut_store().compact(previous) {
                tracing::warn!(shard = %self.cfg.shard, ?refused, "compacting the log failed");
            }
            // The marker only matters once durable; the next flush takes it along.
        }
        self.snapshots.prune = true;
        self.metrics.snapshots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(shard = %self.cfg.shard, index, compacted_to = previous, "snapshot durable");
        self.serve_waiting_backups();
    }

    /// Making the snapshot failed: the frozen layer folds back; retry later.
    pub fn on_snapshot_failed(&mut self, error: &str) {
        tracing::error!(shard = %self.cfg.shard, error, "snapshot failed; retrying later");
        self.sm.thaw();
        self.snapshots.in_progress = None;
        self.snapshots.retry_tick = self.ticks + SNAPSHOT_RETRY_TICKS;
        // Still due: retried once the pause is over, not after another log's worth of writes.
        let (_, log_bytes) = self.snapshot_thresholds();
        self.snapshots.applied_bytes = self.snapshots.applied_bytes.max(log_bytes);
        self.metrics.snapshot_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fail_waiting_backups(&format!("taking it failed: {error}"));
    }

    /// Whether old snapshot files can be removed (once, after each new snapshot).
    pub(super) fn take_prune(&mut self) -> bool {
        std::mem::take(&mut self.snapshots.prune)
    }

    /// A leader's snapshot, received and verified: the next `MsgSnapshot` for it installs it.
    pub fn offer_snapshot(&mut self, archive: Arc<Archive>) {
        self.snapshots.offered = Some(archive);
    }

    /// Whether a `MsgSnapshot` for `(index, term)` may be stepped (its file is here).
    pub fn has_offered_snapshot(&self, index: u64, term: u64) -> bool {
        self.snapshots
            .offered
            .as_ref()
            .is_some_and(|a| a.meta().index == index && a.meta().term == term)
    }

    /// The result of sending our snapshot to `node`.
    pub fn report_snapshot(&mut self, node: u64, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.raw.report_snapshot(node, status);
        let counter = if delivered {
            &self.metrics.snapshots_sent
        } else {
            &self.metrics.snapshot_send_failures
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Installs the snapshot a Ready carries: the log restarts after it and the state becomes
    /// the snapshot's. Returns false when this replica was never given the file (a bug).
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> bool {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        let Some(archive) = self
            .snapshots
            .offered
            .take()
            .filter(|a| a.meta().index == index && a.meta().term == term)
        else {
            return false;
        };
        if let Err(refused) = self.raw.mut_store().reset_to_snapshot(snapshot.clone()) {
            self.fail(format!("WAL refused the snapshot reset: {refused:?}"));
            return true;
        }
        let membership = self.snapshot_membership(&archive);
        self.set_membership(membership);
        let replaced = self.sm.restore(archive);
        self.out.garbage.push(replaced);
        self.watch_restored(index);
        self.snapshots.newest = index;
        self.snapshots.previous = index;
        // A snapshot job still out stays the one in progress: its result is out of date
        // (`on_snapshot_written` discards it), and until it is back no other starts.
        self.snapshots.applied_bytes = 0;
        self.snapshots.prune = true;
        self.snapshots.staggered = true;
        self.metrics.snapshots_installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Writes proposed at or before the snapshot's index: their entries were replaced by
        // the snapshot; whether they made it in is unknown here.
        self.fail_pending_through(index);
        self.admin_snapshot_installed(index);
        self.serve_waiting_backups();
        tracing::info!(shard = %self.cfg.shard, index, term, "installed the leader's snapshot");
        true
    }

    fn fail_pending_through(&mut self, index: u64) {
        for w in self.writes.take_pending_through(index) {
            self.reply_error(w, &ErrorInfo::Timeout);
        }
    }
}
