//! Commands: the data of a shard's raft entries. One entry carries a *batch* of operations —
//! every write that arrived in one loop iteration of the shard — so raft, the WAL and the
//! network pay their per-entry costs once per batch, not once per write.
//!
//! ```text
//! batch:  version u8 (1) | op count u32 | op | op | ...
//! op:     kind u8 | body
//!   PUT            key | value
//!   DELETE         key
//!   BATCH_PUT      n u32 | (key | value) * n
//!   BATCH_DELETE   n u32 | key * n
//!   TXN            compares u32 | compare * | success u32 | txn-op * | failure u32 | txn-op *
//! compare: target u8 | op u8 | key | value | number u64
//! txn-op:  kind u8 (0 get, 1 put, 2 delete) | key | value
//! key, value: length u32 | bytes
//! ```
//!
//! All integers are little-endian. Decoding never trusts lengths: a malformed batch decodes to
//! an error, which apply turns into the same failed result on every replica.

pub use corekv_types::meta::CompareOp;

/// Version byte at the start of every batch.
pub const BATCH_VERSION: u8 = 1;

/// Op kinds.
mod kind {
    pub const PUT: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const BATCH_PUT: u8 = 3;
    pub const BATCH_DELETE: u8 = 4;
    pub const TXN: u8 = 5;
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
}

/// Builds the data of one batch entry.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    bytes: Vec<u8>,
    ops: u32,
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
        let mut bytes = Vec::with_capacity(4096);
        bytes.push(BATCH_VERSION);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        BatchBuilder { bytes, ops: 0 }
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
            }
        }
        self.ops += 1;
    }

    /// Finishes the batch: returns its bytes and leaves the builder empty for the next one.
    pub fn take(&mut self) -> Vec<u8> {
        let ops = self.ops.to_le_bytes();
        self.bytes[1..5].copy_from_slice(&ops);
        let bytes = std::mem::replace(&mut self.bytes, Vec::with_capacity(4096));
        self.bytes.push(BATCH_VERSION);
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.ops = 0;
        bytes
    }
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
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Put several keys atomically.
    BatchPut(Vec<(&'a [u8], &'a [u8])>),
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
}

/// Decodes a whole batch. Either every op decodes or the batch is refused as a whole.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Op<'_>>, CommandError> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != BATCH_VERSION {
        return r.fail("unknown batch version");
    }
    let count = r.count(5)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(decode_op(&mut r)?);
    }
    if r.at != bytes.len() {
        return r.fail("bytes after the last op");
    }
    Ok(ops)
}

fn decode_op<'a>(r: &mut Reader<'a>) -> Result<Op<'a>, CommandError> {
    Ok(match r.u8()? {
        kind::PUT => Op::Put { key: r.bytes()?, value: r.bytes()? },
        kind::DELETE => Op::Delete { key: r.bytes()? },
        kind::BATCH_PUT => {
            let n = r.count(8)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push((r.bytes()?, r.bytes()?));
            }
            Op::BatchPut(items)
        }
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

fn decode_txn_ops<'a>(r: &mut Reader<'a>) -> Result<Vec<TxnOp<'a>>, CommandError> {
    let n = r.count(9)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(kind) = TxnOpKind::from_u8(r.u8()?) else {
            return r.fail("unknown transaction op kind");
        };
        ops.push(TxnOp { kind, key: r.bytes()?, value: r.bytes()? });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Shows: every op kind survives encode/decode.
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
            [TxnOp { kind: TxnOpKind::Put, key: b"k", value: b"w" }].into_iter(),
            [TxnOp { kind: TxnOpKind::Get, key: b"k", value: b"" }].into_iter(),
        );
        assert_eq!(b.ops(), 5);
        let bytes = b.take();
        assert!(b.is_empty());
        let ops = decode_batch(&bytes).unwrap();
        assert_eq!(ops.len(), 5);
        assert!(matches!(ops[0], Op::Put { key: b"k", value: b"v" }));
        assert!(matches!(ops[1], Op::Delete { key: b"d" }));
        assert!(matches!(&ops[2], Op::BatchPut(items) if items.len() == 2));
        assert!(matches!(&ops[3], Op::BatchDelete(keys) if keys == &vec![&b"x"[..]]));
        match &ops[4] {
            Op::Txn { compares, success, failure } => {
                assert_eq!(compares[0].number, 3);
                assert_eq!(success[0].value, b"w");
                assert_eq!(failure[0].kind, TxnOpKind::Get);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        // Shows: arbitrary bytes and truncations of valid batches never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..200) {
            let _ = decode_batch(&bytes);
            let mut b = BatchBuilder::new();
            b.put(b"key", b"value");
            b.batch_delete([&b"a"[..], &b"b"[..]].into_iter());
            let valid = b.take();
            let cut = cut.min(valid.len());
            if cut < valid.len() {
                prop_assert!(decode_batch(&valid[..cut]).is_err());
            }
        }
    }
}
