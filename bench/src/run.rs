//! Driving the load and measuring it.
//!
//! Closed loop (`--concurrency C`): C tasks each issue one operation, wait for it, and issue
//! the next; latency is each operation's own time.
//!
//! Open loop (`--rate R`): operations are scheduled at fixed times, `i / R` seconds after the
//! start, and issued at their time whether or not earlier ones finished; latency is measured
//! from the *intended* time, so a stall shows up in every operation it delayed (no coordinated
//! omission).
//!
//! Every task keeps its own histogram; they are merged at the end. Operations during
//! `--warmup` run but are not recorded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::target::Target;
use crate::workload::{key_bytes, Generator, KeyDistribution, Op, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The operation mix.
    pub workload: Workload,
    /// Keys in the key space.
    pub keys: usize,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Key choice.
    pub distribution: KeyDistribution,
    /// Share of reads for `mixed`.
    pub read_ratio: f64,
    /// Stale reads instead of linearizable ones.
    pub stale: bool,
    /// Operations in flight (closed loop).
    pub concurrency: usize,
    /// Operations per second (open loop), when set.
    pub rate: Option<f64>,
    /// Unrecorded time before measuring.
    pub warmup: Duration,
    /// Measured time, unless `ops` is set.
    pub duration: Duration,
    /// Measured operations, when set.
    pub ops: Option<u64>,
    /// Deadline of each operation.
    pub timeout: Duration,
    /// Most operations in flight in open loop (beyond it, the scheduler waits; the waiting
    /// still counts in the latency).
    pub open_loop_in_flight_max: usize,
}

/// What a run measured.
#[derive(Debug)]
pub struct RunResult {
    /// Latency of every recorded operation, in µs.
    pub latency_us: Histogram<u64>,
    /// Operations recorded (successful or not).
    pub ops: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// CAS attempts that found the version moved (txn workload; not errors).
    pub conflicts: u64,
    /// Measured time.
    pub elapsed: Duration,
}

impl RunResult {
    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        let errors: u64 = self.errors.values().sum();
        (self.ops - errors) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Per-task tallies.
struct Tally {
    histogram: Histogram<u64>,
    ops: u64,
    errors: BTreeMap<String, u64>,
    conflicts: u64,
}

impl Tally {
    /// The run's result, measured over `elapsed`.
    fn into_result(self, elapsed: Duration) -> RunResult {
        RunResult {
            latency_us: self.histogram,
            ops: self.ops,
            errors: self.errors,
            conflicts: self.conflicts,
            elapsed,
        }
    }

