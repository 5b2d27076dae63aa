//! The shard's counters, gauges and latency histograms: written by the shard's own executor
//! (the core and its shell), read by the HTTP thread, rendered by [`crate::metrics`].
//!
//! Each shard owns its own [`ShardMetrics`] and is the only writer of it, so the relaxed atomic
//! updates on the hot path never contend.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::{ErrorKind, Op, ReplicaStatus, Role};

/// Upper bounds (microseconds) of the latency histogram buckets.
const LATENCY_BUCKETS_US: [u64; 18] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Upper bounds of the batch-size histogram (operations per raft entry).
const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// A fixed-bucket histogram with atomic counts.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// A histogram of latencies in microseconds.
    pub fn latency() -> Self {
        Self::new(&LATENCY_BUCKETS_US)
    }

    /// Records one observation.
    pub fn record(&self, value: u64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The buckets' upper bounds; [`Histogram::bucket`] has one more, past the last bound.
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Observations in bucket `i` (not cumulative).
    pub fn bucket(&self, i: usize) -> u64 {
        self.counts[i].load(Relaxed)
    }

    /// The sum of every observation.
    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }
}

/// Everything one shard counts.
#[derive(Debug)]
pub struct ShardMetrics {
    /// Requests received, by operation.
    pub requests: Vec<AtomicU64>,
    /// Latency from request arrival to reply, by operation, in µs.
    pub latency_us: Vec<Histogram>,
    /// Error replies, by kind ([`ErrorKind::ALL`]).
    pub errors: Vec<AtomicU64>,
    /// Raft entries proposed.
    pub proposals: AtomicU64,
    /// Client operations per proposed entry.
    pub batch_ops: Histogram,
    /// Linearizable read rounds (ReadIndex requests) issued, retries included.
    pub read_rounds: AtomicU64,
    /// WAL flushes completed.
    pub wal_flushes: AtomicU64,
    /// WAL flush latency (write and fdatasync), in µs.
    pub wal_flush_latency_us: Histogram,
    /// Bytes written by WAL flushes.
    pub wal_bytes_written: AtomicU64,
    /// WAL flushes that failed.
    pub wal_flush_errors: AtomicU64,
    /// Elections this replica started (it became a candidate).
    pub elections: AtomicU64,
    /// Changes of the leader this replica knows of.
    pub leader_changes: AtomicU64,
    /// (Pre-)vote requests this replica left unanswered while catching up after it started
    /// empty or lost data (see `ShardCore::step`).
    pub votes_withheld: AtomicU64,
    /// Raft messages dropped because a peer queue was full or a peer was unreachable.
    pub dropped_messages: AtomicU64,
    /// Raft messages sent to peers.
    pub messages_sent: AtomicU64,
    /// Raft messages received from peers.
    pub messages_received: AtomicU64,
    /// Frames refused as malformed, on client and peer ports.
    pub malformed_frames: AtomicU64,
    /// Connections refused in their TLS handshake (client, peer and HTTP ports).
    pub tls_refused: AtomicU64,
    /// Snapshots taken and made durable.
    pub snapshots: AtomicU64,
    /// Snapshots that failed to be made.
    pub snapshot_errors: AtomicU64,
    /// Time to build and write a snapshot, in µs.
    pub snapshot_duration_us: Histogram,
    /// Snapshots sent to followers.
    pub snapshots_sent: AtomicU64,
    /// Snapshot transfers to followers that failed.
    pub snapshot_send_failures: AtomicU64,
    /// Backup streams sent whole.
    pub backups_streamed: AtomicU64,
    /// Bytes of snapshot files streamed to backups.
    pub backup_bytes_sent: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    /// Membership (raft configuration) changes applied.
    pub conf_changes: AtomicU64,
    /// WAL records read back (off the executor) to send a lagging follower old entries.
    pub cold_records_read: AtomicU64,
    /// Open client connections.
    pub client_connections: AtomicI64,
    /// Open Redis protocol (RESP) connections.
    pub resp_connections: AtomicI64,
    /// Open peer connections (both directions).
    pub peer_connections: AtomicI64,
    /// 1 while this replica leads its shard.
    pub is_leader: AtomicI64,
    /// Raft term.
    pub term: AtomicI64,
    /// Commit index.
    pub commit_index: AtomicI64,
    /// Applied index.
    pub applied_index: AtomicI64,
    /// On the leader, the most entries any follower's log lags behind the leader's (0 on
    /// followers).
    pub replica_lag_entries: AtomicI64,
    /// The shard's voters (both halves of a joint configuration counted once each).
    pub voters: AtomicI64,
    /// The shard's learners.
    pub learners: AtomicI64,
    /// 1 while a membership change this leader proposed is not applied yet.
    pub conf_change_pending: AtomicI64,
    /// Watches started.
    pub watches_started: AtomicU64,
    /// Watches ended with `Compacted` (their start was older than the history).
    pub watches_compacted: AtomicU64,
    /// Watch events frames sent.
    pub watch_events: AtomicU64,
    /// Watches running on this replica.
    pub watches: AtomicI64,
    /// Live watchers switched to catching up (their connection backed up).
    pub watch_catch_ups: AtomicU64,
    /// Reads of the watch history from disk.
    pub history_reads: AtomicU64,
    /// Bytes written by watch history flushes.
    pub history_bytes_written: AtomicU64,
    /// Watchers catching up from the history.
    pub watches_catching_up: AtomicI64,
    /// Watch bytes queued on connections and not known to be written.
    pub watch_queued_bytes: AtomicI64,
    /// Bytes of watch history on disk.
    pub history_disk_bytes: AtomicI64,
    /// Bytes of watch history in memory.
    pub history_cache_bytes: AtomicI64,
    /// The oldest index the watch history covers.
    pub history_first_index: AtomicI64,
    /// Times the watch history restarted empty.
    pub history_resets: AtomicU64,
    /// History segments retired before the retention's minimums were met (size cap).
    pub history_cut_by_size: AtomicU64,
    /// Expiry entries this replica proposed as leader.
    pub expiry_proposals: AtomicU64,
    /// Keys deleted because their deadline passed (applied expiries).
    pub expired_keys: AtomicU64,
    /// On the leader, from a key's deadline to its expiry applying, in µs.
    pub expiry_lag_us: Histogram,
    /// Keys that have a deadline.
    pub timed_keys: AtomicI64,
    /// How far the state machine's clock (the largest stamp applied) is ahead of this
    /// node's, ms (0 when it is not).
    pub clock_behind_ms: AtomicI64,
    /// Leases the shard holds.
    pub leases: AtomicI64,
    /// Keys attached to a lease.
    pub lease_keys: AtomicI64,
    /// Keep-alives this replica answered as leader.
    pub lease_keep_alives: AtomicU64,
    /// Leases ended because their deadline passed (applied expiries).
    pub leases_expired: AtomicU64,
    /// Leases revoked by a client (applied revokes).
    pub leases_revoked: AtomicU64,
    /// Lease checkpoint entries this replica proposed as leader.
    pub lease_checkpoints: AtomicU64,
    /// On the leader, from a lease's deadline to its expiry applying, in µs.
    pub lease_expiry_lag_us: Histogram,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: Op::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            latency_us: Op::ALL.iter().map(|_| Histogram::latency()).collect(),
            errors: ErrorKind::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            proposals: AtomicU64::new(0),
            batch_ops: Histogram::new(&BATCH_BUCKETS),
            read_rounds: AtomicU64::new(0),
            wal_flushes: AtomicU64::new(0),
            wal_flush_latency_us: Histogram::latency(),
            wal_bytes_written: AtomicU64::new(0),
            wal_flush_errors: AtomicU64::new(0),
            elections: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            votes_withheld: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            malformed_frames: AtomicU64::new(0),
            tls_refused: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            snapshot_errors: AtomicU64::new(0),
            snapshot_duration_us: Histogram::latency(),
            snapshots_sent: AtomicU64::new(0),
            snapshot_send_failures: AtomicU64::new(0),
            backups_streamed: AtomicU64::new(0),
            backup_bytes_sent: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            watches_started: AtomicU64::new(0),
            watches_compacted: AtomicU64::new(0),
            watch_events: AtomicU64::new(0),
            watches: AtomicI64::new(0),
            watch_catch_ups: AtomicU64::new(0),
            history_reads: AtomicU64::new(0),
            history_bytes_written: AtomicU64::new(0),
            watches_catching_up: AtomicI64::new(0),
            watch_queued_bytes: AtomicI64::new(0),
            history_disk_bytes: AtomicI64::new(0),
            history_cache_bytes: AtomicI64::new(0),
            history_first_index: AtomicI64::new(0),
            history_resets: AtomicU64::new(0),
            history_cut_by_size: AtomicU64::new(0),
            expiry_proposals: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
            expiry_lag_us: Histogram::latency(),
            timed_keys: AtomicI64::new(0),
            clock_behind_ms: AtomicI64::new(0),
            leases: AtomicI64::new(0),
            lease_keys: AtomicI64::new(0),
            lease_keep_alives: AtomicU64::new(0),
            leases_expired: AtomicU64::new(0),
            leases_revoked: AtomicU64::new(0),
            lease_checkpoints: AtomicU64::new(0),
            lease_expiry_lag_us: Histogram::latency(),
            conf_changes: AtomicU64::new(0),
            cold_records_read: AtomicU64::new(0),
            client_connections: AtomicI64::new(0),
            resp_connections: AtomicI64::new(0),
            peer_connections: AtomicI64::new(0),
            is_leader: AtomicI64::new(0),
            term: AtomicI64::new(0),
            commit_index: AtomicI64::new(0),
            applied_index: AtomicI64::new(0),
            replica_lag_entries: AtomicI64::new(0),
            voters: AtomicI64::new(0),
            learners: AtomicI64::new(0),
            conf_change_pending: AtomicI64::new(0),
        }
    }
}

impl ShardMetrics {
    /// Counts a request of `op`.
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Relaxed);
    }

    /// Publishes the raft position of a status refresh.
    pub fn set_raft_position(&self, status: &ReplicaStatus) {
        let leader = status.role == Role::Leader;
        self.is_leader.store(leader as i64, Relaxed);
        self.term.store(status.term.get() as i64, Relaxed);
        self.commit_index.store(status.commit_index.get() as i64, Relaxed);
        self.applied_index.store(status.applied_index.get() as i64, Relaxed);
        let lag = if leader { status.replication_lag() } else { 0 };
        self.replica_lag_entries.store(lag as i64, Relaxed);
        let mut voters = status.voters.clone();
        voters.extend(&status.voters_outgoing);
        voters.sort_unstable();
        voters.dedup();
        self.voters.store(voters.len() as i64, Relaxed);
        self.learners.store(status.learners.len() as i64, Relaxed);
        let pending = status.pending_change.get() > 0;
        self.conf_change_pending.store(pending as i64, Relaxed);
    }

    /// Records the latency of a reply to `op`.
    pub fn replied(&self, op: Op, latency_us: u64) {
        self.latency_us[op as usize].record(latency_us);
    }

    /// Counts an error reply of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
}
