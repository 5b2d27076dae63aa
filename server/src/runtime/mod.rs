//! The glommio shell: starts one executor per shard, pinned to the `shard mod n`-th of the n
//! CPUs the process may use, each owning its shard outright (no locks between shards on the
//! hot path), plus the HTTP thread; shuts everything down cleanly on SIGINT/SIGTERM.
//!
//! Shutdown, step by step:
//! 1. The signal thread sets the shared flag; each shard's driver sees it at its next tick.
//! 2. The shard stops taking requests (new ones get `Unavailable`) and gives writes already in
//!    flight up to [`crate::constants::SHUTDOWN_DRAIN_MS`] to commit and apply.
//! 3. Whatever is still waiting is answered: reads and unproposed writes `Unavailable`,
//!    proposed writes `Timeout` (their outcome is unknown).
//! 4. The WAL flushes everything buffered and its files are closed; replies are written out.
//! 5. The executor's tasks end, the thread exits; once every shard is done the process exits 0.
//!
//! One module per task, all around the shared per-shard state in `state` (a leaf that imports
//! none of them):
//!
//! | module | task |
//! |---|---|
//! | `startup` | open and recover the shard through the core's driver contract, bind its ports |
//! | `driver` | run the core's turns; spawn the other tasks |
//! | `outputs` | hand a turn's outputs to peer links, connections, the flush task |
//! | `flush` | one WAL flush at a time, segment retirement, spares |
//! | `snapshot_task` | build and write a snapshot off the executor |
//! | `shutdown` | drain, answer, flush |
//! | `client` | client connections |
//! | `resp` | Redis protocol connections (the commands are in `crate::resp`) |
//! | `backup` | stream a snapshot to a client taking a backup |
//! | `peer` | peer links: `sender`, `handshake`, `inbound`, `snapshot_send`, `snapshot_receive` |
//! | `disk` | the O_DIRECT files: WAL flushes, snapshot files |

mod background;
mod backup;
mod client;
pub mod disk;
mod driver;
mod flush;
mod net;
mod notify;
mod outputs;
mod peer;
mod resp;
mod shutdown;
mod snapshot_task;
mod startup;
mod state;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::registry::Registry;
use glommio::{LocalExecutorBuilder, Placement};

use crate::constants::{ELECTION_TICKS, HEARTBEAT_TICKS, TICK_MS};
use crate::http::{HttpState, StatusSlot};
use crate::metrics::ShardMetrics;
use crate::tls::NodeTls;
pub use startup::Timing;

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick_ms: TICK_MS,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
        }
    }
}

/// What `corekv serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The validated registry.
    pub registry: Registry,
    /// This node's id.
    pub node_id: NodeId,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// When shards take snapshots.
    pub snapshots: crate::core::SnapshotPolicy,
    /// Size of new WAL segment files.
    pub wal_segment_bytes: u64,
    /// This node lost its data or is new to a running cluster: catch up before voting.
    pub join: bool,
    /// The CPUs the shard executors are pinned to, shard `s` on the `s`-th (wrapping round),
    /// checked by [`check_cpus`]; `None`: every CPU the process may run on, in order.
    pub cpus: Option<Vec<usize>>,
    /// This node's TLS ([`crate::tls::node_tls`]); `None`: plaintext.
    pub tls: Option<Arc<NodeTls>>,
    /// This node's auth ([`crate::auth::node_auth`]); `None`: every request allowed.
    pub auth: Option<Arc<crate::auth::NodeAuth>>,
}

