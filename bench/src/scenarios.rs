//! The workloads beside `run`'s closed and open loops — `watch`, `expire`, `leases` and
//! `backup`: each turns the flags into its module's configuration, runs it against corekv (or
//! etcd, where it has an etcd side), prints its summary and writes its JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use corekv_client::Client;
use serde_json::json;

use crate::target::Target;
use crate::{backup, cluster, expire, leases, report, run, watch};
use crate::{run_config, server_process, write_json, Args, TargetKind};

/// `$run` with `$endpoints` bound to `--endpoints`, or the error of a corekv-bench built
/// without the etcd target (where `$run`, which names the etcd drivers, is not compiled).
macro_rules! with_etcd {
    ($args:expr, |$endpoints:ident| $run:expr) => {{
        #[cfg(feature = "etcd")]
        {
            let $endpoints =
                $args.endpoints.as_deref().context("--target etcd needs --endpoints")?;
            $run
        }
        #[cfg(not(feature = "etcd"))]
        {
            bail!(
                "this corekv-bench was built without the etcd target (cargo build --features etcd)"
            )
        }
    }};
}

/// `corekv-bench watch`: see the `watch` module.
pub(crate) async fn bench_watch(args: &Args, targets: Vec<Target>) -> anyhow::Result<()> {
    let config = watch::WatchConfig {
        watchers: args.watchers,
        rate: args.rate.unwrap_or(1000.0),
        keys: args.keys,
        value_size: args.value_size,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        timeout: Duration::from_millis(args.timeout_ms),
        watcher_tasks: args.watcher_tasks.unwrap_or(args.connections),
        writers_apart: !args.writers_beside,
    };
    if config.rate.is_nan()
        || config.rate <= 0.0
        || config.watchers == 0
        || config.watcher_tasks == 0
    {
        bail!("watch needs --rate above 0, at least one watcher and at least one watcher task");
    }
    let result = match args.target {
        TargetKind::Corekv => {
            // The writers' client is the last (see `corekv_targets`); the watchers' are the
            // --connections before it.
            let mut clients: Vec<Client> = targets.into_iter().filter_map(Target::corekv).collect();
            let writer = clients.pop().context("no client for the writers")?;
            watch::run_corekv(&clients, writer, &config).await?
        }
        TargetKind::Etcd => {
            with_etcd!(args, |endpoints| watch::run_etcd(endpoints, args.connections, &config)
                .await?)
        }
    };
    let label = args.label.clone().unwrap_or_else(|| {
        format!("{:?} watch {} watchers", args.target, args.watchers).to_lowercase()
    });
    print!("{}", watch::summary(&label, &result));
    if let Some(path) = &args.json {
        let (latency, curve) = report::latency_json(&result.latency_us);
        let secs = result.elapsed.as_secs_f64();
        let value = json!({
            "label": label,
            "ops_per_sec": result.writes as f64 / secs,
            "events_per_sec": result.events as f64 / secs,
            "latency_us": latency,
            "write_errors": result.write_errors,
            "server_rss_bytes": {"before": result.rss[0], "watching": result.rss[1], "end": result.rss[2]},
            "worst_delay_us_by_tenth_of_a_second": result.worst_by_tenth,
            "config": {
                "target": format!("{:?}", args.target).to_lowercase(), "workload": "watch",
                "watchers": args.watchers, "rate": config.rate, "keys": args.keys,
                "value_size": args.value_size, "connections": args.connections,
                "watcher_tasks": config.watcher_tasks, "writers_apart": config.writers_apart,
                "warmup_s": args.warmup, "duration_s": args.duration,
            },
            "machine": report::machine(),
            "percentiles": curve,
        });
        write_json(path, &value)?;
    }
    if let Some(path) = &args.hgrm {
        report::write_hgrm(path, &result.latency_us)?;
    }
    Ok(())
}

/// `corekv-bench backup`: see the `backup` module.
pub(crate) async fn bench_backup(
    args: &Args,
    targets: Vec<Target>,
    registry: PathBuf,
    timeout: Duration,
) -> anyhow::Result<()> {
    let config = backup::BackupConfig {
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration),
        registry,
        corekv: cluster::corekv_binary(args.corekv.as_deref()),
    };
    if args.prefill {
        run::prefill(&targets, &run_config(args, timeout)).await?;
    }
    let clients: Vec<Client> = targets.into_iter().filter_map(Target::corekv).collect();
    let result = backup::run(&clients, &config).await?;
    let label = args.label.clone().unwrap_or_else(|| "corekv backup".to_string());
    print!("{}", backup::summary(&label, &config, &result));
    if let Some(path) = &args.json {
        write_json(path, &backup::json(&label, &config, &result))?;
    }
    Ok(())
}

