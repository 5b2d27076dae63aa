//! Every message of both protocols survives build → frame → decode with the same fields.

mod common;

use corekv_proto::client::{
    CompareOp, CompareTarget, Consistency, ErrorKind, KeyMeta, Reply, Request, TxnOpKind,
};
use corekv_proto::constants::{CLIENT_PROTOCOL_VERSION, FRAME_BYTES_MAX, PEER_PROTOCOL_VERSION};
use corekv_proto::encode::{
    ChunkPlace, CompareSpec, EntryRef, ErrorInfo, PeerEncoder, PeerHello, ReplyEncoder,
    RequestEncoder, ScanSpec, TxnOpSpec, TxnResultRef,
};
use corekv_proto::frame::{
    decode_frame, verify_peer, verify_reply, verify_request, Decoded, FrameBuffer,
};
use corekv_proto::peer::PeerMessage;
use corekv_types::status::ReplicaStatus;

/// Checks that the encoder produced exactly one whole frame, and returns it.
fn payload(frame: &[u8]) -> &[u8] {
    match decode_frame(frame).expect("valid prefix") {
        Decoded::Frame { len } => {
            assert_eq!(len, frame.len(), "the encoder produced exactly one frame");
            frame
        }
        Decoded::Incomplete { needed } => panic!("whole frame reported incomplete ({needed})"),
    }
}

// Shows: every request kind decodes to the fields it was built from.
#[test]
fn requests_round_trip() {
    let mut e = RequestEncoder::new();

    let f = e.hello(1, "local", 4).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!((r.id(), r.request_type()), (1, Request::Hello));
    let hello = r.request_as_hello().unwrap();
    assert_eq!(hello.cluster(), "local");
    assert_eq!(hello.protocol_version(), CLIENT_PROTOCOL_VERSION);
    assert_eq!(hello.shards(), 4);
    assert_eq!((hello.token(), hello.as_user()), (None, None));
    let f = e.hello_as(1, "local", 4, Some("s3cret"), Some("alice")).to_vec();
    let hello = verify_request(payload(&f)).unwrap().request_as_hello().unwrap();
    assert_eq!(
        (hello.token(), hello.as_user(), hello.protocol_version()),
        (Some("s3cret"), Some("alice"), CLIENT_PROTOCOL_VERSION)
    );

    let f = e.get(2, b"key", Consistency::Stale).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let get = r.request_as_get_request().unwrap();
    assert_eq!(
        (r.id(), get.key().bytes(), get.consistency()),
        (2, &b"key"[..], Consistency::Stale)
    );

    let f = e.put(3, b"k", b"value").to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let put = r.request_as_put_request().unwrap();
    assert_eq!((put.key().bytes(), put.value().bytes()), (&b"k"[..], &b"value"[..]));

    let f = e.delete(4, b"gone").to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!(r.request_as_delete_request().unwrap().key().bytes(), b"gone");

    let f = e.batch_get(5, &[b"a", b"bb"], Consistency::Linearizable).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let bg = r.request_as_batch_get_request().unwrap();
    let keys: Vec<&[u8]> = bg.keys().iter().map(|k| k.key().bytes()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"bb"[..]]);
    assert_eq!(bg.consistency(), Consistency::Linearizable);

    let f = e.batch_put(6, &[(b"a", b"1"), (b"b", b"22")]).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let items: Vec<(&[u8], &[u8])> = r
        .request_as_batch_put_request()
        .unwrap()
        .items()
        .iter()
        .map(|i| (i.key().bytes(), i.value().bytes()))
        .collect();
    assert_eq!(items, vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"22"[..])]);

    let f = e.batch_delete(7, &[b"x", b"y"]).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!(r.request_as_batch_delete_request().unwrap().keys().len(), 2);

    let spec = ScanSpec {
        start: Some(b"a"),
        end: None,
        prefix: Some(b"ab"),
        continuation: Some(b"abc"),
        limit: 25,
        keys_only: true,
        consistency: Consistency::Stale,
    };
    let f = e.scan(8, &spec).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let scan = r.request_as_scan_request().unwrap();
    assert_eq!(scan.start().map(|v| v.bytes()), Some(&b"a"[..]));
    assert!(scan.end().is_none());
    assert_eq!(scan.prefix().map(|v| v.bytes()), Some(&b"ab"[..]));
    assert_eq!(scan.continuation().map(|v| v.bytes()), Some(&b"abc"[..]));
    assert_eq!(
        (scan.limit(), scan.keys_only(), scan.consistency()),
        (25, true, Consistency::Stale)
    );

    let compares = [CompareSpec {
        key: b"{t}a",
        target: CompareTarget::ModIndex,
        op: CompareOp::Less,
        value: None,
        number: 42,
    }];
    let success = [TxnOpSpec {
        kind: TxnOpKind::Put,
        key: b"{t}a",
        value: Some(b"v"),
        ttl_ms: 0,
        lease: 0,
        number: 0,
    }];
    let failure = [TxnOpSpec {
        kind: TxnOpKind::Get,
        key: b"{t}a",
        value: None,
        ttl_ms: 0,
        lease: 0,
        number: 0,
    }];
    let f = e.txn(9, &compares, &success, &failure).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let txn = r.request_as_txn_request().unwrap();
    let c = txn.compares().unwrap().get(0);
    assert_eq!(
        (c.key().bytes(), c.target(), c.op(), c.number()),
        (&b"{t}a"[..], CompareTarget::ModIndex, CompareOp::Less, 42)
    );
    let s = txn.success().unwrap().get(0);
    assert_eq!((s.kind(), s.value().map(|v| v.bytes())), (TxnOpKind::Put, Some(&b"v"[..])));
    assert_eq!(txn.failure().unwrap().get(0).kind(), TxnOpKind::Get);

    let f = e.status(10).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!((r.id(), r.request_type()), (10, Request::StatusRequest));
}

