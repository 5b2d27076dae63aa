//! Server limits and timings, in one place, each with the reason for its value. Every queue a
//! peer or client can fill has a stated maximum here.

use corekv_proto::constants::FRAME_BYTES_MAX;
use corekv_storage::constants::{RECORD_PAYLOAD_BYTES_MAX, WRITE_BUFFER_BYTES_MAX};

/// Raft tick period. Heartbeats go out every [`HEARTBEAT_TICKS`] ticks (100 ms) and elections
/// start after 10–20 ticks (0.5–1 s) without a leader, so a failed leader is replaced in
/// about a second while a busy 2-core machine does not trigger false elections.
pub const TICK_MS: u64 = 50;

/// Ticks without hearing from a leader before a follower campaigns (raft-rs randomises it
/// between this and twice this).
pub const ELECTION_TICKS: usize = 10;

/// Ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;

/// A proposal batch is proposed once it holds this many bytes, without waiting for the end of
/// the loop iteration: bigger entries gain little and delay the first write in them.
pub const BATCH_BYTES_TARGET: usize = 1024 * 1024;

/// Most key and value bytes one write request may carry. A request never shares an entry
/// with others past [`BATCH_BYTES_TARGET`], so this bounds raft entries too, and keeps every
/// raft message (one entry at least) well inside a peer frame.
pub const ENTRY_BYTES_MAX: usize = FRAME_BYTES_MAX / 2;

/// Largest AppendEntries message a leader sends (at least one entry): raft-rs's bound per
/// message, which its `batch_append` ignores when it merges appends; `core::appends` cuts
/// merged ones back to it.
pub const RAFT_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;

/// AppendEntries messages in flight to one follower: deep enough to pipeline a fast stream of
/// batches, bounded so a slow follower costs at most ~64 MiB of leader memory.
pub const RAFT_INFLIGHT_MESSAGES_MAX: usize = 64;

/// Bytes of uncommitted entries a leader accepts before it drops proposals (answered Busy).
pub const UNCOMMITTED_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// Bytes of committed entries applied per Ready, so one loop iteration stays short.
pub const COMMITTED_BYTES_PER_READY_MAX: u64 = 16 * 1024 * 1024;

/// Client writes in flight on one shard (batched, proposed or awaiting apply). Beyond it new
/// writes get `Busy`.
pub const WRITES_IN_FLIGHT_MAX: usize = 32 * 1024;

/// Linearizable reads waiting for a ReadIndex round on one shard. Beyond it, `Busy`.
pub const READS_WAITING_MAX: usize = 64 * 1024;

/// Unflushed WAL bytes above which new writes get `Busy`: the disk is behind.
pub const WAL_BACKLOG_BYTES_BUSY: usize = WRITE_BUFFER_BYTES_MAX / 4;

/// `retry_after_ms` sent with `Busy`.
pub const BUSY_RETRY_AFTER_MS: u32 = 5;

/// A ReadIndex round without an answer is issued again after this many ticks (raft-rs drops
/// requests it cannot serve yet, DESIGN.md §9).
pub const READ_RETRY_TICKS: u64 = 2;

/// A linearizable read is answered `Timeout` after waiting this long.
pub const READ_TIMEOUT_MS: u64 = 5_000;

/// A proposed write whose entry has neither applied nor been overwritten after this long is
/// answered `Timeout` (its outcome is unknown).
pub const PROPOSAL_TIMEOUT_MS: u64 = 10_000;

/// How often a leader checks whether the preferred leader is caught up and can take over.
pub const LEADER_BALANCE_TICKS: u64 = 20;

/// How long a leader leads before it hands over to the preferred leader: a leadership an
/// operator moved (`corekvctl leader transfer`, or away from a node about to be removed)
/// stays put that long instead of bouncing back within a second.
pub const LEADER_BALANCE_AFTER_MS: u64 = 5_000;

/// Log entries a compaction or a snapshot reset let go of, freed per tick: at most this
/// many... (a compaction can let go of the whole entry cache; freed at once, that stalled a
/// shard for up to 30 ms)
pub const TRIM_ENTRIES_PER_TICK: usize = 4096;

/// ...and at most this many bytes of them.
pub const TRIM_BYTES_PER_TICK: usize = 4 << 20;

