//! Client requests: verification, validation against the limits of DESIGN.md §6, and dispatch
//! to the read and write paths.
//!
//! Every frame is verified (flatbuffers verifier with limits) before any field is read. A
//! frame that fails verification is answered `InvalidRequest` with request id 0 (its id cannot
//! be trusted) and the connection carries on; the shell closes connections whose framing
//! itself is broken. Every key is checked for size and for belonging to this shard before any
//! work is done.

use std::ops::Bound;

use corekv_proto::client::{
    self as wire, CompareOp as WireCompareOp, CompareTarget as WireCompareTarget, Consistency,
    Request, RequestFrame, TxnOpKind as WireTxnOpKind,
};
use corekv_proto::constants::{
    BATCH_KEYS_MAX, CLIENT_PROTOCOL_OLDEST, CLIENT_PROTOCOL_VERSION, KEY_BYTES_MAX, SCAN_LIMIT_MAX,
    TTL_MS_MAX, VALUE_BYTES_MAX,
};
use corekv_proto::encode::ErrorInfo;
use corekv_proto::frame::verify_request;
use corekv_storage::command::{Compare, CompareOp, CompareTarget, TxnOp, TxnOpKind};
use corekv_types::ids::ShardId;
use corekv_types::placement::{shard_for_slot, slot};

use super::reads::{ReadQuery, ReadWaiter, ScanQuery};
use super::replies::{push_reply, Caller};
use super::Op;
use super::{ConnId, ShardCore};
use crate::constants::{BACKUP_BYTES_PER_SEC_MIN, ENTRY_BYTES_MAX};

/// Why a request is refused before it does anything.
pub(super) enum Refusal {
    Invalid(String),
    TooLarge { what: &'static str, size: usize, limit: usize },
    WrongShard(ShardId),
    Unavailable(String),
}

impl ShardCore {
    /// Handles one whole client frame (prefix included) from connection `conn`. `greeted`
    /// is the connection's state: whether its hello was accepted.
    pub fn on_client_frame(&mut self, conn: ConnId, greeted: &mut bool, frame: &[u8]) {
        let request = match verify_request(frame) {
            Ok(request) => request,
            Err(error) => {
                self.metrics.malformed_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reason = error.to_string();
                let caller = Caller { conn, id: 0, op: Op::Hello, start_us: self.now_us };
                self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
                return;
            }
        };
        let id = request.id();
        if !*greeted {
            return self.on_hello(conn, greeted, &request);
        }
        let op = match request.request_type() {
            Request::GetRequest => Op::Get,
            Request::PutRequest => Op::Put,
            Request::DeleteRequest => Op::Delete,
            Request::BatchGetRequest => Op::BatchGet,
            Request::BatchPutRequest => Op::BatchPut,
            Request::BatchDeleteRequest => Op::BatchDelete,
            Request::ScanRequest => Op::Scan,
            Request::TxnRequest => Op::Txn,
            Request::StatusRequest => Op::Status,
            Request::MembersRequest => Op::Members,
            Request::MemberChangeRequest => Op::MemberChange,
            Request::TransferLeaderRequest => Op::TransferLeader,
            Request::WatchRequest => Op::Watch,
            Request::CancelWatchRequest => Op::CancelWatch,
            Request::LeaseGrantRequest => Op::LeaseGrant,
            Request::LeaseRevokeRequest => Op::LeaseRevoke,
            Request::LeaseKeepAliveRequest => Op::LeaseKeepAlive,
            Request::LeaseTimeToLiveRequest => Op::LeaseTimeToLive,
            Request::BackupRequest => Op::Backup,
            _ => Op::Hello,
        };
        self.metrics.request(op);
        if self.access.enabled() {
            if let Err(reason) = self.check_access(conn, &request) {
                return self
                    .permission_denied(Caller { conn, id, op, start_us: self.now_us }, &reason);
            }
        }
        if let Err(refusal) = self.dispatch(conn, id, op, &request) {
            let start = self.now_us;
            match refusal {
                Refusal::Invalid(reason) => self.reply_error(
                    Caller { conn, id, op, start_us: start },
                    &ErrorInfo::InvalidRequest { reason: &reason },
                ),
                Refusal::TooLarge { what, size, limit } => {
                    let error =
                        ErrorInfo::TooLarge { what, size: size as u64, limit: limit as u64 };
                    self.reply_error(Caller { conn, id, op, start_us: start }, &error)
                }
                Refusal::WrongShard(shard) => self.reply_error(
                    Caller { conn, id, op, start_us: start },
                    &ErrorInfo::WrongShard { shard: shard.get() },
                ),
                Refusal::Unavailable(reason) => self.reply_error(
                    Caller { conn, id, op, start_us: start },
                    &ErrorInfo::Unavailable { reason: &reason },
                ),
            }
        }
    }

