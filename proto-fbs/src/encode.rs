//! Builders that turn Rust values into finished frames.
//!
//! Each encoder owns one `FlatBufferBuilder` and resets it for every frame, so steady-state
//! encoding allocates nothing. Every method returns the whole frame — the u32 little-endian
//! size prefix followed by the flatbuffer — borrowed from the builder until the next call.
//!
//! The value types here ([`EntryRef`], [`ErrorInfo`], [`ScanSpec`], …) borrow their bytes, so
//! a server can encode straight from its state without copying values first.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use corekv_types::status::ReplicaStatus;

use crate::client::{self as c, CompareOp, CompareTarget, Consistency, KeyMeta, TxnOpKind};
use crate::constants::{CLIENT_PROTOCOL_VERSION, PEER_PROTOCOL_VERSION};
use crate::peer as p;

/// Starting capacity of an encoder's builder; it grows to the largest frame built.
const BUILDER_CAPACITY_BYTES: usize = 4096;

/// A key with its value and metadata, borrowed from wherever it lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value; `None` for keys-only scans.
    pub value: Option<&'a [u8]>,
    /// Create index, mod index and version.
    pub meta: KeyMeta,
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
}

fn bytes_vector<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    bytes: Option<&[u8]>,
) -> Option<WIPOffset<flatbuffers::Vector<'b, u8>>> {
    bytes.map(|b| fbb.create_vector(b))
}

fn entry<'b>(fbb: &mut FlatBufferBuilder<'b>, e: &EntryRef<'_>) -> WIPOffset<c::Entry<'b>> {
    let key = fbb.create_vector(e.key);
    let value = bytes_vector(fbb, e.value);
    c::Entry::create(fbb, &c::EntryArgs { key: Some(key), value, meta: Some(&e.meta) })
}

fn key_tables<'b>(fbb: &mut FlatBufferBuilder<'b>, keys: &[&[u8]]) -> Vec<WIPOffset<c::Key<'b>>> {
    keys.iter()
        .map(|k| {
            let key = fbb.create_vector(k);
            c::Key::create(fbb, &c::KeyArgs { key: Some(key) })
        })
        .collect()
}

/// Builds client requests.
pub struct RequestEncoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestEncoder {
    /// An encoder with a fresh builder.
    pub fn new() -> Self {
        RequestEncoder { fbb: FlatBufferBuilder::with_capacity(BUILDER_CAPACITY_BYTES) }
    }

