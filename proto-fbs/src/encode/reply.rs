//! Replies, as a node sends them to clients.

use corekv_types::status::ReplicaStatus;

use crate::constants::CLIENT_PROTOCOL_VERSION;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{
    bytes_vector, c, entry, EntryRef, ErrorInfo, KeyMeta, TxnOpKind, TxnResultRef,
    BUILDER_CAPACITY_BYTES,
};

/// Builds replies to client requests.
pub struct ReplyEncoder {
    pub(super) fbb: FlatBufferBuilder<'static>,
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

    pub(super) fn finish(
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
                TxnResultRef::Value(value) => {
                    let value = self.fbb.create_vector(value);
                    c::TxnOpResult::create(
                        &mut self.fbb,
                        &c::TxnOpResultArgs {
                            kind: TxnOpKind::Incr,
                            value: Some(value),
                            ..Default::default()
                        },
                    )
                }
                TxnResultRef::Length(length) => c::TxnOpResult::create(
                    &mut self.fbb,
                    &c::TxnOpResultArgs {
                        kind: TxnOpKind::Append,
                        length: *length,
                        ..Default::default()
                    },
                ),
                TxnResultRef::Applied(applied) => c::TxnOpResult::create(
                    &mut self.fbb,
                    &c::TxnOpResultArgs {
                        kind: TxnOpKind::Expire,
                        applied: *applied,
                        ..Default::default()
                    },
                ),
                TxnResultRef::Failed(reason) => {
                    let error = self.fbb.create_string(reason);
                    c::TxnOpResult::create(
                        &mut self.fbb,
                        &c::TxnOpResultArgs {
                            kind: TxnOpKind::Incr,
                            error: Some(error),
                            ..Default::default()
                        },
                    )
                }
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
        let ids = |fbb: &mut flatbuffers::FlatBufferBuilder<'static>,
                   list: &[corekv_types::ids::NodeId]| {
            let ids: Vec<u64> = list.iter().map(|id| id.get()).collect();
            fbb.create_vector(&ids)
        };
        let voters = Some(ids(&mut self.fbb, &status.voters));
        let learners = Some(ids(&mut self.fbb, &status.learners));
        let voters_outgoing = Some(ids(&mut self.fbb, &status.voters_outgoing));
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
                voters,
                learners,
                voters_outgoing,
                pending_change: status.pending_change.get(),
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
            ErrorInfo::NotMember { node_id, shard } => {
                let t = c::NotMember::create(fbb, &c::NotMemberArgs { node_id, shard });
                (c::ErrorKind::NotMember, t.as_union_value())
            }
            ErrorInfo::ChangeRefused { reason } => {
                let reason = Some(fbb.create_string(reason));
                let t = c::ChangeRefused::create(fbb, &c::ChangeRefusedArgs { reason });
                (c::ErrorKind::ChangeRefused, t.as_union_value())
            }
            ErrorInfo::LeaseNotFound { lease } => {
                let t = c::LeaseNotFound::create(fbb, &c::LeaseNotFoundArgs { lease });
                (c::ErrorKind::LeaseNotFound, t.as_union_value())
            }
            ErrorInfo::PermissionDenied { reason } => {
                let reason = fbb.create_string(reason);
                let args = c::PermissionDeniedArgs { reason: Some(reason) };
                let t = c::PermissionDenied::create(fbb, &args);
                (c::ErrorKind::PermissionDenied, t.as_union_value())
            }
        };
        let reply = c::ErrorReply::create(fbb, &c::ErrorReplyArgs { kind_type, kind: Some(kind) });
        self.finish(id, c::Reply::ErrorReply, reply.as_union_value())
    }
}
