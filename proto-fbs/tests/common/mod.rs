//! Helpers shared by the protocol tests: a sample of every frame kind, and walkers that read
//! every field of a verified frame (so a test can show that reading never panics).
#![allow(dead_code)]

use corekv_proto::client::{
    CompareOp, CompareTarget, Consistency, KeyMeta, ReplyFrame, RequestFrame, TxnOpKind,
};
use corekv_proto::encode::{
    CompareSpec, EntryRef, ErrorInfo, PeerEncoder, PeerHello, ReplyEncoder, RequestEncoder,
    ScanSpec, TxnOpSpec, TxnResultRef,
};
use corekv_proto::peer::PeerFrame;
use corekv_types::ids::{LogIndex, NodeId, ShardId, Term};
use corekv_types::membership::{MemberAddr, Membership, MembershipChange, ShardMembers};
use corekv_types::status::{PeerProgress, ReplicaStatus, Role};

/// A leader's status with every field set, one peer behind and one failure noted.
pub fn sample_status() -> ReplicaStatus {
    ReplicaStatus {
        shard: ShardId(1),
        role: Role::Leader,
        term: Term(5),
        leader_id: NodeId(1),
        commit_index: LogIndex(10),
        applied_index: LogIndex(10),
        first_index: LogIndex(1),
        last_index: LogIndex(10),
        wal_bytes: 4096,
        snapshot_index: LogIndex(8),
        wal_durable: "3:8192".to_string(),
        keys: 3,
        peers: vec![
            PeerProgress { node_id: NodeId(2), match_index: LogIndex(10), recent_active: true },
            PeerProgress { node_id: NodeId(3), match_index: LogIndex(9), recent_active: false },
        ],
        failure: Some("wal write failed".to_string()),
        serving: false,
        problem: Some("this replica stopped accepting writes".to_string()),
        joining: true,
        voters: vec![NodeId(1), NodeId(2), NodeId(4)],
        learners: vec![NodeId(5)],
        voters_outgoing: vec![NodeId(1), NodeId(2), NodeId(3)],
        pending_change: LogIndex(11),
    }
}

/// One frame of every request kind.
pub fn sample_requests() -> Vec<Vec<u8>> {
    let mut e = RequestEncoder::new();
    let compares = [
        CompareSpec {
            key: b"{t}a",
            target: CompareTarget::Value,
            op: CompareOp::Equal,
            value: Some(b"x"),
            number: 0,
        },
        CompareSpec {
            key: b"{t}b",
            target: CompareTarget::Version,
            op: CompareOp::Greater,
            value: None,
            number: 3,
        },
    ];
    let success = [
        TxnOpSpec {
            kind: TxnOpKind::Put,
            key: b"{t}a",
            value: Some(b"y"),
            ttl_ms: 0,
            lease: 0,
            number: 0,
        },
        TxnOpSpec {
            kind: TxnOpKind::Get,
            key: b"{t}b",
            value: None,
            ttl_ms: 0,
            lease: 0,
            number: 0,
        },
    ];
    let failure = [TxnOpSpec {
        kind: TxnOpKind::Delete,
        key: b"{t}c",
        value: None,
        ttl_ms: 0,
        lease: 0,
        number: 0,
    }];
    vec![
        e.hello(1, "local", 2).to_vec(),
        e.get(2, b"k", Consistency::Stale).to_vec(),
        e.put(3, b"k", b"v").to_vec(),
        e.delete(4, b"k").to_vec(),
        e.batch_get(5, &[b"a", b"b"], Consistency::Linearizable).to_vec(),
        e.batch_put(6, &[(b"a", b"1"), (b"b", b"2")]).to_vec(),
        e.batch_delete(7, &[b"a"]).to_vec(),
        e.scan(
            8,
            &ScanSpec {
                start: Some(b"a"),
                end: Some(b"z"),
                prefix: Some(b"a"),
                continuation: Some(b"ab"),
                limit: 10,
                keys_only: true,
                consistency: Consistency::Stale,
            },
        )
        .to_vec(),
        e.txn(9, &compares, &success, &failure).to_vec(),
        e.status(10).to_vec(),
        e.members(11).to_vec(),
        e.member_change(
            12,
            &MembershipChange::AddLearner { id: NodeId(4), addr: sample_addr(), promote: true },
        )
        .to_vec(),
        e.member_change(13, &MembershipChange::Replace { old: NodeId(1), new: NodeId(4) }).to_vec(),
        e.transfer_leader(14, NodeId(2)).to_vec(),
    ]
}

