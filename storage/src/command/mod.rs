//! Commands: the data of a shard's raft entries. One entry carries a *batch* of operations —
//! every write that arrived in one loop iteration of the shard — so raft, the WAL and the
//! network pay their per-entry costs once per batch, not once per write.
//!
//! ```text
//! batch:  version u8 (2) | stamp_ms u64 | op count u32 | op | op | ...
//!         version u8 (1) | op count u32 | op | op | ...        (no stamp: older leaders)
//! op:     kind u8 | body
//!   PUT            key | value
//!   DELETE         key
//!   BATCH_PUT      n u32 | (key | value) * n
//!   BATCH_DELETE   n u32 | key * n
//!   TXN            compares u32 | compare * | success u32 | txn-op * | failure u32 | txn-op *
//!   PUT_TTL        key | value | expires_ms u64                          (version 2 only)
//!   BATCH_PUT_TTL  expires_ms u64 | n u32 | (key | value) * n            (version 2 only)
//!   EXPIRE         term u64 | n u32 | (key | mod_index u64) * n          (version 2 only)
//!   PUT_LEASE      key | value | lease u64                               (version 2 only)
//!   BATCH_PUT_LEASE lease u64 | n u32 | (key | value) * n                (version 2 only)
//!   LEASE_GRANT    shard u32 | ttl_ms u64 | n u32 | (key | value) * n    (version 2 only)
//!   LEASE_REVOKE   lease u64                                             (version 2 only)
//!   LEASE_CHECKPOINT n u32 | (lease u64 | deadline_ms u64) * n           (version 2 only)
//!   LEASE_EXPIRE   term u64 | n u32 | (lease u64 | deadline_ms u64) * n  (version 2 only)
//! compare: target u8 | op u8 | key | value | number u64
//! txn-op:  kind u8 (0 get, 1 put, 2 delete, 3 put with a deadline, 4 put with a lease,
//!          5 incr, 6 incr float, 7 append, 8 set range, 9 put keeping the deadline,
//!          10 set the deadline)
//!          | key | value | [kind 3: expires_ms u64] | [kind 4: lease u64]
//!          | [kind 8: offset u64] | [kind 10: expires_ms u64 | condition u64]
//! key, value: length u32 | bytes
//! ```
//!
//! The stamp is the proposing leader's wall clock (ms since the Unix epoch) when it proposed
//! the batch; applying takes the largest stamp seen so far as the state machine's time, which
//! decides, the same way on every replica, whether a key past its deadline still exists for
//! the batch's writes, compares and reads. `expires_ms` is a deadline on that clock, fixed
//! by the leader when it proposed the write. `EXPIRE` deletes keys past their deadline whose
//! mod index is still the one named (a write since wins). It names the term it was proposed
//! in and deletes nothing when its entry has another — a guard only: raft keeps the term an
//! entry was appended in, so an expiry a deposed leader got into the log applies, which is
//! safe, as it deletes only keys the stamped clock says are past their deadline and that
//! nobody wrote since.
//!
//! Leases ([`crate::lease`]): `LEASE_GRANT` grants a lease on `shard` whose deadline is the
//! batch's stamp plus `ttl_ms`, and puts its items attached to it; `PUT_LEASE` and
//! `BATCH_PUT_LEASE` attach their keys to an existing lease (refused, changing nothing, when it
//! does not exist); `LEASE_REVOKE` ends a lease and deletes its keys; `LEASE_CHECKPOINT` moves
//! deadlines later (the keep-alives a leader answered); `LEASE_EXPIRE` ends leases a leader
//! found past their deadline, each named with the deadline it saw, and ends only those whose
//! deadline is still that one (a checkpoint in between wins), and nothing when its entry has
//! another term than the one it names (an expiry decided under one leadership and proposed
//! under another).
//!
//! Computed transaction ops (kinds 5–10, the Redis endpoint's read-modify-write commands)
//! read the key's value and write what they compute from it in the same apply, so no write
//! comes between; each keeps the key's deadline and lease (but kind 10, which sets the
//! deadline). One that cannot apply (a value that is not a number, a result over the value
//! limit) changes nothing and says why in its result; the transaction's other ops apply.
//! Replicas before peer protocol 5 cannot decode them: a leader proposes none while such a
//! member is in the shard.
//!
//! All integers are little-endian. Decoding never trusts lengths: a malformed batch decodes to
//! an error, which apply turns into the same failed result on every replica.

