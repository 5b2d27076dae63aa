//! The gateway's `/metrics` (Prometheus text):
//!
//! - `corekv_gateway_requests_total{endpoint, code}`: requests answered, by endpoint (`kv_get`,
//!   `kv_put`, `kv_delete`, `kv_list`, `kv_delete_prefix`, `txn`, `lease`, `watch`, `health`,
//!   `metrics`, `other`) and HTTP status;
//! - `corekv_gateway_request_duration_seconds{endpoint}`: their time to the response head (a
//!   watch's: until its stream starts);
//! - `corekv_gateway_connections`, `corekv_gateway_connections_refused_total`: open HTTP
//!   connections, and those turned away at `--max-connections`;
//! - `corekv_gateway_watches`, `corekv_gateway_watch_changes_total`: open watch streams, and
//!   the changes they sent.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The endpoints requests are counted by.
pub(crate) const ENDPOINTS: [&str; 11] = [
    "kv_get",
    "kv_put",
    "kv_delete",
    "kv_list",
    "kv_delete_prefix",
    "txn",
    "lease",
    "watch",
    "health",
    "metrics",
    "other",
];

/// One endpoint's series, resolved once (a label lookup per request costs a hash and a lock).
struct EndpointSeries {
    duration: Histogram,
    /// Its request counter per status code seen so far.
    by_code: Mutex<Vec<(u16, IntCounter)>>,
}

/// The gateway's counters.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    endpoints: Vec<EndpointSeries>,
    pub(crate) connections: IntGauge,
    pub(crate) connections_refused: IntCounter,
    watches: IntGauge,
    watch_changes: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Metrics {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let requests = IntCounterVec::new(
            opts("corekv_gateway_requests_total", "HTTP requests answered"),
            &["endpoint", "code"],
        );
        let buckets =
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "corekv_gateway_request_duration_seconds",
                "Time from a request to its response head",
            )
            .buckets(buckets),
            &["endpoint"],
        );
        let connections = IntGauge::new("corekv_gateway_connections", "Open HTTP connections");
        let refused = IntCounter::new(
            "corekv_gateway_connections_refused_total",
            "Connections refused at --max-connections",
        );
        let watches = IntGauge::new("corekv_gateway_watches", "Open watch streams");
        let changes =
            IntCounter::new("corekv_gateway_watch_changes_total", "Changes sent to watch streams");
        // The names and label sets above are fixed and valid: these cannot fail.
        let (requests, durations) = (requests.expect("metric"), durations.expect("metric"));
        let (connections, connections_refused) =
            (connections.expect("metric"), refused.expect("metric"));
        let (watches, watch_changes) = (watches.expect("metric"), changes.expect("metric"));
        let registry = Registry::new();
        let collectors: [Box<dyn prometheus::core::Collector>; 6] = [
            Box::new(requests.clone()),
            Box::new(durations.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(watches.clone()),
            Box::new(watch_changes.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("distinct metric names");
        }
        let endpoints = ENDPOINTS
            .iter()
            .map(|endpoint| EndpointSeries {
                duration: durations.with_label_values(&[endpoint]),
                by_code: Mutex::default(),
            })
            .collect();
        Metrics {
            registry,
            requests,
            endpoints,
            connections,
            connections_refused,
            watches,
            watch_changes,
        }
    }

    /// A request to `ENDPOINTS[endpoint]` answered `status` after `took`.
    pub(crate) fn request(&self, endpoint: usize, status: StatusCode, took: Duration) {
        let Some(series) = self.endpoints.get(endpoint) else { return };
        series.duration.observe(took.as_secs_f64());
        let mut by_code = series.by_code.lock().unwrap_or_else(|e| e.into_inner());
        let code = status.as_u16();
        match by_code.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter =
                    self.requests.with_label_values(&[ENDPOINTS[endpoint], status.as_str()]);
                counter.inc();
                by_code.push((code, counter));
            }
        }
    }

    pub(crate) fn watch_started(&self) {
        self.watches.inc();
    }

    pub(crate) fn watch_ended(&self) {
        self.watches.dec();
    }

    pub(crate) fn watch_events(&self, changes: usize) {
        self.watch_changes.inc_by(changes as u64);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
