//! Tests of command batches: every op round trips; plain batches carry no deadline; lease
//! ops need a stamp; malformed bytes never panic the decoder.

use super::*;
use proptest::prelude::*;

// Shows: every op kind survives encode/decode, with the batch's stamp.
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
        [
            TxnOp::new(TxnOpKind::Put, b"k", b"w"),
            TxnOp { expires_ms: 77, ..TxnOp::new(TxnOpKind::PutTtl, b"t", b"x") },
            TxnOp { lease: 9, ..TxnOp::new(TxnOpKind::PutLease, b"l", b"y") },
        ]
        .into_iter(),
        [TxnOp::new(TxnOpKind::Get, b"k", b"")].into_iter(),
    );
    b.put_ttl(b"e", b"v", 1_000);
    b.batch_put_ttl([(&b"f"[..], &b"1"[..])].into_iter(), 2_000);
    b.expire(7, [(&b"e"[..], 41u64)].into_iter());
    b.put_lease(b"p", b"v", 5);
    b.batch_put_lease([(&b"q"[..], &b"1"[..])].into_iter(), 6);
    b.lease_grant(2, 3_000, [(&b"g"[..], &b"1"[..])].into_iter());
    b.lease_revoke(5);
    b.lease_checkpoint([(5u64, 9_000u64)].into_iter());
    b.lease_expire(3, [(6u64, 8_000u64)].into_iter());
    assert_eq!(b.ops(), 14);
    let bytes = b.take(123_456);
    assert!(b.is_empty() && !b.needs_stamp());
    let batch = decode_batch(&bytes).unwrap();
    assert_eq!(batch.stamp_ms, Some(123_456));
    let ops = batch.ops;
    assert_eq!(ops.len(), 14);
    assert!(matches!(ops[0], Op::Put { key: b"k", value: b"v", expires_ms: 0, lease: 0 }));
    assert!(matches!(ops[1], Op::Delete { key: b"d" }));
    assert!(matches!(&ops[2], Op::BatchPut { items, expires_ms: 0, .. } if items.len() == 2));
    assert!(matches!(&ops[3], Op::BatchDelete(keys) if keys == &vec![&b"x"[..]]));
    match &ops[4] {
        Op::Txn { compares, success, failure } => {
            assert_eq!(compares[0].number, 3);
            assert_eq!(success[0].value, b"w");
            assert_eq!((success[1].kind, success[1].expires_ms), (TxnOpKind::PutTtl, 77));
            assert_eq!((success[2].kind, success[2].lease), (TxnOpKind::PutLease, 9));
            assert_eq!(failure[0].kind, TxnOpKind::Get);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(ops[5], Op::Put { key: b"e", expires_ms: 1_000, .. }));
    assert!(matches!(&ops[6], Op::BatchPut { items, expires_ms: 2_000, .. } if items.len() == 1));
    assert!(matches!(&ops[7], Op::Expire { term: 7, keys } if keys == &vec![(&b"e"[..], 41)]));
    assert!(matches!(ops[8], Op::Put { key: b"p", lease: 5, expires_ms: 0, .. }));
    assert!(matches!(&ops[9], Op::BatchPut { lease: 6, items, .. } if items.len() == 1));
    assert!(
        matches!(&ops[10], Op::LeaseGrant { shard: 2, ttl_ms: 3_000, items } if items.len() == 1)
    );
    assert!(matches!(ops[11], Op::LeaseRevoke { lease: 5 }));
    assert!(matches!(&ops[12], Op::LeaseCheckpoint(pairs) if pairs == &vec![(5, 9_000)]));
    assert!(matches!(&ops[13], Op::LeaseExpire { term: 3, leases } if leases == &vec![(6, 8_000)]));
    let mut b = BatchBuilder::new();
    b.put(b"k", b"v");
    assert!(!b.has_lease_ops());
    b.lease_revoke(1);
    assert!(b.has_lease_ops());
    assert!(b.take_plain().is_none(), "lease ops need a stamped batch");
    assert!(!b.has_lease_ops(), "the builder is left empty");
    b.lease_revoke(0);
    assert!(decode_batch(&b.take(1)).unwrap_err().reason.contains("lease of 0"));
}

// Shows: a batch without deadlines can be taken without a stamp (version 1, as older
// replicas read it), one with a deadline cannot; a version 1 batch carrying a deadline
// and a deadline of 0 are refused.
#[test]
fn plain_batches_carry_no_deadline() {
    let mut b = BatchBuilder::new();
    b.put(b"k", b"v");
    let plain = b.take_plain().unwrap();
    assert_eq!(plain[0], BATCH_VERSION_PLAIN);
    let batch = decode_batch(&plain).unwrap();
    assert_eq!((batch.stamp_ms, batch.ops.len()), (None, 1));
    b.put_ttl(b"k", b"v", 5);
    assert!(b.take_plain().is_none());
    assert!(b.is_empty(), "the builder is left empty either way");
    // A forged version 1 batch with a deadline.
    let mut forged = vec![BATCH_VERSION_PLAIN, 1, 0, 0, 0, kind::PUT_TTL];
    for part in [&b"k"[..], &b"v"[..]] {
        forged.extend_from_slice(&(part.len() as u32).to_le_bytes());
        forged.extend_from_slice(part);
    }
    forged.extend_from_slice(&5u64.to_le_bytes());
    assert!(decode_batch(&forged).unwrap_err().reason.contains("without a stamp"));
    b.put_ttl(b"k", b"v", 0);
    assert!(decode_batch(&b.take(1)).unwrap_err().reason.contains("deadline of 0"));
}

proptest! {
    // Shows: arbitrary bytes and truncations of valid batches never panic the decoder.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..200) {
        let _ = decode_batch(&bytes);
        let mut b = BatchBuilder::new();
        b.put(b"key", b"value");
        b.batch_delete([&b"a"[..], &b"b"[..]].into_iter());
        let valid = b.take(9);
        let cut = cut.min(valid.len());
        if cut < valid.len() {
            prop_assert!(decode_batch(&valid[..cut]).is_err());
        }
    }
}

// Shows: every computed op kind survives encode/decode with its offset, deadline and
// condition; a batch holding one says so and needs a stamp (a plain batch cannot carry it).
#[test]
fn computed_ops_round_trip() {
    let ops = [
        TxnOp::new(TxnOpKind::Incr, b"n", b"-5"),
        TxnOp::new(TxnOpKind::IncrFloat, b"f", b"0.5"),
        TxnOp::new(TxnOpKind::Append, b"a", b"tail"),
        TxnOp { number: 7, ..TxnOp::new(TxnOpKind::SetRange, b"r", b"xy") },
        TxnOp::new(TxnOpKind::PutKeepTtl, b"k", b"v"),
        TxnOp { expires_ms: 5_000, number: 3, ..TxnOp::new(TxnOpKind::SetDeadline, b"d", b"") },
        TxnOp::new(TxnOpKind::SetDeadline, b"p", b""),
    ];
    let mut b = BatchBuilder::new();
    b.txn([].into_iter(), ops.iter().copied(), [].into_iter());
    assert!(b.has_computed_ops() && b.needs_stamp());
    assert_eq!(b.clone().take_plain(), None);
    let bytes = b.take(1);
    assert!(!b.has_computed_ops());
    match &decode_batch(&bytes).unwrap().ops[0] {
        Op::Txn { success, .. } => assert_eq!(success, &ops),
        other => panic!("{other:?}"),
    }
}