    fn new() -> Self {
        Tally {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ops: 0,
            errors: BTreeMap::new(),
            conflicts: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.ops += other.ops;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.conflicts += other.conflicts;
    }
}

/// Counters the progress line reads.
#[derive(Default)]
pub struct Progress {
    /// Operations finished (recorded or not).
    pub ops: AtomicU64,
    /// Operations that failed.
    pub errors: AtomicU64,
    /// Longest latency since the last progress line, in microseconds.
    pub max_us: AtomicU64,
}

/// State one operation needs: a target connection, the value, CAS versions.
struct Worker {
    target: Target,
    value: Vec<u8>,
    versions: std::collections::HashMap<usize, u64>,
}

impl Worker {
    /// Runs one operation; returns the error kind or whether a CAS applied.
    async fn run(&mut self, op: Op, config: &RunConfig) -> Result<bool, &'static str> {
        match op {
            Op::Read(k) => {
                self.target
                    .get(&key_bytes(k, config.key_size), config.stale, config.timeout)
                    .await?;
                Ok(true)
            }
            Op::Write(k) => {
                self.target
                    .put(&key_bytes(k, config.key_size), &self.value, config.timeout)
                    .await?;
                Ok(true)
            }
            Op::Cas(k) => {
                let version = self.versions.entry(k).or_insert(0);
                self.target
                    .cas(&key_bytes(k, config.key_size), &self.value, version, config.timeout)
                    .await
            }
        }
    }
}

fn value(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..size).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

/// Writes every key once, in batches, with the given targets, saying so on stderr.
pub async fn prefill(targets: &[Target], config: &RunConfig) -> anyhow::Result<()> {
    const BATCH: usize = 500;
    let started = Instant::now();
    eprintln!("corekv-bench: writing {} keys", config.keys);
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = targets
        .iter()
        .cycle()
        .take(targets.len().max(8))
        .cloned()
        .enumerate()
        .map(|(i, mut target)| {
            let next = next.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let value = value(config.value_size, i as u64);
                loop {
                    let start = next.fetch_add(BATCH as u64, Ordering::Relaxed) as usize;
                    if start >= config.keys {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let items: Vec<(Vec<u8>, Vec<u8>)> = (start..(start + BATCH).min(config.keys))
                        .map(|k| (key_bytes(k, config.key_size), value.clone()))
                        .collect();
                    target
                        .put_many(&items, config.timeout * 4)
                        .await
                        .map_err(|kind| anyhow::anyhow!("prefill failed: {kind}"))?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    eprintln!("corekv-bench: prefill done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the workload with the given targets (one per `--connections`), reporting progress.
pub async fn run(targets: &[Target], config: &RunConfig, progress: Arc<Progress>) -> RunResult {
    let measure_from = Instant::now() + config.warmup;
    match config.rate {
        None => closed_loop(targets, config, progress, measure_from).await,
        Some(rate) => open_loop(targets, config, progress, measure_from, rate).await,
    }
}

fn done(config: &RunConfig, measure_from: Instant, recorded: u64) -> bool {
    match config.ops {
        Some(ops) => recorded >= ops,
        None => Instant::now() >= measure_from + config.duration,
    }
}

async fn closed_loop(
    targets: &[Target],
    config: &RunConfig,
    progress: Arc<Progress>,
    measure_from: Instant,
) -> RunResult {
    let recorded = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..config.concurrency {
        let target = targets[task % targets.len()].clone();
        let (config, progress, recorded) = (config.clone(), progress.clone(), recorded.clone());
        tasks.push(tokio::spawn(async move {
            let read_ratio = config.workload.read_ratio(config.read_ratio);
            let txn = config.workload == Workload::Txn;
            let mut generator = Generator::new(
                task as u64 * 7919 + 1,
                config.keys,
                config.distribution,
                read_ratio,
                txn,
            );
            let mut worker = Worker {
                target,
                value: value(config.value_size, task as u64),
                versions: Default::default(),
            };
            let mut tally = Tally::new();
            loop {
                let op = generator.next_op();
                let started = Instant::now();
                let outcome = worker.run(op, &config).await;
                let now = Instant::now();
                progress.ops.fetch_add(1, Ordering::Relaxed);
                progress.max_us.fetch_max((now - started).as_micros() as u64, Ordering::Relaxed);
                if outcome.is_err() {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                if started >= measure_from {
                    record(&mut tally, now - started, outcome);
                    if done(&config, measure_from, recorded.fetch_add(1, Ordering::Relaxed) + 1) {
                        break;
                    }
                } else if done(&config, measure_from, recorded.load(Ordering::Relaxed)) {
                    break;
                }
            }
            tally
        }));
    }
    collect(tasks, measure_from).await
}

fn record(tally: &mut Tally, latency: Duration, outcome: Result<bool, &'static str>) {
    let _ = tally.histogram.record((latency.as_micros() as u64).max(1));
    tally.ops += 1;
    match outcome {
        Ok(true) => {}
        Ok(false) => tally.conflicts += 1,
        Err(kind) => *tally.errors.entry(kind.to_string()).or_default() += 1,
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Tally>>, measure_from: Instant) -> RunResult {
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    total.into_result(Instant::now().saturating_duration_since(measure_from))
}

async fn open_loop(
    targets: &[Target],
    config: &RunConfig,
    progress: Arc<Progress>,
    measure_from: Instant,
    rate: f64,
) -> RunResult {
    let read_ratio = config.workload.read_ratio(config.read_ratio);
    let txn = config.workload == Workload::Txn;
    let mut generator = Generator::new(1, config.keys, config.distribution, read_ratio, txn);
    let tally = Arc::new(Mutex::new(Tally::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(config.open_loop_in_flight_max));
    // One worker per slot: an operation holding a slot always finds a worker.
    let workers: Arc<Mutex<Vec<Worker>>> = Arc::new(Mutex::new(
        (0..config.open_loop_in_flight_max)
            .map(|i| Worker {
                target: targets[i % targets.len()].clone(),
                value: value(config.value_size, i as u64),
                versions: Default::default(),
            })
            .collect(),
    ));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut recorded = 0u64;
    for i in 0u64.. {
        let intended = start + interval.mul_f64(i as f64);
        if intended >= measure_from && done(config, measure_from, recorded) {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let op = generator.next_op();
        let (config, progress, tally, workers) =
            (config.clone(), progress.clone(), tally.clone(), workers.clone());
        let measured = intended >= measure_from;
        recorded += measured as u64;
        // Detached: the task's permit says when it is done. Keeping every handle (and so every
        // finished task's memory) and sweeping them now and then stalled this loop for tens of
        // milliseconds once per 100,000 operations, which showed up as the run's worst latency.
        drop(tokio::spawn(async move {
            let mut worker =
                workers.lock().expect("not poisoned").pop().expect("one worker per slot");
            let outcome = worker.run(op, &config).await;
            // Latency from the intended start: waiting for a free slot counts.
            let latency = Instant::now() - intended;
            workers.lock().expect("not poisoned").push(worker);
            progress.ops.fetch_add(1, Ordering::Relaxed);
            progress.max_us.fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
            if outcome.is_err() {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
            if measured {
                record(&mut tally.lock().expect("not poisoned"), latency, outcome);
            }
            drop(permit);
        }));
    }
    // Every operation holds a slot until it is done: having them all back means all finished.
    let all = u32::try_from(config.open_loop_in_flight_max).expect("at most 1,000,000 (clap)");
    let _all_done = slots.acquire_many(all).await.expect("semaphore open");
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    let total = std::mem::replace(&mut *tally.lock().expect("not poisoned"), Tally::new());
    total.into_result(elapsed)
}
