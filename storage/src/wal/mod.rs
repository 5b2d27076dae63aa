//! The write-ahead log: one per shard, in segment files under `DATA_DIR/shard-S/wal/`.
//!
//! - [`format`](mod@format): the bytes on disk (segment header, records, crc32c), with diagrams.
//! - [`writer`]: sans-IO group commit — records in, [`writer::FlushJob`]s out.
//! - [`recovery`]: reading segments back, torn-tail truncation, corruption refusal.
//! - [`files`]: the directory on a real file system (prepare, activate, retire, read) and a
//!   blocking flusher for tools and tests.
//! - [`memory`]: an in-memory disk for tests and the simulator.
//!
//! The O_DIRECT flusher the server runs lives in the server's glommio runtime
//! (`corekv_server::runtime::disk`): this crate knows no async runtime.

pub mod files;
pub mod format;
pub mod memory;
pub mod recovery;
pub mod writer;

pub use files::{SegmentDir, StdFlusher};
pub use format::SegmentIdentity;
pub use memory::MemSegments;
pub use recovery::{recover, Recovered, RecoveredRecord, RecoveryMode, SegmentSource};
pub use writer::{AppendRefused, FlushJob, Lsn, SegmentWrite, WalTail, WalWriter};
