//! Decoding command batches: never trusting a length, refusing a malformed batch as a whole.

use super::{
    kind, Compare, CompareOp, CompareTarget, TxnOp, TxnOpKind, BATCH_VERSION_PLAIN,
    BATCH_VERSION_STAMPED,
};

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
            Op::Txn { success, failure, .. } => success.iter().chain(failure).any(|op| {
                matches!(op.kind, TxnOpKind::PutTtl | TxnOpKind::PutLease) || op.kind.is_computed()
            }),
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
        let (expires_ms, lease, number) = match kind {
            TxnOpKind::PutTtl => (deadline(r)?, 0, 0),
            TxnOpKind::PutLease => (0, lease(r)?, 0),
            TxnOpKind::SetRange => (0, 0, r.u64()?),
            // A deadline of 0 removes the key's.
            TxnOpKind::SetDeadline => (r.u64()?, 0, r.u64()?),
            _ => (0, 0, 0),
        };
        ops.push(TxnOp { kind, key, value, expires_ms, lease, number });
    }
    Ok(ops)
}
