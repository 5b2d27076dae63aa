//! Metrics: every shard's counters, gauges and histograms (`core::counters`, written on the
//! shard's executor) exposed in the Prometheus text format through the `prometheus` crate's
//! data model and text encoder: this module only says which series there are, with which
//! labels; the format (escaping, `_bucket`/`_sum`/`_count`, `+Inf`) is the library's.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as HistogramSample, LabelPair, Metric, MetricFamily,
    MetricType,
};
use prometheus::TextEncoder;

pub use crate::core::counters::{Histogram, ShardMetrics};
use crate::core::{ErrorKind, Op};

/// The content type of what [`render`] writes (the text format, version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// A counter or gauge read from one shard's metrics.
type Read<T> = fn(&ShardMetrics) -> T;
/// A histogram of one shard's metrics, and the divisor of its values (1e6: µs to seconds).
type HistogramOf = (fn(&ShardMetrics) -> &Histogram, f64);

/// The counters of one series per shard: name, help, how to read it.
const COUNTERS: [(&str, &str, Read<u64>); 36] = [
    ("corekv_proposals_total", "Raft entries proposed (each carries a batch of writes).", |m| {
        m.proposals.load(Relaxed)
    }),
    ("corekv_read_index_rounds_total", "ReadIndex rounds issued for linearizable reads.", |m| {
        m.read_rounds.load(Relaxed)
    }),
    ("corekv_wal_flushes_total", "WAL flushes (write + fdatasync) completed.", |m| {
        m.wal_flushes.load(Relaxed)
    }),
    ("corekv_wal_flush_errors_total", "WAL flushes that failed.", |m| {
        m.wal_flush_errors.load(Relaxed)
    }),
    ("corekv_wal_written_bytes_total", "Bytes written by WAL flushes.", |m| {
        m.wal_bytes_written.load(Relaxed)
    }),
    ("corekv_elections_total", "Elections this replica started.", |m| m.elections.load(Relaxed)),
    ("corekv_leader_changes_total", "Changes of the known leader.", |m| {
        m.leader_changes.load(Relaxed)
    }),
    ("corekv_watches_started_total", "Watches started.", |m| m.watches_started.load(Relaxed)),
    (
        "corekv_watches_compacted_total",
        "Watches ended with Compacted: they asked for changes older than the history.",
        |m| m.watches_compacted.load(Relaxed),
    ),
    ("corekv_watch_events_total", "Watch events frames sent.", |m| m.watch_events.load(Relaxed)),
    (
        "corekv_watch_catch_ups_total",
        "Live watchers switched to catching up from the history (their connection backed up).",
        |m| m.watch_catch_ups.load(Relaxed),
    ),
    ("corekv_watch_history_reads_total", "Reads of the watch history from disk.", |m| {
        m.history_reads.load(Relaxed)
    }),
    ("corekv_watch_history_written_bytes_total", "Bytes written by watch history flushes.", |m| {
        m.history_bytes_written.load(Relaxed)
    }),
    (
        "corekv_watch_history_resets_total",
        "Times the watch history restarted empty (a leader's snapshot, a failed disk, damage).",
        |m| m.history_resets.load(Relaxed),
    ),
    (
        "corekv_watch_history_cut_by_size_total",
        "Watch history segments dropped at the size cap before the retention's minimums.",
        |m| m.history_cut_by_size.load(Relaxed),
    ),
    (
        "corekv_votes_withheld_total",
        "Vote requests left unanswered while this replica catches up (started empty or lost data).",
        |m| m.votes_withheld.load(Relaxed),
    ),
    (
        "corekv_dropped_messages_total",
        "Raft messages dropped (peer queue full or peer unreachable).",
        |m| m.dropped_messages.load(Relaxed),
    ),
    ("corekv_messages_sent_total", "Raft messages sent to peers.", |m| {
        m.messages_sent.load(Relaxed)
    }),
    ("corekv_messages_received_total", "Raft messages received from peers.", |m| {
        m.messages_received.load(Relaxed)
    }),
    (
        "corekv_malformed_frames_total",
        "Frames refused as malformed on client and peer ports.",
        |m| m.malformed_frames.load(Relaxed),
    ),
    (
        "corekv_tls_refused_total",
        "Connections refused in their TLS handshake (a plaintext client, an unknown CA, an \
         expired certificate, ...) on client and peer ports.",
        |m| m.tls_refused.load(Relaxed),
    ),
    ("corekv_snapshots_total", "Snapshots taken and made durable.", |m| m.snapshots.load(Relaxed)),
    ("corekv_snapshot_errors_total", "Snapshots that failed to be made.", |m| {
        m.snapshot_errors.load(Relaxed)
    }),
    ("corekv_snapshots_sent_total", "Snapshots sent to followers that needed them.", |m| {
        m.snapshots_sent.load(Relaxed)
    }),
    ("corekv_snapshot_send_failures_total", "Snapshot transfers to followers that failed.", |m| {
        m.snapshot_send_failures.load(Relaxed)
    }),
    ("corekv_backups_streamed_total", "Snapshots streamed whole to backups.", |m| {
        m.backups_streamed.load(Relaxed)
    }),
    ("corekv_backup_sent_bytes_total", "Bytes of snapshots streamed to backups.", |m| {
        m.backup_bytes_sent.load(Relaxed)
    }),
    ("corekv_snapshots_installed_total", "Snapshots received from a leader and installed.", |m| {
        m.snapshots_installed.load(Relaxed)
    }),
    ("corekv_conf_changes_total", "Membership (raft configuration) changes applied.", |m| {
        m.conf_changes.load(Relaxed)
    }),
    (
        "corekv_expiry_proposals_total",
        "Expiry entries proposed by this replica as leader (keys past their deadline).",
        |m| m.expiry_proposals.load(Relaxed),
    ),
    ("corekv_expired_keys_total", "Keys deleted because their deadline passed.", |m| {
        m.expired_keys.load(Relaxed)
    }),
    (
        "corekv_lease_keep_alives_total",
        "Lease keep-alives answered by this replica as leader.",
        |m| m.lease_keep_alives.load(Relaxed),
    ),
    ("corekv_leases_expired_total", "Leases ended because their deadline passed.", |m| {
        m.leases_expired.load(Relaxed)
    }),
    ("corekv_leases_revoked_total", "Leases revoked by a client.", |m| {
        m.leases_revoked.load(Relaxed)
    }),
    (
        "corekv_lease_checkpoints_total",
        "Lease checkpoint entries proposed by this replica as leader (deadlines kept alive).",
        |m| m.lease_checkpoints.load(Relaxed),
    ),
    (
        "corekv_wal_records_read_for_followers_total",
        "WAL records read back to send lagging followers entries older than the entry cache.",
        |m| m.cold_records_read.load(Relaxed),
    ),
];

