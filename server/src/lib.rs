//! The corekv server: the `corekv` binary's library.
//!
//! - [`core`]: the sans-IO shard core — raft-rs, the state machine, batching, reads — driven by
//!   inputs and producing outputs. No I/O.
//! - [`runtime`]: the glommio shell around it: one executor per shard pinned to a core, peer
//!   transport, client listener, WAL flushing, timers.
//! - [`http`]: `/health`, `/status`, `/metrics`, `/debug/pprof/flamegraph` on a plain thread.
//! - [`metrics`]: per-shard counters and histograms, Prometheus text.
//! - [`profile`]: the in-process CPU profiler behind `/debug/pprof/flamegraph`.
//! - [`dev`]: `corekv dev`, the one-command local cluster.
//! - [`data_dir`]: a node's data directory: its lock and the cluster shape it was written
//!   under.
//! - [`auth`]: the node's users and roles (the registry's `[auth]` policy file), reloaded on
//!   SIGHUP.
//! - [`tls`]: the node's TLS configurations, from the registry's `[tls]`, reloaded on SIGHUP.
//! - [`resp`]: the Redis protocol endpoint's commands and replies (its connections are in
//!   the runtime).
//! - [`constants`]: limits and timings.

pub mod auth;
pub mod constants;
pub mod core;
pub mod data_dir;
pub mod dev;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod profile;
pub mod resp;
pub mod restore;
pub mod runtime;
pub mod tls;
