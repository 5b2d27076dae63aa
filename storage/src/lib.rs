//! corekv's storage: everything a shard keeps on disk.
//!
//! - [`wal`]: the write-ahead log — segment files (written with O_DIRECT by the server), records
//!   with crc32c, group commit, recovery that truncates torn tails and refuses corruption.
//! - [`raft_log`]: raft-rs's [`raft::Storage`] on top of the WAL: entries, hard state,
//!   compaction, and the hooks for asynchronous persistence.
//! - [`backup`]: backup directories — a manifest and one snapshot file per shard.
//! - [`command`]: what a raft entry carries — a batch of writes.
//! - [`lease`]: a shard's leases — their deadlines and the keys attached to them.
//! - [`state_machine`]: the ordered map of keys, values and per-key metadata that applying
//!   committed entries builds: the newest snapshot read in place, plus overlays of the changes
//!   since.
//! - [`history`]: the watch history — what each applied entry changed, by raft index, kept on
//!   disk for a retention so watchers resume from old cursors.
//! - [`snapshot`]: rkyv snapshot files — building, validating, loading, listing.
//! - [`value`]: a stored value and its metadata, as the state machine and the snapshots hold it.
//! - [`constants`]: sizes and limits.
//!
//! The write path is sans-IO: [`wal::WalWriter`] and [`raft_log::RaftLogStore`] decide what to
//! write; a shell (the server's glommio runtime, `corekv_server::runtime::disk`, with O_DIRECT
//! I/O; [`wal::StdFlusher`] in tests; or a simulator) performs it and reports back. No async
//! runtime is a dependency of this crate.
#![deny(missing_docs)]

pub mod backup;
pub mod command;
pub mod constants;
pub mod error;
pub mod history;
pub mod key;
pub mod lease;
pub mod pacing;
pub mod raft_log;
pub mod snapshot;
pub mod state_machine;
pub mod value;
pub mod wal;

pub use error::{Result, StorageError};
