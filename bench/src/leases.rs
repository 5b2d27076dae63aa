//! `corekv-bench leases`: what keeping leases alive costs. `--leases N` leases with a time
//! to live of `--ttl-ms` are granted (spread over the shards; on etcd, over `--connections`
//! clients), then each is kept alive every third of its time to live, at a phase of its own,
//! for the warm-up and `--duration`. Reported for the measured part: keep-alives answered
//! per second, their latency, keep-alives that failed, leases lost (the server said one was
//! gone), and the CPU time the server processes spent per keep-alive and per lease kept
//! alive per second — beyond what they spend idle (ticks, heartbeats): the smaller of 3 s
//! measured before the leases are granted and 3 s measured a second after they are revoked
//! at the end (a cluster just started, or the previous run's revokes, can weigh on either).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use corekv_client::{Client, Error, ShardId};
use hdrhistogram::Histogram;

/// What the run is asked to do.
#[derive(Debug, Clone)]
pub struct LeasesConfig {
    pub leases: usize,
    pub ttl: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    /// Name of the server processes whose CPU time is measured.
    pub process: String,
}

/// What it measured.
#[derive(Debug)]
pub struct LeasesResult {
    pub keep_alives: u64,
    pub failed: u64,
    pub lost: u64,
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
    /// The server processes' CPU time over the measured part, µs.
    pub server_cpu_us: Option<u64>,
    /// Their CPU time per second while idle, before the run, µs.
    pub idle_cpu_us_per_sec: Option<f64>,
}

/// How long the servers' idle CPU time is measured for.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// The server processes' CPU time per second while nothing is asked of them, µs.
pub async fn idle_cpu_us_per_sec(process: &str) -> Option<f64> {
    let before = crate::report::process_cpu_us(process)?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = crate::report::process_cpu_us(process)?;
    Some(after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64())
}

/// The counters the keep-alive tasks share.
#[derive(Clone)]
struct Tally {
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    keep_alives: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    latency_us: Arc<Mutex<Histogram<u64>>>,
}

impl Tally {
    fn new() -> Tally {
        let histogram = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Tally {
            measuring: Arc::default(),
            stop: Arc::default(),
            keep_alives: Arc::default(),
            failed: Arc::default(),
            lost: Arc::default(),
            latency_us: Arc::new(Mutex::new(histogram)),
        }
    }

    fn answered(&self, sent: Instant) {
        if self.measuring.load(Ordering::Relaxed) {
            self.keep_alives.fetch_add(1, Ordering::Relaxed);
            let us = sent.elapsed().as_micros().max(1) as u64;
            let mut latency = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
            let _ = latency.record(us.min(60_000_000));
        }
    }

