//! The Redis protocol (RESP) endpoint, sans-IO: shard `s` of a node with a `resp_port`
//! answers Redis commands on `resp_port + s`, as if it were a Redis Cluster node serving
//! that shard's slots. Any cluster-aware Redis client thus routes its commands by slot to the
//! right shard, follows `MOVED` to its leader, and gets corekv's guarantees: every
//! acknowledged write committed on a majority and fsynced, linearizable reads.
//!
//! Each command becomes one request of the client protocol handed to the shard core — the
//! same checks, limits, permissions and paths as the flatbuffers side — and the core's reply
//! is turned back into Redis's. The connection task lives in `runtime::resp`.
//!
//! | module | what |
//! |---|---|
//! | `frame` | reading commands: RESP arrays and inline commands, with limits |
//! | `reply` | writing replies in RESP2 or RESP3 |
//! | `commands` | the command table (`COMMAND`), key positions |
//! | `session` | a connection's state, ordering of answers, routing by slot |
//! | `keys` | the commands on keys → core requests |
//! | `conn` | the commands without keys (`HELLO`, `AUTH`, `CLIENT`, `SCAN`…) |
//! | `multi` | `WATCH`, `MULTI`, `EXEC`: one corekv transaction |
//! | `topology` | `CLUSTER SLOTS / SHARDS / NODES / INFO…`, `INFO` |
//! | `render` | core replies → Redis replies, errors → `MOVED`, `TRYAGAIN`… |
//! | `glob` | `KEYS` and `MATCH` patterns |

pub mod commands;
mod conn;
pub mod cursors;
pub mod frame;
pub mod glob;
mod keys;
pub mod multi;
pub mod render;
pub mod reply;
pub mod session;
pub mod topology;

pub use session::{Host, Place, Session, ShardView};

/// The Redis version the endpoint says it speaks (`HELLO`, `INFO`): the command set and
/// replies follow Redis 7.2 where it has them.
pub const REDIS_VERSION: &str = "7.2.0";

/// Most keys `KEYS` reads from a shard; past it, `KEYS` says to use `SCAN`.
pub const KEYS_MAX: usize = corekv_proto::constants::SCAN_LIMIT_MAX;

#[cfg(test)]
mod tests;