/// The histograms of one series per shard.
const HISTOGRAMS: [(&str, &str, HistogramOf); 5] = [
    ("corekv_batch_ops", "Client writes per proposed raft entry.", (|m| &m.batch_ops, 1.0)),
    (
        "corekv_wal_flush_duration_seconds",
        "WAL flush latency (write and fdatasync).",
        (|m| &m.wal_flush_latency_us, 1e6),
    ),
    (
        "corekv_snapshot_duration_seconds",
        "Time to build and write a snapshot.",
        (|m| &m.snapshot_duration_us, 1e6),
    ),
    (
        "corekv_expiry_lag_seconds",
        "On the leader, from a key's deadline to its expiry applying.",
        (|m| &m.expiry_lag_us, 1e6),
    ),
    (
        "corekv_lease_expiry_lag_seconds",
        "On the leader, from a lease's deadline to its expiry applying.",
        (|m| &m.lease_expiry_lag_us, 1e6),
    ),
];

/// The gauges of one series per shard.
const GAUGES: [(&str, &str, Read<i64>); 21] = [
    (
        "corekv_clock_behind_milliseconds",
        "How far this node's clock is behind the largest one a leader stamped entries with.",
        |m| m.clock_behind_ms.load(Relaxed),
    ),
    ("corekv_timed_keys", "Keys that have a deadline (time to live).", |m| {
        m.timed_keys.load(Relaxed)
    }),
    ("corekv_leases", "Leases the shard holds.", |m| m.leases.load(Relaxed)),
    ("corekv_lease_keys", "Keys attached to a lease.", |m| m.lease_keys.load(Relaxed)),
    ("corekv_client_connections", "Open client connections.", |m| {
        m.client_connections.load(Relaxed)
    }),
    ("corekv_resp_connections", "Open Redis protocol (RESP) connections.", |m| {
        m.resp_connections.load(Relaxed)
    }),
    ("corekv_peer_connections", "Open peer connections, both directions.", |m| {
        m.peer_connections.load(Relaxed)
    }),
    ("corekv_watches", "Watches running on this replica.", |m| m.watches.load(Relaxed)),
    ("corekv_watches_catching_up", "Watches catching up from the history.", |m| {
        m.watches_catching_up.load(Relaxed)
    }),
    (
        "corekv_watch_queued_bytes",
        "Watch bytes queued on client connections, not known to be written.",
        |m| m.watch_queued_bytes.load(Relaxed),
    ),
    ("corekv_watch_history_disk_bytes", "Bytes of watch history on disk.", |m| {
        m.history_disk_bytes.load(Relaxed)
    }),
    ("corekv_watch_history_memory_bytes", "Bytes of watch history held in memory.", |m| {
        m.history_cache_bytes.load(Relaxed)
    }),
    ("corekv_watch_history_first_index", "The oldest index the watch history covers.", |m| {
        m.history_first_index.load(Relaxed)
    }),
    ("corekv_is_leader", "1 while this replica leads its shard.", |m| m.is_leader.load(Relaxed)),
    ("corekv_term", "Raft term of this replica.", |m| m.term.load(Relaxed)),
    ("corekv_commit_index", "Raft commit index of this replica.", |m| m.commit_index.load(Relaxed)),
    ("corekv_applied_index", "Index this replica has applied.", |m| m.applied_index.load(Relaxed)),
    (
        "corekv_replica_lag_entries",
        "On the leader: entries the furthest-behind follower lacks (0 on followers).",
        |m| m.replica_lag_entries.load(Relaxed),
    ),
    ("corekv_voters", "Voters of the shard, as this replica applied its membership.", |m| {
        m.voters.load(Relaxed)
    }),
    ("corekv_learners", "Learners of the shard, as this replica applied its membership.", |m| {
        m.learners.load(Relaxed)
    }),
    (
        "corekv_conf_change_pending",
        "On the leader: 1 while a membership change is proposed and not applied yet.",
        |m| m.conf_change_pending.load(Relaxed),
    ),
];