/// Runs a node until SIGINT/SIGTERM. Errors at start-up (a port in use, a corrupt WAL, a
/// locked data directory, data written under another cluster shape — a
/// [`crate::data_dir::ShapeMismatch`]) are returned after every shard that did start has
/// stopped.
pub fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let registry = Arc::new(options.registry.clone());
    let node = registry
        .node(options.node_id)
        .with_context(|| format!("node id {} is not in the registry", options.node_id))?
        .clone();
    let _lock = crate::data_dir::lock(&options.data_dir)?;
    let identity = crate::data_dir::Identity::new(&registry.cluster, registry.shards);
    crate::data_dir::check_and_record(&options.data_dir, &identity)?;
    let tls = options.tls.clone();
    if registry.tls.is_some() && tls.is_none() {
        anyhow::bail!("the registry has a [tls] section, but the node was given no TLS (crate::tls::node_tls)");
    }
    if registry.auth.is_some() && options.auth.is_none() {
        anyhow::bail!("the registry has an [auth] section, but the node was given no policy (crate::auth::node_auth)");
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    install_signal_handler(shutdown.clone(), tls.clone(), options.auth.clone())?;
    let cpus = options.cpus.clone().unwrap_or_else(allowed_cpus);
    corekv_storage::pacing::set_background_cpus(cpus.clone());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let Executors { threads, metrics, statuses } =
        spawn_executors(&options, &registry, (&shutdown, &tls), &cpus, started_tx)?;
    let mut failure = wait_for_start(&started_rx, registry.shards);
    // The HTTP thread lives until the process exits; nothing to join.
    if failure.is_none() {
        let state = HttpState::new(
            options.node_id.get(),
            registry.cluster.clone(),
            statuses,
            metrics,
            status_stale_after(&options.timing),
        )
        .with_tls(tls.clone());
        let http_tls = tls.clone();
        if let Err(error) = crate::http::start(&node.http_addr(), Arc::new(state), http_tls) {
            failure = Some(format!("{error:#}"));
        }
    }
    if failure.is_some() {
        shutdown.store(true, Ordering::Relaxed);
    } else {
        tracing::info!(
            node = %options.node_id,
            cluster = %registry.cluster,
            shards = registry.shards,
            client_ports = %format!("{}-{}", node.client_port, node.client_port as u32 + registry.shards - 1),
            http = %node.http_addr(),
            data_dir = %options.data_dir.display(),
            "node serving"
        );
    }
    for handle in threads {
        let _ = handle.join();
    }
    match failure {
        Some(error) => Err(anyhow::anyhow!(error)),
        None => {
            tracing::info!(node = %options.node_id, "node stopped");
            Ok(())
        }
    }
}

/// The shard executors of a node, and what each publishes for the HTTP thread.
struct Executors {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    metrics: Vec<Arc<ShardMetrics>>,
    statuses: Vec<StatusSlot>,
}

/// Starts one executor per shard, pinned to its CPU; each reports on `started` once it serves
/// or failed to start.
fn spawn_executors(
    options: &ServeOptions,
    registry: &Arc<Registry>,
    (shutdown, tls): (&Arc<AtomicBool>, &Option<Arc<NodeTls>>),
    cpus: &[usize],
    started: std::sync::mpsc::Sender<(u32, Result<(), String>)>,
) -> anyhow::Result<Executors> {
    let mut executors =
        Executors { threads: Vec::new(), metrics: Vec::new(), statuses: Vec::new() };
    executors.statuses = (0..registry.shards).map(|_| Arc::new(Mutex::new(None))).collect();
    let statuses = Arc::new(executors.statuses.clone());
    for shard in 0..registry.shards {
        let shard_metrics = Arc::new(ShardMetrics::default());
        let status = executors.statuses[shard as usize].clone();
        executors.metrics.push(shard_metrics.clone());
        let ctx = startup::ShardContext {
            snapshots: options.snapshots,
            wal_segment_bytes: options.wal_segment_bytes,
            history_retention: crate::core::history_retention(&registry.watch),
            join: options.join,
            registry: registry.clone(),
            node_id: options.node_id,
            shard: ShardId(shard),
            shard_dir: options.data_dir.join(format!("shard-{shard}")),
            timing: options.timing,
            metrics: shard_metrics,
            status,
            statuses: statuses.clone(),
            shutdown: shutdown.clone(),
            tls: tls.clone(),
            auth: options.auth.clone(),
            started: started.clone(),
        };
        let cpu = cpus[shard as usize % cpus.len()];
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{shard}"))
            .spawn(move || driver::run(ctx))
            .map_err(|e| anyhow::anyhow!("starting the executor of shard {shard}: {e}"))?;
        executors.threads.push(handle);
    }
    Ok(executors)
}

/// Executors publish their status every tick; two election timeouts without one means a
/// stuck executor.
fn status_stale_after(timing: &Timing) -> std::time::Duration {
    let election_ms = timing.tick_ms * timing.election_ticks as u64;
    std::time::Duration::from_millis(2 * election_ms)
}

