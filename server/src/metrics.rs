//! Metrics: per-shard counters, gauges and latency histograms, rendered as Prometheus text.
//!
//! Each shard owns its own [`ShardMetrics`] and is the only writer of it, so the relaxed atomic
//! updates on the hot path never contend; the HTTP thread only reads.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::core::{ErrorKind, Op, Role, ShardStatus};

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

    /// Writes the histogram's series; `scale` divides values (1e6 turns µs into seconds).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Relaxed) as f64 / scale;
        let trimmed = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{trimmed}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{trimmed}}} {cumulative}");
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
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    /// WAL records read back (off the executor) to send a lagging follower old entries.
    pub cold_records_read: AtomicU64,
    /// Open client connections.
    pub client_connections: AtomicI64,
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
            snapshots: AtomicU64::new(0),
            snapshot_errors: AtomicU64::new(0),
            snapshot_duration_us: Histogram::latency(),
            snapshots_sent: AtomicU64::new(0),
            snapshot_send_failures: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            cold_records_read: AtomicU64::new(0),
            client_connections: AtomicI64::new(0),
            peer_connections: AtomicI64::new(0),
            is_leader: AtomicI64::new(0),
            term: AtomicI64::new(0),
            commit_index: AtomicI64::new(0),
            applied_index: AtomicI64::new(0),
            replica_lag_entries: AtomicI64::new(0),
        }
    }
}