/// Renders every shard's metrics as Prometheus text exposition format.
pub fn render(node_id: u64, shards: &[&ShardMetrics], certificates: &[(&str, i64)]) -> String {
    let mut families = Families { node: node_id.to_string(), shards, out: Vec::new() };
    if !certificates.is_empty() {
        let metrics = certificates
            .iter()
            .map(|(usage, at)| {
                let mut metric = gauge(*at);
                metric.set_label(vec![
                    label_pair("node", families.node.clone()),
                    label_pair("use", usage.to_string()),
                ]);
                metric
            })
            .collect();
        families.push(
            "corekv_tls_certificate_expiry_timestamp_seconds",
            "When the certificate in use expires (Unix time), by use: clients (client ports and \
             HTTP) or peers.",
            MetricType::GAUGE,
            metrics,
        );
    }
    families.per_label(
        "corekv_requests_total",
        "Client requests received, by operation.",
        MetricType::COUNTER,
        ("op", Op::ALL.map(|op| (op.label(), op as usize))),
        |m, i| counter(m.requests[i].load(Relaxed)),
    );
    families.per_label(
        "corekv_request_duration_seconds",
        "Time from a request's arrival to its reply, by operation.",
        MetricType::HISTOGRAM,
        ("op", Op::ALL.map(|op| (op.label(), op as usize))),
        |m, i| histogram(&m.latency_us[i], 1e6),
    );
    families.per_label(
        "corekv_errors_total",
        "Error replies, by kind.",
        MetricType::COUNTER,
        ("kind", ErrorKind::ALL.map(|kind| (kind.label(), kind as usize))),
        |m, i| counter(m.errors[i].load(Relaxed)),
    );
    for (name, help, read) in COUNTERS {
        families.per_shard(name, help, MetricType::COUNTER, |m| counter(read(m)));
    }
    for (name, help, (of, scale)) in HISTOGRAMS {
        families.per_shard(name, help, MetricType::HISTOGRAM, |m| histogram(of(m), scale));
    }
    for (name, help, read) in GAUGES {
        families.per_shard(name, help, MetricType::GAUGE, |m| gauge(read(m)));
    }
    let mut text = String::with_capacity(32 * 1024);
    // Only a family without samples or name is refused, and every family here has both.
    if let Err(error) = TextEncoder::new().encode_utf8(&families.out, &mut text) {
        tracing::error!(%error, "rendering the metrics failed");
    }
    text
}

