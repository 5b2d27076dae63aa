//! `corekv-bench`: drives a running corekv cluster (or etcd, for comparison) and reports
//! throughput and latency percentiles.
//!
//! ```text
//! corekv-bench [--registry FILE] WORKLOAD [--keys N] [--key-size B] [--value-size B]
//!              [--distribution uniform|zipfian] [--prefill] [--read-ratio R] [--stale]
//!              [--concurrency C] [--connections K] [--rate R] [--warmup S]
//!              [--duration S | --ops N] [--json FILE] [--hgrm FILE]
//!              [--spawn-cluster N [--shards S]] [--target corekv|etcd --endpoints URLS]
//! corekv-bench watch [--watchers N] [--watcher-tasks T] [--writers-beside] [--rate W] ...
//!              watchers on a prefix while writers write
//! corekv-bench expire [--rate R] [--ttl-ms T] [--expiring N] [--with-leases] ...   expiries
//! corekv-bench leases [--leases N] [--ttl-ms T] ...   what keeping leases alive costs
//! corekv-bench backup [--prefill] [--keys N] ...   writes during an online backup; restore time
//! corekv-bench plot RESULT.json... --plot OUT.svg
//! ```

mod backup;
mod cluster;
mod expire;
mod leases;
mod plot;
mod report;
mod run;
mod scenarios;
mod share;
mod target;
mod watch;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig, TlsConfig};
use serde_json::json;