impl ShardMetrics {
    /// Counts a request of `op`.
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Relaxed);
    }

    /// Publishes the raft position of a status refresh.
    pub fn set_raft_position(&self, status: &ShardStatus) {
        let leader = status.role == Role::Leader;
        self.is_leader.store(leader as i64, Relaxed);
        self.term.store(status.term as i64, Relaxed);
        self.commit_index.store(status.commit_index as i64, Relaxed);
        self.applied_index.store(status.applied_index as i64, Relaxed);
        let lag =
            status.peers.iter().map(|p| status.last_index.saturating_sub(p.match_index)).max();
        self.replica_lag_entries.store(if leader { lag.unwrap_or(0) as i64 } else { 0 }, Relaxed);
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

/// Renders every shard's metrics as Prometheus text exposition format.
pub fn render(node_id: u64, shards: &[&ShardMetrics]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let counter =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ShardMetrics) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (shard, m) in shards.iter().enumerate() {
                let _ =
                    writeln!(out, "{name}{{node=\"{node_id}\",shard=\"{shard}\"}} {}", value(m));
            }
        };
    let _ = writeln!(out, "# HELP corekv_requests_total Client requests received, by operation.");
    let _ = writeln!(out, "# TYPE corekv_requests_total counter");
    for (shard, m) in shards.iter().enumerate() {
        for op in Op::ALL {
            let v = m.requests[op as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "corekv_requests_total{{node=\"{node_id}\",shard=\"{shard}\",op=\"{}\"}} {v}",
                op.label()
            );
        }
    }
    let _ = writeln!(out, "# HELP corekv_request_duration_seconds Time from a request's arrival to its reply, by operation.");
    let _ = writeln!(out, "# TYPE corekv_request_duration_seconds histogram");
    for (shard, m) in shards.iter().enumerate() {
        for op in Op::ALL {
            let labels = format!("node=\"{node_id}\",shard=\"{shard}\",op=\"{}\",", op.label());
            m.latency_us[op as usize].render(
                &mut out,
                "corekv_request_duration_seconds",
                &labels,
                1e6,
            );
        }
    }
    let _ = writeln!(out, "# HELP corekv_errors_total Error replies, by kind.");
    let _ = writeln!(out, "# TYPE corekv_errors_total counter");
    for (shard, m) in shards.iter().enumerate() {
        for kind in ErrorKind::ALL {
            let v = m.errors[kind as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "corekv_errors_total{{node=\"{node_id}\",shard=\"{shard}\",kind=\"{}\"}} {v}",
                kind.label()
            );
        }
    }
    counter(
        &mut out,
        "corekv_proposals_total",
        "Raft entries proposed (each carries a batch of writes).",
        &|m| m.proposals.load(Relaxed).to_string(),
    );
    let _ = writeln!(out, "# HELP corekv_batch_ops Client writes per proposed raft entry.");
    let _ = writeln!(out, "# TYPE corekv_batch_ops histogram");
    for (shard, m) in shards.iter().enumerate() {
        m.batch_ops.render(
            &mut out,
            "corekv_batch_ops",
            &format!("node=\"{node_id}\",shard=\"{shard}\","),
            1.0,
        );
    }
    counter(
        &mut out,
        "corekv_read_index_rounds_total",
        "ReadIndex rounds issued for linearizable reads.",
        &|m| m.read_rounds.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_wal_flushes_total",
        "WAL flushes (write + fdatasync) completed.",
        &|m| m.wal_flushes.load(Relaxed).to_string(),
    );
    counter(&mut out, "corekv_wal_flush_errors_total", "WAL flushes that failed.", &|m| {
        m.wal_flush_errors.load(Relaxed).to_string()
    });
    counter(&mut out, "corekv_wal_written_bytes_total", "Bytes written by WAL flushes.", &|m| {
        m.wal_bytes_written.load(Relaxed).to_string()
    });
    let _ = writeln!(
        out,
        "# HELP corekv_wal_flush_duration_seconds WAL flush latency (write and fdatasync)."
    );
    let _ = writeln!(out, "# TYPE corekv_wal_flush_duration_seconds histogram");
    for (shard, m) in shards.iter().enumerate() {
        m.wal_flush_latency_us.render(
            &mut out,
            "corekv_wal_flush_duration_seconds",
            &format!("node=\"{node_id}\",shard=\"{shard}\","),
            1e6,
        );
    }
    counter(&mut out, "corekv_elections_total", "Elections this replica started.", &|m| {
        m.elections.load(Relaxed).to_string()
    });
    counter(&mut out, "corekv_leader_changes_total", "Changes of the known leader.", &|m| {
        m.leader_changes.load(Relaxed).to_string()
    });
    counter(
        &mut out,
        "corekv_votes_withheld_total",
        "Vote requests left unanswered while this replica catches up (started empty or lost data).",
        &|m| m.votes_withheld.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_dropped_messages_total",
        "Raft messages dropped (peer queue full or peer unreachable).",
        &|m| m.dropped_messages.load(Relaxed).to_string(),
    );
    counter(&mut out, "corekv_messages_sent_total", "Raft messages sent to peers.", &|m| {
        m.messages_sent.load(Relaxed).to_string()
    });
    counter(
        &mut out,
        "corekv_messages_received_total",
        "Raft messages received from peers.",
        &|m| m.messages_received.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_malformed_frames_total",
        "Frames refused as malformed on client and peer ports.",
        &|m| m.malformed_frames.load(Relaxed).to_string(),
    );
    counter(&mut out, "corekv_snapshots_total", "Snapshots taken and made durable.", &|m| {
        m.snapshots.load(Relaxed).to_string()
    });
    counter(&mut out, "corekv_snapshot_errors_total", "Snapshots that failed to be made.", &|m| {
        m.snapshot_errors.load(Relaxed).to_string()
    });
    let _ = writeln!(
        out,
        "# HELP corekv_snapshot_duration_seconds Time to build and write a snapshot."
    );
    let _ = writeln!(out, "# TYPE corekv_snapshot_duration_seconds histogram");
    for (shard, m) in shards.iter().enumerate() {
        let labels = format!("node=\"{node_id}\",shard=\"{shard}\",");
        m.snapshot_duration_us.render(&mut out, "corekv_snapshot_duration_seconds", &labels, 1e6);
    }
    counter(
        &mut out,
        "corekv_snapshots_sent_total",
        "Snapshots sent to followers that needed them.",
        &|m| m.snapshots_sent.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_snapshot_send_failures_total",
        "Snapshot transfers to followers that failed.",
        &|m| m.snapshot_send_failures.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_snapshots_installed_total",
        "Snapshots received from a leader and installed.",
        &|m| m.snapshots_installed.load(Relaxed).to_string(),
    );
    counter(
        &mut out,
        "corekv_wal_records_read_for_followers_total",
        "WAL records read back to send lagging followers entries older than the entry cache.",
        &|m| m.cold_records_read.load(Relaxed).to_string(),
    );
    for (name, help, get) in [
        (
            "corekv_client_connections",
            "Open client connections.",
            (|m: &ShardMetrics| m.client_connections.load(Relaxed)) as fn(&ShardMetrics) -> i64,
        ),
        (
            "corekv_peer_connections",
            "Open peer connections, both directions.",
            |m: &ShardMetrics| m.peer_connections.load(Relaxed),
        ),
        ("corekv_is_leader", "1 while this replica leads its shard.", |m: &ShardMetrics| {
            m.is_leader.load(Relaxed)
        }),
        ("corekv_term", "Raft term of this replica.", |m: &ShardMetrics| m.term.load(Relaxed)),
        ("corekv_commit_index", "Raft commit index of this replica.", |m: &ShardMetrics| {
            m.commit_index.load(Relaxed)
        }),
        ("corekv_applied_index", "Index this replica has applied.", |m: &ShardMetrics| {
            m.applied_index.load(Relaxed)
        }),
        (
            "corekv_replica_lag_entries",
            "On the leader: entries the furthest-behind follower lacks (0 on followers).",
            |m: &ShardMetrics| m.replica_lag_entries.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (shard, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{node=\"{node_id}\",shard=\"{shard}\"}} {}", get(m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: histogram buckets are cumulative and end with +Inf, sum and count.
    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::latency();
        for v in [10, 60, 60, 40_000_000] {
            h.record(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\",", 1.0);
        assert!(out.contains("x_bucket{a=\"b\",le=\"50\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"100\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"30000000\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_count{a=\"b\"} 4\n"));
    }
}