// Shows: every reply kind, each error kind included, decodes to the fields it was built from.
#[test]
fn replies_round_trip() {
    let mut e = ReplyEncoder::new();
    let meta = KeyMeta::new(3, 7, 2);
    let entry = EntryRef { key: b"k", value: Some(b"v"), meta, ttl_ms: 0, lease: 0 };

    let f = e.hello(1, 2, 1, 4).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let h = r.reply_as_hello_reply().unwrap();
    assert_eq!((h.node_id(), h.shard(), h.shards()), (2, 1, 4));

    let f = e.get(2, Some(&entry), true, 77).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let g = r.reply_as_get_reply().unwrap();
    let got = g.entry().unwrap();
    assert_eq!((got.key().bytes(), got.value().unwrap().bytes()), (&b"k"[..], &b"v"[..]));
    assert_eq!(*got.meta(), meta);
    assert_eq!((g.stale(), g.read_index()), (true, 77));

    let f = e.get(3, None, false, 1).to_vec();
    assert!(verify_reply(payload(&f)).unwrap().reply_as_get_reply().unwrap().entry().is_none());

    let f = e.put(4, meta).to_vec();
    assert_eq!(*verify_reply(payload(&f)).unwrap().reply_as_put_reply().unwrap().meta(), meta);

    let f = e.delete(5, true, 9).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let d = r.reply_as_delete_reply().unwrap();
    assert_eq!((d.deleted(), d.index()), (true, 9));

    let f = e.batch_get(6, [Some(entry), None], false, 5).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let bg = r.reply_as_batch_get_reply().unwrap();
    assert_eq!(bg.results().len(), 2);
    assert!(bg.results().get(0).entry().is_some() && bg.results().get(1).entry().is_none());

    let f = e.batch_put(7, &[meta, KeyMeta::new(1, 1, 1)]).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let metas: Vec<KeyMeta> =
        r.reply_as_batch_put_reply().unwrap().metas().iter().copied().collect();
    assert_eq!(metas, vec![meta, KeyMeta::new(1, 1, 1)]);

    let f = e.batch_delete(8, &[true, false], 3).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let flags: Vec<bool> = r.reply_as_batch_delete_reply().unwrap().deleted().iter().collect();
    assert_eq!(flags, vec![true, false]);

    let keys_only = EntryRef { key: b"k2", value: None, meta, ttl_ms: 0, lease: 0 };
    let f = e.scan(9, [entry, keys_only], Some(b"k2"), true, 4).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let s = r.reply_as_scan_reply().unwrap();
    assert_eq!(s.entries().len(), 2);
    assert!(s.entries().get(1).value().is_none());
    assert_eq!(s.continuation().map(|c| c.bytes()), Some(&b"k2"[..]));
    assert!(s.stale());

    let results = [TxnResultRef::Get(None), TxnResultRef::Put(meta), TxnResultRef::Delete(false)];
    let f = e.txn(10, Some(2), &results, 12).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let t = r.reply_as_txn_reply().unwrap();
    assert_eq!((t.succeeded(), t.index(), t.results().len()), (false, 12, 3));
    assert_eq!(t.failed_compare(), 2);
    assert_eq!(t.results().get(0).kind(), TxnOpKind::Get);
    assert_eq!(t.results().get(1).meta().copied(), Some(meta));
    assert!(!t.results().get(2).deleted());
    let f = e.txn(11, None, &[], 13).to_vec();
    let t = verify_reply(payload(&f)).unwrap().reply_as_txn_reply().unwrap();
    assert_eq!((t.succeeded(), t.failed_compare()), (true, -1));
    // Computed ops' results (client protocol 10): a value, a length, a flag, an error.
    let computed = [
        TxnResultRef::Value(b"42"),
        TxnResultRef::Length(11),
        TxnResultRef::Applied(true),
        TxnResultRef::Failed("ERR value is not an integer or out of range"),
    ];
    let f = e.txn(12, None, &computed, 14).to_vec();
    let t = verify_reply(payload(&f)).unwrap().reply_as_txn_reply().unwrap();
    let results = t.results();
    assert_eq!(results.get(0).value().map(|v| v.bytes()), Some(&b"42"[..]));
    assert_eq!((results.get(1).kind(), results.get(1).length()), (TxnOpKind::Append, 11));
    assert!(results.get(2).applied() && results.get(2).error().is_none());
    assert_eq!(results.get(3).error(), Some("ERR value is not an integer or out of range"));

    // The status shape crosses the wire whole, both peers' progress and the serving state.
    let status = common::sample_status();
    let f = e.status(11, 3, &status).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let s = r.reply_as_status_reply().unwrap();
    assert_eq!(s.node_id(), 3);
    assert_eq!(corekv_proto::shared::replica_status(&s), status);
    let healthy = ReplicaStatus { failure: None, problem: None, serving: true, ..status };
    let f = e.status(11, 3, &healthy).to_vec();
    let s = verify_reply(payload(&f)).unwrap().reply_as_status_reply().unwrap();
    assert_eq!(corekv_proto::shared::replica_status(&s), healthy);

    let expected_kinds = [
        ErrorKind::NotLeader,
        ErrorKind::NotLeader,
        ErrorKind::WrongShard,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::InvalidRequest,
        ErrorKind::TooLarge,
        ErrorKind::CompareFailed,
        ErrorKind::Busy,
        ErrorKind::NotMember,
        ErrorKind::ChangeRefused,
        ErrorKind::LeaseNotFound,
        ErrorKind::PermissionDenied,
    ];
    for (error, kind) in common::sample_errors().iter().zip(expected_kinds) {
        let f = e.error(12, error).to_vec();
        let r = verify_reply(payload(&f)).unwrap();
        assert_eq!(r.reply_type(), Reply::ErrorReply);
        let er = r.reply_as_error_reply().unwrap();
        assert_eq!(er.kind_type(), kind);
        match *error {
            ErrorInfo::NotLeader { leader_id, leader_addr } => {
                let nl = er.kind_as_not_leader().unwrap();
                assert_eq!((nl.leader_id(), nl.leader_addr()), (leader_id, leader_addr));
            }
            ErrorInfo::WrongShard { shard } => {
                assert_eq!(er.kind_as_wrong_shard().unwrap().shard(), shard)
            }
            ErrorInfo::Unavailable { reason } => {
                assert_eq!(er.kind_as_unavailable().unwrap().reason(), Some(reason))
            }
            ErrorInfo::Timeout => assert!(er.kind_as_timeout().is_some()),
            ErrorInfo::InvalidRequest { reason } => {
                assert_eq!(er.kind_as_invalid_request().unwrap().reason(), Some(reason))
            }
            ErrorInfo::TooLarge { what, size, limit } => {
                let t = er.kind_as_too_large().unwrap();
                assert_eq!((t.what(), t.size(), t.limit()), (Some(what), size, limit));
            }
            ErrorInfo::CompareFailed { compare } => {
                assert_eq!(er.kind_as_compare_failed().unwrap().compare(), compare)
            }
            ErrorInfo::Busy { retry_after_ms } => {
                assert_eq!(er.kind_as_busy().unwrap().retry_after_ms(), retry_after_ms)
            }
            ErrorInfo::NotMember { node_id, shard } => {
                let nm = er.kind_as_not_member().unwrap();
                assert_eq!((nm.node_id(), nm.shard()), (node_id, shard));
            }
            ErrorInfo::ChangeRefused { reason } => {
                assert_eq!(er.kind_as_change_refused().unwrap().reason(), Some(reason))
            }
            ErrorInfo::LeaseNotFound { lease } => {
                assert_eq!(er.kind_as_lease_not_found().unwrap().lease(), lease)
            }
            ErrorInfo::PermissionDenied { reason } => {
                assert_eq!(er.kind_as_permission_denied().unwrap().reason(), Some(reason))
            }
        }
    }
}

