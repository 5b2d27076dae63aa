//! `corekv`: run a node of a corekv cluster (`serve`), or a whole local cluster (`dev`), or
//! make a node's data directory from a backup (`restore`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corekv_server::core::SnapshotPolicy;
use corekv_server::data_dir::ShapeMismatch;
use corekv_server::dev::{DevOptions, DevRefusal, Request};
use corekv_server::runtime::{check_cpus, parse_cpu_list, ServeOptions, Timing};
use corekv_types::ids::NodeId;
use corekv_types::registry::Registry;

#[derive(Parser)]
#[command(name = "corekv", version, about = "A strongly consistent, replicated key-value store")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of the cluster that the registry file describes.
    Serve(ServeArgs),
    /// Start a local cluster on loopback and stop it on Ctrl-C. On a directory that holds a
    /// cluster, start that cluster (with its shape). A node that exits is left down while the
    /// others serve; `corekv dev stop N` / `restart N` stop and start one.
    #[command(args_conflicts_with_subcommands = true)]
    Dev {
        #[command(subcommand)]
        action: Option<DevAction>,
        /// Nodes to run [default: the directory's cluster's, else 3].
        #[arg(long)]
        nodes: Option<u32>,
        /// Shards per node [default: the directory's cluster's, else 2].
        #[arg(long)]
        shards: Option<u32>,
        /// Directory for the registry file, the data and the logs.
        #[arg(long, default_value = "corekv-dev")]
        dir: PathBuf,
        /// First client port; peers use base+100 on, HTTP base+200 on (or more with many
        /// nodes) [default: the directory's cluster's, else 7100].
        #[arg(long)]
        base_port: Option<u16>,
        /// Remove the directory's data first.
        #[arg(long)]
        clean: bool,
        /// TLS on every port: makes a throwaway CA, node and client certificates in DIR/tls
        /// and a registry that uses them (a cluster that has TLS keeps it).
        #[arg(long)]
        tls: bool,
        /// Users, roles and permissions (implies --tls): DIR/auth.toml, where user "dev" (the
        /// client certificate's) may do everything (a cluster that has auth keeps it).
        #[arg(long)]
        auth: bool,
    },
    /// Make a node's data directory for a new cluster from a backup (`corekvctl backup
    /// save`): run it for every node of the new registry, then start them. The registry
    /// must have the backup's shard count and a cluster name of its own; the data directory
    /// must be new or empty. The backup is verified whole before anything is written.
    Restore(RestoreArgs),
    /// Serve the HTTP/JSON API (`/v1/kv`, `/v1/txn`, `/v1/lease`, `/v1/watch`) for the
    /// cluster in the registry file: a stateless process that routes to the shards' leaders;
    /// run as many as needed behind a load balancer. Stops on SIGINT or SIGTERM, ending watch
    /// streams with a final event.
    Gateway(corekv_gateway::GatewayArgs),
}

/// `corekv restore`'s flags.
#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup directory.
    #[arg(long)]
    backup: PathBuf,
    /// The new cluster's registry file.
    #[arg(long)]
    registry: PathBuf,
    /// The node whose data directory to make.
    #[arg(long)]
    node_id: u64,
    /// The data directory to make (new or empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Let the new cluster have the backup's cluster name (only once the old cluster is
    /// gone for good: nodes of one name take each other as peers).
    #[arg(long)]
    reuse_cluster_name: bool,
}