use run::{Progress, RunConfig};
use target::Target;
use workload::{KeyDistribution, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "corekv-bench",
    version,
    about = "Load generator for corekv: ops/s and latency percentiles"
)]
struct Args {
    /// The operation mix (or `plot` to draw result files).
    #[arg(value_enum)]
    workload: Workload,
    /// Result files to plot (with `plot`).
    inputs: Vec<PathBuf>,
    /// Registry file [default: $COREKV_REGISTRY, then ./corekv.toml].
    #[arg(long)]
    registry: Option<PathBuf>,
    /// CA (PEM) for a TLS cluster [default: $COREKV_CACERT, then the CA the registry file names].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for a TLS cluster [default: $COREKV_CERT].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM) [default: $COREKV_CERT_KEY].
    #[arg(long, value_name = "FILE")]
    cert_key: Option<PathBuf>,
    /// A bearer token naming the user, for a cluster with auth [default: $COREKV_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Keys in the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// How keys are picked [default: zipfian for ycsb-*, uniform otherwise].
    #[arg(long, value_enum)]
    distribution: Option<KeyDistribution>,
    /// Write every key once before the run.
    #[arg(long)]
    prefill: bool,
    /// Share of reads in `mixed`.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// Stale reads (any replica) instead of linearizable ones.
    #[arg(long)]
    stale: bool,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Independent clients (connection sets) the requests are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Open loop: operations per second, latency measured from each one's intended start.
    #[arg(long)]
    rate: Option<f64>,
    /// Most operations in flight in open loop.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    in_flight_max: u32,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operations measured (instead of --duration).
    #[arg(long)]
    ops: Option<u64>,
    /// Deadline of each operation, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm format.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// With `plot`: the SVG to write.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A name for this run in reports and plots.
    #[arg(long)]
    label: Option<String>,
    /// Start a local cluster of N nodes for the run (with `corekv dev`), stop it after.
    #[arg(long)]
    spawn_cluster: Option<u32>,
    /// Shards per node of the spawned cluster.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// First port of the spawned cluster.
    #[arg(long, default_value_t = 7500)]
    base_port: u16,
    /// The corekv binary for --spawn-cluster [default: beside this one].
    #[arg(long)]
    corekv: Option<PathBuf>,
    /// The system under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Corekv)]
    target: TargetKind,
    /// etcd client URLs, comma-separated (with --target etcd).
    #[arg(long)]
    endpoints: Option<String>,
    /// With `watch`: watchers on the prefix (spread over --connections clients).
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// With `watch`: tasks reading the watchers' streams, each reading those of its share
    /// that woke it [default: one per client, --connections].
    #[arg(long)]
    watcher_tasks: Option<usize>,
    /// With `watch`: the writers on the watchers' runtime instead of a thread of their own
    /// (their acknowledgements then wait for the watchers' tasks to be timed, which makes the
    /// delays look shorter).
    #[arg(long)]
    writers_beside: bool,
    /// Name of the server processes whose CPU time is measured [default: corekv or etcd].
    #[arg(long)]
    server_process: Option<String>,
    /// With `expire`: the keys' time to live, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    ttl_ms: u64,
    /// With `expire`: keys put with one time to live before writers run while they expire
    /// (0: skip that part).
    #[arg(long, default_value_t = 0)]
    expiring: usize,
    /// With `expire` on corekv: each key goes with a lease of its own, granted with it in one
    /// request, rather than a time to live.
    #[arg(long)]
    with_leases: bool,
    /// With `leases`: leases kept alive.
    #[arg(long, default_value_t = 1_000)]
    leases: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetKind {
    Corekv,
    Etcd,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = real_main(args) {
        eprintln!("corekv-bench: {error:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if args.workload == Workload::Plot {
        let out = args.plot.as_deref().context("plot needs --plot OUT.svg")?;
        plot::plot(out, &args.inputs)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    if !args.inputs.is_empty() {
        bail!("result files are only taken by `plot`");
    }
    if args.keys == 0 || args.concurrency == 0 || args.connections == 0 {
        bail!("--keys, --concurrency and --connections must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(bench(args))
}

fn corekv_targets(
    registry: Registry,
    (tls, token): (Option<TlsConfig>, Option<String>),
    connections: usize,
    timeout: Duration,
) -> Vec<Target> {
    (0..connections)
        .map(|_| {
            let mut config = ClientConfig::new(registry.clone());
            config.tls = tls.clone();
            config.token = token.clone();
            config.timeout = timeout;
            config.max_in_flight_per_connection = 4096;
            Target::Corekv(Client::connect(config))
        })
        .collect()
}

#[cfg(feature = "etcd")]
async fn etcd_targets(endpoints: &str, connections: usize) -> anyhow::Result<Vec<Target>> {
    let urls: Vec<&str> = endpoints.split(',').collect();
    let mut targets = Vec::new();
    for _ in 0..connections {
        let client =
            etcd_client::Client::connect(&urls, None).await.context("connecting to etcd")?;
        targets.push(Target::Etcd(Box::new(client.kv_client())));
    }
    Ok(targets)
}

#[cfg(not(feature = "etcd"))]
async fn etcd_targets(_endpoints: &str, _connections: usize) -> anyhow::Result<Vec<Target>> {
    bail!("this corekv-bench was built without the etcd target (cargo build --features etcd)")
}

/// The name of the server processes whose CPU time is measured.
fn server_process(args: &Args) -> String {
    args.server_process.clone().unwrap_or_else(|| {
        match args.target {
            TargetKind::Corekv => "corekv",
            TargetKind::Etcd => "etcd",
        }
        .to_string()
    })
}

/// Writes a result's JSON to `path`.
fn write_json(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The run the flags describe (the workloads of `run`; the others' prefill).
fn run_config(args: &Args, timeout: Duration) -> RunConfig {
    RunConfig {
        workload: args.workload,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        distribution: args.distribution.unwrap_or(if args.workload.zipfian_by_default() {
            KeyDistribution::Zipfian
        } else {
            KeyDistribution::Uniform
        }),
        read_ratio: args.read_ratio,
        stale: args.stale,
        concurrency: args.concurrency,
        rate: args.rate,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        ops: args.ops,
        timeout,
        open_loop_in_flight_max: args.in_flight_max as usize,
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut spawned = None;
    let mut corekv_registry = None;
    let (mut tls_on, mut auth_on) = (false, false);
    let targets = match args.target {
        TargetKind::Corekv => {
            let registry_path = match args.spawn_cluster {
                Some(nodes) => {
                    let binary = cluster::corekv_binary(args.corekv.as_deref());
                    eprintln!(
                        "corekv-bench: starting a {nodes}-node cluster with {}",
                        binary.display()
                    );
                    let started = cluster::SpawnedCluster::start(
                        &binary,
                        nodes,
                        args.shards,
                        args.base_port,
                    )?;
                    let path = started.registry.clone();
                    spawned = Some(started);
                    path
                }
                None => args
                    .registry
                    .clone()
                    .or_else(|| std::env::var_os("COREKV_REGISTRY").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from("corekv.toml")),
            };
            let registry = Registry::load(&registry_path)?;
            corekv_registry = Some(registry_path);
            let (cacert, cert, key) =
                (args.cacert.as_deref(), args.cert.as_deref(), args.cert_key.as_deref());
            let tls = TlsConfig::from_command_line(&registry, cacert, cert, key)?;
            tls_on = tls.is_some();
            auth_on = registry.auth.is_some();
            let token = args.token.clone().or_else(|| std::env::var("COREKV_TOKEN").ok());
            // `watch` writes through a client of its own besides the watchers'.
            let extra = usize::from(args.workload == Workload::Watch);
            corekv_targets(registry, (tls, token), args.connections + extra, timeout)
        }
        TargetKind::Etcd => {
            let endpoints = args.endpoints.as_deref().context("--target etcd needs --endpoints")?;
            etcd_targets(endpoints, args.connections).await?
        }
    };
    if args.workload == Workload::Watch {
        let result = scenarios::bench_watch(&args, targets).await;
        drop(spawned);
        return result;
    }
    if args.workload == Workload::Expire {
        let result = scenarios::bench_expire(&args, targets).await;
        drop(spawned);
        return result;
    }
    if args.workload == Workload::Backup {
        let registry = corekv_registry.context("backup runs against corekv only")?;
        let result = scenarios::bench_backup(&args, targets, registry, timeout).await;
        drop(spawned);
        return result;
    }
    if args.workload == Workload::Leases {
        let result = scenarios::bench_leases(&args, targets).await;
        drop(spawned);
        return result;
    }
    let config = run_config(&args, timeout);
    if args.prefill {
        run::prefill(&targets, &config).await?;
    }
    let process = server_process(&args);
    let progress = Arc::new(Progress::default());
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ops = progress.ops.load(Ordering::Relaxed);
                // The wall clock (UTC) lines these up with the servers' logs.
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
                    % 86_400.0;
                eprintln!(
                    "[{:>4.0}s] {:>9} ops/s, max {:>7} us, {} errors so far  (UTC {:02}:{:02}:{:06.3})",
                    started.elapsed().as_secs_f64(),
                    ops - last,
                    progress.max_us.swap(0, Ordering::Relaxed),
                    progress.errors.load(Ordering::Relaxed),
                    (clock / 3600.0) as u64,
                    (clock % 3600.0 / 60.0) as u64,
                    clock % 60.0
                );
                last = ops;
            }
        })
    };
    let warm_until = Instant::now() + config.warmup;
    let cpu_sampler = {
        let process = process.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_until.into()).await;
            report::process_cpu_us(&process)
        })
    };
    let result = run::run(&targets, &config, progress).await;
    let cpu_after = report::process_cpu_us(&process);
    ticker.abort();
    let cpu_before = cpu_sampler.await.ok().flatten();
    let ok_ops = result.ops - result.errors.values().sum::<u64>();
    let cpu_us_per_op = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if ok_ops > 0 => Some((a - b) as f64 / ok_ops as f64),
        _ => None,
    };
    let label = args.label.clone().unwrap_or_else(|| {
        let target = match args.target {
            TargetKind::Corekv => "corekv",
            TargetKind::Etcd => "etcd",
        };
        format!("{target} {} c={}", args.workload.name(), args.concurrency)
    });
    print!("{}", report::summary(&label, &result, cpu_us_per_op));
    if let Some(path) = &args.json {
        let (latency, curve) = report::latency_json(&result.latency_us);
        let value = json!({
            "label": label,
            "ops_per_sec": result.ops_per_sec(),
            "latency_us": latency,
            "ops": result.ops,
            "errors": result.errors,
            "cas_conflicts": result.conflicts,
            "duration_s": result.elapsed.as_secs_f64(),
            "server_cpu_us_per_op": cpu_us_per_op,
            "config": {
                "target": format!("{:?}", args.target).to_lowercase(),
                "tls": tls_on,
                "auth": auth_on,
                "workload": args.workload.name(),
                "keys": args.keys, "key_size": args.key_size, "value_size": args.value_size,
                "distribution": format!("{:?}", config.distribution).to_lowercase(),
                "prefill": args.prefill, "read_ratio": config.workload.read_ratio(args.read_ratio),
                "stale": args.stale, "concurrency": args.concurrency, "connections": args.connections,
                "rate": args.rate, "warmup_s": args.warmup, "duration_s": args.duration, "ops": args.ops,
                "spawn_cluster": args.spawn_cluster, "shards": args.shards,
            },
            "machine": report::machine(),
            "started_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "percentiles": curve,
        });
        write_json(path, &value)?;
    }
    if let Some(path) = &args.hgrm {
        report::write_hgrm(path, &result.latency_us)?;
    }
    drop(spawned);
    Ok(())
}
