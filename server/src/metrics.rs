//! Metrics: per-shard counters, gauges and latency histograms, rendered as Prometheus text.
//!
//! Each shard owns its own [`ShardMetrics`] and is the only writer of it, so the relaxed atomic
//! updates on the hot path never contend; the HTTP thread only reads.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

pub use crate::core::counters::{Histogram, ShardMetrics};
use crate::core::{ErrorKind, Op};

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
            render_histogram(
                &mut out,
                &m.latency_us[op as usize],
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
        render_histogram(
            &mut out,
            &m.batch_ops,
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
        render_histogram(
            &mut out,
            &m.wal_flush_latency_us,
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
        render_histogram(
            &mut out,
            &m.snapshot_duration_us,
            "corekv_snapshot_duration_seconds",
            &labels,
            1e6,
        );
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

/// Writes a histogram's series; `scale` divides values (1e6 turns µs into seconds).
fn render_histogram(out: &mut String, h: &Histogram, name: &str, labels: &str, scale: f64) {
    let mut cumulative = 0;
    for (i, bound) in h.bounds().iter().enumerate() {
        cumulative += h.bucket(i);
        let le = *bound as f64 / scale;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    cumulative += h.bucket(h.bounds().len());
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
    let sum = h.sum() as f64 / scale;
    let trimmed = labels.trim_end_matches(',');
    let _ = writeln!(out, "{name}_sum{{{trimmed}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{trimmed}}} {cumulative}");
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
        render_histogram(&mut out, &h, "x", "a=\"b\",", 1.0);
        assert!(out.contains("x_bucket{a=\"b\",le=\"50\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"100\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"30000000\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_count{a=\"b\"} 4\n"));
    }
}
