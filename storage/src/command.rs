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
//! txn-op:  kind u8 (0 get, 1 put, 2 delete, 3 put with a deadline, 4 put with a lease)
//!          | key | value | [kind 3: expires_ms u64] | [kind 4: lease u64]
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
            _ => return None,
        })
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
}

impl<'a> TxnOp<'a> {
    /// An op of `kind` on `key` (a get or a delete; a plain put with `value`).
    pub fn new(kind: TxnOpKind, key: &'a [u8], value: &'a [u8]) -> Self {
        TxnOp { kind, key, value, expires_ms: 0, lease: 0 }
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
        BatchBuilder { bytes: empty_batch(), ops: 0, needs_stamp: false, has_lease_ops: false }
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
        std::mem::replace(&mut self.bytes, empty_batch())
    }
}

fn empty_batch() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4096);
    bytes.resize(HEADER_BYTES, 0);
    bytes
}

/// Why a batch does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command batch at byte {at}: {reason}")]
pub struct CommandError {
    /// Where decoding stopped.
    pub at: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// A reader over untrusted command bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, CommandError> {
        Err(CommandError { at: self.at, reason })
    }

    fn u8(&mut self) -> Result<u8, CommandError> {
        let Some(&b) = self.bytes.get(self.at) else { return self.fail("truncated") };
        self.at += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, CommandError> {
        let Some(b) = self.bytes.get(self.at..self.at + 4) else { return self.fail("truncated") };
        self.at += 4;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, CommandError> {
        let Some(b) = self.bytes.get(self.at..self.at + 8) else { return self.fail("truncated") };
        self.at += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CommandError> {
        let len = self.u32()? as usize;
        let Some(b) = self.bytes.get(self.at..self.at.saturating_add(len)) else {
            return self.fail("length past the end");
        };
        self.at += len;
        Ok(b)
    }

    /// A count of items that each take at least `min_item` bytes: refused when the bytes left
    /// cannot hold that many, so a forged count cannot make a decoder loop or allocate.
    fn count(&mut self, min_item: usize) -> Result<usize, CommandError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.bytes.len() - self.at {
            return self.fail("count larger than the bytes left");
        }
        Ok(n)
    }
}

/// One decoded operation, borrowing from the batch bytes.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// Put one key.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Its deadline (ms since the Unix epoch); 0: none.
        expires_ms: u64,
        /// The lease it is attached to; 0: none.
        lease: u64,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Put several keys atomically.
    BatchPut {
        /// The keys and values.
        items: Vec<(&'a [u8], &'a [u8])>,
        /// Their deadline (ms since the Unix epoch); 0: none.
        expires_ms: u64,
        /// The lease they are attached to; 0: none.
        lease: u64,
    },
    /// Delete several keys atomically.
    BatchDelete(Vec<&'a [u8]>),
    /// A transaction.
    Txn {
        /// The compares.
        compares: Vec<Compare<'a>>,
        /// Ops run when every compare holds.
        success: Vec<TxnOp<'a>>,
        /// Ops run otherwise.
        failure: Vec<TxnOp<'a>>,
    },
    /// Delete keys past their deadline that were not written since.
    Expire {
        /// The term it was proposed in.
        term: u64,
        /// Each key and the mod index it had when found past its deadline.
        keys: Vec<(&'a [u8], u64)>,
    },
    /// Grant a lease, and put keys attached to it.
    LeaseGrant {
        /// The shard it lives on (its id says so).
        shard: u32,
        /// Its time to live, ms.
        ttl_ms: u64,
        /// Keys and values to put attached to it.
        items: Vec<(&'a [u8], &'a [u8])>,
    },
    /// End a lease and delete its keys.
    LeaseRevoke {
        /// The lease.
        lease: u64,
    },
    /// Move lease deadlines later: each lease and its deadline.
    LeaseCheckpoint(Vec<(u64, u64)>),
    /// End leases past their deadline.
    LeaseExpire {
        /// The term it was proposed in.
        term: u64,
        /// Each lease and the deadline it had when found past it.
        leases: Vec<(u64, u64)>,
    },
}

/// A decoded batch.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// The proposer's wall clock when it proposed the batch (ms since the Unix epoch); `None`
    /// in a batch of version 1.
    pub stamp_ms: Option<u64>,
    /// Its operations, in order.
    pub ops: Vec<Op<'a>>,
}

/// Decodes a whole batch. Either every op decodes or the batch is refused as a whole.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch<'_>, CommandError> {
    let mut r = Reader { bytes, at: 0 };
    let stamp_ms = match r.u8()? {
        BATCH_VERSION_PLAIN => None,
        BATCH_VERSION_STAMPED => Some(r.u64()?),
        _ => return r.fail("unknown batch version"),
    };
    let count = r.count(5)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let op = decode_op(&mut r)?;
        if stamp_ms.is_none() && op.needs_stamp() {
            return r.fail("a deadline or an expiry in a batch without a stamp");
        }
        ops.push(op);
    }
    if r.at != bytes.len() {
        return r.fail("bytes after the last op");
    }
    Ok(Batch { stamp_ms, ops })
}

