//! The client: routes each key to its shard, finds and caches each shard's leader, retries
//! within a deadline ([`crate::retry`] has the rules), and turns replies into Rust values.
//! Batches and scans fan out to their shards at once and come back in the caller's order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_proto::client::{self as wire, ErrorKind};
use corekv_proto::constants::{BATCH_KEYS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use corekv_proto::encode::{CompareSpec, RequestEncoder, ScanSpec, TxnOpSpec};
use corekv_proto::frame::VerifiedReply;
use futures_util::stream::Stream;

use crate::connection::{CallError, Connection, OpenError};
use crate::error::{Error, Result};
use crate::placement::shard_for_key;
use crate::registry::Registry;
use crate::retry::{self, Outcome, Retry, Rules, ServerError, Step, Target, Wait};
use crate::types::{
    CompareOp, CompareTarget, Consistency, KeyMeta, KeyValue, ReadOptions, ReplicaReport,
    ReplicaStatus, Role, ScanOptions, ScanPage, ScanRange, Txn, TxnOp, TxnOpResult, TxnResponse,
    WriteOptions,
};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster.
    pub registry: Registry,
    /// Deadline of a call when its options name none.
    pub timeout: Duration,
    /// Deadline of connecting to one node.
    pub connect_timeout: Duration,
    /// How long one node may take to answer a read before the read tries another node, or a
    /// put or delete before it ends as [`Error::Indeterminate`] (writes are never sent twice).
    /// A node cut off by a partition or paused (a long GC-like stall) answers nothing and
    /// resets nothing; without this, every call would wait its whole deadline on it.
    /// Transactions wait their deadline.
    pub attempt_timeout: Duration,
    /// Requests in flight on one connection; more wait for a slot.
    pub max_in_flight_per_connection: usize,
    /// First retry backoff.
    pub backoff_min: Duration,
    /// Longest retry backoff.
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// Defaults for `registry`: 5 s calls, 1 s connects, 1 s per node before trying another,
    /// 1024 requests in flight per connection, backoff from 5 ms to 500 ms.
    pub fn new(registry: Registry) -> Self {
        ClientConfig {
            registry,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            max_in_flight_per_connection: 1024,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(500),
        }
    }
}

/// A corekv client. Cheap to clone; clones share connections and the leader cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Node ids, ascending.
    nodes: Vec<u64>,
    /// Cached leader per shard (0: unknown).
    leaders: Vec<AtomicU64>,
    connections: Mutex<HashMap<(u64, u32), Arc<Connection>>>,
    /// xorshift state for jitter.
    rng: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster", &self.inner.config.registry.cluster)
            .field("shards", &self.inner.config.registry.shards)
            .finish()
    }
}

fn meta(m: &wire::KeyMeta) -> KeyMeta {
    KeyMeta { create_index: m.create_index(), mod_index: m.mod_index(), version: m.version() }
}

fn key_value(e: &wire::Entry<'_>) -> KeyValue {
    KeyValue {
        key: e.key().bytes().to_vec(),
        value: e.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
        meta: meta(e.meta()),
    }
}

fn protocol(what: &str) -> Error {
    Error::Protocol(format!("unexpected reply to {what}"))
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty key".to_string()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "key".into(),
            size: key.len() as u64,
            limit: KEY_BYTES_MAX as u64,
        });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "value".into(),
            size: value.len() as u64,
            limit: VALUE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

thread_local! {
    static ENCODER: std::cell::RefCell<RequestEncoder> = std::cell::RefCell::new(RequestEncoder::new());
}

/// Builds one request frame with this thread's reused encoder.
fn encode(f: impl FnOnce(&mut RequestEncoder) -> &[u8]) -> Vec<u8> {
    ENCODER.with(|e| f(&mut e.borrow_mut()).to_vec())
}

impl Client {
    /// A client for the cluster in the registry file at `path`. Connections open lazily.
    pub fn from_registry(path: impl AsRef<std::path::Path>) -> Result<Client> {
        Ok(Self::connect(ClientConfig::new(Registry::load(path)?)))
    }

