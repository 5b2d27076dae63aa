//! The values the client API takes and returns.

use std::time::Duration;

/// How a read is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// By the leader after confirming it still leads (ReadIndex): sees every write
    /// acknowledged before the read began. The default.
    #[default]
    Linearizable,
    /// By any replica from what it has applied: faster, and served during elections, but may
    /// miss recent writes.
    Stale,
}

use corekv_types::ids::{NodeId, ShardId};
pub use corekv_types::meta::{CompareOp, KeyMeta};
pub use corekv_types::status::{PeerProgress, ReplicaStatus, Role};

/// A key, its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in keys-only scans).
    pub value: Vec<u8>,
    /// Its metadata.
    pub meta: KeyMeta,
    /// For a key with a deadline: the time left until it, on the clock of the node that read
    /// it (`None`: the key has none; always `None` in watch events).
    pub ttl: Option<Duration>,
    /// The lease the key is attached to (`None`: none; always `None` in watch events).
    pub lease: Option<LeaseId>,
}

/// A lease's id. It names the shard the lease lives on (its high 16 bits); it prints, and
/// parses, as 16 hexadecimal digits (`0x` optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl LeaseId {
    /// The shard the lease lives on: keys attached to it must be on that shard too.
    pub fn shard(self) -> crate::ShardId {
        crate::ShardId((self.0 >> 48) as u32)
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0x").unwrap_or(s);
        match u64::from_str_radix(digits, 16) {
            Ok(0) => Err("lease 0 names no lease".to_string()),
            Ok(id) => Ok(LeaseId(id)),
            Err(_) => Err(format!("{s:?} is not a lease id (16 hexadecimal digits)")),
        }
    }
}

/// A lease just granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its time to live: it ends this long after the last keep-alive, unless revoked.
    pub ttl: Duration,
    /// The metadata of the keys put with it, in order.
    pub metas: Vec<KeyMeta>,
    /// The log index of the grant on its shard.
    pub index: u64,
}

/// A keep-alive's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKept {
    /// The lease's time to live: the leader that answered keeps it that long from then.
    pub ttl: Duration,
    /// What is left of the deadline the log holds for it (its last checkpoint), when the
    /// leader answered: any later leader keeps it at least that long. From the moment the
    /// keep-alive was sent, less the clock skew between nodes, the lease surely lives that
    /// long whatever happens to the leader.
    pub durable: Duration,
}

/// What the shard's leader knows of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id.
    pub id: LeaseId,
    /// The time to live it was granted.
    pub ttl: Duration,
    /// The time left before the leader expires it, on the leader's clock.
    pub remaining: Duration,
    /// The keys attached to it, when asked for.
    pub keys: Vec<Vec<u8>>,
}

/// Options of a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Overall deadline of the call; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// Linearizable (default) or stale.
    pub consistency: Consistency,
}

impl ReadOptions {
    /// A stale read: any replica, from its applied state.
    pub fn stale() -> Self {
        ReadOptions { consistency: Consistency::Stale, ..Self::default() }
    }

    /// The same options with another deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Options of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Overall deadline of the call; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// For puts and batch puts: the keys expire this long after the shard's leader takes
    /// the write (rounded up to whole milliseconds); `None`: never. Deletes ignore it.
    pub ttl: Option<Duration>,
    /// For puts and batch puts: the keys are attached to this lease and go when it ends
    /// (the keys must be on the lease's shard). Not with `ttl`. Deletes ignore it.
    pub lease: Option<LeaseId>,
}

impl WriteOptions {
    /// Options with a deadline.
    pub fn with_timeout(timeout: Duration) -> Self {
        WriteOptions { timeout: Some(timeout), ..Default::default() }
    }

    /// Options of a write whose keys expire `ttl` after the leader takes it.
    pub fn with_ttl(ttl: Duration) -> Self {
        WriteOptions { ttl: Some(ttl), ..Default::default() }
    }

    /// Options of a write whose keys are attached to `lease`.
    pub fn with_lease(lease: LeaseId) -> Self {
        WriteOptions { lease: Some(lease), ..Default::default() }
    }
}

/// Which keys a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanRange {
    /// Every key.
    All,
    /// Keys that start with these bytes.
    Prefix(Vec<u8>),
    /// Keys `>= start` and, when `end` is set, `< end`.
    Range {
        /// Inclusive lower bound.
        start: Vec<u8>,
        /// Exclusive upper bound.
        end: Option<Vec<u8>>,
    },
}