/// Waits until every shard said it serves or why it could not start: the first failure, if
/// any.
fn wait_for_start(
    started: &std::sync::mpsc::Receiver<(u32, Result<(), String>)>,
    shards: u32,
) -> Option<String> {
    let mut failure = None;
    for _ in 0..shards {
        match started.recv() {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(error))) => {
                failure.get_or_insert(error);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a shard executor died during start-up".to_string());
                break;
            }
        }
    }
    failure
}

/// SIGINT/SIGTERM set the shutdown flag; a second signal exits at once. SIGHUP reloads the
/// TLS files (new connections use them; open ones keep theirs) and the auth policy (in force
/// for every request from then on).
fn install_signal_handler(
    shutdown: Arc<AtomicBool>,
    tls: Option<Arc<NodeTls>>,
    auth: Option<Arc<crate::auth::NodeAuth>>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match tls.as_ref().map(|tls| tls.reload()) {
                        Some(Ok(())) => tracing::info!("SIGHUP: TLS certificates and keys reloaded"),
                        Some(Err(error)) => tracing::error!(%error, "SIGHUP: TLS reload failed; the files in use before stay in use"),
                        None => tracing::info!("SIGHUP: no TLS to reload (no [tls])"),
                    }
                    match auth.as_ref().map(|auth| auth.reload()) {
                        Some(Ok(())) => tracing::info!("SIGHUP: auth policy reloaded"),
                        Some(Err(error)) => tracing::error!(%error, "SIGHUP: auth policy reload failed; the policy in force stays"),
                        None => {}
                    }
                    continue;
                }
                if shutdown.swap(true, Ordering::Relaxed) {
                    tracing::warn!(signal, "second signal: exiting without a clean shutdown");
                    std::process::exit(130);
                }
                tracing::info!(signal, "shutting down (send the signal again to exit at once)");
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Parses a CPU list as `taskset -c` and cgroup `cpuset` files write it (`0-3,8`), in the
/// order given; a CPU named twice, an empty list or a reversed range is an error.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' in the CPU list '{text}' is not a CPU number"))
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(format!("the range '{part}' in the CPU list '{text}' runs backwards"));
        }
        if last >= libc::CPU_SETSIZE as usize {
            return Err(format!(
                "CPU {last} in the CPU list '{text}' is beyond the largest CPU number"
            ));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} appears twice in the CPU list '{text}'"));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

/// Checks that the process may run on every CPU of `cpus` (its affinity mask, as `taskset` or
/// a cgroup set it).
pub fn check_cpus(cpus: &[usize]) -> Result<(), String> {
    let allowed = allowed_cpus();
    match cpus.iter().find(|cpu| !allowed.contains(cpu)) {
        Some(cpu) => Err(format!(
            "CPU {cpu} is not one this process may run on (allowed: {})",
            allowed.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        )),
        None => Ok(()),
    }
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or systemd's
/// `CPUAffinity=` set it), in order; without `--cpus`, shard `s` runs on the `s mod len`-th
/// of them.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set the call fills in; its size is passed along.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let got =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<usize> = if got == 0 {
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let count = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        return (0..count).collect();
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: CPU lists parse as taskset writes them, in the order given, and malformed ones
    // are refused with the reason.
    #[test]
    fn cpu_lists_parse_in_order_and_bad_ones_are_refused() {
        assert_eq!(parse_cpu_list("0-3,8"), Ok(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("5, 1"), Ok(vec![5, 1]));
        assert_eq!(parse_cpu_list("7"), Ok(vec![7]));
        for (text, reason) in [
            ("", "is not a CPU number"),
            ("1,,2", "is not a CPU number"),
            ("x", "is not a CPU number"),
            ("-1", "is not a CPU number"),
            ("3-1", "runs backwards"),
            ("0-2,1", "appears twice"),
            ("99999", "beyond the largest CPU number"),
        ] {
            let error = parse_cpu_list(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    // Shows: the CPUs this process may run on pass the check, and one outside them fails.
    #[test]
    fn cpus_outside_the_affinity_mask_are_refused() {
        let allowed = allowed_cpus();
        assert!(check_cpus(&allowed).is_ok());
        let outside = (0..libc::CPU_SETSIZE as usize).find(|c| !allowed.contains(c)).unwrap();
        let error = check_cpus(&[outside]).unwrap_err();
        assert!(error.contains(&format!("CPU {outside} is not one")), "{error}");
    }
}