// Shows: the lease requests and replies cross the wire whole, and puts carry their lease.
#[test]
fn lease_frames_round_trip() {
    let mut requests = RequestEncoder::new();
    let items: [(&[u8], &[u8]); 2] = [(b"{s}a", b"1"), (b"{s}b", b"2")];
    let f = requests.lease_grant(1, 5_000, &items).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let g = r.request_as_lease_grant_request().unwrap();
    assert_eq!(g.ttl_ms(), 5_000);
    let got: Vec<(&[u8], &[u8])> =
        g.items().unwrap().iter().map(|i| (i.key().bytes(), i.value().bytes())).collect();
    assert_eq!(got, items);
    let f = requests.lease_revoke(2, 77).to_vec();
    assert_eq!(
        verify_request(payload(&f)).unwrap().request_as_lease_revoke_request().unwrap().lease(),
        77
    );
    let f = requests.lease_keep_alive(3, 78).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!(r.request_as_lease_keep_alive_request().unwrap().lease(), 78);
    let f = requests.lease_time_to_live(4, 79, true).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let t = r.request_as_lease_time_to_live_request().unwrap();
    assert_eq!((t.lease(), t.keys()), (79, true));
    let f = requests.put_lease(5, b"k", b"v", 80).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let p = r.request_as_put_request().unwrap();
    assert_eq!((p.lease(), p.ttl_ms()), (80, 0));
    let f = requests.batch_put_with(6, &items, 0, 81).to_vec();
    assert_eq!(
        verify_request(payload(&f)).unwrap().request_as_batch_put_request().unwrap().lease(),
        81
    );

    let mut replies = ReplyEncoder::new();
    let meta = KeyMeta::new(3, 3, 1);
    let f = replies.lease_grant(7, 90, 5_000, &[meta, meta], 3).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let g = r.reply_as_lease_grant_reply().unwrap();
    assert_eq!((g.lease(), g.ttl_ms(), g.index(), g.metas().unwrap().len()), (90, 5_000, 3, 2));
    let f = replies.lease_revoke(8, 4, 9).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let v = r.reply_as_lease_revoke_reply().unwrap();
    assert_eq!((v.keys(), v.index()), (4, 9));
    let f = replies.lease_keep_alive(9, 90, 5_000, 3_100).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let k = r.reply_as_lease_keep_alive_reply().unwrap();
    assert_eq!((k.lease(), k.ttl_ms(), k.durable_ms()), (90, 5_000, 3_100));
    let keys: [&[u8]; 2] = [b"{s}a", b"{s}b"];
    let f = replies.lease_time_to_live(10, 90, 5_000, 1_234, Some(&keys)).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    let t = r.reply_as_lease_time_to_live_reply().unwrap();
    assert_eq!((t.lease(), t.ttl_ms(), t.remaining_ms()), (90, 5_000, 1_234));
    let listed: Vec<&[u8]> = t.keys().unwrap().iter().map(|k| k.key().bytes()).collect();
    assert_eq!(listed, keys);
    let entry = EntryRef { key: b"k", value: Some(b"v"), meta, ttl_ms: 0, lease: 90 };
    let f = replies.get(11, Some(&entry), false, 3).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    assert_eq!(r.reply_as_get_reply().unwrap().entry().unwrap().lease(), 90);
}