/// `corekv serve`'s flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// The registry file (TOML) every node and client shares.
    #[arg(long)]
    registry: PathBuf,
    /// This node's id in the registry.
    #[arg(long)]
    node_id: u64,
    /// Where the node keeps its data [default: ./corekv-data-N, N being the node id].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter, as RUST_LOG would take it (RUST_LOG wins when set).
    #[arg(long, default_value = "info,raft=warn")]
    log: String,
    /// Take a snapshot after this many entries applied since the last one.
    #[arg(long, default_value_t = corekv_server::constants::SNAPSHOT_ENTRIES)]
    snapshot_entries: u64,
    /// ...or after this many MiB of entry data.
    #[arg(long, default_value_t = corekv_server::constants::SNAPSHOT_LOG_BYTES / (1024 * 1024))]
    snapshot_log_mib: u64,
    /// Write snapshot files at most this fast, in MiB/s (faster floods the disk queue
    /// that WAL flushes wait in).
    #[arg(long, default_value_t = corekv_server::constants::SNAPSHOT_WRITE_BYTES_PER_SEC / (1024 * 1024))]
    snapshot_write_mib: u64,
    /// Size of WAL segment files in MiB (fixed once a WAL exists).
    #[arg(long, default_value_t = corekv_storage::constants::SEGMENT_BYTES / (1024 * 1024))]
    wal_segment_mib: u64,
    /// This node lost its data (a wiped or replaced disk): rebuild it from the cluster,
    /// taking no part in elections until it has caught up. (A node finds out by itself
    /// once a leader reaches it; with --join it is safe from the start.)
    #[arg(long)]
    join: bool,
    /// Pin the shard executors to these CPUs, as a list like 0-3,8 (shard s on the s-th,
    /// wrapping round); background threads run on any of them. [default: every CPU the
    /// process may run on]
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// This node's replacements for the registry's `[tls]` paths (a node whose files live
/// elsewhere than the registry says).
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// CA certificates (PEM) client certificates are checked against.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM) for clients and HTTP.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) peers' certificates are checked against.
    #[arg(long, value_name = "FILE")]
    peer_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM) for its peers; it must name node-ID.corekv.
    #[arg(long, value_name = "FILE")]
    peer_tls_cert: Option<PathBuf>,
    /// The key of --peer-tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    peer_tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn overrides(&self) -> corekv_server::tls::TlsOverrides {
        corekv_server::tls::TlsOverrides {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            peer_ca: self.peer_tls_ca.clone(),
            peer_cert: self.peer_tls_cert.clone(),
            peer_key: self.peer_tls_key.clone(),
        }
    }
}

/// What `corekv dev restart|stop` asks of the `corekv dev` running in a directory.
#[derive(Subcommand)]
enum DevAction {
    /// Start node N of the running dev cluster again (after it exited or was stopped).
    Restart {
        /// The node id.
        node: u64,
        /// The running cluster's directory.
        #[arg(long, default_value = "corekv-dev")]
        dir: PathBuf,
    },
    /// Stop node N of the running dev cluster cleanly; the others keep serving.
    Stop {
        /// The node id.
        node: u64,
        /// The running cluster's directory.
        #[arg(long, default_value = "corekv-dev")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // A panic is a broken invariant: take the whole node down, in every build (release builds
    // abort on panic anyway), rather than leave some shards serving and one dead.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let args = Args::parse();
    match args.command {
        Command::Serve(args) => serve(args),
        Command::Restore(args) => restore(args),
        Command::Gateway(args) => {
            corekv_server::logging::init(&args.log);
            match corekv_gateway::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("corekv gateway: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Dev { action: Some(action), .. } => dev_action(action),
        Command::Dev { action: None, nodes, shards, dir, base_port, clean, tls, auth } => {
            corekv_server::logging::init("warn");
            let options = DevOptions { nodes, shards, dir, base_port, clean, tls, auth };
            match corekv_server::dev::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("corekv dev: {error:#}");
                    let refused = error.downcast_ref::<DevRefusal>().is_some();
                    ExitCode::from(if refused { 2 } else { 1 })
                }
            }
        }
    }
}

/// `corekv serve`: runs the node; exit 2 for a configuration error (flags, registry, data
/// written under another shape), 1 for a failure to start or serve.
fn serve(args: ServeArgs) -> ExitCode {
    corekv_server::logging::init(&args.log);
    let options = match serve_options(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("corekv: {error}");
            return ExitCode::from(2);
        }
    };
    match corekv_server::runtime::serve(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("corekv: {error:#}");
            // Data written under another cluster shape is a configuration error.
            let mismatch = error.downcast_ref::<ShapeMismatch>().is_some();
            ExitCode::from(if mismatch { 2 } else { 1 })
        }
    }
}