fn sample_addr() -> MemberAddr {
    MemberAddr {
        host: "10.0.0.4".to_string(),
        client_port: 7100,
        peer_port: 7200,
        http_port: 7300,
        resp_port: Some(7400),
    }
}

/// A shard's membership mid-change: a learner, a pending change, the leader's view.
pub fn sample_members() -> ShardMembers {
    ShardMembers {
        node_id: NodeId(1),
        shard: ShardId(0),
        leader_id: NodeId(1),
        membership: Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![NodeId(4)],
            addrs: [(NodeId(4), sample_addr())].into_iter().collect(),
            ..Membership::default()
        },
        peers: sample_status().peers,
        last_index: LogIndex(20),
        applied_index: LogIndex(19),
        pending_change: LogIndex(20),
    }
}

/// One frame of every reply kind, errors included.
pub fn sample_replies() -> Vec<Vec<u8>> {
    let mut e = ReplyEncoder::new();
    let meta = KeyMeta::new(1, 2, 3);
    let entry = EntryRef { key: b"k", value: Some(b"v"), meta, ttl_ms: 0, lease: 0 };
    let mut out = vec![
        e.hello(1, 2, 1, 2).to_vec(),
        e.get(2, Some(&entry), true, 9).to_vec(),
        e.get(3, None, false, 9).to_vec(),
        e.put(4, meta).to_vec(),
        e.delete(5, true, 8).to_vec(),
        e.batch_get(6, [Some(entry), None], false, 3).to_vec(),
        e.batch_put(7, &[meta, meta]).to_vec(),
        e.batch_delete(8, &[true, false], 4).to_vec(),
        e.scan(9, [entry, entry], Some(b"k"), false, 5).to_vec(),
        e.txn(
            10,
            None,
            &[TxnResultRef::Get(Some(entry)), TxnResultRef::Put(meta), TxnResultRef::Delete(true)],
            11,
        )
        .to_vec(),
        e.status(11, 1, &sample_status()).to_vec(),
        e.members(12, &sample_members()).to_vec(),
        e.member_change(13, 21).to_vec(),
        e.transfer_leader(14, NodeId(2)).to_vec(),
    ];
    for error in sample_errors() {
        out.push(e.error(12, &error).to_vec());
    }
    out
}

/// Every error kind.
pub fn sample_errors() -> Vec<ErrorInfo<'static>> {
    vec![
        ErrorInfo::NotLeader { leader_id: 2, leader_addr: Some("127.0.0.1:7101") },
        ErrorInfo::NotLeader { leader_id: 0, leader_addr: None },
        ErrorInfo::WrongShard { shard: 1 },
        ErrorInfo::Unavailable { reason: "no quorum" },
        ErrorInfo::Timeout,
        ErrorInfo::InvalidRequest { reason: "empty key" },
        ErrorInfo::TooLarge { what: "key", size: 5000, limit: 4096 },
        ErrorInfo::CompareFailed { compare: 1 },
        ErrorInfo::Busy { retry_after_ms: 5 },
        ErrorInfo::NotMember { node_id: 3, shard: 1 },
        ErrorInfo::ChangeRefused { reason: "another change is under way" },
        ErrorInfo::LeaseNotFound { lease: 0x0002_0000_0000_0007 },
        ErrorInfo::PermissionDenied { reason: "user \"app\" may not write \"other/y\"" },
    ]
}

/// One frame of every peer message kind.
pub fn sample_peer_frames() -> Vec<Vec<u8>> {
    let mut e = PeerEncoder::new();
    vec![
        e.hello(&PeerHello::new("local", 1, 0, 2).from_addr("127.0.0.1", 7200)).to_vec(),
        e.hello_ack(2, None).to_vec(),
        e.hello_ack(2, Some("cluster mismatch")).to_vec(),
        e.raft_batch([&b"m1"[..], &b"m2"[..]]).to_vec(),
        e.snapshot_chunk(10, 2, 0, 100, b"abc", false).to_vec(),
        e.snapshot_ack(10, 2, 3, false, None).to_vec(),
    ]
}