impl Op<'_> {
    fn needs_stamp(&self) -> bool {
        match self {
            Op::Put { expires_ms, lease, .. } | Op::BatchPut { expires_ms, lease, .. } => {
                *expires_ms != 0 || *lease != 0
            }
            Op::Expire { .. }
            | Op::LeaseGrant { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseCheckpoint(_)
            | Op::LeaseExpire { .. } => true,
            Op::Txn { success, failure, .. } => success
                .iter()
                .chain(failure)
                .any(|op| matches!(op.kind, TxnOpKind::PutTtl | TxnOpKind::PutLease)),
            Op::Delete { .. } | Op::BatchDelete(_) => false,
        }
    }
}

fn decode_op<'a>(r: &mut Reader<'a>) -> Result<Op<'a>, CommandError> {
    Ok(match r.u8()? {
        kind::PUT => Op::Put { key: r.bytes()?, value: r.bytes()?, expires_ms: 0, lease: 0 },
        kind::PUT_TTL => {
            let (key, value) = (r.bytes()?, r.bytes()?);
            Op::Put { key, value, expires_ms: deadline(r)?, lease: 0 }
        }
        kind::BATCH_PUT_TTL => {
            let expires_ms = deadline(r)?;
            Op::BatchPut { items: decode_items(r)?, expires_ms, lease: 0 }
        }
        kind::PUT_LEASE => {
            let (key, value) = (r.bytes()?, r.bytes()?);
            Op::Put { key, value, expires_ms: 0, lease: lease(r)? }
        }
        kind::BATCH_PUT_LEASE => {
            let lease = lease(r)?;
            Op::BatchPut { items: decode_items(r)?, expires_ms: 0, lease }
        }
        kind::LEASE_GRANT => {
            let shard = r.u32()?;
            let ttl_ms = r.u64()?;
            Op::LeaseGrant { shard, ttl_ms, items: decode_items(r)? }
        }
        kind::LEASE_REVOKE => Op::LeaseRevoke { lease: lease(r)? },
        kind::LEASE_CHECKPOINT => Op::LeaseCheckpoint(decode_lease_pairs(r)?),
        kind::LEASE_EXPIRE => {
            let term = r.u64()?;
            Op::LeaseExpire { term, leases: decode_lease_pairs(r)? }
        }
        kind::EXPIRE => {
            let term = r.u64()?;
            let n = r.count(12)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push((r.bytes()?, r.u64()?));
            }
            Op::Expire { term, keys }
        }
        kind::DELETE => Op::Delete { key: r.bytes()? },
        kind::BATCH_PUT => Op::BatchPut { items: decode_items(r)?, expires_ms: 0, lease: 0 },
        kind::BATCH_DELETE => {
            let n = r.count(4)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(r.bytes()?);
            }
            Op::BatchDelete(keys)
        }
        kind::TXN => {
            let n = r.count(18)?;
            let mut compares = Vec::with_capacity(n);
            for _ in 0..n {
                let target = CompareTarget::from_u8(r.u8()?);
                let op = CompareOp::from_u8(r.u8()?);
                let (Some(target), Some(op)) = (target, op) else {
                    return r.fail("unknown compare target or operator");
                };
                compares.push(Compare {
                    target,
                    op,
                    key: r.bytes()?,
                    value: r.bytes()?,
                    number: r.u64()?,
                });
            }
            let success = decode_txn_ops(r)?;
            let failure = decode_txn_ops(r)?;
            Op::Txn { compares, success, failure }
        }
        _ => return r.fail("unknown op kind"),
    })
}