fn label_pair(name: &str, value: String) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value);
    pair
}

/// The metric families being built, for one node.
struct Families<'a> {
    node: String,
    shards: &'a [&'a ShardMetrics],
    out: Vec<MetricFamily>,
}

impl Families<'_> {
    /// A family with one series per shard, labelled `node` and `shard`.
    fn per_shard(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        sample: impl Fn(&ShardMetrics) -> Metric,
    ) {
        let metrics = (0..self.shards.len())
            .map(|shard| {
                let mut metric = sample(self.shards[shard]);
                metric.set_label(self.labels(shard, None));
                metric
            })
            .collect();
        self.push(name, help, kind, metrics);
    }

    /// A family with one series per shard and value of one more label, whose values come
    /// with the index of their counter.
    fn per_label<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        (label, values): (&str, [(&str, usize); N]),
        sample: impl Fn(&ShardMetrics, usize) -> Metric,
    ) {
        let mut metrics = Vec::with_capacity(self.shards.len() * N);
        for (shard, m) in self.shards.iter().enumerate() {
            for (value, index) in values {
                let mut metric = sample(m, index);
                metric.set_label(self.labels(shard, Some((label, value))));
                metrics.push(metric);
            }
        }
        self.push(name, help, kind, metrics);
    }

    fn labels(&self, shard: usize, extra: Option<(&str, &str)>) -> Vec<LabelPair> {
        let pair = label_pair;
        let mut labels = vec![pair("node", self.node.clone()), pair("shard", shard.to_string())];
        if let Some((name, value)) = extra {
            labels.push(pair(name, value.to_string()));
        }
        labels
    }

    fn push(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.out.push(family);
    }
}

fn counter(value: u64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    metric
}

fn gauge(value: i64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_gauge(gauge);
    metric
}

/// A histogram's sample: cumulative buckets (the encoder adds `+Inf`), sum and count, values
/// divided by `scale`.
fn histogram(h: &Histogram, scale: f64) -> Metric {
    let mut cumulative = 0;
    let buckets = h
        .bounds()
        .iter()
        .enumerate()
        .map(|(i, bound)| {
            cumulative += h.bucket(i);
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound as f64 / scale);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    cumulative += h.bucket(h.bounds().len());
    let mut sample = HistogramSample::default();
    sample.set_bucket(buckets);
    sample.set_sample_count(cumulative);
    sample.set_sample_sum(h.sum() as f64 / scale);
    let mut metric = Metric::default();
    metric.set_histogram(sample);
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: histogram buckets are cumulative and end with +Inf, sum and count; every series
    // carries the node and shard.
    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = ShardMetrics::default();
        for v in [10, 60, 60, 40_000_000] {
            m.wal_flush_latency_us.record(v);
        }
        let out = render(7, &[&m], &[]);
        let name = "corekv_wal_flush_duration_seconds";
        let labels = "node=\"7\",shard=\"0\"";
        assert!(out.contains(&format!("{name}_bucket{{{labels},le=\"0.00005\"}} 1\n")), "{out}");
        assert!(out.contains(&format!("{name}_bucket{{{labels},le=\"0.0001\"}} 3\n")));
        assert!(out.contains(&format!("{name}_bucket{{{labels},le=\"30\"}} 3\n")));
        assert!(out.contains(&format!("{name}_bucket{{{labels},le=\"+Inf\"}} 4\n")));
        assert!(out.contains(&format!("{name}_count{{{labels}}} 4\n")));
        assert!(out.contains("# TYPE corekv_wal_flush_duration_seconds histogram\n"));
    }

    // Shows: per-operation and per-kind series carry their label, counters their value.
    #[test]
    fn labelled_counters_carry_their_label() {
        let m = ShardMetrics::default();
        m.request(Op::Put);
        m.request(Op::Put);
        m.error(ErrorKind::Busy);
        let out = render(1, &[&m, &m], &[]);
        assert!(out.contains("corekv_requests_total{node=\"1\",shard=\"1\",op=\"put\"} 2\n"));
        assert!(out.contains("corekv_errors_total{node=\"1\",shard=\"0\",kind=\"busy\"} 1\n"));
        assert!(out.contains("# TYPE corekv_is_leader gauge\n"));
    }
}
