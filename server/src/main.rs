//! `corekv`: run a node of a corekv cluster (`serve`), or a whole local cluster (`dev`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corekv_client::registry::Registry;
use corekv_server::dev::DevOptions;
use corekv_server::runtime::{ServeOptions, Timing};

#[derive(Parser)]
#[command(name = "corekv", version, about = "A strongly consistent, replicated key-value store")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of the cluster that the registry file describes.
    Serve {
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
    },
    /// Start a local cluster on loopback and stop it on Ctrl-C.
    Dev {
        /// Nodes to run.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Shards per node.
        #[arg(long, default_value_t = 2)]
        shards: u32,
        /// Directory for the registry file, the data and the logs.
        #[arg(long, default_value = "corekv-dev")]
        dir: PathBuf,
        /// First client port; peers use base+100 on, HTTP base+200 on (or more with many nodes).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Remove the directory's data first.
        #[arg(long)]
        clean: bool,
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
        Command::Serve { registry, node_id, data_dir, log } => {
            corekv_server::logging::init(&log);
            let registry = match Registry::load(&registry) {
                Ok(registry) => registry,
                Err(error) => {
                    eprintln!("corekv: {error}");
                    return ExitCode::from(2);
                }
            };
            if registry.node(node_id).is_none() {
                eprintln!(
                    "corekv: node id {node_id} is not in the registry (ids: {:?})",
                    registry.node_ids()
                );
                return ExitCode::from(2);
            }
            let data_dir =
                data_dir.unwrap_or_else(|| PathBuf::from(format!("corekv-data-{node_id}")));
            let options = ServeOptions { registry, node_id, data_dir, timing: Timing::default() };
            match corekv_server::runtime::serve(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("corekv: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Dev { nodes, shards, dir, base_port, clean } => {
            corekv_server::logging::init("warn");
            match corekv_server::dev::run(DevOptions { nodes, shards, dir, base_port, clean }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("corekv dev: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