impl ScanRange {
    /// Keys with this prefix.
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        ScanRange::Prefix(prefix.as_ref().to_vec())
    }

    /// Keys in `[start, end)`.
    pub fn range(start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Self {
        ScanRange::Range { start: start.as_ref().to_vec(), end: Some(end.as_ref().to_vec()) }
    }

    /// Keys from `start` on.
    pub fn from(start: impl AsRef<[u8]>) -> Self {
        ScanRange::Range { start: start.as_ref().to_vec(), end: None }
    }
}

/// Options of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most entries in the page; 0 for the server's maximum (10,000).
    pub limit: usize,
    /// Leave values out.
    pub keys_only: bool,
    /// Linearizable (default) or stale.
    pub consistency: Consistency,
    /// Resume after this key: the `continuation` of the previous page.
    pub continuation: Option<Vec<u8>>,
    /// Overall deadline of the call; the client's default when `None`.
    pub timeout: Option<Duration>,
}

/// One page of a scan, in key order across all shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The entries.
    pub entries: Vec<KeyValue>,
    /// Set when more keys may follow: pass it as [`ScanOptions::continuation`]. A page can
    /// be empty and still have one (a node passes over at most 10,000 keys past their
    /// deadline per request, then says where it stopped).
    pub continuation: Option<Vec<u8>>,
}

/// What a transaction compare looks at, with its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value's bytes. A missing key only satisfies [`CompareOp::NotEqual`].
    Value(Vec<u8>),
    /// The key's version (0 when missing).
    Version(u64),
    /// The key's mod index (0 when missing).
    ModIndex(u64),
    /// The key's create index (0 when missing).
    CreateIndex(u64),
    /// Whether the key exists: `Equal` means it does, `NotEqual` that it does not.
    Exists,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// What is compared, and with what.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

/// Starts a compare on one key: `Compare::version(key).eq(3)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareBuilder {
    key: Vec<u8>,
    target: TargetKind,
}

/// Which [`CompareTarget`] a builder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Value,
    Version,
    ModIndex,
    CreateIndex,
}

/// The operand a [`CompareBuilder`] is finished with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A number (version, mod index, create index).
    Number(u64),
    /// Bytes (value).
    Bytes(Vec<u8>),
}

impl From<u64> for Operand {
    fn from(n: u64) -> Self {
        Operand::Number(n)
    }
}