/// The node's options from its flags, or the one line that says which flag is wrong.
fn serve_options(args: ServeArgs) -> Result<ServeOptions, String> {
    let registry = Registry::load(&args.registry).map_err(|e| e.to_string())?;
    let node_id = NodeId(args.node_id);
    if registry.node(node_id).is_none() {
        return Err(format!(
            "node id {node_id} is not in the registry (ids: [{}])",
            registry.node_ids().iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(format!("corekv-data-{node_id}")));
    if args.snapshot_entries == 0 || args.snapshot_log_mib == 0 || args.snapshot_write_mib == 0 {
        return Err("--snapshot-entries, --snapshot-log-mib and --snapshot-write-mib must be at \
                    least 1"
            .to_string());
    }
    let min_mib = corekv_server::constants::WAL_SEGMENT_BYTES_MIN / (1024 * 1024);
    if !(min_mib..=1024).contains(&args.wal_segment_mib) {
        return Err(format!("--wal-segment-mib must be between {min_mib} and 1024"));
    }
    let cpus = args.cpus.as_deref().map(parse_cpu_list).transpose();
    let cpus = cpus.map_err(|error| format!("--cpus: {error}"))?;
    if let Some(Err(error)) = cpus.as_deref().map(check_cpus) {
        return Err(format!("--cpus: {error}"));
    }
    let snapshots = SnapshotPolicy {
        entries: args.snapshot_entries,
        log_bytes: args.snapshot_log_mib * 1024 * 1024,
        write_bytes_per_sec: args.snapshot_write_mib * 1024 * 1024,
    };
    let tls = corekv_server::tls::node_tls(&registry, &args.tls.overrides(), node_id)
        .map_err(|e| format!("TLS: {e}"))?;
    let auth = corekv_server::auth::node_auth(&registry).map_err(|e| format!("auth: {e}"))?;
    Ok(ServeOptions {
        registry,
        node_id,
        data_dir,
        timing: Timing::default(),
        snapshots,
        wal_segment_bytes: args.wal_segment_mib * 1024 * 1024,
        join: args.join,
        cpus,
        tls,
        auth,
    })
}

/// `corekv restore`: exit 2 when refused before anything was written (a bad backup, a
/// registry of another shape, a data directory that is not empty or is in use), 1 when
/// writing failed.
fn restore(args: RestoreArgs) -> ExitCode {
    let registry = match Registry::load(&args.registry) {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("corekv restore: {error}");
            return ExitCode::from(2);
        }
    };
    let options = corekv_server::restore::RestoreOptions {
        backup: args.backup,
        registry,
        node_id: NodeId(args.node_id),
        data_dir: args.data_dir,
        reuse_cluster_name: args.reuse_cluster_name,
    };
    let began = std::time::Instant::now();
    match corekv_server::restore::run(&options) {
        Ok(restored) => {
            for (shard, index, keys) in &restored {
                println!("shard {shard}: {keys} keys, through index {index}");
            }
            println!(
                "restored node {} of cluster {:?} into {} in {:.1} s",
                options.node_id,
                options.registry.cluster,
                options.data_dir.display(),
                began.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("corekv restore: {error:#}");
            let refused = error.downcast_ref::<corekv_server::restore::RestoreRefusal>().is_some();
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

/// `corekv dev restart|stop N`: asks the running `corekv dev`, prints its answer.
fn dev_action(action: DevAction) -> ExitCode {
    let (dir, request) = match action {
        DevAction::Restart { node, dir } => (dir, Request::Restart(node)),
        DevAction::Stop { node, dir } => (dir, Request::Stop(node)),
    };
    match corekv_server::dev::send(&dir, request) {
        Ok(answer) => {
            println!("corekv dev: {answer}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("corekv dev: {error:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: no two flags of any subcommand clash (a clash panics only when that subcommand
    // runs).
    #[test]
    fn flags_do_not_clash() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }
}
