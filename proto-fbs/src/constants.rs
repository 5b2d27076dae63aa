//! Protocol limits, in one place. Every limit that untrusted bytes can push against is here,
//! with the reason for its value; related limits are tied together by compile-time asserts.

/// Version of the client protocol this code speaks, sent in `Hello` and `HelloReply`.
/// Version 2 added the status reply's serving, joining, failure and snapshot fields: a
/// version-1 node does not send them, so a client of version 2 refuses it rather than read
/// their absence as "not serving". Version 3 added the membership requests (the members, a
/// change, a leadership transfer) and the `NotMember` and `ChangeRefused` errors. Version 4
/// added watches (the watch and cancel requests; the events, progress and end replies).
/// Version 5 added keys with a deadline (`ttl_ms` on puts, batch puts and transaction puts;
/// the time left on read entries; expiries marked in watch changes): a node of version 4
/// would skip the field and keep the key forever, so a client of version 5 refuses it.
/// Version 6 added leases (the grant, revoke, keep-alive and time-to-live requests and
/// replies, `lease` on puts, batch puts, transaction puts and read entries, the
/// `LeaseNotFound` error): a node of version 5 would skip `lease` and keep the key forever.
/// Version 7 added online backup (the backup request and the chunks that answer it).
/// Version 8 added auth: the hello's bearer token and the `PermissionDenied` error (a node
/// answers an older client `InvalidRequest` instead, with the same reason).
/// Version 9 added the hello's `as_user` (a proxy acting for another user): a node of
/// version 8 would skip it and check the proxy's own rights instead.
/// Version 10 added the computed transaction ops (`Incr`, `Append`, `Expire`…) and their
/// results; a node of version 9 refuses them as an unknown op kind.
pub const CLIENT_PROTOCOL_VERSION: u32 = 10;

/// The oldest client protocol a node still serves: everything a version-1 client asks means
/// the same in version 2, and the fields it does not know it skips.
pub const CLIENT_PROTOCOL_OLDEST: u32 = 1;

const _: () = assert!(CLIENT_PROTOCOL_OLDEST <= CLIENT_PROTOCOL_VERSION);

/// Version of the peer protocol, sent in the peer `Hello`. Version 2: the log carries
/// membership changes (raft configuration changes), which a node of version 1 would skip —
/// it would go on counting votes among the registry's nodes — and the hello says where the
/// dialer's peer listener is. Version 3: entries may be stamped batches carrying deadlines
/// and expiries, which a node of version 2 cannot decode (it would apply them as nothing).
/// Version 4: entries may carry lease operations (grants, puts attached to a lease, revokes,
/// checkpoints, expiries), which a node of version 3 cannot decode. Version 5: transactions
/// may carry computed ops (the Redis endpoint's `INCR`, `APPEND`, `EXPIRE`…), which a node of
/// version 4 cannot decode.
pub const PEER_PROTOCOL_VERSION: u32 = 5;

/// The oldest peer protocol a node talks to: everything of version 1 means the same in
/// version 2, except that a version-1 node cannot apply membership changes; a leader
/// refuses them while a member speaks it (upgrade every node first). A leader proposes
/// stamped batches only while every member speaks version 3, and refuses writes with a
/// deadline until then; it refuses lease requests until every member speaks version 4.
pub const PEER_PROTOCOL_OLDEST: u32 = 1;

const _: () = assert!(PEER_PROTOCOL_OLDEST <= PEER_PROTOCOL_VERSION);

/// Bytes of the length prefix in front of every frame (a u32, little-endian).
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Largest frame payload (the flatbuffer after the prefix). Bounds the memory one connection
/// can make the receiver hold, and therefore the largest batch, reply or raft message batch.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest key. Keys are compared, hashed and kept in memory per entry; 4 KiB is far above any
/// sensible key and keeps per-key overhead predictable.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest value. Values travel inside raft entries; 1 MiB matches the raft message size target
/// so that one value never forces an oversized append.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Most keys in one batch request or transaction (compares plus ops). Bounds the table count the
/// verifier must walk and the work one request can ask of a shard.
pub const BATCH_KEYS_MAX: usize = 10_000;

/// Longest time to live a write may ask for: ten years, in ms. Past it a deadline is a
/// mistake (a value in seconds sent as ms ages the key a thousandfold too slowly).
pub const TTL_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Shortest time to live a lease may be granted, ms. A lease lives through a change of
/// leader only if its holder's keep-alives reach the new leader before the deadline the
/// last checkpoint left it (one checkpoint interval, half a second, short of the last
/// keep-alive's): an election takes up to a second, so anything shorter than two seconds
/// would be lost to one.
pub const LEASE_TTL_MS_MIN: u64 = 2_000;

/// Watches one client connection may run at once (a node refuses more; a client with more
/// watches on a node and shard opens another connection).
pub const WATCHES_PER_CONNECTION_MAX: usize = 1024;

/// Most entries one scan reply carries; a client asking for more pages through continuations.
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// Deepest table nesting a valid frame has (frame → request → txn → op is 4); the verifier
/// refuses deeper buffers instead of recursing on attacker-chosen depth.
pub const VERIFIER_DEPTH_MAX: usize = 16;

/// Most tables the verifier walks in one frame: a batch-get reply holds two tables per key
/// (result and entry), a transaction one per compare and op, plus a handful of envelopes.
pub const VERIFIER_TABLES_MAX: usize = 4 * BATCH_KEYS_MAX + 64;

const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(SCAN_LIMIT_MAX <= BATCH_KEYS_MAX);
const _: () = assert!(VERIFIER_TABLES_MAX >= 2 * BATCH_KEYS_MAX + 16);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
