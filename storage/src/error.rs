//! Errors of the storage layer. Expected outcomes (a full write buffer) are plain values in
//! the APIs that produce them; these are failures.

use std::path::PathBuf;

/// A storage failure. Corruption found at start-up is reported with the file and byte offset;
/// the node refuses to start rather than serve from a log it cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done: `open`, `read`, `write`, `fdatasync`, `rename`…
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record or header failed its checks somewhere it must be intact.
    #[error("corrupt WAL: {path} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record or header in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The segment sequence has a hole: a file was lost or removed by hand.
    #[error("WAL segment {missing} is missing in {dir} (found {before} and {after})")]
    MissingSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// The sequence number that should exist.
        missing: u64,
        /// The segment before the hole.
        before: u64,
        /// The segment after the hole.
        after: u64,
    },
    /// A segment belongs to another shard or cluster: the data directory was mixed up.
    #[error("WAL segment {path} belongs elsewhere: {reason}")]
    ForeignSegment {
        /// The segment file.
        path: PathBuf,
        /// Which identity field differs.
        reason: String,
    },
    /// A record payload is over [`crate::constants::RECORD_PAYLOAD_BYTES_MAX`].
    #[error("WAL record of {size} bytes is over the limit of {limit} bytes")]
    RecordTooLarge {
        /// The payload size asked for.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A snapshot file failed validation.
    #[error("bad snapshot {path}: {reason}")]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of a backup directory failed its checks.
    #[error("bad backup file {path}: {reason}")]
    BadBackup {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A previous WAL write failed; the log accepts nothing more until the node restarts and
    /// recovers from what is on disk.
    #[error("the WAL is failed after an earlier I/O error: {0}")]
    Failed(String),
}

impl StorageError {
    /// Wraps an I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }
}

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