impl From<&[u8]> for Operand {
    fn from(b: &[u8]) -> Self {
        Operand::Bytes(b.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Operand {
    fn from(b: &[u8; N]) -> Self {
        Operand::Bytes(b.to_vec())
    }
}

impl From<&str> for Operand {
    fn from(s: &str) -> Self {
        Operand::Bytes(s.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for Operand {
    fn from(b: Vec<u8>) -> Self {
        Operand::Bytes(b)
    }
}

fn number(operand: Operand) -> u64 {
    match operand {
        Operand::Number(n) => n,
        // Bytes for a numeric target: compare against a number that cannot match sensibly.
        Operand::Bytes(_) => u64::MAX,
    }
}

impl Compare {
    /// Compare the key's value: `Compare::value("k").eq("v")`.
    pub fn value(key: impl AsRef<[u8]>) -> CompareBuilder {
        CompareBuilder { key: key.as_ref().to_vec(), target: TargetKind::Value }
    }

    /// Compare the key's version: `Compare::version("k").eq(3)`.
    pub fn version(key: impl AsRef<[u8]>) -> CompareBuilder {
        CompareBuilder { key: key.as_ref().to_vec(), target: TargetKind::Version }
    }

    /// Compare the key's mod index.
    pub fn mod_index(key: impl AsRef<[u8]>) -> CompareBuilder {
        CompareBuilder { key: key.as_ref().to_vec(), target: TargetKind::ModIndex }
    }

    /// Compare the key's create index.
    pub fn create_index(key: impl AsRef<[u8]>) -> CompareBuilder {
        CompareBuilder { key: key.as_ref().to_vec(), target: TargetKind::CreateIndex }
    }

    /// The key exists.
    pub fn exists(key: impl AsRef<[u8]>) -> Compare {
        Compare { key: key.as_ref().to_vec(), target: CompareTarget::Exists, op: CompareOp::Equal }
    }

    /// The key does not exist.
    pub fn missing(key: impl AsRef<[u8]>) -> Compare {
        Compare {
            key: key.as_ref().to_vec(),
            target: CompareTarget::Exists,
            op: CompareOp::NotEqual,
        }
    }
}

impl CompareBuilder {
    fn finish(self, op: CompareOp, operand: Operand) -> Compare {
        let target = match (self.target, operand) {
            (TargetKind::Value, Operand::Bytes(b)) => CompareTarget::Value(b),
            (TargetKind::Value, Operand::Number(n)) => {
                CompareTarget::Value(n.to_string().into_bytes())
            }
            (TargetKind::Version, o) => CompareTarget::Version(number(o)),
            (TargetKind::ModIndex, o) => CompareTarget::ModIndex(number(o)),
            (TargetKind::CreateIndex, o) => CompareTarget::CreateIndex(number(o)),
        };
        Compare { key: self.key, target, op }
    }

    /// `==`
    pub fn eq(self, operand: impl Into<Operand>) -> Compare {
        self.finish(CompareOp::Equal, operand.into())
    }

    /// `!=`
    pub fn ne(self, operand: impl Into<Operand>) -> Compare {
        self.finish(CompareOp::NotEqual, operand.into())
    }

    /// `<`
    pub fn lt(self, operand: impl Into<Operand>) -> Compare {
        self.finish(CompareOp::Less, operand.into())
    }

    /// `>`
    pub fn gt(self, operand: impl Into<Operand>) -> Compare {
        self.finish(CompareOp::Greater, operand.into())
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read a key.
    Get(Vec<u8>),
    /// Write a key.
    Put(Vec<u8>, Vec<u8>),
    /// Write a key that expires this long after the leader takes the transaction.
    PutWithTtl(Vec<u8>, Vec<u8>, Duration),
    /// Write a key attached to a lease (of the transaction's shard).
    PutWithLease(Vec<u8>, Vec<u8>, LeaseId),
    /// Delete a key.
    Delete(Vec<u8>),
}

impl TxnOp {
    /// Read `key`.
    pub fn get(key: impl AsRef<[u8]>) -> Self {
        TxnOp::Get(key.as_ref().to_vec())
    }

    /// Write `value` under `key`.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        TxnOp::Put(key.as_ref().to_vec(), value.as_ref().to_vec())
    }

    /// Write `value` under `key`, expiring `ttl` after the leader takes the transaction.
    pub fn put_with_ttl(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, ttl: Duration) -> Self {
        TxnOp::PutWithTtl(key.as_ref().to_vec(), value.as_ref().to_vec(), ttl)
    }

    /// Write `value` under `key`, attached to `lease`.
    pub fn put_with_lease(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: LeaseId) -> Self {
        TxnOp::PutWithLease(key.as_ref().to_vec(), value.as_ref().to_vec(), lease)
    }

    /// Delete `key`.
    pub fn delete(key: impl AsRef<[u8]>) -> Self {
        TxnOp::Delete(key.as_ref().to_vec())
    }

    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            TxnOp::Get(k)
            | TxnOp::Put(k, _)
            | TxnOp::PutWithTtl(k, _, _)
            | TxnOp::PutWithLease(k, _, _)
            | TxnOp::Delete(k) => k,
        }
    }
}

/// A transaction: if every compare holds, run `success`, else `failure` — atomically, on one
/// shard. Keys on different shards are refused; give related keys one hash tag
/// (`{user:1}:name`, `{user:1}:mail`) to keep them together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<TxnOp>,
    /// Run when one does not.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds operations to run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to run otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Every key the transaction touches.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.compares
            .iter()
            .map(|c| c.key.as_slice())
            .chain(self.success.iter().chain(&self.failure).map(TxnOp::key))
    }
}

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    /// A get: the entry, or `None` when the key does not exist.
    Get(Option<KeyValue>),
    /// A put: the key's metadata after it.
    Put(KeyMeta),
    /// A delete: whether the key existed.
    Delete(bool),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Every compare held and `success` ran.
    pub succeeded: bool,
    /// When a compare did not hold (`succeeded` false): the first such compare, 0-based,
    /// whether or not the transaction had a `failure` branch. `None` when `success` ran.
    pub failed_compare: Option<usize>,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnOpResult>,
    /// Log index the transaction applied at (0 when nothing ran).
    pub index: u64,
}

/// The report of one replica in [`crate::Client::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The node.
    pub node_id: NodeId,
    /// The shard.
    pub shard: ShardId,
    /// Its client address.
    pub addr: String,
    /// Its status, or why it could not be asked.
    pub status: Result<ReplicaStatus, crate::Error>,
}
