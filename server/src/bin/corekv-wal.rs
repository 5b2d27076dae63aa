//! `corekv-wal`: operator and test tool for a shard's write-ahead log.
//!
//! - `verify DIR`: recovers the WAL read-only and reports records, segments and any torn tail;
//!   exits 1 when recovery refuses (corruption), naming the file and offset.
//! - `repair DIR --yes`: the operator's explicit choice to cut the log at the first bad record
//!   (zeroing the rest of that segment and deleting later ones).
//! - `crash-writer DIR`: appends numbered, self-checking records forever through the real
//!   glommio O_DIRECT path, appending while flushes are in flight, and prints
//!   `durable N` each time records `0..N` are durable. The SIGKILL crash test drives it.
//! - `bench DIR`: append+flush throughput and flush latency through the same path, with the
//!   next batch appended while the previous flush is in flight (or `--sequential`).

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use corekv_server::runtime::disk::DmaFlusher;
use corekv_storage::constants::{SEGMENT_BYTES, SPARE_SEGMENTS};
use corekv_storage::wal::{recover, Lsn, RecoveryMode, SegmentDir, SegmentIdentity, WalWriter};
use glommio::{LocalExecutorBuilder, Placement};

/// Record kind used by this tool's records.
const KIND_TOOL: u8 = 100;

#[derive(Parser)]
#[command(name = "corekv-wal", about = "Inspect, repair, torture and benchmark a corekv WAL")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The WAL directory (DATA_DIR/shard-S/wal).
    dir: PathBuf,
    /// Cluster name the segments belong to.
    #[arg(long, default_value = "wal-tool")]
    cluster: String,
    /// Shard the segments belong to.
    #[arg(long, default_value_t = 0)]
    shard: u32,
    /// Segment size in bytes (must match the existing segments).
    #[arg(long, default_value_t = SEGMENT_BYTES)]
    segment_bytes: u64,
}