pub use corekv_types::meta::CompareOp;

/// Version byte of a batch without a stamp (and without deadlines).
pub const BATCH_VERSION_PLAIN: u8 = 1;

/// Version byte of a stamped batch.
pub const BATCH_VERSION_STAMPED: u8 = 2;

/// Bytes before a batch's first op: version, stamp, count.
const HEADER_BYTES: usize = 1 + 8 + 4;

/// Op kinds.
mod kind {
    pub const PUT: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const BATCH_PUT: u8 = 3;
    pub const BATCH_DELETE: u8 = 4;
    pub const TXN: u8 = 5;
    pub const PUT_TTL: u8 = 6;
    pub const BATCH_PUT_TTL: u8 = 7;
    pub const EXPIRE: u8 = 8;
    pub const PUT_LEASE: u8 = 9;
    pub const BATCH_PUT_LEASE: u8 = 10;
    pub const LEASE_GRANT: u8 = 11;
    pub const LEASE_REVOKE: u8 = 12;
    pub const LEASE_CHECKPOINT: u8 = 13;
    pub const LEASE_EXPIRE: u8 = 14;
}

/// What a transaction compare looks at (same numbering as the wire protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value bytes.
    Value = 0,
    /// The key's version.
    Version = 1,
    /// The key's mod index.
    ModIndex = 2,
    /// The key's create index.
    CreateIndex = 3,
    /// Whether the key exists.
    Exists = 4,
}

/// Transaction operation kinds (same numbering as the wire protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOpKind {
    /// Read a key.
    Get = 0,
    /// Write a key.
    Put = 1,
    /// Delete a key.
    Delete = 2,
    /// Write a key that expires (`expires_ms`).
    PutTtl = 3,
    /// Write a key attached to a lease (`lease`).
    PutLease = 4,
    /// Add the integer in `value` (decimal) to the key's value, a decimal integer (0 when
    /// missing); the result is the new value.
    Incr = 5,
    /// Add the number in `value` (decimal) to the key's value, a decimal number.
    IncrFloat = 6,
    /// Append `value` to the key's value; the result is the new length.
    Append = 7,
    /// Write `value` over the key's value from byte `number`, padding with zero bytes; the
    /// result is the new length.
    SetRange = 8,
    /// Write a key, keeping the deadline it has.
    PutKeepTtl = 9,
    /// Set an existing key's deadline to `expires_ms` (0: none) if [`DeadlineCondition`]
    /// `number` holds; the result says whether it did.
    SetDeadline = 10,
}

/// When a [`TxnOpKind::SetDeadline`] applies (Redis `EXPIRE`'s options); a key without a
/// deadline counts as living forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineCondition {
    /// Always.
    Always = 0,
    /// Only when the key has no deadline.
    IfNone = 1,
    /// Only when it has one.
    IfSome = 2,
    /// Only when the new deadline is later.
    IfLater = 3,
    /// Only when the new deadline is earlier.
    IfEarlier = 4,
}

impl DeadlineCondition {
    /// From its number.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Always,
            1 => Self::IfNone,
            2 => Self::IfSome,
            3 => Self::IfLater,
            4 => Self::IfEarlier,
            _ => return None,
        })
    }
}

impl CompareTarget {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Value,
            1 => Self::Version,
            2 => Self::ModIndex,
            3 => Self::CreateIndex,
            4 => Self::Exists,
            _ => return None,
        })
    }
}

impl TxnOpKind {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Get,
            1 => Self::Put,
            2 => Self::Delete,
            3 => Self::PutTtl,
            4 => Self::PutLease,
            5 => Self::Incr,
            6 => Self::IncrFloat,
            7 => Self::Append,
            8 => Self::SetRange,
            9 => Self::PutKeepTtl,
            10 => Self::SetDeadline,
            _ => return None,
        })
    }

    /// Whether the op computes what it writes from the key's value (kinds 5–10).
    pub fn is_computed(self) -> bool {
        self as u8 >= Self::Incr as u8
    }
}