    fn on_hello(&mut self, conn: ConnId, greeted: &mut bool, request: &RequestFrame<'_>) {
        self.metrics.request(Op::Hello);
        let id = request.id();
        let refusal = match request.request_as_hello() {
            None => Some("the first request on a connection must be Hello".to_string()),
            Some(hello) if hello.cluster() != self.cfg.cluster => Some(format!(
                "cluster mismatch: this node is in cluster {:?}, the client asked for {:?}",
                self.cfg.cluster,
                hello.cluster()
            )),
            Some(hello)
                if !(CLIENT_PROTOCOL_OLDEST..=CLIENT_PROTOCOL_VERSION)
                    .contains(&hello.protocol_version()) =>
            {
                Some(format!(
                    "protocol version {} not supported (this node speaks \
                     {CLIENT_PROTOCOL_OLDEST} to {CLIENT_PROTOCOL_VERSION})",
                    hello.protocol_version()
                ))
            }
            // 0: a client from before the field, which does not say.
            Some(hello) if hello.shards() != 0 && hello.shards() != self.cfg.shards => {
                Some(corekv_types::registry::shard_count_mismatch(self.cfg.shards, hello.shards()))
            }
            Some(hello) => {
                let (protocol, token, as_user) =
                    (hello.protocol_version(), hello.token(), hello.as_user());
                match self.access.hello(conn, protocol, token, as_user) {
                    // The user is unknown or may not act as it asks: a permission refusal,
                    // for clients whose hello reads one (protocol 9 on).
                    Err(reason) if protocol >= 9 => {
                        let caller = Caller { conn, id, op: Op::Hello, start_us: self.now_us };
                        self.permission_denied(caller, &reason);
                        self.out.close.push(conn);
                        return;
                    }
                    Err(reason) => Some(reason),
                    Ok(()) => None,
                }
            }
        };
        match refusal {
            Some(reason) => {
                let caller = Caller { conn, id, op: Op::Hello, start_us: self.now_us };
                self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason });
                self.out.close.push(conn);
            }
            None => {
                *greeted = true;
                let frame = self.encoder.hello(
                    id,
                    self.cfg.node_id.get(),
                    self.cfg.shard.get(),
                    self.cfg.shards,
                );
                push_reply(&mut self.out, conn, frame);
                self.metrics.replied(Op::Hello, 0);
            }
        }
    }

    /// Routes a verified request to the read path, the write path or a status reply.
    fn dispatch(
        &mut self,
        conn: ConnId,
        id: u64,
        op: Op,
        request: &RequestFrame<'_>,
    ) -> Result<(), Refusal> {
        let caller = Caller { conn, id, op, start_us: self.now_us };
        match request.request_type() {
            Request::GetRequest | Request::BatchGetRequest | Request::ScanRequest
                if !self.removed() =>
            {
                self.dispatch_read(caller, request)
            }
            Request::LeaseKeepAliveRequest | Request::LeaseTimeToLiveRequest if !self.removed() => {
                let query = match request.request_as_lease_keep_alive_request() {
                    Some(keep) => {
                        ReadQuery::LeaseKeepAlive(self.check_lease_request(keep.lease())?)
                    }
                    None => {
                        let ttl =
                            request.request_as_lease_time_to_live_request().expect("type checked");
                        let lease = self.check_lease_request(ttl.lease())?;
                        ReadQuery::LeaseTimeToLive { lease, keys: ttl.keys() }
                    }
                };
                // Linearizable only: the leader confirms it leads before it answers.
                self.enqueue_read(ReadWaiter { caller, query }, false);
                Ok(())
            }
            Request::BackupRequest if !self.removed() => {
                let backup = request.request_as_backup_request().expect("type checked");
                let rate = backup.bytes_per_sec();
                if rate != 0 && rate < BACKUP_BYTES_PER_SEC_MIN {
                    return Err(Refusal::Invalid(format!(
                        "a backup must be sent at least {BACKUP_BYTES_PER_SEC_MIN} bytes per \
                         second; {rate} asked"
                    )));
                }
                let query = ReadQuery::Backup { bytes_per_sec: rate };
                // After a ReadIndex round: the snapshot holds every write acknowledged before.
                self.enqueue_read(ReadWaiter { caller, query }, false);
                Ok(())
            }
            Request::StatusRequest => {
                self.status_reply(conn, id);
                Ok(())
            }
            Request::Hello => {
                Err(Refusal::Invalid("hello sent twice on one connection".to_string()))
            }
            Request::MembersRequest => {
                self.members_reply(caller);
                Ok(())
            }
            Request::MemberChangeRequest => {
                let change = request.request_as_member_change_request().expect("type checked");
                let change =
                    corekv_proto::shared::membership_change(&change).map_err(Refusal::Invalid)?;
                self.member_change_request(caller, change);
                Ok(())
            }
            Request::WatchRequest => {
                let watch = request.request_as_watch_request().expect("type checked");
                let spec = self.watch_spec(&watch)?;
                let caller = Caller { conn, id, op, start_us: self.now_us };
                self.watch_request(caller, &spec);
                Ok(())
            }
            Request::CancelWatchRequest => {
                let cancel = request.request_as_cancel_watch_request().expect("type checked");
                let caller = Caller { conn, id, op, start_us: self.now_us };
                self.cancel_watch_request(caller, cancel.watch_id());
                Ok(())
            }
            Request::TransferLeaderRequest => {
                let to = request.request_as_transfer_leader_request().expect("type checked");
                self.transfer_leader_request(caller, corekv_types::ids::NodeId(to.node_id()));
                Ok(())
            }
            _ if self.removed() => {
                let (node_id, shard) = (self.cfg.node_id.get(), self.cfg.shard.get());
                self.reply_error(caller, &ErrorInfo::NotMember { node_id, shard });
                Ok(())
            }
            _ => self.dispatch_write(caller, request),
        }
    }

    /// A get, a batch get or a scan, checked and handed to the read path.
    fn dispatch_read(&mut self, caller: Caller, request: &RequestFrame<'_>) -> Result<(), Refusal> {
        let (query, consistency) = match request.request_type() {
            Request::GetRequest => {
                let get = request.request_as_get_request().expect("type checked");
                let key = get.key().bytes();
                self.check_key(key)?;
                (ReadQuery::Get(key.to_vec()), get.consistency())
            }
            Request::BatchGetRequest => {
                let batch = request.request_as_batch_get_request().expect("type checked");
                check_count(batch.keys().len())?;
                let mut keys = Vec::with_capacity(batch.keys().len());
                for key in batch.keys() {
                    self.check_key(key.key().bytes())?;
                    keys.push(key.key().bytes().to_vec());
                }
                (ReadQuery::BatchGet(keys), batch.consistency())
            }
            _ => {
                let scan = request.request_as_scan_request().expect("type checked");
                (ReadQuery::Scan(scan_query(&scan)?), scan.consistency())
            }
        };
        self.enqueue_read(ReadWaiter { caller, query }, consistency == Consistency::Stale);
        Ok(())
    }

    /// A put, delete, batch or transaction, checked and handed to the write path.
    fn dispatch_write(
        &mut self,
        caller: Caller,
        request: &RequestFrame<'_>,
    ) -> Result<(), Refusal> {
        match request.request_type() {
            Request::PutRequest => {
                let put = request.request_as_put_request().expect("type checked");
                let (key, value) = (put.key().bytes(), put.value().bytes());
                self.check_key(key)?;
                check_value(value)?;
                let (expires_ms, lease) = self.ttl_or_lease(put.ttl_ms(), put.lease())?;
                self.enqueue_write(caller, key.len() + value.len(), |b| {
                    match (expires_ms, lease) {
                        (0, 0) => b.put(key, value),
                        (0, lease) => b.put_lease(key, value, lease),
                        (deadline, _) => b.put_ttl(key, value, deadline),
                    }
                });
            }
            Request::DeleteRequest => {
                let delete = request.request_as_delete_request().expect("type checked");
                let key = delete.key().bytes();
                self.check_key(key)?;
                self.enqueue_write(caller, key.len(), |b| b.delete(key));
            }
            Request::BatchPutRequest => {
                let batch = request.request_as_batch_put_request().expect("type checked");
                check_count(batch.items().len())?;
                let mut size = 0;
                for item in batch.items() {
                    self.check_key(item.key().bytes())?;
                    check_value(item.value().bytes())?;
                    size += item.key().len() + item.value().len();
                }
                check_entry_size(size)?;
                let (expires_ms, lease) = self.ttl_or_lease(batch.ttl_ms(), batch.lease())?;
                let items = batch.items().iter().map(|i| (i.key().bytes(), i.value().bytes()));
                self.enqueue_write(caller, size, |b| match (expires_ms, lease) {
                    (0, 0) => b.batch_put(items),
                    (0, lease) => b.batch_put_lease(items, lease),
                    (deadline, _) => b.batch_put_ttl(items, deadline),
                });
            }
            Request::BatchDeleteRequest => {
                let batch = request.request_as_batch_delete_request().expect("type checked");
                check_count(batch.keys().len())?;
                let mut size = 0;
                for key in batch.keys() {
                    self.check_key(key.key().bytes())?;
                    size += key.key().len();
                }
                check_entry_size(size)?;
                let keys = batch.keys();
                self.enqueue_write(caller, size, |b| {
                    b.batch_delete(keys.iter().map(|k| k.key().bytes()))
                });
            }
            Request::TxnRequest => {
                let txn = request.request_as_txn_request().expect("type checked");
                let (compares, success, failure, size) = self.txn_parts(&txn)?;
                self.enqueue_write(caller, size, |b| {
                    b.txn(compares.into_iter(), success.into_iter(), failure.into_iter())
                });
            }
            Request::LeaseGrantRequest => {
                let grant = request.request_as_lease_grant_request().expect("type checked");
                let ttl_ms = grant.ttl_ms();
                let min = self.lease_ttl_min_ms();
                if !(min..=TTL_MS_MAX).contains(&ttl_ms) {
                    return Err(Refusal::Invalid(format!(
                        "a lease's time to live must be from {min} ms to \
                         {TTL_MS_MAX} ms (ten years); {ttl_ms} ms asked"
                    )));
                }
                self.check_leases_supported()?;
                let items = grant.items().unwrap_or_default();
                check_count(items.len())?;
                let mut size = 0;
                for item in items {
                    self.check_key(item.key().bytes())?;
                    check_value(item.value().bytes())?;
                    size += item.key().len() + item.value().len();
                }
                check_entry_size(size)?;
                let shard = self.cfg.shard.get();
                let items = items.iter().map(|i| (i.key().bytes(), i.value().bytes()));
                self.enqueue_write(caller, size, |b| b.lease_grant(shard, ttl_ms, items));
            }
            Request::LeaseRevokeRequest => {
                let revoke = request.request_as_lease_revoke_request().expect("type checked");
                let lease = self.check_lease_request(revoke.lease())?;
                self.enqueue_write(caller, 8, |b| b.lease_revoke(lease));
            }
            other => return Err(Refusal::Invalid(format!("unknown request type {}", other.0))),
        }
        Ok(())
    }

    /// The deadline of a write asking for `ttl_ms` (0: none).
    pub(super) fn deadline(&self, ttl_ms: u64) -> Result<u64, Refusal> {
        self.deadline_for(ttl_ms).map_err(|refused| match refused {
            super::expiry::DeadlineRefused::Invalid(reason) => Refusal::Invalid(reason),
            super::expiry::DeadlineRefused::Unavailable(reason) => Refusal::Unavailable(reason),
        })
    }

    /// A key must be non-empty, within the size limit, and in this shard's slots.
    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        if key.is_empty() {
            return Err(Refusal::Invalid("empty key".to_string()));
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(Refusal::TooLarge { what: "key", size: key.len(), limit: KEY_BYTES_MAX });
        }
        let slot = slot(key);
        if !self.slots.contains(&slot) {
            return Err(Refusal::WrongShard(shard_for_slot(slot, self.cfg.shards)));
        }
        Ok(())
    }

    /// A watch request's spec, checked: keys within the limits; a single key of this shard
    /// (a prefix or a range may reach every shard: each serves its part).
    fn watch_spec<'a>(
        &self,
        watch: &wire::WatchRequest<'a>,
    ) -> Result<corekv_proto::encode::WatchSpec<'a>, Refusal> {
        use corekv_proto::client::WatchScope;
        let key = watch.key().bytes();
        let range_end = watch.range_end().map(|v| v.bytes()).unwrap_or_default();
        for (what, bytes) in [("key", key), ("range end", range_end)] {
            if bytes.len() > KEY_BYTES_MAX {
                return Err(Refusal::TooLarge { what, size: bytes.len(), limit: KEY_BYTES_MAX });
            }
        }
        match watch.scope() {
            WatchScope::Key => self.check_key(key)?,
            WatchScope::Prefix => {}
            WatchScope::Range if !range_end.is_empty() && range_end <= key => {
                return Err(Refusal::Invalid(
                    "a watch range's end must be after its start (or empty for no end)".to_string(),
                ));
            }
            WatchScope::Range => {}
            other => return Err(Refusal::Invalid(format!("unknown watch scope {}", other.0))),
        }
        Ok(corekv_proto::encode::WatchSpec {
            scope: watch.scope(),
            key,
            range_end,
            start_index: watch.start_index(),
            prev_value: watch.prev_value(),
            progress_ms: watch.progress_ms(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn txn_parts<'a>(
        &self,
        txn: &wire::TxnRequest<'a>,
    ) -> Result<(Vec<Compare<'a>>, Vec<TxnOp<'a>>, Vec<TxnOp<'a>>, usize), Refusal> {
        let compares_in = txn.compares().map(|v| v.len()).unwrap_or(0);
        let success_in = txn.success().map(|v| v.len()).unwrap_or(0);
        let failure_in = txn.failure().map(|v| v.len()).unwrap_or(0);
        check_count(compares_in + success_in + failure_in)?;
        let mut size = 0;
        let mut compares = Vec::with_capacity(compares_in);
        for c in txn.compares().iter().flatten() {
            self.check_key(c.key().bytes())?;
            let value = c.value().map(|v| v.bytes()).unwrap_or_default();
            check_value(value)?;
            size += c.key().len() + value.len();
            compares.push(Compare {
                key: c.key().bytes(),
                target: compare_target(c.target())?,
                op: compare_op(c.op())?,
                value,
                number: c.number(),
            });
        }
        let mut branches = [Vec::with_capacity(success_in), Vec::with_capacity(failure_in)];
        for (branch, ops) in branches.iter_mut().zip([txn.success(), txn.failure()]) {
            for o in ops.iter().flatten() {
                self.check_key(o.key().bytes())?;
                let value = o.value().map(|v| v.bytes()).unwrap_or_default();
                check_value(value)?;
                size += o.key().len() + value.len();
                let (expires_ms, lease) = match o.kind() {
                    WireTxnOpKind::Put => self.ttl_or_lease(o.ttl_ms(), o.lease())?,
                    // 0: the key's deadline is removed.
                    WireTxnOpKind::Expire => (self.deadline(o.ttl_ms())?, 0),
                    _ => (0, 0),
                };
                let kind = match o.kind() {
                    WireTxnOpKind::Get => TxnOpKind::Get,
                    WireTxnOpKind::Put if expires_ms != 0 => TxnOpKind::PutTtl,
                    WireTxnOpKind::Put if lease != 0 => TxnOpKind::PutLease,
                    WireTxnOpKind::Put => TxnOpKind::Put,
                    WireTxnOpKind::Delete => TxnOpKind::Delete,
                    other => self.computed_kind(other, value, o.number())?,
                };
                let (key, number) = (o.key().bytes(), o.number());
                branch.push(TxnOp { kind, key, value, expires_ms, lease, number });
            }
        }
        check_entry_size(size)?;
        let [success, failure] = branches;
        Ok((compares, success, failure, size))
    }
}

impl ShardCore {
    /// The storage kind of computed wire op `kind` with operand `value` and `number`,
    /// checked: the operand a number where one is needed, the offset and condition in range,
    /// and every member able to apply it.
    fn computed_kind(
        &self,
        kind: WireTxnOpKind,
        value: &[u8],
        number: u64,
    ) -> Result<TxnOpKind, Refusal> {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let kind = match kind {
            WireTxnOpKind::Incr if text.parse::<i64>().is_ok() => TxnOpKind::Incr,
            WireTxnOpKind::Incr => {
                return Err(Refusal::Invalid("ERR value is not an integer or out of range".into()))
            }
            WireTxnOpKind::IncrFloat if text.parse::<f64>().is_ok_and(f64::is_finite) => {
                TxnOpKind::IncrFloat
            }
            WireTxnOpKind::IncrFloat => {
                return Err(Refusal::Invalid("ERR value is not a valid float".into()))
            }
            WireTxnOpKind::Append => TxnOpKind::Append,
            WireTxnOpKind::SetRange if number <= VALUE_BYTES_MAX as u64 => TxnOpKind::SetRange,
            WireTxnOpKind::SetRange => {
                return Err(Refusal::TooLarge {
                    what: "offset",
                    size: usize::try_from(number).unwrap_or(usize::MAX),
                    limit: VALUE_BYTES_MAX,
                })
            }
            WireTxnOpKind::PutKeepTtl => TxnOpKind::PutKeepTtl,
            WireTxnOpKind::Expire
                if corekv_storage::command::DeadlineCondition::from_u64(number).is_some() =>
            {
                TxnOpKind::SetDeadline
            }
            WireTxnOpKind::Expire => {
                return Err(Refusal::Invalid(format!("unknown expire condition {number}")))
            }
            other => {
                return Err(Refusal::Invalid(format!("unknown transaction op kind {}", other.0)))
            }
        };
        if !self.computed_ops_supported() {
            return Err(Refusal::Unavailable(
                "a member of this shard runs an older corekv (before peer protocol 5) that \
                 cannot apply computed transaction ops: upgrade every node first"
                    .into(),
            ));
        }
        Ok(kind)
    }
}

fn check_value(value: &[u8]) -> Result<(), Refusal> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Refusal::TooLarge { what: "value", size: value.len(), limit: VALUE_BYTES_MAX });
    }
    Ok(())
}

