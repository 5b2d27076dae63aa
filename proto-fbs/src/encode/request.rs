//! Client requests, as a client sends them.

use crate::constants::CLIENT_PROTOCOL_VERSION;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{
    bytes_vector, c, key_tables, CompareSpec, Consistency, ScanSpec, TxnOpSpec,
    BUILDER_CAPACITY_BYTES,
};

/// Builds client requests.
pub struct RequestEncoder {
    pub(super) fbb: FlatBufferBuilder<'static>,
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

    pub(super) fn finish(
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
        self.hello_as(id, cluster, shards, None, None)
    }

    /// A hello that carries a bearer token naming the user, and the user the connection
    /// acts for (its own user needs the `proxy` right).
    pub fn hello_as(
        &mut self,
        id: u64,
        cluster: &str,
        shards: u32,
        token: Option<&str>,
        as_user: Option<&str>,
    ) -> &[u8] {
        self.fbb.reset();
        let cluster = self.fbb.create_string(cluster);
        let token = token.map(|t| self.fbb.create_string(t));
        let as_user = as_user.map(|u| self.fbb.create_string(u));
        let hello = c::Hello::create(
            &mut self.fbb,
            &c::HelloArgs {
                cluster: Some(cluster),
                protocol_version: CLIENT_PROTOCOL_VERSION,
                shards,
                token,
                as_user,
            },
        );
        self.finish(id, c::Request::Hello, hello.as_union_value())
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
            &c::HelloArgs {
                cluster: Some(cluster),
                protocol_version,
                shards,
                ..Default::default()
            },
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
        self.put_ttl(id, key, value, 0)
    }

    /// Writes one key that expires `ttl_ms` after the leader proposes the write (0: never).
    pub fn put_ttl(&mut self, id: u64, key: &[u8], value: &[u8], ttl_ms: u64) -> &[u8] {
        self.put_with(id, key, value, ttl_ms, 0)
    }

    /// Writes one key attached to lease `lease`.
    pub fn put_lease(&mut self, id: u64, key: &[u8], value: &[u8], lease: u64) -> &[u8] {
        self.put_with(id, key, value, 0, lease)
    }

    /// Writes one key with a time to live (0: none) or attached to a lease (0: none).
    pub fn put_with(
        &mut self,
        id: u64,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        lease: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let key = self.fbb.create_vector(key);
        let value = self.fbb.create_vector(value);
        let put = c::PutRequest::create(
            &mut self.fbb,
            &c::PutRequestArgs { key: Some(key), value: Some(value), ttl_ms, lease },
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
        self.batch_put_ttl(id, items, 0)
    }

    /// Writes several keys of one shard atomically, all expiring `ttl_ms` after the leader
    /// proposes the write (0: never).
    pub fn batch_put_ttl(&mut self, id: u64, items: &[(&[u8], &[u8])], ttl_ms: u64) -> &[u8] {
        self.batch_put_with(id, items, ttl_ms, 0)
    }

    /// Writes several keys of one shard atomically, with a time to live (0: none) or
    /// attached to a lease (0: none).
    pub fn batch_put_with(
        &mut self,
        id: u64,
        items: &[(&[u8], &[u8])],
        ttl_ms: u64,
        lease: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let items = key_values(&mut self.fbb, items);
        let batch = c::BatchPutRequest::create(
            &mut self.fbb,
            &c::BatchPutRequestArgs { items: Some(items), ttl_ms, lease },
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

/// A vector of key-value tables.
pub(super) fn key_values<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    items: &[(&[u8], &[u8])],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<c::KeyValue<'b>>>> {
    let tables: Vec<_> = items
        .iter()
        .map(|(k, v)| {
            let key = fbb.create_vector(k);
            let value = fbb.create_vector(v);
            c::KeyValue::create(fbb, &c::KeyValueArgs { key: Some(key), value: Some(value) })
        })
        .collect();
    fbb.create_vector(&tables)
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
            let args = c::TxnOpArgs {
                kind: op.kind,
                key: Some(key),
                value,
                ttl_ms: op.ttl_ms,
                lease: op.lease,
                number: op.number,
            };
            c::TxnOp::create(fbb, &args)
        })
        .collect();
    fbb.create_vector(&tables)
}