    fn failed(&self) {
        if self.measuring.load(Ordering::Relaxed) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs the warm-up and the measured part while the tasks keep alive; the result.
    async fn measure(self, config: &LeasesConfig, idle: Option<f64>) -> LeasesResult {
        tokio::time::sleep(config.warmup).await;
        let cpu_before = crate::report::process_cpu_us(&config.process);
        self.measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(config.duration).await;
        self.measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu_after = crate::report::process_cpu_us(&config.process);
        self.stop.store(true, Ordering::Relaxed);
        let latency_us = self.latency_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        LeasesResult {
            keep_alives: self.keep_alives.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            latency_us,
            elapsed,
            server_cpu_us: cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
            idle_cpu_us_per_sec: idle,
        }
    }
}

/// The keep-alive period of a lease, and lease `i`'s phase within it (its first keep-alive
/// comes that long after its grant).
fn schedule(config: &LeasesConfig, i: usize) -> (Duration, Duration) {
    let period = config.ttl / 3;
    (period, period.mul_f64(i as f64 / config.leases.max(1) as f64))
}

/// corekv: leases granted on every shard in turn, each kept alive by a task of its own.
pub async fn run_corekv(
    clients: &[Client],
    shards: u32,
    config: &LeasesConfig,
) -> anyhow::Result<LeasesResult> {
    let idle = idle_cpu_us_per_sec(&config.process).await;
    let mut leases = Vec::with_capacity(config.leases);
    let tally = Tally::new();
    let mut tasks = Vec::new();
    for chunk in (0..config.leases).collect::<Vec<_>>().chunks(256) {
        let grants = chunk.iter().map(|&i| {
            let client = &clients[i % clients.len()];
            client.lease_grant_on(ShardId(i as u32 % shards.max(1)), config.ttl)
        });
        let granted = tokio::time::Instant::now();
        for (&i, grant) in chunk.iter().zip(futures_util::future::join_all(grants).await) {
            let lease = grant.context("granting a lease")?.id;
            leases.push(lease);
            let (client, tally) = (clients[i % clients.len()].clone(), tally.clone());
            let (period, phase) = schedule(config, i);
            tasks.push(tokio::spawn(async move {
                let mut next = granted + phase;
                while !tally.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    next += period;
                    let sent = Instant::now();
                    match client.lease_keep_alive(lease).await {
                        Ok(_) => tally.answered(sent),
                        Err(Error::LeaseNotFound(_)) => {
                            tally.lost.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(_) => tally.failed(),
                    }
                }
            }));
        }
    }
    let result = tally.measure(config, idle).await;
    for task in tasks {
        task.abort();
    }
    for chunk in leases.chunks(256) {
        let revokes = chunk
            .iter()
            .enumerate()
            .map(|(i, &lease)| clients[i % clients.len()].lease_revoke(lease));
        futures_util::future::join_all(revokes).await;
    }
    Ok(settled(result, &config.process).await)
}

/// etcd: leases granted over `connections` clients, each kept alive on a keep-alive stream
/// of its own (the etcd client's `keep_alive`).
#[cfg(feature = "etcd")]
pub async fn run_etcd(
    endpoints: &str,
    connections: usize,
    config: &LeasesConfig,
) -> anyhow::Result<LeasesResult> {
    let idle = idle_cpu_us_per_sec(&config.process).await;
    let urls: Vec<&str> = endpoints.split(',').collect();
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients
            .push(etcd_client::Client::connect(&urls, None).await.context("connecting to etcd")?);
    }
    let ttl_s = config.ttl.as_millis().div_ceil(1000).max(1) as i64;
    let tally = Tally::new();
    let mut ids = Vec::with_capacity(config.leases);
    let mut tasks = Vec::new();
    for i in 0..config.leases {
        let mut lease_client = clients[i % clients.len()].lease_client();
        let id = lease_client.grant(ttl_s, None).await.context("granting a lease")?.id();
        ids.push(id);
        let (mut keeper, mut stream) =
            lease_client.keep_alive(id).await.context("opening a keep-alive stream")?;
        // Kept alive from its grant on, within a period of it (as corekv's).
        let granted = tokio::time::Instant::now();
        let tally = tally.clone();
        let (period, phase) = schedule(config, i);
        tasks.push(tokio::spawn(async move {
            let mut next = granted + phase;
            while !tally.stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                next += period;
                let sent = Instant::now();
                if keeper.keep_alive().await.is_err() {
                    tally.failed();
                    continue;
                }
                match stream.message().await {
                    Ok(Some(response)) if response.ttl() > 0 => tally.answered(sent),
                    Ok(Some(_)) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // The stream is broken: a later answer would be taken for the wrong
                    // keep-alive's.
                    _ => {
                        tally.failed();
                        return;
                    }
                }
            }
        }));
    }
    let result = tally.measure(config, idle).await;
    for task in tasks {
        task.abort();
    }
    for (i, chunk) in ids.chunks(256).enumerate() {
        let mut lease_client = clients[i % clients.len()].lease_client();
        for &id in chunk {
            let _ = lease_client.revoke(id).await;
        }
    }
    Ok(settled(result, &config.process).await)
}

/// `result` with its idle CPU the smaller of the measure before and one taken now (after a
/// second's pause).
async fn settled(mut result: LeasesResult, process: &str) -> LeasesResult {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = idle_cpu_us_per_sec(process).await;
    result.idle_cpu_us_per_sec = match (result.idle_cpu_us_per_sec, after) {
        (Some(before), Some(after)) => Some(before.min(after)),
        (before, after) => before.or(after),
    };
    result
}

/// The server CPU time the keep-alives cost beyond idling, µs.
pub fn net_cpu_us(r: &LeasesResult) -> Option<f64> {
    let idle = r.idle_cpu_us_per_sec? * r.elapsed.as_secs_f64();
    r.server_cpu_us.map(|us| (us as f64 - idle).max(0.0))
}

/// The human summary of a run.
pub fn summary(label: &str, config: &LeasesConfig, r: &LeasesResult) -> String {
    let secs = r.elapsed.as_secs_f64();
    let per_sec = r.keep_alives as f64 / secs;
    let p = |q: f64| r.latency_us.value_at_quantile(q);
    let cpu = match (r.server_cpu_us, net_cpu_us(r)) {
        (Some(us), Some(net)) if r.keep_alives > 0 => format!(
            "server CPU {:.1}% of one core ({:.1}% idle): beyond idling, {:.1} us per \
             keep-alive, {:.1} us per lease per second",
            us as f64 / secs / 10_000.0,
            r.idle_cpu_us_per_sec.unwrap_or(0.0) / 10_000.0,
            net / r.keep_alives as f64,
            net / secs / config.leases as f64
        ),
        _ => "server CPU not measured".to_string(),
    };
    format!(
        "{label}: {} leases of {} ms: {per_sec:.0} keep-alives/s, latency p50 {} us p99 {} us max \
         {} us, {} failed, {} leases lost\n  {cpu}\n",
        config.leases,
        config.ttl.as_millis(),
        p(0.5),
        p(0.99),
        r.latency_us.max(),
        r.failed,
        r.lost
    )
}
