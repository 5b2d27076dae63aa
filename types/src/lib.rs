//! What corekv's server, client and tools share, with no runtime under it (no tokio, no
//! glommio): the words both sides of the wire must agree on.
//!
//! - [`auth`]: users, roles and the key prefixes they may read and write (the policy file).
//! - [`ids`]: node ids, shard ids, terms and log indexes, each a type of its own.
//! - [`registry`]: the registry file — the cluster's name, shard count and nodes — loaded and
//!   validated the same way everywhere.
//! - [`membership`]: a shard's voters, learners and their addresses (its raft configuration),
//!   and the byte encodings they travel and rest in.
//! - [`meta`]: a key's metadata and the compare operators of transactions.
//! - [`placement`]: where a key lives: its slot (Redis Cluster's CRC16 rule) and the shard
//!   that owns the slot.
//! - [`status`]: what a replica reports about itself (role, raft position, whether it
//!   serves), one shape for `/status`, the wire and the client.
//! - [`tls`] (feature `tls`): rustls configurations from the registry's `[tls]` files.
#![deny(missing_docs)]

pub mod auth;
pub mod ids;
pub mod membership;
pub mod meta;
pub mod placement;
pub mod registry;
pub mod status;
#[cfg(feature = "tls")]
pub mod tls;