fn touch(bytes: &[u8]) -> usize {
    bytes.iter().map(|&b| b as usize).sum()
}

/// Reads every field of a verified request; returns a checksum so nothing is optimised away.
pub fn walk_request(frame: &RequestFrame<'_>) -> usize {
    let mut sum = frame.id() as u32 as usize;
    if let Some(r) = frame.request_as_hello() {
        sum += r.cluster().len() + r.protocol_version() as usize;
    }
    if let Some(r) = frame.request_as_get_request() {
        sum += touch(r.key().bytes()) + r.consistency().0 as usize;
    }
    if let Some(r) = frame.request_as_put_request() {
        sum += touch(r.key().bytes()) + touch(r.value().bytes());
    }
    if let Some(r) = frame.request_as_delete_request() {
        sum += touch(r.key().bytes());
    }
    if let Some(r) = frame.request_as_batch_get_request() {
        sum += r.keys().iter().map(|k| touch(k.key().bytes())).sum::<usize>();
    }
    if let Some(r) = frame.request_as_batch_put_request() {
        sum += r
            .items()
            .iter()
            .map(|i| touch(i.key().bytes()) + touch(i.value().bytes()))
            .sum::<usize>();
    }
    if let Some(r) = frame.request_as_batch_delete_request() {
        sum += r.keys().iter().map(|k| touch(k.key().bytes())).sum::<usize>();
    }
    if let Some(r) = frame.request_as_scan_request() {
        for bound in [r.start(), r.end(), r.prefix(), r.continuation()].into_iter().flatten() {
            sum += touch(bound.bytes());
        }
        sum += r.limit() as usize + r.keys_only() as usize + r.consistency().0 as usize;
    }
    if let Some(r) = frame.request_as_txn_request() {
        for c in r.compares().iter().flatten() {
            sum += touch(c.key().bytes()) + c.target().0 as usize + c.op().0 as usize;
            sum += c.value().map(|v| touch(v.bytes())).unwrap_or(0) + c.number() as u32 as usize;
        }
        for op in r.success().iter().flatten().chain(r.failure().iter().flatten()) {
            sum += touch(op.key().bytes()) + op.kind().0 as usize;
            sum += op.value().map(|v| touch(v.bytes())).unwrap_or(0) + op.number() as u32 as usize;
        }
    }
    if let Some(r) = frame.request_as_member_change_request() {
        sum += corekv_proto::shared::membership_change(&r).map_or(1, |c| format!("{c:?}").len());
    }
    if let Some(r) = frame.request_as_transfer_leader_request() {
        sum += r.node_id() as u32 as usize;
    }
    sum
}

fn walk_entry(e: &corekv_proto::client::Entry<'_>) -> usize {
    touch(e.key().bytes())
        + e.value().map(|v| touch(v.bytes())).unwrap_or(0)
        + e.meta().create_index() as u32 as usize
        + e.meta().mod_index() as u32 as usize
        + e.meta().version() as u32 as usize
}