// Shows: a backup request and a chunk of its stream cross the wire whole, the chunk's data
// byte for byte, at the frame size a 1 MiB chunk makes.
#[test]
fn backup_frames_round_trip() {
    let f = RequestEncoder::new().backup(3, 8 << 20).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!((r.id(), r.request_as_backup_request().unwrap().bytes_per_sec()), (3, 8 << 20));
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
    let place = ChunkPlace { shard: 1, index: 900, term: 4, offset: 1 << 20, total: 3 << 20 };
    let f = ReplyEncoder::new().backup_chunk(3, place, &data, false).to_vec();
    assert!(f.len() < FRAME_BYTES_MAX, "a chunk fits a frame");
    let r = verify_reply(payload(&f)).unwrap();
    let c = r.reply_as_backup_chunk().unwrap();
    let got = ChunkPlace {
        shard: c.shard(),
        index: c.index(),
        term: c.term(),
        offset: c.offset(),
        total: c.total(),
    };
    assert_eq!((got, c.last()), (place, false));
    assert_eq!(c.data().bytes(), &data[..]);
}

// Shows: the membership requests and replies cross the wire whole: each change kind, the
// shard's members with addresses and progress; a change that cannot be one is refused by name.
#[test]
fn membership_frames_round_trip() {
    use corekv_proto::shared::{membership_change, shard_members};
    use corekv_types::ids::{LogIndex, NodeId, ShardId};
    use corekv_types::membership::{MemberAddr, Membership, MembershipChange, ShardMembers};
    use corekv_types::status::PeerProgress;
    let addr = |n: u16| MemberAddr {
        host: format!("10.0.0.{n}"),
        client_port: 7100,
        peer_port: 7200,
        http_port: 7300 + n,
        resp_port: (n % 2 == 0).then_some(7400),
    };
    let mut requests = RequestEncoder::new();
    let changes = [
        MembershipChange::AddLearner { id: NodeId(4), addr: addr(4), promote: true },
        MembershipChange::Promote { id: NodeId(4) },
        MembershipChange::Remove { id: NodeId(2) },
        MembershipChange::Replace { old: NodeId(1), new: NodeId(4) },
    ];
    for change in &changes {
        let f = requests.member_change(5, change).to_vec();
        let r = verify_request(payload(&f)).unwrap();
        let request = r.request_as_member_change_request().unwrap();
        assert_eq!(membership_change(&request).as_ref(), Ok(change));
    }
    let f = requests.member_change(5, &MembershipChange::Remove { id: NodeId(0) }).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    let refused = membership_change(&r.request_as_member_change_request().unwrap());
    assert!(refused.unwrap_err().contains("node id 0"));
    let f = requests.transfer_leader(6, NodeId(3)).to_vec();
    let r = verify_request(payload(&f)).unwrap();
    assert_eq!(r.request_as_transfer_leader_request().unwrap().node_id(), 3);
    assert!(verify_request(payload(requests.members(7)))
        .unwrap()
        .request_as_members_request()
        .is_some());

    let members = ShardMembers {
        node_id: NodeId(1),
        shard: ShardId(1),
        leader_id: NodeId(1),
        membership: Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![NodeId(4)],
            voters_outgoing: vec![],
            learners_next: vec![],
            auto_leave: false,
            promote: vec![NodeId(4)],
            addrs: (1..=4).map(|n| (NodeId(n), addr(n as u16))).collect(),
        },
        peers: vec![PeerProgress {
            node_id: NodeId(4),
            match_index: LogIndex(9),
            recent_active: true,
        }],
        last_index: LogIndex(12),
        applied_index: LogIndex(11),
        pending_change: LogIndex(12),
    };
    let mut replies = ReplyEncoder::new();
    let f = replies.members(8, &members).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    assert_eq!(shard_members(&r.reply_as_members_reply().unwrap()), members);
    let f = replies.member_change(9, 14).to_vec();
    assert_eq!(
        verify_reply(payload(&f)).unwrap().reply_as_member_change_reply().unwrap().index(),
        14
    );
    let f = replies.transfer_leader(10, NodeId(2)).to_vec();
    let r = verify_reply(payload(&f)).unwrap();
    assert_eq!(r.reply_as_transfer_leader_reply().unwrap().leader_id(), 2);
}

