//! Logging: `tracing` everywhere, with raft-rs's `slog` output bridged into it so one subscriber
//! sees every line. `RUST_LOG` (or `--log`) filters as usual; raft-rs's lines carry the target
//! `raft`.

use std::fmt::Write;

use corekv_types::ids::{NodeId, ShardId};

/// A `slog` drain that forwards records to `tracing`.
pub struct SlogToTracing;

/// Collects a record's key-value pairs as `key=value` text.
struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        let message = record.msg();
        let fields = fields.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{fields}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{fields}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}{fields}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}{fields}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}{fields}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through `tracing`, tagged with the shard.
pub fn raft_logger(node_id: NodeId, shard: ShardId) -> slog::Logger {
    slog::Logger::root(SlogToTracing, slog::o!("node" => node_id.get(), "shard" => shard.get()))
}

/// Installs the process-wide `tracing` subscriber: to stderr, filtered by `RUST_LOG` or, when
/// that is unset, by `default_filter`. raft-rs's routine messages are kept at warn.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
}