    /// A client with this configuration. Connections open lazily, on first use.
    pub fn connect(config: ClientConfig) -> Client {
        let nodes = config.registry.node_ids();
        let leaders = (0..config.registry.shards).map(|_| AtomicU64::new(0)).collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Client {
            inner: Arc::new(Inner {
                config,
                nodes,
                leaders,
                connections: Mutex::default(),
                rng: AtomicU64::new(seed),
            }),
        }
    }

    /// The registry the client routes by.
    pub fn registry(&self) -> &Registry {
        &self.inner.config.registry
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        shard_for_key(key, self.inner.config.registry.shards)
    }

    /// The leader this client believes shard `shard` has (0: unknown).
    pub fn cached_leader(&self, shard: u32) -> u64 {
        self.inner.leaders[shard as usize].load(Ordering::Relaxed)
    }

    // ----------------------------------------------------------------------------------
    // Single keys
    // ----------------------------------------------------------------------------------

    /// Reads `key` (linearizable). `None` when it does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// Reads `key` with options (stale reads, deadline).
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        options: ReadOptions,
    ) -> Result<Option<KeyValue>> {
        let key = key.as_ref();
        check_key(key)?;
        let consistency = wire_consistency(options.consistency);
        let frame = self
            .call(self.shard_of(key), Retry::Read, options.timeout, options.consistency, |id, e| {
                e.get(id, key, consistency)
            })
            .await?;
        let reply = frame.reply();
        let get = reply.reply_as_get_reply().ok_or_else(|| protocol("get"))?;
        Ok(get.entry().map(|e| key_value(&e)))
    }

    /// Writes `value` under `key`; returns the key's new metadata.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<KeyMeta> {
        self.put_with(key, value, WriteOptions::default()).await
    }

    /// [`Client::put`] with options.
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: WriteOptions,
    ) -> Result<KeyMeta> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check_key(key)?;
        check_value(value)?;
        let frame = self
            .call(
                self.shard_of(key),
                Retry::Write,
                options.timeout,
                Consistency::Linearizable,
                |id, e| e.put(id, key, value),
            )
            .await?;
        let reply = frame.reply();
        let put = reply.reply_as_put_reply().ok_or_else(|| protocol("put"))?;
        Ok(meta(put.meta()))
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.delete_with(key, WriteOptions::default()).await
    }

    /// [`Client::delete`] with options.
    pub async fn delete_with(&self, key: impl AsRef<[u8]>, options: WriteOptions) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let frame = self
            .call(
                self.shard_of(key),
                Retry::Write,
                options.timeout,
                Consistency::Linearizable,
                |id, e| e.delete(id, key),
            )
            .await?;
        let reply = frame.reply();
        let delete = reply.reply_as_delete_reply().ok_or_else(|| protocol("delete"))?;
        Ok(delete.deleted())
    }

    // ----------------------------------------------------------------------------------
    // Batches: split by shard, sent in parallel, results in the caller's order. Atomic per
    // shard, not across shards.
    // ----------------------------------------------------------------------------------

    /// Groups key positions by shard.
    fn by_shard<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<BTreeMap<u32, Vec<usize>>> {
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut count = 0;
        for (i, key) in keys.enumerate() {
            check_key(key)?;
            groups.entry(self.shard_of(key)).or_default().push(i);
            count = i + 1;
        }
        for positions in groups.values() {
            if positions.len() > BATCH_KEYS_MAX {
                return Err(Error::TooLarge {
                    what: "batch (keys on one shard)".into(),
                    size: positions.len() as u64,
                    limit: BATCH_KEYS_MAX as u64,
                });
            }
        }
        let _ = count;
        Ok(groups)
    }

    /// Runs `per_shard` for every shard's group of item positions at once, and puts the
    /// results back in the caller's order: item `i`'s result at `i` (`fill` until then).
    /// Each group's call returns one result per position, in order.
    async fn fan_out<'c, T, F, Fut>(
        &self,
        groups: &'c BTreeMap<u32, Vec<usize>>,
        items: usize,
        fill: T,
        per_shard: F,
    ) -> Result<Vec<T>>
    where
        T: Clone,
        F: Fn(u32, &'c [usize]) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let calls = groups.iter().map(|(&shard, positions)| per_shard(shard, positions));
        let results = futures_util::future::join_all(calls).await;
        let mut out = vec![fill; items];
        for ((_, positions), result) in groups.iter().zip(results) {
            let result = result?;
            if result.len() != positions.len() {
                return Err(Error::Protocol(format!(
                    "a batch reply has {} results for {} keys",
                    result.len(),
                    positions.len()
                )));
            }
            for (&i, value) in positions.iter().zip(result) {
                out[i] = value;
            }
        }
        Ok(out)
    }

    /// Reads several keys; one result per key, in order.
    pub async fn batch_get<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        options: ReadOptions,
    ) -> Result<Vec<Option<KeyValue>>> {
        let groups = self.by_shard(keys.iter().map(|k| k.as_ref()))?;
        let consistency = wire_consistency(options.consistency);
        self.fan_out(&groups, keys.len(), None, |shard, positions| async move {
            let shard_keys: Vec<&[u8]> = positions.iter().map(|&i| keys[i].as_ref()).collect();
            let reply = self
                .call(shard, Retry::Read, options.timeout, options.consistency, |id, e| {
                    e.batch_get(id, &shard_keys, consistency)
                })
                .await?;
            let reply = reply.reply();
            let batch = reply.reply_as_batch_get_reply().ok_or_else(|| protocol("batch get"))?;
            Ok(batch.results().iter().map(|r| r.entry().map(|e| key_value(&e))).collect())
        })
        .await
    }

    /// Writes several keys; metadata per item, in order. Atomic within each shard.
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        options: WriteOptions,
    ) -> Result<Vec<KeyMeta>> {
        for (_, v) in items {
            check_value(v.as_ref())?;
        }
        let groups = self.by_shard(items.iter().map(|(k, _)| k.as_ref()))?;
        self.fan_out(&groups, items.len(), KeyMeta::default(), |shard, positions| async move {
            let shard_items: Vec<(&[u8], &[u8])> =
                positions.iter().map(|&i| (items[i].0.as_ref(), items[i].1.as_ref())).collect();
            let reply = self
                .call(shard, Retry::Write, options.timeout, Consistency::Linearizable, |id, e| {
                    e.batch_put(id, &shard_items)
                })
                .await?;
            let reply = reply.reply();
            let batch = reply.reply_as_batch_put_reply().ok_or_else(|| protocol("batch put"))?;
            Ok(batch.metas().iter().map(meta).collect())
        })
        .await
    }

    /// Deletes several keys; whether each existed, in order. Atomic within each shard.
    pub async fn batch_delete<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        options: WriteOptions,
    ) -> Result<Vec<bool>> {
        let groups = self.by_shard(keys.iter().map(|k| k.as_ref()))?;
        self.fan_out(&groups, keys.len(), false, |shard, positions| async move {
            let shard_keys: Vec<&[u8]> = positions.iter().map(|&i| keys[i].as_ref()).collect();
            let reply = self
                .call(shard, Retry::Write, options.timeout, Consistency::Linearizable, |id, e| {
                    e.batch_delete(id, &shard_keys)
                })
                .await?;
            let reply = reply.reply();
            let batch =
                reply.reply_as_batch_delete_reply().ok_or_else(|| protocol("batch delete"))?;
            Ok(batch.deleted().iter().collect())
        })
        .await
    }

    // ----------------------------------------------------------------------------------
    // Scans
    // ----------------------------------------------------------------------------------

    /// One page of a scan across every shard, merged in key order. Pass the page's
    /// `continuation` back in [`ScanOptions::continuation`] for the next page.
    pub async fn scan(&self, range: &ScanRange, options: &ScanOptions) -> Result<ScanPage> {
        let limit = match options.limit {
            0 => corekv_proto::constants::SCAN_LIMIT_MAX,
            n => n.min(corekv_proto::constants::SCAN_LIMIT_MAX),
        };
        let (start, end, prefix) = match range {
            ScanRange::All => (None, None, None),
            ScanRange::Prefix(p) => (None, None, Some(p.as_slice())),
            ScanRange::Range { start, end } => (Some(start.as_slice()), end.as_deref(), None),
        };
        let spec = ScanSpec {
            start,
            end,
            prefix,
            continuation: options.continuation.as_deref(),
            limit: limit as u32,
            keys_only: options.keys_only,
            consistency: wire_consistency(options.consistency),
        };
        let calls = (0..self.registry().shards).map(|shard| async move {
            let frame = self
                .call(shard, Retry::Read, options.timeout, options.consistency, |id, e| {
                    e.scan(id, &spec)
                })
                .await?;
            let reply = frame.reply();
            let scan = reply.reply_as_scan_reply().ok_or_else(|| protocol("scan"))?;
            let entries: Vec<KeyValue> = scan.entries().iter().map(|e| key_value(&e)).collect();
            Ok::<_, Error>((entries, scan.continuation().is_some()))
        });
        let mut merged: Vec<KeyValue> = Vec::new();
        // The page may end no later than the smallest last key of a shard that has more: keys
        // beyond it on that shard have not been seen yet.
        let mut cut: Option<Vec<u8>> = None;
        for result in futures_util::future::join_all(calls).await {
            let (entries, more) = result?;
            if more {
                if let Some(last) = entries.last() {
                    if cut.as_ref().is_none_or(|c| &last.key < c) {
                        cut = Some(last.key.clone());
                    }
                }
            }
            merged.extend(entries);
        }
        merged.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(cut) = &cut {
            merged.retain(|e| &e.key <= cut);
        }
        let truncated = merged.len() > limit;
        merged.truncate(limit);
        let continuation =
            if truncated || cut.is_some() { merged.last().map(|e| e.key.clone()) } else { None };
        Ok(ScanPage { entries: merged, continuation })
    }

    /// A scan as a stream of entries, fetched page by page as it is consumed.
    pub fn scan_stream(
        &self,
        range: ScanRange,
        options: ScanOptions,
    ) -> impl Stream<Item = Result<KeyValue>> + '_ {
        let state = (Some(options.continuation.clone()), std::collections::VecDeque::new());
        futures_util::stream::try_unfold(state, move |(mut next, mut buffered)| {
            let range = range.clone();
            let mut options = options.clone();
            async move {
                loop {
                    if let Some(entry) = buffered.pop_front() {
                        return Ok(Some((entry, (next, buffered))));
                    }
                    let Some(continuation) = next.take() else { return Ok(None) };
                    options.continuation = continuation;
                    let page = self.scan(&range, &options).await?;
                    buffered.extend(page.entries);
                    next = page.continuation.map(Some);
                }
            }
        })
    }

    // ----------------------------------------------------------------------------------
    // Transactions
    // ----------------------------------------------------------------------------------

    /// Runs a transaction. Every key must be on one shard; give related keys one hash tag.
    /// A transaction is never retried once sent: an unknown outcome is
    /// [`Error::Indeterminate`].
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        self.txn_with(txn, WriteOptions::default()).await
    }

    /// [`Client::txn`] with options.
    pub async fn txn_with(&self, txn: &Txn, options: WriteOptions) -> Result<TxnResponse> {
        let mut shard = None;
        for key in txn.keys() {
            check_key(key)?;
            let s = self.shard_of(key);
            if shard.is_some_and(|first| first != s) {
                return Err(Error::InvalidArgument(format!(
                    "transaction keys live on different shards ({} and {s}); give related keys a \
                     common hash tag, like {{user:1}}:name and {{user:1}}:mail",
                    shard.unwrap_or_default()
                )));
            }
            shard = Some(s);
        }
        let Some(shard) = shard else {
            return Err(Error::InvalidArgument("a transaction needs at least one key".to_string()));
        };
        for op in txn.success.iter().chain(&txn.failure) {
            if let TxnOp::Put(_, v) = op {
                check_value(v)?;
            }
        }
        let compares: Vec<CompareSpec<'_>> = txn.compares.iter().map(compare_spec).collect();
        let success: Vec<TxnOpSpec<'_>> = txn.success.iter().map(op_spec).collect();
        let failure: Vec<TxnOpSpec<'_>> = txn.failure.iter().map(op_spec).collect();
        let frame = self
            .call(shard, Retry::Once, options.timeout, Consistency::Linearizable, |id, e| {
                e.txn(id, &compares, &success, &failure)
            })
            .await?;
        let reply = frame.reply();
        if let Some(failed) = reply.reply_as_error_reply().and_then(|e| e.kind_as_compare_failed())
        {
            return Ok(TxnResponse {
                succeeded: false,
                failed_compare: Some(failed.compare() as usize),
                results: Vec::new(),
                index: 0,
            });
        }
        let t = reply.reply_as_txn_reply().ok_or_else(|| protocol("txn"))?;
        let results = t
            .results()
            .iter()
            .map(|r| match r.kind() {
                wire::TxnOpKind::Put => TxnOpResult::Put(r.meta().map(meta).unwrap_or_default()),
                wire::TxnOpKind::Delete => TxnOpResult::Delete(r.deleted()),
                _ => TxnOpResult::Get(r.entry().map(|e| key_value(&e))),
            })
            .collect();
        // -1: success ran (or a server from before the field, which does not say).
        let failed = t.failed_compare();
        Ok(TxnResponse {
            succeeded: t.succeeded(),
            failed_compare: usize::try_from(failed).ok().filter(|_| !t.succeeded()),
            results,
            index: t.index(),
        })
    }

    // ----------------------------------------------------------------------------------
    // Status
    // ----------------------------------------------------------------------------------

    /// Asks every replica of every shard for its state. Replicas that cannot be reached are
    /// reported with their error rather than failing the call.
    pub async fn status(&self) -> Vec<ReplicaReport> {
        let registry = self.registry();
        let mut calls = Vec::new();
        for node in &registry.nodes {
            for shard in 0..registry.shards {
                calls.push(async move {
                    let status = self.replica_status(node.id, shard).await;
                    ReplicaReport { node_id: node.id, shard, addr: node.client_addr(shard), status }
                });
            }
        }
        futures_util::future::join_all(calls).await
    }

    async fn replica_status(&self, node: u64, shard: u32) -> Result<ReplicaStatus> {
        let started = Instant::now();
        let deadline = started + self.inner.config.timeout;
        let conn =
            self.connection(node, shard).await.map_err(|e| e.into_error(started.elapsed()))?;
        let frame =
            tokio::time::timeout_at(deadline.into(), conn.call(|id| encode(|e| e.status(id))))
                .await
                .map_err(|_| Error::Unavailable {
                    after: self.inner.config.timeout,
                    last_error: "status timed out".into(),
                })?
                .map_err(|e| {
                    self.drop_connection(node, shard);
                    Error::Unavailable {
                        after: self.inner.config.timeout,
                        last_error: format!("{e:?}"),
                    }
                })?;
        let reply = frame.reply();
        let s = reply.reply_as_status_reply().ok_or_else(|| protocol("status"))?;
        Ok(ReplicaStatus {
            role: match s.role() {
                wire::Role::Leader => Role::Leader,
                wire::Role::Candidate => Role::Candidate,
                wire::Role::PreCandidate => Role::PreCandidate,
                _ => Role::Follower,
            },
            term: s.term(),
            leader_id: s.leader_id(),
            commit_index: s.commit_index(),
            applied_index: s.applied_index(),
            first_index: s.first_index(),
            last_index: s.last_index(),
            wal_bytes: s.wal_bytes(),
            keys: s.keys(),
            peers: s.peers().iter().flatten().map(|p| (p.node_id(), p.match_index())).collect(),
        })
    }

    // ----------------------------------------------------------------------------------
    // Routing and retries
    // ----------------------------------------------------------------------------------

    async fn connection(&self, node: u64, shard: u32) -> Result<Arc<Connection>, OpenError> {
        if let Some(conn) =
            self.inner.connections.lock().unwrap_or_else(|p| p.into_inner()).get(&(node, shard))
        {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let config = &self.inner.config;
        let addr = config.registry.node(node).map(|n| n.client_addr(shard)).ok_or_else(|| {
            OpenError::Fatal(Error::InvalidArgument(format!("node {node} is not in the registry")))
        })?;
        let conn = Connection::open(
            &addr,
            &config.registry.cluster,
            config.registry.shards,
            config.connect_timeout,
            config.max_in_flight_per_connection,
        )
        .await?;
        let mut connections = self.inner.connections.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have connected meanwhile: keep one.
        let entry = connections.entry((node, shard)).or_insert_with(|| conn.clone());
        if entry.is_closed() {
            *entry = conn;
        }
        Ok(entry.clone())
    }

    fn abort_connection(&self, node: u64, shard: u32, conn: &Connection) {
        self.drop_connection(node, shard);
        conn.abort();
    }

    fn drop_connection(&self, node: u64, shard: u32) {
        self.inner.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&(node, shard));
    }

    /// The node to try first: the cached leader, else the shard's preferred leader.
    fn first_node(&self, shard: u32) -> u64 {
        match self.cached_leader(shard) {
            0 => self.registry().preferred_leader(shard),
            leader => leader,
        }
    }

    fn next_node(&self, node: u64) -> u64 {
        let nodes = &self.inner.nodes;
        let i = nodes.iter().position(|&n| n == node).unwrap_or(0);
        nodes[(i + 1) % nodes.len()]
    }

    fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.inner.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.inner.rng.store(x, Ordering::Relaxed);
        let nanos = max.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { x % nanos })
    }

    /// Backoff before attempt `attempt` (from 0): capped exponential, half fixed, half jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.inner.config;
        let exp =
            config.backoff_min.saturating_mul(1u32 << attempt.min(16)).min(config.backoff_max);
        exp / 2 + self.jitter(exp / 2)
    }

    /// Sends a request to shard `shard`'s leader (or any replica for stale reads), following
    /// the rules of [`crate::retry`]. Returns the verified reply; `CompareFailed` replies are
    /// returned for the caller to read as the transaction's outcome.
    async fn call(
        &self,
        shard: u32,
        retry: Retry,
        timeout: Option<Duration>,
        consistency: Consistency,
        build: impl Fn(u64, &mut RequestEncoder) -> &[u8],
    ) -> Result<VerifiedReply> {
        let timeout = timeout.unwrap_or(self.inner.config.timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let mut rules = Rules::new(retry, &self.inner.nodes);
        let mut node = self.first_node(shard);
        loop {
            if Instant::now() >= deadline {
                return Err(rules.expired(timeout));
            }
            let connected =
                tokio::time::timeout_at(deadline.into(), self.connection(node, shard)).await;
            let (outcome, conn) = match connected {
                // The deadline passed while connecting: the check above ends the call.
                Err(_) => continue,
                Ok(Err(OpenError::Fatal(error))) => return Err(error),
                Ok(Err(OpenError::Refused(addr))) => (Outcome::Refused(addr), None),
                Ok(Err(OpenError::Unreachable(reason))) => (Outcome::Unreachable(reason), None),
                Ok(Ok(conn)) => {
                    rules.connected();
                    match self.attempt(&conn, retry, deadline, &build).await {
                        Ok(reply) => {
                            if consistency != Consistency::Stale {
                                self.inner.leaders[shard as usize].store(node, Ordering::Relaxed);
                            }
                            return Ok(reply);
                        }
                        Err(outcome) => (outcome, Some(conn)),
                    }
                }
            };
            let (target, wait) = match rules.after(node, outcome) {
                Step::EveryNodeRefused => {
                    return Err(self.every_node_refused(shard, started).await)
                }
                Step::Fail { error, leader, connection } => {
                    self.settle(shard, node, leader, connection, conn.as_deref());
                    return Err(error);
                }
                Step::Again { target, wait, leader, connection } => {
                    self.settle(shard, node, leader, connection, conn.as_deref());
                    (target, wait)
                }
            };
            node = match target {
                Target::Same => node,
                Target::Next => self.next_node(node),
                Target::Hinted(leader) => leader,
            };
            match wait {
                Wait::No => {}
                Wait::Backoff => {
                    let delay = self.backoff(rules.attempt.saturating_sub(1));
                    self.sleep_until(delay, deadline).await;
                }
                Wait::For(delay) => self.sleep_until(delay + self.jitter(delay), deadline).await,
            }
        }
    }

    /// One attempt on `conn`: the reply to hand back (a success, or `CompareFailed`), or what
    /// the attempt came to for the retry rules. A transaction's attempt lasts until the
    /// deadline; other calls' last at most `attempt_timeout`.
    async fn attempt(
        &self,
        conn: &Connection,
        retry: Retry,
        deadline: Instant,
        build: &impl Fn(u64, &mut RequestEncoder) -> &[u8],
    ) -> Result<VerifiedReply, Outcome> {
        let attempt_started = Instant::now();
        let attempt_deadline = if retry == Retry::Once {
            deadline
        } else {
            deadline.min(attempt_started + self.inner.config.attempt_timeout)
        };
        let answer = tokio::time::timeout_at(
            attempt_deadline.into(),
            conn.call(|id| encode(|e| build(id, e))),
        )
        .await;
        let reply = match answer {
            Err(_) => return Err(Outcome::NoAnswer(attempt_started.elapsed())),
            Ok(Err(CallError::NotSent(reason))) => return Err(Outcome::NotSent(reason)),
            Ok(Err(CallError::Lost(reason))) => return Err(Outcome::Lost(reason)),
            Ok(Ok(reply)) => reply,
        };
        let Some(error) = reply.reply().reply_as_error_reply() else { return Ok(reply) };
        match server_error(&error) {
            Some(refusal) => Err(Outcome::Refusal(refusal)),
            None => Ok(reply),
        }
    }

    /// Carries out what a step says of the shard's cached leader and of the connection used.
    fn settle(
        &self,
        shard: u32,
        node: u64,
        leader: retry::Leader,
        connection: retry::Connection,
        conn: Option<&Connection>,
    ) {
        let slot = &self.inner.leaders[shard as usize];
        match leader {
            retry::Leader::Keep => {}
            retry::Leader::Forget => self.forget_leader(shard, node),
            retry::Leader::Set(leader) => slot.store(leader, Ordering::Relaxed),
            retry::Leader::MoveOn => {
                let next = self.next_node(node);
                let _ = slot
                    .compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed)
                    .or_else(|_| {
                        slot.compare_exchange(0, next, Ordering::Relaxed, Ordering::Relaxed)
                    });
            }
        }
        match (connection, conn) {
            (retry::Connection::Keep, _) => {}
            (retry::Connection::Drop, _) => self.drop_connection(node, shard),
            (retry::Connection::Reset, Some(conn)) => self.abort_connection(node, shard, conn),
            (retry::Connection::Reset, None) => self.drop_connection(node, shard),
        }
    }

    /// The error for a call whose every node refused the connection to `shard`'s port. When
    /// that is not shard 0, the registry file may give the cluster more shards than it has
    /// (the ports past its last shard are not listened on): shard 0's hello then says so.
    async fn every_node_refused(&self, shard: u32, started: Instant) -> Error {
        if shard != 0 {
            for &node in &self.inner.nodes {
                match self.connection(node, 0).await {
                    Err(OpenError::Fatal(error)) => return error,
                    Err(OpenError::Refused(_)) => continue,
                    // A node that serves shard 0 and accepts this client's shard count: the
                    // refusals are about this shard alone.
                    Ok(_) | Err(OpenError::Unreachable(_)) => break,
                }
            }
        }
        let addrs: Vec<String> =
            self.registry().nodes.iter().map(|n| n.client_addr(shard)).collect();
        Error::Unavailable {
            after: started.elapsed(),
            last_error: format!(
                "every node refused the connection (nothing listens on {}): are the nodes \
                 running?",
                addrs.join(", ")
            ),
        }
    }

    fn forget_leader(&self, shard: u32, node: u64) {
        let _ = self.inner.leaders[shard as usize].compare_exchange(
            node,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    async fn sleep_until(&self, delay: Duration, deadline: Instant) {
        let wake = (Instant::now() + delay).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// An error reply as the retry rules take it; `None` for `CompareFailed`, which is the
/// transaction's outcome for the caller to read.
fn server_error(error: &wire::ErrorReply<'_>) -> Option<ServerError> {
    Some(match error.kind_type() {
        ErrorKind::NotLeader => ServerError::NotLeader {
            leader: error.kind_as_not_leader().map(|e| e.leader_id()).unwrap_or(0),
        },
        ErrorKind::Busy => {
            let ms = error.kind_as_busy().map(|b| b.retry_after_ms() as u64).unwrap_or(5);
            ServerError::Busy { retry_after: Duration::from_millis(ms.max(1)) }
        }
        ErrorKind::Unavailable => ServerError::Unavailable(
            error
                .kind_as_unavailable()
                .and_then(|e| e.reason())
                .unwrap_or("no reason given")
                .into(),
        ),
        ErrorKind::Timeout => ServerError::Timeout,
        ErrorKind::CompareFailed => return None,
        ErrorKind::WrongShard => ServerError::Final(Error::WrongShard {
            shard: error.kind_as_wrong_shard().map(|w| w.shard()).unwrap_or(0),
        }),
        ErrorKind::InvalidRequest => ServerError::Final(Error::InvalidRequest(
            error
                .kind_as_invalid_request()
                .and_then(|e| e.reason())
                .unwrap_or("invalid request")
                .into(),
        )),
        ErrorKind::TooLarge => {
            let t = error.kind_as_too_large();
            ServerError::Final(Error::TooLarge {
                what: t.and_then(|t| t.what()).unwrap_or("request").to_string(),
                size: t.map(|t| t.size()).unwrap_or(0),
                limit: t.map(|t| t.limit()).unwrap_or(0),
            })
        }
        kind => ServerError::Final(Error::Protocol(format!("unknown error kind {}", kind.0))),
    })
}

fn wire_consistency(c: Consistency) -> wire::Consistency {
    match c {
        Consistency::Linearizable => wire::Consistency::Linearizable,
        Consistency::Stale => wire::Consistency::Stale,
    }
}

fn compare_spec(c: &crate::types::Compare) -> CompareSpec<'_> {
    let op = match c.op {
        CompareOp::Equal => wire::CompareOp::Equal,
        CompareOp::NotEqual => wire::CompareOp::NotEqual,
        CompareOp::Less => wire::CompareOp::Less,
        CompareOp::Greater => wire::CompareOp::Greater,
    };
    let (target, value, number) = match &c.target {
        CompareTarget::Value(v) => (wire::CompareTarget::Value, Some(v.as_slice()), 0),
        CompareTarget::Version(n) => (wire::CompareTarget::Version, None, *n),
        CompareTarget::ModIndex(n) => (wire::CompareTarget::ModIndex, None, *n),
        CompareTarget::CreateIndex(n) => (wire::CompareTarget::CreateIndex, None, *n),
        CompareTarget::Exists => (wire::CompareTarget::Exists, None, 0),
    };
    CompareSpec { key: &c.key, target, op, value, number }
}

fn op_spec(op: &TxnOp) -> TxnOpSpec<'_> {
    match op {
        TxnOp::Get(k) => TxnOpSpec { kind: wire::TxnOpKind::Get, key: k, value: None },
        TxnOp::Put(k, v) => TxnOpSpec { kind: wire::TxnOpKind::Put, key: k, value: Some(v) },
        TxnOp::Delete(k) => TxnOpSpec { kind: wire::TxnOpKind::Delete, key: k, value: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_proto::encode::{ErrorInfo, ReplyEncoder};

    fn mapped(error: &ErrorInfo<'_>) -> Option<ServerError> {
        let reply = VerifiedReply::new(ReplyEncoder::new().error(1, error).to_vec()).unwrap();
        server_error(&reply.reply().reply_as_error_reply().unwrap())
    }

    // Shows: every error kind reaches the retry rules as what it means; CompareFailed is left
    // for the transaction to read.
    #[test]
    fn error_replies_map_to_what_the_rules_act_on() {
        let none = ErrorInfo::NotLeader { leader_id: 0, leader_addr: None };
        assert_eq!(mapped(&none), Some(ServerError::NotLeader { leader: 0 }));
        let hint = ErrorInfo::NotLeader { leader_id: 3, leader_addr: Some("h:1") };
        assert_eq!(mapped(&hint), Some(ServerError::NotLeader { leader: 3 }));
        let busy = mapped(&ErrorInfo::Busy { retry_after_ms: 7 });
        assert_eq!(busy, Some(ServerError::Busy { retry_after: Duration::from_millis(7) }));
        let down = mapped(&ErrorInfo::Unavailable { reason: "no quorum" });
        assert_eq!(down, Some(ServerError::Unavailable("no quorum".into())));
        assert_eq!(mapped(&ErrorInfo::Timeout), Some(ServerError::Timeout));
        assert_eq!(mapped(&ErrorInfo::CompareFailed { compare: 1 }), None);
        let big = mapped(&ErrorInfo::TooLarge { what: "value", size: 9, limit: 8 });
        assert_eq!(
            big,
            Some(ServerError::Final(Error::TooLarge { what: "value".into(), size: 9, limit: 8 }))
        );
        let bad = mapped(&ErrorInfo::InvalidRequest { reason: "empty key" });
        assert_eq!(bad, Some(ServerError::Final(Error::InvalidRequest("empty key".into()))));
    }
}
