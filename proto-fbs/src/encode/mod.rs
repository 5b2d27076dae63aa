//! Builders that turn Rust values into finished frames.
//!
//! Each encoder owns one `FlatBufferBuilder` and resets it for every frame, so steady-state
//! encoding allocates nothing. Every method returns the whole frame — the u32 little-endian
//! size prefix followed by the flatbuffer — borrowed from the builder until the next call.
//!
//! The value types here ([`EntryRef`], [`ErrorInfo`], [`ScanSpec`], …) borrow their bytes, so
//! a server can encode straight from its state without copying values first.
//!
//! [`RequestEncoder`] (`request.rs`) builds what clients send, [`ReplyEncoder`] (`reply.rs`)
//! what nodes answer, [`PeerEncoder`] (`peer.rs`) what nodes send each other; the value types
//! and the few table builders they share are here.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::client::{self as c, CompareOp, CompareTarget, Consistency, KeyMeta, TxnOpKind};

mod backup;
mod lease;
mod membership;
mod peer;
mod reply;
mod request;
mod watch;

pub use backup::ChunkPlace;
pub use peer::{PeerEncoder, PeerHello};
pub use reply::ReplyEncoder;
pub use request::RequestEncoder;
pub use watch::{ChangeRef, WatchEnd, WatchSpec};

/// Starting capacity of an encoder's builder; it grows to the largest frame built.
pub(super) const BUILDER_CAPACITY_BYTES: usize = 4096;

/// A key with its value and metadata, borrowed from wherever it lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value; `None` for keys-only scans.
    pub value: Option<&'a [u8]>,
    /// Create index, mod index and version.
    pub meta: KeyMeta,
    /// For a key with a deadline: ms left until it (at least 1); 0: none.
    pub ttl_ms: u64,
    /// The lease the key is attached to; 0: none.
    pub lease: u64,
}

/// An error reply, as the server sends it (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorInfo<'a> {
    /// Not the leader; `leader_id` 0 when none is known.
    NotLeader {
        /// The leader's node id, or 0.
        leader_id: u64,
        /// `host:port` of the leader's client port for this shard, when known.
        leader_addr: Option<&'a str>,
    },
    /// The key belongs to `shard`.
    WrongShard {
        /// The shard that owns the key.
        shard: u32,
    },
    /// No quorum, shutting down, or a failed disk.
    Unavailable {
        /// Why, for people.
        reason: &'a str,
    },
    /// The server gave up waiting; a write may or may not have applied.
    Timeout,
    /// The request cannot succeed as sent.
    InvalidRequest {
        /// What is wrong with it.
        reason: &'a str,
    },
    /// Something is over its limit.
    TooLarge {
        /// What: `key`, `value`, `batch`, `reply`, `frame`.
        what: &'a str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A transaction without failure ops found compare number `compare` false.
    CompareFailed {
        /// 0-based index of the first compare that did not hold.
        compare: u32,
    },
    /// Too many requests in flight; retry after the delay.
    Busy {
        /// Suggested delay before retrying.
        retry_after_ms: u32,
    },
    /// This replica is no longer a member of its shard.
    NotMember {
        /// The replica's node.
        node_id: u64,
        /// Its shard.
        shard: u32,
    },
    /// A membership change or leadership transfer was refused; nothing changed.
    ChangeRefused {
        /// Why.
        reason: &'a str,
    },
    /// The lease named does not exist; nothing changed.
    LeaseNotFound {
        /// The lease.
        lease: u64,
    },
    /// The caller's user may not do this; nothing changed.
    PermissionDenied {
        /// Why.
        reason: &'a str,
    },
}

/// The bounds of a scan request. Every bound that is set applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSpec<'a> {
    /// Inclusive lower bound.
    pub start: Option<&'a [u8]>,
    /// Exclusive upper bound.
    pub end: Option<&'a [u8]>,
    /// Only keys with this prefix.
    pub prefix: Option<&'a [u8]>,
    /// Only keys after this one (a previous reply's continuation).
    pub continuation: Option<&'a [u8]>,
    /// Most entries; 0 for the server's maximum.
    pub limit: u32,
    /// Leave values out.
    pub keys_only: bool,
    /// Linearizable or stale.
    pub consistency: Consistency,
}

/// One compare of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareSpec<'a> {
    /// The key compared.
    pub key: &'a [u8],
    /// What of the key is compared.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
    /// Operand for [`CompareTarget::Value`].
    pub value: Option<&'a [u8]>,
    /// Operand for version, mod index and create index.
    pub number: u64,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOpSpec<'a> {
    /// Get, put or delete.
    pub kind: TxnOpKind,
    /// The key.
    pub key: &'a [u8],
    /// The value, for a put.
    pub value: Option<&'a [u8]>,
    /// For a put: ms until the key expires after the leader proposes it; 0: never.
    pub ttl_ms: u64,
    /// For a put: the lease the key is attached to; 0: none.
    pub lease: u64,
    /// For `SetRange`: the offset; for `Expire`: the condition.
    pub number: u64,
}

/// The result of one transaction operation, as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TxnResultRef<'a> {
    /// A get: the entry, or `None` when the key does not exist.
    Get(Option<EntryRef<'a>>),
    /// A put: the key's metadata after the write.
    Put(KeyMeta),
    /// A delete: whether the key existed.
    Delete(bool),
    /// `Incr`, `IncrFloat`: the new value.
    Value(&'a [u8]),
    /// `Append`, `SetRange`: the new length.
    Length(u64),
    /// `Expire`: whether the deadline was set.
    Applied(bool),
    /// A computed op that could not apply: why.
    Failed(&'a str),
}

pub(super) fn bytes_vector<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    bytes: Option<&[u8]>,
) -> Option<WIPOffset<flatbuffers::Vector<'b, u8>>> {
    bytes.map(|b| fbb.create_vector(b))
}

pub(super) fn entry<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    e: &EntryRef<'_>,
) -> WIPOffset<c::Entry<'b>> {
    let key = fbb.create_vector(e.key);
    let value = bytes_vector(fbb, e.value);
    let args = c::EntryArgs {
        key: Some(key),
        value,
        meta: Some(&e.meta),
        ttl_ms: e.ttl_ms,
        lease: e.lease,
    };
    c::Entry::create(fbb, &args)
}

pub(super) fn key_tables<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    keys: &[&[u8]],
) -> Vec<WIPOffset<c::Key<'b>>> {
    keys.iter()
        .map(|k| {
            let key = fbb.create_vector(k);
            c::Key::create(fbb, &c::KeyArgs { key: Some(key) })
        })
        .collect()
}
