//! `corekv-bench backup`: what an online backup costs and how long a restore takes.
//!
//! 1. **Without**: `--concurrency` writers put `--value-size` values over the `--keys` keys
//!    (written first with `--prefill`) in a closed loop for `--duration`: writes/s and p99.
//! 2. **During**: the same writers while `corekvctl backup save` (the binary beside this one)
//!    backs the cluster up into a temporary directory: the backup's time, size and MB/s, and
//!    the writes/s and p99 while it runs.
//! 3. **Restore**: `corekv restore` of one node from that backup, for a new cluster (the
//!    registry under another name): its time. Each node of a new cluster restores its own
//!    directory, in parallel on its own machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corekv_client::Client;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::workload::key_bytes;

/// What the run is asked to do: the flags of the same names, the registry of the cluster, and
/// the `corekv` binary for the restore.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub keys: usize,
    pub key_size: usize,
    pub value_size: usize,
    pub concurrency: usize,
    pub duration: Duration,
    pub registry: PathBuf,
    /// `corekv`, for the restore.
    pub corekv: PathBuf,
}

/// Writes of one phase: acknowledged, failed (and the first failure), their latencies, and
/// how long it lasted.
pub struct Phase {
    pub writes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
}

impl Phase {
    /// Acknowledged writes per second.
    pub fn per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The run's result.
pub struct BackupResult {
    pub without: Phase,
    pub during: Phase,
    /// The backup's wall time, bytes and keys (from `corekvctl`'s summary).
    pub backup_time: Duration,
    pub backup_bytes: u64,
    pub backup_keys: u64,
    pub restore_time: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds")
}

/// Runs the writers until `stop`; their phase.
async fn write_until(
    clients: &[Client],
    config: &BackupConfig,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Phase> {
    let latency = Arc::new(Mutex::new(histogram()));
    let began = Instant::now();
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let (stop, latency, config) = (stop.clone(), latency.clone(), config.clone());
            tokio::spawn(async move {
                let (mut writes, mut errors, mut local) = (0u64, 0u64, histogram());
                let mut first_error = None;
                let value = vec![b'v'; config.value_size];
                let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = key_bytes((x % config.keys as u64) as usize, config.key_size);
                    let sent = Instant::now();
                    match client.put(&key, &value).await {
                        Ok(_) => {
                            writes += 1;
                            local.saturating_record(sent.elapsed().as_micros() as u64);
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
                latency.lock().unwrap_or_else(|p| p.into_inner()).add(&local).ok();
                (writes, errors, first_error)
            })
        })
        .collect();
    let (mut writes, mut errors, mut first_error) = (0, 0, None);
    for task in tasks {
        let (w, e, first) = task.await.context("a writer failed")?;
        writes += w;
        errors += e;
        first_error = first_error.or(first);
    }
    let latency_us = latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Phase { writes, errors, first_error, latency_us, elapsed: began.elapsed() })
}

/// Runs the three parts (see the module docs).
pub async fn run(clients: &[Client], config: &BackupConfig) -> anyhow::Result<BackupResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let writers = write_until(clients, config, stop.clone());
    let timer = async {
        tokio::time::sleep(config.duration).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (without, ()) = tokio::join!(writers, timer);
    let without = without?;

    let dir = tempfile::Builder::new().prefix("corekv-bench-backup").tempdir()?;
    let backup = dir.path().join("backup");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = write_until(clients, config, stop.clone());
    let save = async {
        let began = Instant::now();
        let saved = save(&config.registry, &backup).await;
        stop.store(true, Ordering::Relaxed);
        saved.map(|summary| (summary, began.elapsed()))
    };
    let (during, saved) = tokio::join!(writers, save);
    let (during, ((backup_bytes, backup_keys), backup_time)) = (during?, saved?);

    let restore_time = restore(config, &backup, dir.path())?;
    Ok(BackupResult { without, during, backup_time, backup_bytes, backup_keys, restore_time })
}

/// `corekvctl backup save`; the bytes and keys its summary counts.
async fn save(registry: &Path, backup: &Path) -> anyhow::Result<(u64, u64)> {
    let corekvctl = std::env::current_exe()?.with_file_name("corekvctl");
    let mut command = Command::new(&corekvctl);
    command.arg("--registry").arg(registry).args(["-o", "json", "backup", "save"]).arg(backup);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {}", corekvctl.display()))?;
    if !output.status.success() {
        bail!("backup save failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let number = |name: &str| summary[name].as_u64().context("the backup's summary");
    Ok((number("bytes")?, number("keys")?))
}

/// `corekv restore` of node 1 of a cluster like this one under another name; its time.
fn restore(config: &BackupConfig, backup: &Path, dir: &Path) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(&config.registry)?;
    let renamed: String = text
        .lines()
        .map(|l| if l.starts_with("cluster") { "cluster = \"restored-bench\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let registry = dir.join("restored.toml");
    std::fs::write(&registry, renamed)?;
    let node = corekv_client::registry::Registry::load(&registry)?
        .node_ids()
        .first()
        .context("the registry has no node")?
        .get();
    let began = Instant::now();
    let output = Command::new(&config.corekv)
        .arg("restore")
        .arg("--backup")
        .arg(backup)
        .arg("--registry")
        .arg(&registry)
        .args(["--node-id", &node.to_string(), "--data-dir"])
        .arg(dir.join("restored-data"))
        .output()
        .with_context(|| format!("running {} restore", config.corekv.display()))?;
    if !output.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(began.elapsed())
}

/// The report as JSON (`--json`).
pub fn json(label: &str, config: &BackupConfig, r: &BackupResult) -> serde_json::Value {
    let phase = |p: &Phase| {
        let (latency, _) = crate::report::latency_json(&p.latency_us);
        json!({
            "writes_per_sec": p.per_sec(), "errors": p.errors, "first_error": p.first_error,
            "latency_us": latency,
        })
    };
    let seconds = r.backup_time.as_secs_f64();
    json!({
        "label": label,
        "backup_seconds": seconds,
        "backup_bytes": r.backup_bytes,
        "backup_keys": r.backup_keys,
        "backup_mb_per_sec": r.backup_bytes as f64 / 1e6 / seconds,
        "writes_without": phase(&r.without),
        "writes_during": phase(&r.during),
        "restore_seconds": r.restore_time.as_secs_f64(),
        "config": {
            "workload": "backup", "keys": config.keys, "value_size": config.value_size,
            "concurrency": config.concurrency, "duration_s": config.duration.as_secs_f64(),
        },
        "machine": crate::report::machine(),
    })
}

/// The report's text.
pub fn summary(label: &str, config: &BackupConfig, r: &BackupResult) -> String {
    let mb = r.backup_bytes as f64 / 1e6;
    let p99 = |p: &Phase| p.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
    format!(
        "{label}: {keys} keys x {value} B, {c} writers\n\
         backup: {mb:.1} MB, {bkeys} keys in {bt:.2} s ({rate:.1} MB/s)\n\
         writes without a backup: {w0:.0}/s, p99 {p0:.2} ms ({e0} errors)\n\
         writes during the backup: {w1:.0}/s, p99 {p1:.2} ms ({e1} errors)\n\
         restore of one node: {rt:.2} s\n",
        keys = config.keys,
        value = config.value_size,
        c = config.concurrency,
        bkeys = r.backup_keys,
        bt = r.backup_time.as_secs_f64(),
        rate = mb / r.backup_time.as_secs_f64(),
        w0 = r.without.per_sec(),
        p0 = p99(&r.without),
        e0 = r.without.errors,
        w1 = r.during.per_sec(),
        p1 = p99(&r.during),
        e1 = r.during.errors,
        rt = r.restore_time.as_secs_f64(),
    )
}