/// One compare of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compare<'a> {
    /// The key.
    pub key: &'a [u8],
    /// What is compared.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
    /// Operand for [`CompareTarget::Value`].
    pub value: &'a [u8],
    /// Operand for version, mod index and create index.
    pub number: u64,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOp<'a> {
    /// Get, put or delete.
    pub kind: TxnOpKind,
    /// The key.
    pub key: &'a [u8],
    /// The value, for a put.
    pub value: &'a [u8],
    /// For [`TxnOpKind::PutTtl`]: the deadline (ms since the Unix epoch).
    pub expires_ms: u64,
    /// For [`TxnOpKind::PutLease`]: the lease.
    pub lease: u64,
    /// For [`TxnOpKind::SetRange`]: the offset; for [`TxnOpKind::SetDeadline`]: the
    /// [`DeadlineCondition`].
    pub number: u64,
}

impl<'a> TxnOp<'a> {
    /// An op of `kind` on `key` (a get or a delete; a plain put with `value`).
    pub fn new(kind: TxnOpKind, key: &'a [u8], value: &'a [u8]) -> Self {
        TxnOp { kind, key, value, expires_ms: 0, lease: 0, number: 0 }
    }
}

/// Builds the data of one batch entry.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// A stamped batch's layout; [`BatchBuilder::take_plain`] removes the stamp.
    bytes: Vec<u8>,
    ops: u32,
    /// Whether an op needs a stamped batch (a deadline, an expiry).
    needs_stamp: bool,
    /// Whether an op is a lease operation (a peer protocol before 4 cannot apply it).
    has_lease_ops: bool,
    /// Whether an op is a computed transaction op (a peer protocol before 5 cannot apply
    /// it).
    has_computed_ops: bool,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        BatchBuilder {
            bytes: empty_batch(),
            ops: 0,
            needs_stamp: false,
            has_lease_ops: false,
            has_computed_ops: false,
        }
    }

    /// Operations in the batch.
    pub fn ops(&self) -> u32 {
        self.ops
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Bytes the batch takes so far.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Adds a put.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.push(kind::PUT);
        put_bytes(&mut self.bytes, key);
        put_bytes(&mut self.bytes, value);
        self.ops += 1;
    }

    /// Adds a put of a key that expires at `expires_ms` (ms since the Unix epoch).
    pub fn put_ttl(&mut self, key: &[u8], value: &[u8], expires_ms: u64) {
        self.put_and(kind::PUT_TTL, key, value, expires_ms);
    }

    /// A put of `kind` whose key and value are followed by `number` (a deadline, a lease).
    fn put_and(&mut self, kind: u8, key: &[u8], value: &[u8], number: u64) {
        self.bytes.push(kind);
        put_bytes(&mut self.bytes, key);
        put_bytes(&mut self.bytes, value);
        self.bytes.extend_from_slice(&number.to_le_bytes());
        self.ops += 1;
        self.needs_stamp = true;
    }

    /// Adds an atomic multi-key put of keys that all expire at `expires_ms`.
    pub fn batch_put_ttl<'a>(
        &mut self,
        items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
        expires_ms: u64,
    ) {
        self.bytes.push(kind::BATCH_PUT_TTL);
        self.bytes.extend_from_slice(&expires_ms.to_le_bytes());
        self.items(items);
    }

    /// Adds the expiry of `keys` (each with the mod index it had when found past its
    /// deadline), proposed in `term`.
    pub fn expire<'a>(&mut self, term: u64, keys: impl ExactSizeIterator<Item = (&'a [u8], u64)>) {
        self.bytes.push(kind::EXPIRE);
        self.bytes.extend_from_slice(&term.to_le_bytes());
        self.bytes.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for (key, mod_index) in keys {
            put_bytes(&mut self.bytes, key);
            self.bytes.extend_from_slice(&mod_index.to_le_bytes());
        }
        self.ops += 1;
        self.needs_stamp = true;
    }

    /// Adds a put of a key attached to lease `lease`.
    pub fn put_lease(&mut self, key: &[u8], value: &[u8], lease: u64) {
        self.put_and(kind::PUT_LEASE, key, value, lease);
        self.has_lease_ops = true;
    }

    /// Adds an atomic multi-key put of keys attached to lease `lease`.
    pub fn batch_put_lease<'a>(
        &mut self,
        items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
        lease: u64,
    ) {
        self.bytes.push(kind::BATCH_PUT_LEASE);
        self.bytes.extend_from_slice(&lease.to_le_bytes());
        self.items(items);
        self.has_lease_ops = true;
    }

    /// Adds the grant of a lease on `shard` living `ttl_ms` from the batch's stamp, with
    /// `items` put attached to it.
    pub fn lease_grant<'a>(
        &mut self,
        shard: u32,
        ttl_ms: u64,
        items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        self.bytes.push(kind::LEASE_GRANT);
        self.bytes.extend_from_slice(&shard.to_le_bytes());
        self.bytes.extend_from_slice(&ttl_ms.to_le_bytes());
        self.items(items);
        self.has_lease_ops = true;
    }

    /// Adds the revocation of lease `lease`.
    pub fn lease_revoke(&mut self, lease: u64) {
        self.bytes.push(kind::LEASE_REVOKE);
        self.bytes.extend_from_slice(&lease.to_le_bytes());
        self.ops += 1;
        self.needs_stamp = true;
        self.has_lease_ops = true;
    }

    /// Adds a checkpoint of lease deadlines: each lease and its new deadline.
    pub fn lease_checkpoint(&mut self, leases: impl ExactSizeIterator<Item = (u64, u64)>) {
        self.bytes.push(kind::LEASE_CHECKPOINT);
        self.lease_pairs(leases);
    }

    /// Adds the expiry of leases, proposed in `term`: each lease and the deadline it had when
    /// found past it.
    pub fn lease_expire(&mut self, term: u64, leases: impl ExactSizeIterator<Item = (u64, u64)>) {
        self.bytes.push(kind::LEASE_EXPIRE);
        self.bytes.extend_from_slice(&term.to_le_bytes());
        self.lease_pairs(leases);
    }

    fn items<'a>(&mut self, items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) {
        self.bytes.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (key, value) in items {
            put_bytes(&mut self.bytes, key);
            put_bytes(&mut self.bytes, value);
        }
        self.ops += 1;
        self.needs_stamp = true;
    }

    fn lease_pairs(&mut self, leases: impl ExactSizeIterator<Item = (u64, u64)>) {
        self.bytes.extend_from_slice(&(leases.len() as u32).to_le_bytes());
        for (lease, deadline_ms) in leases {
            self.bytes.extend_from_slice(&lease.to_le_bytes());
            self.bytes.extend_from_slice(&deadline_ms.to_le_bytes());
        }
        self.ops += 1;
        self.needs_stamp = true;
        self.has_lease_ops = true;
    }

    /// Whether an op needs a stamped batch ([`BatchBuilder::take_plain`] refuses it).
    pub fn needs_stamp(&self) -> bool {
        self.needs_stamp
    }

    /// Whether an op is a lease operation, which only replicas of peer protocol 4 or later
    /// apply.
    pub fn has_lease_ops(&self) -> bool {
        self.has_lease_ops
    }

    /// Whether an op is a computed transaction op, which only replicas of peer protocol 5 or
    /// later apply.
    pub fn has_computed_ops(&self) -> bool {
        self.has_computed_ops
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: &[u8]) {
        self.bytes.push(kind::DELETE);
        put_bytes(&mut self.bytes, key);
        self.ops += 1;
    }

    /// Adds an atomic multi-key put.
    pub fn batch_put<'a>(&mut self, items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) {
        self.bytes.push(kind::BATCH_PUT);
        self.bytes.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (key, value) in items {
            put_bytes(&mut self.bytes, key);
            put_bytes(&mut self.bytes, value);
        }
        self.ops += 1;
    }

    /// Adds an atomic multi-key delete.
    pub fn batch_delete<'a>(&mut self, keys: impl ExactSizeIterator<Item = &'a [u8]>) {
        self.bytes.push(kind::BATCH_DELETE);
        self.bytes.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for key in keys {
            put_bytes(&mut self.bytes, key);
        }
        self.ops += 1;
    }

    /// Adds a transaction.
    pub fn txn<'a>(
        &mut self,
        compares: impl ExactSizeIterator<Item = Compare<'a>>,
        success: impl ExactSizeIterator<Item = TxnOp<'a>>,
        failure: impl ExactSizeIterator<Item = TxnOp<'a>>,
    ) {
        self.bytes.push(kind::TXN);
        self.bytes.extend_from_slice(&(compares.len() as u32).to_le_bytes());
        for c in compares {
            self.bytes.push(c.target as u8);
            self.bytes.push(c.op as u8);
            put_bytes(&mut self.bytes, c.key);
            put_bytes(&mut self.bytes, c.value);
            self.bytes.extend_from_slice(&c.number.to_le_bytes());
        }
        for branch in [success.collect::<Vec<_>>(), failure.collect::<Vec<_>>()] {
            self.bytes.extend_from_slice(&(branch.len() as u32).to_le_bytes());
            for op in branch {
                self.bytes.push(op.kind as u8);
                put_bytes(&mut self.bytes, op.key);
                put_bytes(&mut self.bytes, op.value);
                if op.kind == TxnOpKind::PutTtl {
                    self.bytes.extend_from_slice(&op.expires_ms.to_le_bytes());
                    self.needs_stamp = true;
                }
                if op.kind == TxnOpKind::PutLease {
                    self.bytes.extend_from_slice(&op.lease.to_le_bytes());
                    self.needs_stamp = true;
                    self.has_lease_ops = true;
                }
                if op.kind == TxnOpKind::SetRange {
                    self.bytes.extend_from_slice(&op.number.to_le_bytes());
                }
                if op.kind == TxnOpKind::SetDeadline {
                    self.bytes.extend_from_slice(&op.expires_ms.to_le_bytes());
                    self.bytes.extend_from_slice(&op.number.to_le_bytes());
                }
                if op.kind.is_computed() {
                    self.needs_stamp = true;
                    self.has_computed_ops = true;
                }
            }
        }
        self.ops += 1;
    }

    /// Finishes the batch, stamped with `stamp_ms` (the proposer's wall clock, ms since the
    /// Unix epoch): returns its bytes and leaves the builder empty for the next one.
    pub fn take(&mut self, stamp_ms: u64) -> Vec<u8> {
        self.bytes[0] = BATCH_VERSION_STAMPED;
        self.bytes[1..9].copy_from_slice(&stamp_ms.to_le_bytes());
        self.bytes[9..13].copy_from_slice(&self.ops.to_le_bytes());
        self.reset()
    }

    /// Finishes the batch without a stamp (version 1, which replicas of an older peer
    /// protocol read), or `None` when an op needs a stamp; either way the builder is left
    /// empty.
    pub fn take_plain(&mut self) -> Option<Vec<u8>> {
        let stamped = self.needs_stamp;
        self.bytes[0] = BATCH_VERSION_PLAIN;
        self.bytes[9..13].copy_from_slice(&self.ops.to_le_bytes());
        let mut bytes = self.reset();
        bytes.drain(1..9);
        (!stamped).then_some(bytes)
    }

    /// Drops what the batch holds.
    pub fn clear(&mut self) {
        self.reset();
    }

    fn reset(&mut self) -> Vec<u8> {
        self.ops = 0;
        self.needs_stamp = false;
        self.has_lease_ops = false;
        self.has_computed_ops = false;
        std::mem::replace(&mut self.bytes, empty_batch())
    }
}

fn empty_batch() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4096);
    bytes.resize(HEADER_BYTES, 0);
    bytes
}

mod decode;

pub use decode::{decode_batch, Batch, CommandError, Op, Reader};

#[cfg(test)]
mod tests;