/// Bytes of entries in one scan reply; a scan that reaches it returns a continuation.
pub const SCAN_REPLY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Requests one client connection may have in flight; past it the server stops reading from
/// that connection until replies go out (TCP backpressure).
pub const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = 4096;

/// Reply bytes queued for one client connection before the server stops reading from it.
pub const CONNECTION_OUTPUT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Commands a Redis (RESP) connection may have unanswered (pipelined); past it the server
/// stops reading from it, as for a client connection.
pub const RESP_COMMANDS_IN_FLIGHT_MAX: usize = CONNECTION_REQUESTS_IN_FLIGHT_MAX;

/// Most arguments in one RESP command: `MSET` of a batch's most keys, with its name.
pub const RESP_ARGS_MAX: usize = 2 * corekv_proto::constants::BATCH_KEYS_MAX + 1;

/// Most bytes in one RESP bulk string: the largest value and room to say so (a value over
/// the value limit is refused with an error, the connection carrying on; a bulk string over
/// this closes it).
pub const RESP_BULK_BYTES_MAX: usize = corekv_proto::constants::VALUE_BYTES_MAX + 64 * 1024;

/// Most bytes in one RESP command, all arguments together (and in one `MULTI`'s queue): the
/// request it becomes — its bytes plus a table per argument — fits in a frame.
pub const RESP_COMMAND_BYTES_MAX: usize = corekv_proto::constants::FRAME_BYTES_MAX - (2 << 20);