impl Target {
    fn identity(&self) -> SegmentIdentity {
        SegmentIdentity { cluster: self.cluster.clone(), shard: self.shard }
    }
    fn open(&self) -> anyhow::Result<SegmentDir> {
        Ok(SegmentDir::open(&self.dir, self.identity(), self.segment_bytes)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Recover read-only and report what the log holds.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Also check that every record is a crash-writer record, numbered 0, 1, 2, ...
        #[arg(long)]
        numbered: bool,
    },
    /// Cut the log at the first bad record, wherever it is. Loses every later record.
    Repair {
        #[command(flatten)]
        target: Target,
        /// Confirm that records after the first bad one may be dropped.
        #[arg(long)]
        yes: bool,
    },
    /// Append numbered records forever, printing `durable N` after each flush.
    CrashWriter {
        #[command(flatten)]
        target: Target,
    },
    /// Measure append+flush throughput and flush latency.
    Bench {
        #[command(flatten)]
        target: Target,
        /// Record bytes appended before each flush.
        #[arg(long, default_value_t = 1024 * 1024)]
        flush_bytes: usize,
        /// Payload bytes per record.
        #[arg(long, default_value_t = 4096 - 32)]
        record_bytes: usize,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Append a batch only after the previous flush completed (no overlap).
        #[arg(long)]
        sequential: bool,
        /// Write the result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let args = Args::parse();
    let result = match args.command {
        Command::Verify { target, numbered } => verify(&target, numbered),
        Command::Repair { target, yes } => repair(&target, yes),
        Command::CrashWriter { target } => on_executor(move || crash_writer(target)),
        Command::Bench { target, flush_bytes, record_bytes, seconds, sequential, json } => {
            on_executor(move || bench(target, flush_bytes, record_bytes, seconds, sequential, json))
        }
    };
    if let Err(error) = result {
        eprintln!("corekv-wal: {error:#}");
        std::process::exit(1);
    }
}

fn on_executor<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("corekv-wal")
        .spawn(f)
        .map_err(|e| anyhow::anyhow!("starting the glommio executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("the glommio executor failed: {e}"))?
}

/// The payload of crash-writer record `n`: its number, then a pattern that depends on it, of a
/// length that depends on it. Any damage or mix-up shows when the pattern is checked.
fn numbered_payload(n: u64) -> Vec<u8> {
    let len = 16 + (n.wrapping_mul(7919) % 2000) as usize;
    let mut payload = n.to_le_bytes().to_vec();
    payload.extend((0..len).map(|j| (n as usize).wrapping_add(j * 31) as u8));
    payload
}

fn verify(target: &Target, numbered: bool) -> anyhow::Result<()> {
    let dir = target.open()?;
    let mut count = 0u64;
    let recovered = recover(&dir, &target.identity(), RecoveryMode::Strict, |record| {
        if numbered {
            let n = record.payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
            if record.kind != KIND_TOOL
                || n != Some(count)
                || record.payload != numbered_payload(count)
            {
                return Err(corekv_storage::StorageError::Corrupt {
                    path: dir.segment_path(record.seq),
                    offset: record.offset,
                    reason: format!("expected crash-writer record {count}"),
                });
            }
        }
        count += 1;
        Ok(())
    })?;
    let truncated = match &recovered.truncated {
        Some(t) => format!("torn tail cut at {} ({} bytes: {})", t.at, t.dropped_bytes, t.reason),
        None => "no torn tail".to_string(),
    };
    println!("records {count} segments {} {truncated}", recovered.segments.len());
    Ok(())
}

fn repair(target: &Target, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("repair drops every record after the first bad one; run again with --yes to do it");
    }
    let dir = target.open()?;
    let mut count = 0u64;
    let recovered = recover(&dir, &target.identity(), RecoveryMode::Repair, |_| {
        count += 1;
        Ok(())
    })?;
    dir.apply_repair(&recovered)?;
    match &recovered.truncated {
        Some(t) => println!(
            "cut at {}: kept {count} records, dropped {} bytes and {} later segments",
            t.at,
            t.dropped_bytes,
            recovered.discarded_segments.len()
        ),
        None => println!("nothing to repair: {count} records intact"),
    }
    Ok(())
}

/// Recovers the WAL and returns a writer positioned after it, plus the records found.
fn resume(target: &Target, dir: &SegmentDir) -> anyhow::Result<(WalWriter, u64)> {
    let mut count = 0u64;
    let recovered = recover(dir, &target.identity(), RecoveryMode::Strict, |_| {
        count += 1;
        Ok(())
    })?;
    Ok((WalWriter::resume(target.identity(), target.segment_bytes, recovered.tail), count))
}

async fn crash_writer(target: Target) -> anyhow::Result<()> {
    let dir = target.open()?;
    let (wal, recovered) = resume(&target, &dir)?;
    println!("recovered {recovered}");
    let wal = Rc::new(RefCell::new(wal));
    // Record number that ends at each appended position, in order.
    let ends: Rc<RefCell<std::collections::VecDeque<(Lsn, u64)>>> = Rc::default();
    let mut runner = DmaFlusher::new(dir.clone());

    // Both helper tasks live as long as these bindings: the loop below only ends on error.
    let _appender = {
        let (wal, ends) = (wal.clone(), ends.clone());
        glommio::spawn_local(async move {
            let mut n = recovered;
            loop {
                let batch = 1 + (n / 37 % 20);
                for _ in 0..batch {
                    let lsn = match wal.borrow_mut().append(KIND_TOOL, &numbered_payload(n)) {
                        Ok(lsn) => lsn,
                        Err(_) => break,
                    };
                    ends.borrow_mut().push_back((lsn, n + 1));
                    n += 1;
                }
                glommio::timer::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let _spares = {
        let spares = DmaFlusher::new(dir);
        glommio::spawn_local(async move {
            loop {
                // A directory listing first: most polls find nothing missing, and then start no
                // thread.
                let missing = spares.dir().spares().map_or(true, |s| s.len() < SPARE_SEGMENTS);
                if missing {
                    if let Err(error) = spares.ensure_spares().await {
                        eprintln!("corekv-wal: preparing a spare segment: {error}");
                    }
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut stdout = std::io::stdout();
    loop {
        let job = wal.borrow_mut().take_flush_job();
        let Some(job) = job else {
            glommio::timer::sleep(Duration::from_micros(100)).await;
            continue;
        };
        runner.run(&job).await?;
        let durable = wal.borrow_mut().complete(job);
        let mut durable_count = None;
        let mut ends = ends.borrow_mut();
        while ends.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            durable_count = ends.pop_front().map(|(_, count)| count);
        }
        drop(ends);
        if let Some(count) = durable_count {
            writeln!(stdout, "durable {count}")?;
            stdout.flush()?;
        }
    }
}

async fn bench(
    target: Target,
    flush_bytes: usize,
    record_bytes: usize,
    seconds: u64,
    sequential: bool,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = target.open()?;
    let (wal, _) = resume(&target, &dir)?;
    let wal = Rc::new(RefCell::new(wal));
    let mut flusher = DmaFlusher::new(dir.clone());
    flusher.ensure_spares_before_serving().await?;
    let duration = Duration::from_secs(seconds);
    let record = vec![0xA5u8; record_bytes];
    // Appends one batch; in pipelined mode it yields every 64 KiB, as a server appends a little
    // per loop iteration, so completions of the flush in flight are handled promptly.
    let fill = {
        let wal = wal.clone();
        move |pipelined: bool| {
            let (wal, record) = (wal.clone(), record.clone());
            async move {
                let mut batch = 0;
                while batch < flush_bytes {
                    wal.borrow_mut()
                        .append(KIND_TOOL, &record)
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    batch += corekv_storage::wal::format::record_size(record.len());
                    if pipelined && batch % (64 * 1024) < record.len() + 64 {
                        glommio::executor().yield_now().await;
                    }
                }
                anyhow::Ok(batch)
            }
        }
    };
    // Pipelined (the default) is how the server uses the WAL: the next batch accumulates while
    // the previous flush is in flight. `filled` and `taken` hand the batch over.
    let (filled_tx, filled_rx) = glommio::channels::local_channel::new_bounded::<usize>(1);
    let (taken_tx, taken_rx) = glommio::channels::local_channel::new_bounded::<()>(1);
    let _appender = (!sequential).then(|| spawn_appender(fill.clone(), filled_tx, taken_rx));
    let mut latency_us = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut oldest = corekv_storage::wal::SegmentSource::list(&dir)?.first().copied().unwrap_or(1);
    let started = Instant::now();
    let (mut bytes, mut flushes) = (0u64, 0u64);
    while started.elapsed() < duration {
        let batch = if sequential {
            fill(false).await?
        } else {
            filled_rx.recv().await.context("the appender stopped")?
        };
        let job = wal.borrow_mut().take_flush_job().context("a job after appending")?;
        if !sequential {
            taken_tx.send(()).await.map_err(|_| anyhow::anyhow!("the appender stopped"))?;
        }
        let began = Instant::now();
        flusher.run(&job).await?;
        latency_us.record(began.elapsed().as_micros() as u64)?;
        let rolled_over = job.writes.iter().any(|w| w.activate);
        let durable = wal.borrow_mut().complete(job);
        bytes += batch as u64;
        flushes += 1;
        if rolled_over {
            oldest = recycle(&mut flusher, oldest, durable.seq).await?;
        }
    }
    let mode = if sequential { "sequential" } else { "pipelined" };
    let measured = Measured { flush_bytes, record_bytes, bytes, flushes, latency_us };
    report(mode, &measured, started.elapsed().as_secs_f64(), json.as_deref())
}

/// Appends batch after batch in a task of its own, handing each over on `filled` and waiting
/// on `taken` until the flush loop took it: the pipelined mode.
fn spawn_appender<F, Fut>(
    fill: F,
    filled: glommio::channels::local_channel::LocalSender<usize>,
    taken: glommio::channels::local_channel::LocalReceiver<()>,
) -> glommio::Task<()>
where
    F: Fn(bool) -> Fut + 'static,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    glommio::spawn_local(async move {
        loop {
            let Ok(batch) = fill(true).await else { return };
            if filled.send(batch).await.is_err() || taken.recv().await.is_none() {
                return;
            }
        }
    })
}

/// The steady state of a compacting log after the WAL rolled over to segment `durable`:
/// segments from `oldest` up to it are retired and recycled as the next spares, so no segment
/// is prepared from scratch. Returns the new oldest segment.
async fn recycle(flusher: &mut DmaFlusher, oldest: u64, durable: u64) -> anyhow::Result<u64> {
    for seq in oldest..durable {
        flusher.retire(seq).await?;
    }
    flusher.ensure_spares().await?;
    Ok(durable)
}

/// What a flush benchmark measured.
struct Measured {
    flush_bytes: usize,
    record_bytes: usize,
    bytes: u64,
    flushes: u64,
    latency_us: hdrhistogram::Histogram<u64>,
}

/// Prints the benchmark's line, and writes its JSON when asked.
fn report(mode: &str, m: &Measured, elapsed: f64, json: Option<&Path>) -> anyhow::Result<()> {
    let mib_per_sec = m.bytes as f64 / elapsed / (1024.0 * 1024.0);
    println!(
        "{mode} flush_bytes {} flushes {} throughput {mib_per_sec:.1} MiB/s flush latency p50 {} \
         us p99 {} us max {} us",
        m.flush_bytes,
        m.flushes,
        m.latency_us.value_at_quantile(0.5),
        m.latency_us.value_at_quantile(0.99),
        m.latency_us.max()
    );
    if let Some(path) = json {
        let result = serde_json::json!({
            "mode": mode,
            "flush_bytes": m.flush_bytes,
            "record_bytes": m.record_bytes,
            "seconds": elapsed,
            "flushes": m.flushes,
            "mib_per_sec": mib_per_sec,
            "flush_latency_us": {
                "p50": m.latency_us.value_at_quantile(0.5),
                "p90": m.latency_us.value_at_quantile(0.9),
                "p99": m.latency_us.value_at_quantile(0.99),
                "max": m.latency_us.max(),
            },
        });
        write_json(path, &result)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}
