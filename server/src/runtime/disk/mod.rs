//! The glommio side of the storage crate's files: the only code that does O_DIRECT I/O on
//! them, on the shard's executor (io_uring through glommio's DMA files). What to write and
//! when is decided by the storage crate, which does no I/O of this kind and knows no runtime.
//!
//! - [`wal`]: runs the WAL writer's flush jobs (write + `fdatasync`) and keeps spare segments.
//! - [`snapshot`]: writes a snapshot file with direct I/O, paced; receives one chunk by chunk.

pub mod snapshot;
pub mod wal;

pub use snapshot::{write_snapshot_file, IncomingSnapshot};
pub use wal::DmaFlusher;