// Shows: every peer message kind decodes to the fields it was built from.
#[test]
fn peer_frames_round_trip() {
    let mut e = PeerEncoder::new();

    let f = e.hello(&PeerHello::new("prod", 3, 1, 4).from_addr("10.0.0.3", 7201)).to_vec();
    let h = verify_peer(payload(&f)).unwrap().message_as_hello().unwrap();
    assert_eq!((h.cluster(), h.node_id(), h.shard(), h.shards()), ("prod", 3, 1, 4));
    assert_eq!(h.protocol_version(), PEER_PROTOCOL_VERSION);
    assert_eq!((h.peer_host(), h.peer_port()), (Some("10.0.0.3"), 7201));

    let f = e.hello_ack(1, Some("wrong cluster")).to_vec();
    let a = verify_peer(payload(&f)).unwrap().message_as_hello_ack().unwrap();
    assert_eq!((a.accepted(), a.reason()), (false, Some("wrong cluster")));

    let f = e.raft_batch([&b"one"[..], &b"two"[..], &b""[..]]).to_vec();
    let frame = verify_peer(payload(&f)).unwrap();
    assert_eq!(frame.message_type(), PeerMessage::RaftBatch);
    let messages: Vec<&[u8]> = frame
        .message_as_raft_batch()
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.data().bytes())
        .collect();
    assert_eq!(messages, vec![&b"one"[..], &b"two"[..], &b""[..]]);

    let f = e.snapshot_chunk(100, 3, 4096, 10_000, b"chunk", true).to_vec();
    let c = verify_peer(payload(&f)).unwrap().message_as_snapshot_chunk().unwrap();
    assert_eq!(
        (c.index(), c.term(), c.offset(), c.total_size(), c.data().bytes(), c.last()),
        (100, 3, 4096, 10_000, &b"chunk"[..], true)
    );

    let f = e.snapshot_ack(100, 3, 4101, true, None).to_vec();
    let a = verify_peer(payload(&f)).unwrap().message_as_snapshot_ack().unwrap();
    assert_eq!((a.received(), a.done(), a.error()), (4101, true, None));
}

// Shows: a stream of many frames, cut at arbitrary points, comes out of FrameBuffer intact
// and in order.
#[test]
fn stream_of_frames_through_frame_buffer() {
    let frames = common::sample_requests();
    let stream: Vec<u8> = frames.iter().flatten().copied().collect();
    for chunk in [1, 3, 7, 64, 1000] {
        let mut buffer = FrameBuffer::new(64);
        let mut ids = Vec::new();
        for mut piece in stream.chunks(chunk) {
            while !piece.is_empty() {
                let spare = buffer.spare();
                let n = spare.len().min(piece.len());
                spare[..n].copy_from_slice(&piece[..n]);
                buffer.commit(n);
                piece = &piece[n..];
                while let Some(frame) = buffer.next_frame().unwrap() {
                    ids.push(verify_request(frame).unwrap().id());
                }
            }
        }
        assert_eq!(ids.len(), common::sample_requests().len(), "chunk size {chunk}");
        assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "in order, chunk size {chunk}");
    }
}