/// Keys and values, borrowed from the batch.
type Items<'a> = Vec<(&'a [u8], &'a [u8])>;

fn decode_items<'a>(r: &mut Reader<'a>) -> Result<Items<'a>, CommandError> {
    let n = r.count(8)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push((r.bytes()?, r.bytes()?));
    }
    Ok(items)
}

/// Lease ids and deadlines.
fn decode_lease_pairs(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, CommandError> {
    let n = r.count(16)?;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        pairs.push((lease(r)?, r.u64()?));
    }
    Ok(pairs)
}

/// A lease id: never 0 (0 means none).
fn lease(r: &mut Reader<'_>) -> Result<u64, CommandError> {
    match r.u64()? {
        0 => r.fail("a lease of 0"),
        id => Ok(id),
    }
}

/// A deadline: never 0 (0 means none).
fn deadline(r: &mut Reader<'_>) -> Result<u64, CommandError> {
    match r.u64()? {
        0 => r.fail("a deadline of 0"),
        ms => Ok(ms),
    }
}

fn decode_txn_ops<'a>(r: &mut Reader<'a>) -> Result<Vec<TxnOp<'a>>, CommandError> {
    let n = r.count(9)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(kind) = TxnOpKind::from_u8(r.u8()?) else {
            return r.fail("unknown transaction op kind");
        };
        let (key, value) = (r.bytes()?, r.bytes()?);
        let expires_ms = if kind == TxnOpKind::PutTtl { deadline(r)? } else { 0 };
        let lease = if kind == TxnOpKind::PutLease { lease(r)? } else { 0 };
        ops.push(TxnOp { kind, key, value, expires_ms, lease });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Shows: every op kind survives encode/decode, with the batch's stamp.
    #[test]
    fn round_trip() {
        let mut b = BatchBuilder::new();
        b.put(b"k", b"v");
        b.delete(b"d");
        b.batch_put([(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])].into_iter());
        b.batch_delete([&b"x"[..]].into_iter());
        b.txn(
            [Compare {
                key: b"k",
                target: CompareTarget::Version,
                op: CompareOp::Equal,
                value: b"",
                number: 3,
            }]
            .into_iter(),
            [
                TxnOp::new(TxnOpKind::Put, b"k", b"w"),
                TxnOp { expires_ms: 77, ..TxnOp::new(TxnOpKind::PutTtl, b"t", b"x") },
                TxnOp { lease: 9, ..TxnOp::new(TxnOpKind::PutLease, b"l", b"y") },
            ]
            .into_iter(),
            [TxnOp::new(TxnOpKind::Get, b"k", b"")].into_iter(),
        );
        b.put_ttl(b"e", b"v", 1_000);
        b.batch_put_ttl([(&b"f"[..], &b"1"[..])].into_iter(), 2_000);
        b.expire(7, [(&b"e"[..], 41u64)].into_iter());
        b.put_lease(b"p", b"v", 5);
        b.batch_put_lease([(&b"q"[..], &b"1"[..])].into_iter(), 6);
        b.lease_grant(2, 3_000, [(&b"g"[..], &b"1"[..])].into_iter());
        b.lease_revoke(5);
        b.lease_checkpoint([(5u64, 9_000u64)].into_iter());
        b.lease_expire(3, [(6u64, 8_000u64)].into_iter());
        assert_eq!(b.ops(), 14);
        let bytes = b.take(123_456);
        assert!(b.is_empty() && !b.needs_stamp());
        let batch = decode_batch(&bytes).unwrap();
        assert_eq!(batch.stamp_ms, Some(123_456));
        let ops = batch.ops;
        assert_eq!(ops.len(), 14);
        assert!(matches!(ops[0], Op::Put { key: b"k", value: b"v", expires_ms: 0, lease: 0 }));
        assert!(matches!(ops[1], Op::Delete { key: b"d" }));
        assert!(matches!(&ops[2], Op::BatchPut { items, expires_ms: 0, .. } if items.len() == 2));
        assert!(matches!(&ops[3], Op::BatchDelete(keys) if keys == &vec![&b"x"[..]]));
        match &ops[4] {
            Op::Txn { compares, success, failure } => {
                assert_eq!(compares[0].number, 3);
                assert_eq!(success[0].value, b"w");
                assert_eq!((success[1].kind, success[1].expires_ms), (TxnOpKind::PutTtl, 77));
                assert_eq!((success[2].kind, success[2].lease), (TxnOpKind::PutLease, 9));
                assert_eq!(failure[0].kind, TxnOpKind::Get);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ops[5], Op::Put { key: b"e", expires_ms: 1_000, .. }));
        assert!(
            matches!(&ops[6], Op::BatchPut { items, expires_ms: 2_000, .. } if items.len() == 1)
        );
        assert!(matches!(&ops[7], Op::Expire { term: 7, keys } if keys == &vec![(&b"e"[..], 41)]));
        assert!(matches!(ops[8], Op::Put { key: b"p", lease: 5, expires_ms: 0, .. }));
        assert!(matches!(&ops[9], Op::BatchPut { lease: 6, items, .. } if items.len() == 1));
        assert!(
            matches!(&ops[10], Op::LeaseGrant { shard: 2, ttl_ms: 3_000, items } if items.len() == 1)
        );
        assert!(matches!(ops[11], Op::LeaseRevoke { lease: 5 }));
        assert!(matches!(&ops[12], Op::LeaseCheckpoint(pairs) if pairs == &vec![(5, 9_000)]));
        assert!(
            matches!(&ops[13], Op::LeaseExpire { term: 3, leases } if leases == &vec![(6, 8_000)])
        );
        let mut b = BatchBuilder::new();
        b.put(b"k", b"v");
        assert!(!b.has_lease_ops());
        b.lease_revoke(1);
        assert!(b.has_lease_ops());
        assert!(b.take_plain().is_none(), "lease ops need a stamped batch");
        assert!(!b.has_lease_ops(), "the builder is left empty");
        b.lease_revoke(0);
        assert!(decode_batch(&b.take(1)).unwrap_err().reason.contains("lease of 0"));
    }

    // Shows: a batch without deadlines can be taken without a stamp (version 1, as older
    // replicas read it), one with a deadline cannot; a version 1 batch carrying a deadline
    // and a deadline of 0 are refused.
    #[test]
    fn plain_batches_carry_no_deadline() {
        let mut b = BatchBuilder::new();
        b.put(b"k", b"v");
        let plain = b.take_plain().unwrap();
        assert_eq!(plain[0], BATCH_VERSION_PLAIN);
        let batch = decode_batch(&plain).unwrap();
        assert_eq!((batch.stamp_ms, batch.ops.len()), (None, 1));
        b.put_ttl(b"k", b"v", 5);
        assert!(b.take_plain().is_none());
        assert!(b.is_empty(), "the builder is left empty either way");
        // A forged version 1 batch with a deadline.
        let mut forged = vec![BATCH_VERSION_PLAIN, 1, 0, 0, 0, kind::PUT_TTL];
        for part in [&b"k"[..], &b"v"[..]] {
            forged.extend_from_slice(&(part.len() as u32).to_le_bytes());
            forged.extend_from_slice(part);
        }
        forged.extend_from_slice(&5u64.to_le_bytes());
        assert!(decode_batch(&forged).unwrap_err().reason.contains("without a stamp"));
        b.put_ttl(b"k", b"v", 0);
        assert!(decode_batch(&b.take(1)).unwrap_err().reason.contains("deadline of 0"));
    }

    proptest! {
        // Shows: arbitrary bytes and truncations of valid batches never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..200) {
            let _ = decode_batch(&bytes);
            let mut b = BatchBuilder::new();
            b.put(b"key", b"value");
            b.batch_delete([&b"a"[..], &b"b"[..]].into_iter());
            let valid = b.take(9);
            let cut = cut.min(valid.len());
            if cut < valid.len() {
                prop_assert!(decode_batch(&valid[..cut]).is_err());
            }
        }
    }
}