fn check_count(n: usize) -> Result<(), Refusal> {
    if n > BATCH_KEYS_MAX {
        return Err(Refusal::TooLarge {
            what: "batch (keys per request)",
            size: n,
            limit: BATCH_KEYS_MAX,
        });
    }
    Ok(())
}

fn check_entry_size(size: usize) -> Result<(), Refusal> {
    if size > ENTRY_BYTES_MAX {
        return Err(Refusal::TooLarge {
            what: "write (bytes per request)",
            size,
            limit: ENTRY_BYTES_MAX,
        });
    }
    Ok(())
}

fn compare_target(target: WireCompareTarget) -> Result<CompareTarget, Refusal> {
    CompareTarget::from_u8(target.0)
        .ok_or_else(|| Refusal::Invalid(format!("unknown compare target {}", target.0)))
}

fn compare_op(op: WireCompareOp) -> Result<CompareOp, Refusal> {
    CompareOp::from_u8(op.0)
        .ok_or_else(|| Refusal::Invalid(format!("unknown compare operator {}", op.0)))
}

/// The smallest key greater than every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Combines a scan's start, end, prefix and continuation into one pair of bounds.
fn scan_query(scan: &wire::ScanRequest<'_>) -> Result<ScanQuery, Refusal> {
    let bytes = |v: Option<flatbuffers::Vector<'_, u8>>| v.map(|v| v.bytes().to_vec());
    let (start, end, prefix, after) =
        (bytes(scan.start()), bytes(scan.end()), bytes(scan.prefix()), bytes(scan.continuation()));
    for bound in [&start, &end, &prefix, &after].into_iter().flatten() {
        if bound.len() > KEY_BYTES_MAX {
            return Err(Refusal::TooLarge {
                what: "scan bound",
                size: bound.len(),
                limit: KEY_BYTES_MAX,
            });
        }
    }
    let mut lower = Bound::Unbounded;
    for candidate in [
        start.map(Bound::Included),
        prefix.clone().map(Bound::Included),
        after.map(Bound::Excluded),
    ]
    .into_iter()
    .flatten()
    {
        lower = tighter_lower(lower, candidate);
    }
    let mut upper = Bound::Unbounded;
    for candidate in
        [end.map(Bound::Excluded), prefix.and_then(|p| prefix_end(&p)).map(Bound::Excluded)]
            .into_iter()
            .flatten()
    {
        upper = tighter_upper(upper, candidate);
    }
    let limit = match scan.limit() as usize {
        0 => SCAN_LIMIT_MAX,
        n => n.min(SCAN_LIMIT_MAX),
    };
    Ok(ScanQuery { lower, upper, limit, keys_only: scan.keys_only() })
}

fn tighter_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn tighter_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x < y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: prefix ends and bound combination follow byte order.
    #[test]
    fn bounds() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let lower = tighter_lower(Bound::Included(b"b".to_vec()), Bound::Excluded(b"b".to_vec()));
        assert_eq!(lower, Bound::Excluded(b"b".to_vec()));
        let lower = tighter_lower(Bound::Included(b"c".to_vec()), Bound::Excluded(b"b".to_vec()));
        assert_eq!(lower, Bound::Included(b"c".to_vec()));
        let upper = tighter_upper(Bound::Excluded(b"m".to_vec()), Bound::Excluded(b"k".to_vec()));
        assert_eq!(upper, Bound::Excluded(b"k".to_vec()));
    }
}