/// `corekv-bench leases`: see the `leases` module.
pub(crate) async fn bench_leases(args: &Args, targets: Vec<Target>) -> anyhow::Result<()> {
    let process = server_process(args);
    let config = leases::LeasesConfig {
        leases: args.leases,
        ttl: Duration::from_millis(args.ttl_ms),
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        process,
    };
    if config.leases == 0 {
        bail!("leases needs --leases of at least 1");
    }
    let result = match args.target {
        TargetKind::Corekv => {
            let clients: Vec<Client> = targets.into_iter().filter_map(Target::corekv).collect();
            let shards = clients.first().map_or(1, Client::shard_count);
            leases::run_corekv(&clients, shards, &config).await?
        }
        TargetKind::Etcd => {
            with_etcd!(args, |endpoints| leases::run_etcd(endpoints, args.connections, &config)
                .await?)
        }
    };
    let label =
        args.label.clone().unwrap_or_else(|| format!("{:?} leases", args.target).to_lowercase());
    print!("{}", leases::summary(&label, &config, &result));
    if let Some(path) = &args.json {
        let (latency, _) = report::latency_json(&result.latency_us);
        let secs = result.elapsed.as_secs_f64();
        let value = json!({
            "label": label,
            "keep_alives_per_sec": result.keep_alives as f64 / secs,
            "failed": result.failed,
            "lost": result.lost,
            "latency_us": latency,
            "server_cpu_us": result.server_cpu_us,
            "server_idle_cpu_us_per_sec": result.idle_cpu_us_per_sec,
            "net_cpu_us_per_keep_alive": leases::net_cpu_us(&result)
                .map(|us| us / result.keep_alives.max(1) as f64),
            "net_cpu_us_per_lease_second": leases::net_cpu_us(&result)
                .map(|us| us / secs / config.leases as f64),
            "config": {
                "target": format!("{:?}", args.target).to_lowercase(), "workload": "leases",
                "leases": config.leases, "ttl_ms": args.ttl_ms, "connections": args.connections,
                "warmup_s": args.warmup, "duration_s": args.duration,
            },
            "machine": report::machine(),
        });
        write_json(path, &value)?;
    }
    Ok(())
}

/// `corekv-bench expire`: see the `expire` module.
pub(crate) async fn bench_expire(args: &Args, targets: Vec<Target>) -> anyhow::Result<()> {
    let config = expire::ExpireConfig {
        rate: args.rate.unwrap_or(10_000.0),
        ttl: Duration::from_millis(args.ttl_ms),
        value_size: args.value_size,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        expiring: args.expiring,
        concurrency: args.concurrency,
        timeout: Duration::from_millis(args.timeout_ms),
        with_leases: args.with_leases,
    };
    if config.rate.is_nan() || config.rate <= 0.0 || args.ttl_ms == 0 {
        bail!("expire needs --rate above 0 and --ttl-ms above 0");
    }
    let label =
        args.label.clone().unwrap_or_else(|| format!("{:?} expire", args.target).to_lowercase());
    let client = targets.into_iter().find_map(Target::corekv);
    let lag = match (args.target, &client) {
        (TargetKind::Corekv, Some(client)) => expire::run_lag(client, &config).await?,
        (TargetKind::Corekv, None) => bail!("no corekv client"),
        (TargetKind::Etcd, _) => {
            with_etcd!(args, |endpoints| expire::run_lag_etcd(endpoints, &config).await?)
        }
    };
    print!("{}", expire::lag_summary(&label, &lag));
    let many = if let (true, Some(client)) = (config.expiring > 0, &client) {
        let many = expire::run_many(client, &config).await?;
        print!("{}", expire::many_summary(&label, config.ttl, &many));
        Some(many)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let (latency, _) = report::latency_json(&lag.lag_us);
        let value = json!({
            "label": label,
            "puts_per_sec": lag.puts as f64 / lag.elapsed.as_secs_f64(),
            "expired": lag.expired,
            "missing": lag.missing,
            "lag_us": latency,
            "many": many.as_ref().map(|m| json!({
                "prefill_s": m.prefill.as_secs_f64(),
                "all_gone_after_s": m.all_gone_after,
                "per_second": m.per_second,
                "write_errors": m.write_errors,
            })),
            "config": {
                "rate": config.rate, "ttl_ms": args.ttl_ms, "expiring": args.expiring,
                "concurrency": args.concurrency, "value_size": args.value_size,
                "warmup_s": args.warmup, "duration_s": args.duration,
            },
            "machine": report::machine(),
        });
        write_json(path, &value)?;
    }
    Ok(())
}
