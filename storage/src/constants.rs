//! Storage limits and sizes, in one place, each with the reason for its value.

/// The unit of O_DIRECT I/O: every WAL write starts and ends on a multiple of it. 4 KiB covers
/// devices with 512-byte and 4 KiB logical blocks, and is the page size.
pub const BLOCK_BYTES: usize = 4096;

/// Size of one WAL segment file. Large enough that rolling over (seal, sync, activate the next
/// file) happens once per 64 MiB of writes; small enough that preparing a segment by writing it
/// whole takes a fraction of a second and that compaction frees disk in useful steps.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The first block of every segment holds its header; records start after it.
pub const SEGMENT_HEADER_BYTES: u64 = BLOCK_BYTES as u64;

/// Bytes of a record header (crc, length, kind, flush sequence, flush base).
pub const RECORD_HEADER_BYTES: usize = 32;

/// Records start on multiples of this, so the header's u64 fields are aligned in memory when a
/// segment is read into an aligned buffer, and the torn-tail scan can step by it.
pub const RECORD_ALIGN_BYTES: usize = 8;

/// Largest record payload. A raft entry carries at most one client frame (16 MiB) plus the
/// command header; a record may carry several entries, and callers split larger batches.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 20 * 1024 * 1024;

/// Bytes of values before (the values a change replaced or deleted) one applied entry copies
/// into its changes for watchers; values past it are left out (their metadata is kept). An
/// entry is at most 8 MiB, but one that overwrites 10,000 keys of 1 MiB each would otherwise
/// copy 10 GB; with this, an entry's history record stays within a segment of the smallest
/// size.
pub const PREV_VALUE_BYTES_PER_ENTRY_MAX: usize = 4 * 1024 * 1024;

/// Bytes of values before that a batch of committed entries applied together may copy, all
/// entries together: a follower catching up on many entries that each replace a large value
/// would otherwise copy without bound (the core refills it per batch).
pub const PREV_VALUE_BYTES_PER_BATCH_MAX: usize = 64 * 1024 * 1024;

/// Watch history ([`crate::history`]): bytes of the newest entries kept in memory, so watchers
/// slightly behind never touch the disk (live ones are sent each entry as it applies).
pub const HISTORY_CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A history flush is due once this much is buffered...
pub const HISTORY_FLUSH_BYTES: usize = 4 * 1024 * 1024;

/// ...or the oldest buffered record waited this long (µs). History is not on the commit
/// path: flushing it every few milliseconds instead of with every WAL flush keeps its
/// fdatasyncs few.
pub const HISTORY_FLUSH_DELAY_US: u64 = 50_000;

/// A history position is remembered every this many bytes of records (and at every
/// segment's first record), so a read from an old index starts at most this far before it.
pub const HISTORY_MARK_BYTES: u64 = 256 * 1024;

/// Bytes one history read asks for (more when a single record is larger).
pub const HISTORY_READ_BYTES: usize = 1024 * 1024;

/// Unflushed history bytes past which the core holds back applying entries until a flush
/// completes (backpressure, so recording never has to drop a record)...
pub const HISTORY_BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// ...and the most the history's write buffer takes: the backlog plus what one batch of
/// committed entries can add (16 MiB of entry data, keys and values up to six times larger
/// as changes with their metadata, plus the batch's values before).
pub const HISTORY_BUFFER_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most unflushed bytes the WAL buffers. Beyond it `append` answers `Full` (backpressure);
/// the caller waits for the flush in flight. Bounds the memory one shard's WAL can take.
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most raft entry bytes the log store keeps in memory. Older entries are read back from their
/// segment when a lagging follower needs them. Bounds one shard's log cache.
pub const ENTRY_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes of WAL records read back for lagging followers kept in memory: a follower catching up
/// reads runs of consecutive entries, and an asynchronous read must stay until raft-rs asks
/// for the entries again. A few leader messages' worth (raft messages are at most 1 MiB).
pub const COLD_RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most WAL records one asynchronous read for a lagging follower asks for.
pub const COLD_FETCH_RECORDS_MAX: usize = 64;

/// Prepared (written, synced) segments kept ready for the next roll-over, so the hot path never
/// writes into never-written blocks (DESIGN.md §9).
pub const SPARE_SEGMENTS: usize = 1;

/// Compacted segments kept for reuse instead of being deleted: recycling one costs a header
/// rewrite, preparing one costs writing 64 MiB.
pub const RECYCLED_SEGMENTS_MAX: usize = 2;

/// Bandwidth cap of background writes (snapshot files, preparing spare segments). Without it
/// such a write floods the device queue and every WAL fdatasync waits behind it; with it, a WAL
/// flush waits behind at most one chunk.
pub const BACKGROUND_WRITE_BYTES_PER_SEC: u64 = 256 * 1024 * 1024;

/// Chunk of background writes: what a WAL flush may find ahead of it in the device queue.
pub const BACKGROUND_WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// Buffered background writes are synced this often, so dirty pages never pile up into one
/// large flush.
pub const BACKGROUND_SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// Files no longer needed (old snapshots, WAL segments beyond the recycled ones) are
/// truncated by this much at a time, synced, before being unlinked.
pub const BACKGROUND_DELETE_STEP_BYTES: u64 = 8 * 1024 * 1024;

const _: () = assert!(SEGMENT_HEADER_BYTES as usize % BLOCK_BYTES == 0);
const _: () = assert!(BACKGROUND_WRITE_CHUNK_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(BLOCK_BYTES % RECORD_ALIGN_BYTES == 0);
const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);
// A maximal record, the seal after it, and the header block fit in one segment.
const _: () = assert!(
    (SEGMENT_HEADER_BYTES as usize) + 2 * (RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX)
        <= SEGMENT_BYTES as usize
);
const _: () = assert!(
    HISTORY_BACKLOG_BYTES + 6 * 16 * 1024 * 1024 + PREV_VALUE_BYTES_PER_BATCH_MAX
        <= HISTORY_BUFFER_BYTES_MAX
);
// One maximal record always fits in an empty write buffer.
const _: () =
    assert!(RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX + BLOCK_BYTES <= WRITE_BUFFER_BYTES_MAX);

/// Keys past their deadline a scan passes over in a row before it returns (with where to go
/// on): a range full of keys whose expiry has not applied yet costs a bounded amount per
/// request.
pub const SCAN_SKIPPED_MAX: usize = 10_000;

/// The largest value a computed transaction op (`APPEND`, `SETRANGE`) may make: the client
/// protocol's value limit (the server checks the two agree), so every value the state
/// machine holds is one a client can read back.
pub const COMPUTED_VALUE_BYTES_MAX: usize = 1024 * 1024;
