//! The operations a client offers: single keys, batches (grouped by shard, fanned out, put
//! back in the caller's order), scans, transactions, status.

use std::collections::BTreeMap;
use std::time::Instant;

use corekv_proto::client::{self as wire};
use corekv_proto::constants::BATCH_KEYS_MAX;
use corekv_proto::encode::{CompareSpec, ScanSpec, TxnOpSpec};
use corekv_types::ids::{NodeId, ShardId};
use futures_util::stream::Stream;

use crate::error::{Error, Result};
use crate::retry::Retry;
use crate::types::{
    Consistency, KeyMeta, KeyValue, ReadOptions, ReplicaReport, ReplicaStatus, ScanOptions,
    ScanPage, ScanRange, Txn, TxnOp, TxnOpResult, TxnResponse, WriteOptions,
};

use super::wire_map::{
    check_key, check_value, compare_spec, encode, key_value, op_spec, protocol, ttl_and_lease,
    wire_consistency,
};
use super::Client;

impl Client {
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
        let (ttl_ms, lease) = ttl_and_lease(options.ttl, options.lease)?;
        let frame = self
            .call(
                self.shard_of(key),
                Retry::Write,
                options.timeout,
                Consistency::Linearizable,
                |id, e| e.put_with(id, key, value, ttl_ms, lease),
            )
            .await?;
        let reply = frame.reply();
        let put = reply.reply_as_put_reply().ok_or_else(|| protocol("put"))?;
        Ok(put.meta().into())
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

    /// Groups key positions by shard.
    fn by_shard<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<BTreeMap<ShardId, Vec<usize>>> {
        let mut groups: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
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
        groups: &'c BTreeMap<ShardId, Vec<usize>>,
        items: usize,
        fill: T,
        per_shard: F,
    ) -> Result<Vec<T>>
    where
        T: Clone,
        F: Fn(ShardId, &'c [usize]) -> Fut,
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
        let (ttl_ms, lease) = ttl_and_lease(options.ttl, options.lease)?;
        let groups = self.by_shard(items.iter().map(|(k, _)| k.as_ref()))?;
        self.fan_out(&groups, items.len(), KeyMeta::default(), |shard, positions| async move {
            let shard_items: Vec<(&[u8], &[u8])> =
                positions.iter().map(|&i| (items[i].0.as_ref(), items[i].1.as_ref())).collect();
            let reply = self
                .call(shard, Retry::Write, options.timeout, Consistency::Linearizable, |id, e| {
                    e.batch_put_with(id, &shard_items, ttl_ms, lease)
                })
                .await?;
            let reply = reply.reply();
            let batch = reply.reply_as_batch_put_reply().ok_or_else(|| protocol("batch put"))?;
            Ok(batch.metas().iter().map(KeyMeta::from).collect())
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
        let calls = (0..self.registry().shards).map(ShardId).map(|shard| async move {
            let frame = self
                .call(shard, Retry::Read, options.timeout, options.consistency, |id, e| {
                    e.scan(id, &spec)
                })
                .await?;
            let reply = frame.reply();
            let scan = reply.reply_as_scan_reply().ok_or_else(|| protocol("scan"))?;
            let entries: Vec<KeyValue> = scan.entries().iter().map(|e| key_value(&e)).collect();
            let resume = scan.continuation().map(|c| c.bytes().to_vec());
            Ok::<_, Error>((entries, resume))
        });
        let mut merged: Vec<KeyValue> = Vec::new();
        // The page may end no later than the smallest key a shard that has more said to go on
        // after (its last entry, or past keys it skipped after it): keys beyond it on that
        // shard have not been seen yet.
        let mut cut: Option<Vec<u8>> = None;
        for result in futures_util::future::join_all(calls).await {
            let (entries, resume) = result?;
            if let Some(resume) = resume {
                if cut.as_ref().is_none_or(|c| &resume < c) {
                    cut = Some(resume);
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
        let continuation = match cut {
            _ if truncated => merged.last().map(|e| e.key.clone()),
            cut => cut,
        };
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
            if let TxnOp::Put(_, v) | TxnOp::PutWithTtl(_, v, _) = op {
                check_value(v)?;
            }
        }
        let compares: Vec<CompareSpec<'_>> = txn.compares.iter().map(compare_spec).collect();
        let success: Vec<TxnOpSpec<'_>> = txn.success.iter().map(op_spec).collect::<Result<_>>()?;
        let failure: Vec<TxnOpSpec<'_>> = txn.failure.iter().map(op_spec).collect::<Result<_>>()?;
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
                wire::TxnOpKind::Put => {
                    TxnOpResult::Put(r.meta().map(KeyMeta::from).unwrap_or_default())
                }
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

    /// Asks every replica of every shard for its state. Replicas that cannot be reached are
    /// reported with their error rather than failing the call.
    pub async fn status(&self) -> Vec<ReplicaReport> {
        let registry = self.registry();
        let mut calls = Vec::new();
        for node in &registry.nodes {
            for shard in (0..registry.shards).map(ShardId) {
                calls.push(async move {
                    let status = self.replica_status(node.id, shard).await;
                    ReplicaReport { node_id: node.id, shard, addr: node.client_addr(shard), status }
                });
            }
        }
        futures_util::future::join_all(calls).await
    }

    async fn replica_status(&self, node: NodeId, shard: ShardId) -> Result<ReplicaStatus> {
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
        if let Some(error) = reply.reply_as_error_reply() {
            // A refusal the caller can act on (the cluster's auth) is said as such.
            if let Some(crate::retry::ServerError::Final(error)) = super::call::server_error(&error)
            {
                return Err(error);
            }
        }
        let s = reply.reply_as_status_reply().ok_or_else(|| protocol("status"))?;
        Ok(corekv_proto::shared::replica_status(&s))
    }
}