/// Reads every field of a verified reply. (Numbers count by their low 32 bits: a flipped
/// high bit must not overflow the sum.)
pub fn walk_reply(frame: &ReplyFrame<'_>) -> usize {
    let mut sum = frame.id() as u32 as usize;
    if let Some(r) = frame.reply_as_hello_reply() {
        sum += r.node_id() as u32 as usize + r.shard() as usize + r.shards() as usize;
    }
    if let Some(r) = frame.reply_as_get_reply() {
        sum += r.entry().map(|e| walk_entry(&e)).unwrap_or(0) + r.read_index() as u32 as usize;
    }
    if let Some(r) = frame.reply_as_put_reply() {
        sum += r.meta().version() as u32 as usize;
    }
    if let Some(r) = frame.reply_as_delete_reply() {
        sum += r.deleted() as u32 as usize + r.index() as u32 as usize;
    }
    if let Some(r) = frame.reply_as_batch_get_reply() {
        sum += r
            .results()
            .iter()
            .map(|g| g.entry().map(|e| walk_entry(&e)).unwrap_or(0))
            .sum::<usize>();
    }
    if let Some(r) = frame.reply_as_batch_put_reply() {
        sum += r.metas().iter().map(|m| m.version() as u32 as usize).sum::<usize>();
    }
    if let Some(r) = frame.reply_as_batch_delete_reply() {
        sum += r.deleted().iter().filter(|d| *d).count();
    }
    if let Some(r) = frame.reply_as_scan_reply() {
        sum += r.entries().iter().map(|e| walk_entry(&e)).sum::<usize>();
        sum += r.continuation().map(|c| touch(c.bytes())).unwrap_or(0);
    }
    if let Some(r) = frame.reply_as_txn_reply() {
        for res in r.results() {
            sum += res.entry().map(|e| walk_entry(&e)).unwrap_or(0);
            sum += res.meta().map(|m| m.version() as u32 as usize).unwrap_or(0)
                + res.deleted() as u32 as usize;
            sum +=
                res.value().map(|v| touch(v.bytes())).unwrap_or(0) + res.length() as u32 as usize;
            sum += res.applied() as usize + res.error().map_or(0, str::len);
        }
    }
    if let Some(r) = frame.reply_as_status_reply() {
        sum += r.term() as u32 as usize + r.commit_index() as u32 as usize;
        sum += r.peers().iter().flatten().map(|p| p.match_index() as u32 as usize).sum::<usize>();
    }
    if let Some(r) = frame.reply_as_members_reply() {
        sum += format!("{:?}", corekv_proto::shared::shard_members(&r)).len();
    }
    if let Some(r) = frame.reply_as_member_change_reply() {
        sum += r.index() as u32 as usize;
    }
    if let Some(r) = frame.reply_as_transfer_leader_reply() {
        sum += r.leader_id() as u32 as usize;
    }
    if let Some(r) = frame.reply_as_error_reply() {
        if let Some(e) = r.kind_as_not_member() {
            sum += e.node_id() as u32 as usize + e.shard() as usize;
        }
        if let Some(e) = r.kind_as_change_refused() {
            sum += e.reason().map(str::len).unwrap_or(0);
        }
        if let Some(e) = r.kind_as_not_leader() {
            sum += e.leader_id() as u32 as usize + e.leader_addr().map(str::len).unwrap_or(0);
        }
        if let Some(e) = r.kind_as_wrong_shard() {
            sum += e.shard() as usize;
        }
        if let Some(e) = r.kind_as_unavailable() {
            sum += e.reason().map(str::len).unwrap_or(0);
        }
        if let Some(e) = r.kind_as_invalid_request() {
            sum += e.reason().map(str::len).unwrap_or(0);
        }
        if let Some(e) = r.kind_as_too_large() {
            sum += e.what().map(str::len).unwrap_or(0) + e.size() as u32 as usize;
        }
        if let Some(e) = r.kind_as_compare_failed() {
            sum += e.compare() as usize;
        }
        if let Some(e) = r.kind_as_busy() {
            sum += e.retry_after_ms() as usize;
        }
    }
    sum
}

/// Reads every field of a verified peer frame.
pub fn walk_peer(frame: &PeerFrame<'_>) -> usize {
    let mut sum = 0;
    if let Some(m) = frame.message_as_hello() {
        sum += m.cluster().len() + m.node_id() as u32 as usize + m.shard() as usize;
        sum += m.peer_host().map(str::len).unwrap_or(0) + m.peer_port() as u32 as usize;
    }
    if let Some(m) = frame.message_as_hello_ack() {
        sum += m.accepted() as u32 as usize + m.reason().map(str::len).unwrap_or(0);
    }
    if let Some(m) = frame.message_as_raft_batch() {
        sum += m.messages().iter().map(|r| touch(r.data().bytes())).sum::<usize>();
    }
    if let Some(m) = frame.message_as_snapshot_chunk() {
        sum += touch(m.data().bytes()) + m.offset() as u32 as usize + m.last() as u32 as usize;
    }
    if let Some(m) = frame.message_as_snapshot_ack() {
        sum += m.received() as u32 as usize + m.error().map(str::len).unwrap_or(0);
    }
    sum
}