    fn finish(
        &mut self,
        id: u64,
        request_type: c::Request,
        request: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> &[u8] {
        let frame = c::RequestFrame::create(
            &mut self.fbb,
            &c::RequestFrameArgs { id, request_type, request: Some(request) },
        );
        self.fbb.finish_size_prefixed(frame, None);
        self.fbb.finished_data()
    }

    /// The first request of a connection: the cluster name and the shard count of the
    /// client's registry file.
    pub fn hello(&mut self, id: u64, cluster: &str, shards: u32) -> &[u8] {
        self.hello_speaking(id, cluster, shards, CLIENT_PROTOCOL_VERSION)
    }

    /// A hello that claims protocol version `protocol_version`: how tests speak as an older
    /// or newer client.
    pub fn hello_speaking(
        &mut self,
        id: u64,
        cluster: &str,
        shards: u32,
        protocol_version: u32,
    ) -> &[u8] {
        self.fbb.reset();
        let cluster = self.fbb.create_string(cluster);
        let hello = c::Hello::create(
            &mut self.fbb,
            &c::HelloArgs { cluster: Some(cluster), protocol_version, shards },
        );
        self.finish(id, c::Request::Hello, hello.as_union_value())
    }

    /// Reads one key.
    pub fn get(&mut self, id: u64, key: &[u8], consistency: Consistency) -> &[u8] {
        self.fbb.reset();
        let key = self.fbb.create_vector(key);
        let get = c::GetRequest::create(
            &mut self.fbb,
            &c::GetRequestArgs { key: Some(key), consistency },
        );
        self.finish(id, c::Request::GetRequest, get.as_union_value())
    }

    /// Writes one key.
    pub fn put(&mut self, id: u64, key: &[u8], value: &[u8]) -> &[u8] {
        self.fbb.reset();
        let key = self.fbb.create_vector(key);
        let value = self.fbb.create_vector(value);
        let put = c::PutRequest::create(
            &mut self.fbb,
            &c::PutRequestArgs { key: Some(key), value: Some(value) },
        );
        self.finish(id, c::Request::PutRequest, put.as_union_value())
    }

    /// Deletes one key.
    pub fn delete(&mut self, id: u64, key: &[u8]) -> &[u8] {
        self.fbb.reset();
        let key = self.fbb.create_vector(key);
        let delete =
            c::DeleteRequest::create(&mut self.fbb, &c::DeleteRequestArgs { key: Some(key) });
        self.finish(id, c::Request::DeleteRequest, delete.as_union_value())
    }

    /// Reads several keys of one shard.
    pub fn batch_get(&mut self, id: u64, keys: &[&[u8]], consistency: Consistency) -> &[u8] {
        self.fbb.reset();
        let tables = key_tables(&mut self.fbb, keys);
        let keys = self.fbb.create_vector(&tables);
        let batch = c::BatchGetRequest::create(
            &mut self.fbb,
            &c::BatchGetRequestArgs { keys: Some(keys), consistency },
        );
        self.finish(id, c::Request::BatchGetRequest, batch.as_union_value())
    }

    /// Writes several keys of one shard atomically.
    pub fn batch_put(&mut self, id: u64, items: &[(&[u8], &[u8])]) -> &[u8] {
        self.fbb.reset();
        let tables: Vec<_> = items
            .iter()
            .map(|(k, v)| {
                let key = self.fbb.create_vector(k);
                let value = self.fbb.create_vector(v);
                c::KeyValue::create(
                    &mut self.fbb,
                    &c::KeyValueArgs { key: Some(key), value: Some(value) },
                )
            })
            .collect();
        let items = self.fbb.create_vector(&tables);
        let batch = c::BatchPutRequest::create(
            &mut self.fbb,
            &c::BatchPutRequestArgs { items: Some(items) },
        );
        self.finish(id, c::Request::BatchPutRequest, batch.as_union_value())
    }

    /// Deletes several keys of one shard atomically.
    pub fn batch_delete(&mut self, id: u64, keys: &[&[u8]]) -> &[u8] {
        self.fbb.reset();
        let tables = key_tables(&mut self.fbb, keys);
        let keys = self.fbb.create_vector(&tables);
        let batch = c::BatchDeleteRequest::create(
            &mut self.fbb,
            &c::BatchDeleteRequestArgs { keys: Some(keys) },
        );
        self.finish(id, c::Request::BatchDeleteRequest, batch.as_union_value())
    }

    /// Scans keys of one shard.
    pub fn scan(&mut self, id: u64, spec: &ScanSpec<'_>) -> &[u8] {
        self.fbb.reset();
        let start = bytes_vector(&mut self.fbb, spec.start);
        let end = bytes_vector(&mut self.fbb, spec.end);
        let prefix = bytes_vector(&mut self.fbb, spec.prefix);
        let continuation = bytes_vector(&mut self.fbb, spec.continuation);
        let scan = c::ScanRequest::create(
            &mut self.fbb,
            &c::ScanRequestArgs {
                start,
                end,
                prefix,
                continuation,
                limit: spec.limit,
                keys_only: spec.keys_only,
                consistency: spec.consistency,
            },
        );
        self.finish(id, c::Request::ScanRequest, scan.as_union_value())
    }

    /// A transaction on keys of one shard.
    pub fn txn(
        &mut self,
        id: u64,
        compares: &[CompareSpec<'_>],
        success: &[TxnOpSpec<'_>],
        failure: &[TxnOpSpec<'_>],
    ) -> &[u8] {
        self.fbb.reset();
        let compare_tables: Vec<_> = compares
            .iter()
            .map(|cmp| {
                let key = self.fbb.create_vector(cmp.key);
                let value = bytes_vector(&mut self.fbb, cmp.value);
                c::Compare::create(
                    &mut self.fbb,
                    &c::CompareArgs {
                        key: Some(key),
                        target: cmp.target,
                        op: cmp.op,
                        value,
                        number: cmp.number,
                    },
                )
            })
            .collect();
        let compares = self.fbb.create_vector(&compare_tables);
        let success = txn_ops(&mut self.fbb, success);
        let failure = txn_ops(&mut self.fbb, failure);
        let txn = c::TxnRequest::create(
            &mut self.fbb,
            &c::TxnRequestArgs {
                compares: Some(compares),
                success: Some(success),
                failure: Some(failure),
            },
        );
        self.finish(id, c::Request::TxnRequest, txn.as_union_value())
    }

    /// Asks for the replica's status.
    pub fn status(&mut self, id: u64) -> &[u8] {
        self.fbb.reset();
        let status = c::StatusRequest::create(&mut self.fbb, &c::StatusRequestArgs {});
        self.finish(id, c::Request::StatusRequest, status.as_union_value())
    }
}

fn txn_ops<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    ops: &[TxnOpSpec<'_>],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<c::TxnOp<'b>>>> {
    let tables: Vec<_> = ops
        .iter()
        .map(|op| {
            let key = fbb.create_vector(op.key);
            let value = bytes_vector(fbb, op.value);
            c::TxnOp::create(fbb, &c::TxnOpArgs { kind: op.kind, key: Some(key), value })
        })
        .collect();
    fbb.create_vector(&tables)
}

/// Builds replies to client requests.
pub struct ReplyEncoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for ReplyEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyEncoder {
    /// An encoder with a fresh builder.
    pub fn new() -> Self {
        ReplyEncoder { fbb: FlatBufferBuilder::with_capacity(BUILDER_CAPACITY_BYTES) }
    }

    fn finish(
        &mut self,
        id: u64,
        reply_type: c::Reply,
        reply: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> &[u8] {
        let frame = c::ReplyFrame::create(
            &mut self.fbb,
            &c::ReplyFrameArgs { id, reply_type, reply: Some(reply) },
        );
        self.fbb.finish_size_prefixed(frame, None);
        self.fbb.finished_data()
    }

    /// Accepts a connection's hello.
    pub fn hello(&mut self, id: u64, node_id: u64, shard: u32, shards: u32) -> &[u8] {
        self.hello_speaking(id, node_id, shard, shards, CLIENT_PROTOCOL_VERSION)
    }

    /// A hello reply that claims protocol version `protocol_version`: how tests speak as an
    /// older or newer node.
    pub fn hello_speaking(
        &mut self,
        id: u64,
        node_id: u64,
        shard: u32,
        shards: u32,
        protocol_version: u32,
    ) -> &[u8] {
        self.fbb.reset();
        let hello = c::HelloReply::create(
            &mut self.fbb,
            &c::HelloReplyArgs { node_id, shard, shards, protocol_version },
        );
        self.finish(id, c::Reply::HelloReply, hello.as_union_value())
    }

    /// Answers a get; `entry` is `None` when the key does not exist.
    pub fn get(
        &mut self,
        id: u64,
        found: Option<&EntryRef<'_>>,
        stale: bool,
        read_index: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let entry = found.map(|e| entry(&mut self.fbb, e));
        let get = c::GetReply::create(&mut self.fbb, &c::GetReplyArgs { entry, stale, read_index });
        self.finish(id, c::Reply::GetReply, get.as_union_value())
    }

    /// Answers a put with the key's new metadata.
    pub fn put(&mut self, id: u64, meta: KeyMeta) -> &[u8] {
        self.fbb.reset();
        let put = c::PutReply::create(&mut self.fbb, &c::PutReplyArgs { meta: Some(&meta) });
        self.finish(id, c::Reply::PutReply, put.as_union_value())
    }

    /// Answers a delete.
    pub fn delete(&mut self, id: u64, deleted: bool, index: u64) -> &[u8] {
        self.fbb.reset();
        let delete = c::DeleteReply::create(&mut self.fbb, &c::DeleteReplyArgs { deleted, index });
        self.finish(id, c::Reply::DeleteReply, delete.as_union_value())
    }

    /// Answers a batch get, one result per requested key in request order.
    pub fn batch_get<'e>(
        &mut self,
        id: u64,
        results: impl IntoIterator<Item = Option<EntryRef<'e>>>,
        stale: bool,
        read_index: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let tables: Vec<_> = results
            .into_iter()
            .map(|found| {
                let entry = found.map(|e| entry(&mut self.fbb, &e));
                c::GetResult::create(&mut self.fbb, &c::GetResultArgs { entry })
            })
            .collect();
        let results = self.fbb.create_vector(&tables);
        let batch = c::BatchGetReply::create(
            &mut self.fbb,
            &c::BatchGetReplyArgs { results: Some(results), stale, read_index },
        );
        self.finish(id, c::Reply::BatchGetReply, batch.as_union_value())
    }

    /// Answers a batch put, one metadata record per item in request order.
    pub fn batch_put(&mut self, id: u64, metas: &[KeyMeta]) -> &[u8] {
        self.fbb.reset();
        let metas = self.fbb.create_vector(metas);
        let batch =
            c::BatchPutReply::create(&mut self.fbb, &c::BatchPutReplyArgs { metas: Some(metas) });
        self.finish(id, c::Reply::BatchPutReply, batch.as_union_value())
    }

    /// Answers a batch delete, one flag per key in request order.
    pub fn batch_delete(&mut self, id: u64, deleted: &[bool], index: u64) -> &[u8] {
        self.fbb.reset();
        let deleted = self.fbb.create_vector(deleted);
        let batch = c::BatchDeleteReply::create(
            &mut self.fbb,
            &c::BatchDeleteReplyArgs { deleted: Some(deleted), index },
        );
        self.finish(id, c::Reply::BatchDeleteReply, batch.as_union_value())
    }

    /// Answers a scan.
    pub fn scan<'e>(
        &mut self,
        id: u64,
        entries: impl IntoIterator<Item = EntryRef<'e>>,
        continuation: Option<&[u8]>,
        stale: bool,
        read_index: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let tables: Vec<_> = entries.into_iter().map(|e| entry(&mut self.fbb, &e)).collect();
        let entries = self.fbb.create_vector(&tables);
        let continuation = bytes_vector(&mut self.fbb, continuation);
        let scan = c::ScanReply::create(
            &mut self.fbb,
            &c::ScanReplyArgs { entries: Some(entries), continuation, stale, read_index },
        );
        self.finish(id, c::Reply::ScanReply, scan.as_union_value())
    }

    /// Answers a transaction that ran a branch: `success` when `failed_compare` is `None`,
    /// else `failure`, because that compare (0-based) did not hold.
    pub fn txn(
        &mut self,
        id: u64,
        failed_compare: Option<u32>,
        results: &[TxnResultRef<'_>],
        index: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let tables: Vec<_> = results
            .iter()
            .map(|result| match result {
                TxnResultRef::Get(found) => {
                    let entry = found.as_ref().map(|e| entry(&mut self.fbb, e));
                    c::TxnOpResult::create(
                        &mut self.fbb,
                        &c::TxnOpResultArgs { kind: TxnOpKind::Get, entry, ..Default::default() },
                    )
                }
                TxnResultRef::Put(meta) => c::TxnOpResult::create(
                    &mut self.fbb,
                    &c::TxnOpResultArgs {
                        kind: TxnOpKind::Put,
                        meta: Some(meta),
                        ..Default::default()
                    },
                ),
                TxnResultRef::Delete(deleted) => c::TxnOpResult::create(
                    &mut self.fbb,
                    &c::TxnOpResultArgs {
                        kind: TxnOpKind::Delete,
                        deleted: *deleted,
                        ..Default::default()
                    },
                ),
            })
            .collect();
        let results = self.fbb.create_vector(&tables);
        let txn = c::TxnReply::create(
            &mut self.fbb,
            &c::TxnReplyArgs {
                succeeded: failed_compare.is_none(),
                results: Some(results),
                index,
                // Compares are at most BATCH_KEYS_MAX, far below i32::MAX.
                failed_compare: failed_compare.map_or(-1, |i| i as i32),
            },
        );
        self.finish(id, c::Reply::TxnReply, txn.as_union_value())
    }

    /// Answers a status request from node `node_id`.
    pub fn status(&mut self, id: u64, node_id: u64, status: &ReplicaStatus) -> &[u8] {
        self.fbb.reset();
        let peers: Vec<_> = status
            .peers
            .iter()
            .map(|p| {
                c::PeerProgress::create(
                    &mut self.fbb,
                    &c::PeerProgressArgs {
                        node_id: p.node_id.get(),
                        match_index: p.match_index.get(),
                        recent_active: p.recent_active,
                    },
                )
            })
            .collect();
        let peers = self.fbb.create_vector(&peers);
        let wal_durable = self.fbb.create_string(&status.wal_durable);
        let failure = status.failure.as_deref().map(|f| self.fbb.create_string(f));
        let problem = status.problem.as_deref().map(|p| self.fbb.create_string(p));
        let reply = c::StatusReply::create(
            &mut self.fbb,
            &c::StatusReplyArgs {
                node_id,
                shard: status.shard.get(),
                role: status.role.into(),
                term: status.term.get(),
                leader_id: status.leader_id.get(),
                commit_index: status.commit_index.get(),
                applied_index: status.applied_index.get(),
                first_index: status.first_index.get(),
                last_index: status.last_index.get(),
                wal_bytes: status.wal_bytes,
                keys: status.keys,
                peers: Some(peers),
                snapshot_index: status.snapshot_index.get(),
                wal_durable: Some(wal_durable),
                failure,
                serving: status.serving,
                problem,
                joining: status.joining,
            },
        );
        self.finish(id, c::Reply::StatusReply, reply.as_union_value())
    }

    /// Answers with an error.
    pub fn error(&mut self, id: u64, error: &ErrorInfo<'_>) -> &[u8] {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let (kind_type, kind) = match *error {
            ErrorInfo::NotLeader { leader_id, leader_addr } => {
                let leader_addr = leader_addr.map(|a| fbb.create_string(a));
                let t = c::NotLeader::create(fbb, &c::NotLeaderArgs { leader_id, leader_addr });
                (c::ErrorKind::NotLeader, t.as_union_value())
            }
            ErrorInfo::WrongShard { shard } => {
                let t = c::WrongShard::create(fbb, &c::WrongShardArgs { shard });
                (c::ErrorKind::WrongShard, t.as_union_value())
            }
            ErrorInfo::Unavailable { reason } => {
                let reason = Some(fbb.create_string(reason));
                let t = c::Unavailable::create(fbb, &c::UnavailableArgs { reason });
                (c::ErrorKind::Unavailable, t.as_union_value())
            }
            ErrorInfo::Timeout => {
                let t = c::Timeout::create(fbb, &c::TimeoutArgs {});
                (c::ErrorKind::Timeout, t.as_union_value())
            }
            ErrorInfo::InvalidRequest { reason } => {
                let reason = Some(fbb.create_string(reason));
                let t = c::InvalidRequest::create(fbb, &c::InvalidRequestArgs { reason });
                (c::ErrorKind::InvalidRequest, t.as_union_value())
            }
            ErrorInfo::TooLarge { what, size, limit } => {
                let what = Some(fbb.create_string(what));
                let t = c::TooLarge::create(fbb, &c::TooLargeArgs { what, size, limit });
                (c::ErrorKind::TooLarge, t.as_union_value())
            }
            ErrorInfo::CompareFailed { compare } => {
                let t = c::CompareFailed::create(fbb, &c::CompareFailedArgs { compare });
                (c::ErrorKind::CompareFailed, t.as_union_value())
            }
            ErrorInfo::Busy { retry_after_ms } => {
                let t = c::Busy::create(fbb, &c::BusyArgs { retry_after_ms });
                (c::ErrorKind::Busy, t.as_union_value())
            }
        };
        let reply = c::ErrorReply::create(fbb, &c::ErrorReplyArgs { kind_type, kind: Some(kind) });
        self.finish(id, c::Reply::ErrorReply, reply.as_union_value())
    }
}

/// Builds peer frames.
pub struct PeerEncoder {
    fbb: FlatBufferBuilder<'static>,
    messages: Vec<WIPOffset<p::RaftMessage<'static>>>,
}

impl Default for PeerEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerEncoder {
    /// An encoder with a fresh builder.
    pub fn new() -> Self {
        PeerEncoder {
            fbb: FlatBufferBuilder::with_capacity(BUILDER_CAPACITY_BYTES),
            messages: Vec::new(),
        }
    }

    fn finish(
        &mut self,
        message_type: p::PeerMessage,
        message: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> &[u8] {
        let frame = p::PeerFrame::create(
            &mut self.fbb,
            &p::PeerFrameArgs { message_type, message: Some(message) },
        );
        self.fbb.finish_size_prefixed(frame, None);
        self.fbb.finished_data()
    }

    /// The dialer's first frame.
    pub fn hello(&mut self, cluster: &str, node_id: u64, shard: u32, shards: u32) -> &[u8] {
        self.fbb.reset();
        let cluster = self.fbb.create_string(cluster);
        let hello = p::Hello::create(
            &mut self.fbb,
            &p::HelloArgs {
                cluster: Some(cluster),
                node_id,
                shard,
                protocol_version: PEER_PROTOCOL_VERSION,
                shards,
            },
        );
        self.finish(p::PeerMessage::Hello, hello.as_union_value())
    }

    /// The acceptor's answer to a hello; `reason` says why it was refused.
    pub fn hello_ack(&mut self, node_id: u64, refused: Option<&str>) -> &[u8] {
        self.fbb.reset();
        let reason = refused.map(|r| self.fbb.create_string(r));
        let ack = p::HelloAck::create(
            &mut self.fbb,
            &p::HelloAckArgs { accepted: refused.is_none(), reason, node_id },
        );
        self.finish(p::PeerMessage::HelloAck, ack.as_union_value())
    }

    /// A batch of raft messages, each already in raft-rs's protobuf encoding.
    pub fn raft_batch<'m>(&mut self, messages: impl IntoIterator<Item = &'m [u8]>) -> &[u8] {
        self.fbb.reset();
        self.messages.clear();
        for message in messages {
            let data = self.fbb.create_vector(message);
            let table =
                p::RaftMessage::create(&mut self.fbb, &p::RaftMessageArgs { data: Some(data) });
            self.messages.push(table);
        }
        let messages = self.fbb.create_vector(&self.messages);
        let batch =
            p::RaftBatch::create(&mut self.fbb, &p::RaftBatchArgs { messages: Some(messages) });
        self.finish(p::PeerMessage::RaftBatch, batch.as_union_value())
    }

    /// A piece of a snapshot file.
    pub fn snapshot_chunk(
        &mut self,
        index: u64,
        term: u64,
        offset: u64,
        total_size: u64,
        data: &[u8],
        last: bool,
    ) -> &[u8] {
        self.fbb.reset();
        let data = self.fbb.create_vector(data);
        let chunk = p::SnapshotChunk::create(
            &mut self.fbb,
            &p::SnapshotChunkArgs { index, term, offset, total_size, data: Some(data), last },
        );
        self.finish(p::PeerMessage::SnapshotChunk, chunk.as_union_value())
    }

    /// The receiver's progress on a snapshot transfer; `error` ends the transfer.
    pub fn snapshot_ack(
        &mut self,
        index: u64,
        term: u64,
        received: u64,
        done: bool,
        error: Option<&str>,
    ) -> &[u8] {
        self.fbb.reset();
        let error = error.map(|e| self.fbb.create_string(e));
        let ack = p::SnapshotAck::create(
            &mut self.fbb,
            &p::SnapshotAckArgs { index, term, received, done, error },
        );
        self.finish(p::PeerMessage::SnapshotAck, ack.as_union_value())
    }
}