/// Bytes of commands a Redis connection may hold read but not run (waiting behind another,
/// or queued in a `MULTI`); past it the connection is not read from.
pub const RESP_HELD_COMMAND_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Answers a Redis connection may have waiting to be written (in order, or behind a slower
/// command): past it the connection is closed, as Redis closes a client over its output
/// buffer limit. Reading stops at [`CONNECTION_OUTPUT_BYTES_MAX`]; this bounds what the
/// commands already taken then answer (say, pipelined `KEYS` of large shards).
pub const RESP_OUTPUT_BYTES_HARD_MAX: usize = 8 * CONNECTION_OUTPUT_BYTES_MAX;

/// Steps a `SCAN` page or a `KEYS` may spend matching its pattern (a step compares a byte);
/// past it the command is refused, so no pattern holds the shard's core for long.
pub const RESP_PATTERN_STEPS_MAX: u64 = 50_000_000;

/// Longest `MATCH` or `KEYS` pattern.
pub const RESP_PATTERN_BYTES_MAX: usize = 2 * corekv_proto::constants::KEY_BYTES_MAX;

/// Most bytes in one inline command (a line typed into telnet): Redis's limit.
pub const RESP_INLINE_BYTES_MAX: usize = 64 * 1024;

/// `SCAN` cursors a shard remembers, over all its RESP connections; the oldest is forgotten
/// first (a client using it is told to start again).
pub const RESP_SCAN_CURSORS_MAX: usize = 16 * 1024;

/// Watches one client connection may run (each is a request in flight until it ends, so
/// well under [`CONNECTION_REQUESTS_IN_FLIGHT_MAX`]); the protocol's limit, which clients
/// know.
pub const WATCHERS_PER_CONNECTION_MAX: usize = corekv_proto::constants::WATCHES_PER_CONNECTION_MAX;

/// Watches one shard replica may run, over all its connections.
pub const WATCHERS_PER_SHARD_MAX: usize = 100_000;

/// Watch bytes a connection may have queued and unwritten before its watchers stop getting
/// live events and catch up from the history once it drains (a slow or paused watcher costs
/// this much memory, not more).
pub const WATCH_CONNECTION_QUEUE_BYTES_MAX: usize = 1024 * 1024;

/// Watch bytes all the shard's connections together may have queued: past it, a connection
/// with anything queued waits for its drain before its watchers get more.
pub const WATCH_SHARD_QUEUE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Queued watch bytes after which the core asks the shell to say when a connection's output
/// is all written (so the count of what is queued is kept true without a notice per frame).
pub const WATCH_DRAIN_NOTICE_BYTES: usize = 64 * 1024;

/// History bytes one catching-up watcher is sent per turn, so thousands catching up at once
/// share the executor with everything else.
pub const WATCH_CATCH_UP_BYTES_PER_TURN: usize = 1024 * 1024;

/// Bytes of raft traffic queued for one peer. Past it, messages are dropped and counted; raft
/// retransmits what matters.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Reconnect backoff to a peer: starts here, doubles per failure...
pub const PEER_BACKOFF_MIN_MS: u64 = 50;

/// ...up to here.
pub const PEER_BACKOFF_MAX_MS: u64 = 2_000;

/// Raft messages for one peer are split into frames of about this size, well under the frame
/// limit (a message can be up to about one entry larger).
pub const FRAME_SPLIT_BYTES: usize = 4 * 1024 * 1024;

/// Read buffer chunk for sockets.
pub const SOCKET_READ_CHUNK_BYTES: usize = 64 * 1024;

/// A snapshot is taken once this many entries applied since the last one...
pub const SNAPSHOT_ENTRIES: u64 = 500_000;

/// ...or this many bytes of entry data: about two WAL segments, so the log between snapshots
/// (and the memory the overlay of changes takes) stays bounded under any write pattern.
pub const SNAPSHOT_LOG_BYTES: u64 = 128 * 1024 * 1024;

/// Default bandwidth cap of writing a snapshot file (`--snapshot-write-mib`). A snapshot
/// written faster floods the device queue, and every WAL flush waits behind it: on the
/// development VM, 256 MiB/s put the write p99 during snapshots at 44 ms, 32 MiB/s at 19 ms
/// (bench/RESULTS.md). A 1M-key shard's 156 MB file then takes 5 s.
pub const SNAPSHOT_WRITE_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;

/// Snapshot files kept: the newest, and the one before it as a fallback (the log is kept back
/// to it, so it is always usable).
pub const SNAPSHOT_FILES_KEPT: usize = 2;

/// Smallest WAL segment size `--wal-segment-mib` accepts: the largest entry, with room to
/// spare, must fit in one segment.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 16 * 1024 * 1024;

/// Largest watch history segment (the WAL's size when that is smaller): the history retires
/// whole segments, so smaller ones keep its disk use close to the retention, and a node keeps
/// a spare and up to two recycled ones beside them. The largest history record (an 8 MiB
/// entry, its 4 MiB of values before and the changes' metadata) still fits.
pub const HISTORY_SEGMENT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Backups a shard serves at once (streaming, or waiting for their snapshot); more are
/// answered `Busy`. Each stream holds its snapshot in memory until it is sent, even after a
/// newer one replaced it, so this bounds that memory at a few snapshots.
pub const BACKUP_STREAMS_MAX: usize = 2;

/// Slowest rate a backup may ask for, bytes per second: a stream holds one of
/// [`BACKUP_STREAMS_MAX`] places and its snapshot's memory until it ends.
pub const BACKUP_BYTES_PER_SEC_MIN: u64 = 1024 * 1024;

/// A backup stream whose client has taken nothing for this long is given up (its place and
/// its snapshot's memory go to others).
pub const BACKUP_STALL_MS: u64 = 60_000;

/// Bytes of a snapshot per backup chunk (one reply frame).
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

/// A backup stream queues its next chunk once its connection has at most this many bytes
/// left to write: the chunk after it is read from the snapshot only as the client takes
/// them, so a slow client holds no more than this of copies.
pub const BACKUP_QUEUED_BYTES_MAX: usize = 2 * BACKUP_CHUNK_BYTES;

/// Bytes per snapshot chunk sent to a follower.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Snapshot bytes sent but not yet acknowledged by the receiver (flow control).
pub const SNAPSHOT_WINDOW_BYTES: u64 = 8 * 1024 * 1024;

/// A snapshot transfer with no progress for this long is abandoned (and retried by raft).
pub const SNAPSHOT_STALL_TIMEOUT_MS: u64 = 30_000;

/// How long a shutting-down shard waits for writes in flight to finish before answering them.
pub const SHUTDOWN_DRAIN_MS: u64 = 1_000;

const _: () = assert!(ENTRY_BYTES_MAX <= RECORD_PAYLOAD_BYTES_MAX - 64);
const _: () = assert!(BATCH_BYTES_TARGET <= ENTRY_BYTES_MAX);
const _: () = assert!(WAL_BACKLOG_BYTES_BUSY + ENTRY_BYTES_MAX < WRITE_BUFFER_BYTES_MAX);
const _: () = assert!(READ_RETRY_TICKS * TICK_MS < READ_TIMEOUT_MS);
const _: () = assert!(WATCHERS_PER_CONNECTION_MAX < CONNECTION_REQUESTS_IN_FLIGHT_MAX);
const _: () = assert!(RESP_BULK_BYTES_MAX < RESP_COMMAND_BYTES_MAX);
// A request's tables (at most 64 bytes an argument) fit in what the frame has left.
const _: () = assert!(
    RESP_COMMAND_BYTES_MAX + 64 * RESP_ARGS_MAX <= corekv_proto::constants::FRAME_BYTES_MAX
);
const _: () = assert!(RESP_COMMAND_BYTES_MAX <= RESP_HELD_COMMAND_BYTES_MAX);
const _: () = assert!(WATCH_DRAIN_NOTICE_BYTES < WATCH_CONNECTION_QUEUE_BYTES_MAX);
const _: () = assert!(
    ENTRY_BYTES_MAX
        + corekv_storage::constants::PREV_VALUE_BYTES_PER_ENTRY_MAX
        + 1024 * 1024
        + 2 * corekv_storage::constants::BLOCK_BYTES
        <= HISTORY_SEGMENT_BYTES_MAX as usize
);
const _: () = assert!(WATCH_CONNECTION_QUEUE_BYTES_MAX <= CONNECTION_OUTPUT_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES % corekv_storage::constants::BLOCK_BYTES == 0);
const _: () = assert!(WAL_SEGMENT_BYTES_MIN as usize >= 2 * ENTRY_BYTES_MAX);
const _: () = assert!(SNAPSHOT_WINDOW_BYTES as usize + SNAPSHOT_CHUNK_BYTES < PEER_QUEUE_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 64 * 1024 < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_SPLIT_BYTES + ENTRY_BYTES_MAX + 1024 * 1024 <= FRAME_BYTES_MAX);

/// Keys one expiry entry deletes at most: a million keys due at once go in a hundred entries,
/// each applied in a few milliseconds, so writes interleave with them.
pub const EXPIRY_KEYS_PER_ENTRY: usize = 10_000;

/// Expiry entries a leader keeps proposed and not yet applied: with [`EXPIRY_KEYS_PER_ENTRY`],
/// how far expiry runs ahead of applying (it stops there until they apply).
pub const EXPIRY_ENTRIES_IN_FLIGHT: usize = 4;

/// How often a leader proposes the checkpoint of the leases kept alive since the last one,
/// in ticks (500 ms). A new leader starts from the checkpointed deadlines, so a lease loses
/// at most this (plus a checkpoint's commit) of its holder's last keep-alives across a
/// change of leader. In ticks, like elections, so that a simulated cluster's faster clock
/// scales it with them.
pub const LEASE_CHECKPOINT_TICKS: u64 = 10;

/// The shortest time to live a leader grants a lease, in ticks (2 s: the client's
/// `LEASE_TTL_MS_MIN`): room for a checkpoint interval and an election.
pub const LEASE_TTL_MIN_TICKS: u64 = 40;

const _: () = assert!(LEASE_TTL_MIN_TICKS * TICK_MS == corekv_proto::constants::LEASE_TTL_MS_MIN);

/// Keys one lease expiry entry deletes at most, over all the leases it ends (a lease with
/// more keys still goes whole, alone in its entry: its keys go in one entry).
pub const LEASE_EXPIRY_KEYS_PER_ENTRY: usize = 10_000;

/// Leases a leader keeps in expiry entries proposed and not yet applied.
pub const LEASES_EXPIRING_MAX: usize = 10_000;

/// Most HTTP connections open at once on a node's `http_port` (a thread each); more are
/// closed as they come.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// Largest HTTP request head (request line and headers).
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// An HTTP connection idle (or stalled mid-request) this long is closed.
pub const HTTP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
// The state machine's bound on values it computes (APPEND, SETRANGE) is the protocol's.
const _: () = assert!(
    corekv_storage::constants::COMPUTED_VALUE_BYTES_MAX == corekv_proto::constants::VALUE_BYTES_MAX
);
