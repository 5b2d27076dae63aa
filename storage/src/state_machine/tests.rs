//! Tests of the state machine: metadata, changes recorded for watchers, transactions, scans,
//! deadlines and expiries.

use std::ops::Bound;

use super::*;
use crate::command::BatchBuilder;

fn apply_one(
    sm: &mut StateMachine,
    index: u64,
    build: impl FnOnce(&mut BatchBuilder),
) -> Vec<String> {
    apply_at(sm, index, 0, build)
}

// Shows: metadata follows the rules: create index, mod index, version, reset on delete.
#[test]
fn metadata_rules() {
    let mut sm = StateMachine::new();
    apply_one(&mut sm, 1, |b| b.put(b"k", b"v1"));
    assert_eq!(sm.get(b"k").unwrap().meta, KeyMeta { create_index: 1, mod_index: 1, version: 1 });
    apply_one(&mut sm, 2, |b| {
        b.put(b"k", b"v2");
        b.put(b"k", b"v3");
    });
    let v = sm.get(b"k").unwrap();
    assert_eq!(
        (v.value, v.meta),
        (&b"v3"[..], KeyMeta { create_index: 1, mod_index: 2, version: 3 })
    );
    let r = apply_one(&mut sm, 3, |b| {
        b.delete(b"k");
        b.delete(b"k");
    });
    assert_eq!(r, vec!["Delete(true)", "Delete(false)"]);
    apply_one(&mut sm, 4, |b| b.put(b"k", b"again"));
    assert_eq!(sm.get(b"k").unwrap().meta, KeyMeta { create_index: 4, mod_index: 4, version: 1 });
    assert_eq!(sm.applied_index(), 4);
    assert_eq!(sm.data_bytes(), 1 + 5);
}

// Shows: while recording, every put and delete reports its key's change with the value
// before it, in apply order, a batch's writes to one key each on its own; deleting a
// missing key and a transaction's branch that did not run record nothing.
#[test]
fn changes_are_recorded_with_previous_values() {
    let mut sm = StateMachine::new();
    apply_one(&mut sm, 1, |b| b.put(b"a", b"v1"));
    assert!(sm.take_changes().is_empty(), "off by default");
    sm.record_changes(true);
    apply_one(&mut sm, 2, |b| {
        b.put(b"a", b"v2");
        b.put(b"b", b"w1");
        b.delete(b"a");
        b.delete(b"missing");
    });
    let meta = |create_index, mod_index, version| KeyMeta { create_index, mod_index, version };
    let changes = sm.take_changes();
    let view = |key, put, prev| crate::history::ChangeView { key, put, prev, expired: false };
    assert_eq!(
        changes.iter().collect::<Vec<_>>(),
        vec![
            view(b"a", Some((&b"v2"[..], meta(1, 2, 2))), Some((meta(1, 1, 1), Some(&b"v1"[..])))),
            view(b"b", Some((&b"w1"[..], meta(2, 2, 1))), None),
            view(b"a", None, Some((meta(1, 2, 2), Some(&b"v2"[..])))),
        ]
    );
    let never = Compare {
        target: CompareTarget::Exists,
        op: CompareOp::Equal,
        key: b"missing",
        value: b"",
        number: 0,
    };
    let put = |key| TxnOp::new(TxnOpKind::Put, key, b"t");
    apply_one(&mut sm, 3, |b| {
        b.txn([never].into_iter(), [put(b"s")].into_iter(), [put(b"f")].into_iter())
    });
    let changes = sm.take_changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes.iter().next().unwrap().key, b"f", "only the branch that ran");
    sm.record_changes(false);
    apply_one(&mut sm, 4, |b| b.put(b"a", b"v3"));
    assert!(sm.take_changes().is_empty());
}

// Shows: an entry copies values before only up to its budget; past it, a change keeps
// the metadata before and says the value was left out; the next entry has a new budget.
#[test]
fn values_before_are_copied_within_the_entry_budget() {
    let mut sm = StateMachine::new();
    let big = vec![7u8; PREV_VALUE_BYTES_PER_ENTRY_MAX / 2 + 1];
    apply_one(&mut sm, 1, |b| {
        b.put(b"a", &big);
        b.put(b"b", &big);
    });
    sm.record_changes(true);
    apply_one(&mut sm, 2, |b| {
        b.put(b"a", b"x");
        b.put(b"b", b"y");
    });
    let changes = sm.take_changes();
    let kept: Vec<bool> = changes.iter().map(|c| c.prev.unwrap().1.is_some()).collect();
    assert_eq!(kept, [true, false], "the second value before is over the budget");
    assert_eq!(changes.iter().nth(1).unwrap().prev.unwrap().0.version, 1);
    apply_one(&mut sm, 3, |b| b.delete(b"a"));
    let deleted = sm.take_changes();
    assert_eq!(deleted.iter().next().unwrap().prev.unwrap().1, Some(&b"x"[..]));
}

// Shows: transactions pick the branch by their compares, atomically, and report the
// first failed compare.
#[test]
fn transactions() {
    let mut sm = StateMachine::new();
    apply_one(&mut sm, 1, |b| b.put(b"a", b"1"));
    let cas = |b: &mut BatchBuilder, expect_version: u64| {
        b.txn(
            [Compare {
                key: b"a",
                target: CompareTarget::Version,
                op: CompareOp::Equal,
                value: b"",
                number: expect_version,
            }]
            .into_iter(),
            [TxnOp::new(TxnOpKind::Put, b"a", b"2"), TxnOp::new(TxnOpKind::Get, b"a", b"")]
                .into_iter(),
            [TxnOp::new(TxnOpKind::Get, b"a", b"")].into_iter(),
        )
    };
    let mut seen = Vec::new();
    let mut b = BatchBuilder::new();
    cas(&mut b, 1);
    cas(&mut b, 1);
    sm.apply(2, 1, &b.take(0), |r| {
        if let OpResult::Txn(t) = r {
            seen.push((t.succeeded, t.failed_compare, t.results.to_vec()));
        }
    })
    .unwrap();
    let meta2 = KeyMeta { create_index: 1, mod_index: 2, version: 2 };
    let get_a = TxnResult::Get { key: b"a".to_vec(), found: Some((b"2".to_vec(), meta2, 0, 0)) };
    assert_eq!(seen[0], (true, None, vec![TxnResult::Put(meta2), get_a.clone()]));
    assert_eq!(seen[1], (false, Some(0), vec![get_a]));

    // Each compare target and operator.
    let holds = |sm: &StateMachine, target, op, value: &[u8], number| {
        sm.compare_holds(&Compare { key: b"a", target, op, value, number })
    };
    assert!(holds(&sm, CompareTarget::Value, CompareOp::Equal, b"2", 0));
    assert!(holds(&sm, CompareTarget::Value, CompareOp::Less, b"3", 0));
    assert!(holds(&sm, CompareTarget::ModIndex, CompareOp::Greater, b"", 1));
    assert!(holds(&sm, CompareTarget::CreateIndex, CompareOp::Equal, b"", 1));
    assert!(holds(&sm, CompareTarget::Exists, CompareOp::Equal, b"", 0));
    let missing = |target, op, number| {
        sm.compare_holds(&Compare { key: b"zz", target, op, value: b"x", number })
    };
    assert!(missing(CompareTarget::Exists, CompareOp::NotEqual, 0));
    assert!(missing(CompareTarget::Version, CompareOp::Equal, 0));
    assert!(missing(CompareTarget::Value, CompareOp::NotEqual, 0));
    assert!(!missing(CompareTarget::Value, CompareOp::Equal, 0));
}

/// A state machine restored from the snapshot of `frozen` (of shard `shard`).
fn restore_frozen(frozen: &FrozenState, shard: u32) -> StateMachine {
    let meta = crate::snapshot::SnapshotMeta {
        cluster: "c".into(),
        shard,
        index: frozen.index,
        term: frozen.term,
    };
    let archive = Archive::build(
        meta,
        &corekv_types::membership::Membership::default(),
        frozen.base.as_deref(),
        &frozen.overlay,
        frozen.clock_ms,
        &frozen.leases,
    )
    .unwrap();
    StateMachine::from_snapshot(Arc::new(archive))
}

fn apply_at(
    sm: &mut StateMachine,
    index: u64,
    stamp_ms: u64,
    build: impl FnOnce(&mut BatchBuilder),
) -> Vec<String> {
    apply_in_term(sm, index, 1, stamp_ms, build)
}

// Shows: a key with a deadline exists until the clock reaches it — for reads at a given
// time, and for the writes, compares and transaction reads of entries stamped at or after
// it — whatever the replica; the clock never goes back (an older stamp after a newer one
// changes nothing); a put past the deadline records the expiry, then creates the key
// again (version 1); a put without a deadline takes the key's deadline away.
#[test]
fn deadlines_decide_existence_by_the_stamped_clock() {
    let mut sm = StateMachine::new();
    sm.record_changes(true);
    apply_at(&mut sm, 1, 1_000, |b| b.put_ttl(b"t", b"v", 2_000));
    assert_eq!(sm.get_at(b"t", 1_999).unwrap().expires_ms, 2_000);
    assert!(sm.get_at(b"t", 2_000).is_none(), "gone at its deadline on the reader's clock");
    assert_eq!(sm.timed_keys(), 1);
    sm.take_changes();
    let exists = |b: &mut BatchBuilder| {
        let compare = Compare {
            key: b"t",
            target: CompareTarget::Exists,
            op: CompareOp::Equal,
            value: b"",
            number: 0,
        };
        b.txn([compare].into_iter(), [].into_iter(), [].into_iter());
    };
    let held = |out: &[String]| out[0].contains("succeeded: true");
    assert!(held(&apply_at(&mut sm, 2, 1_999, exists)), "before its deadline it exists");
    assert!(!held(&apply_at(&mut sm, 3, 2_000, exists)), "at its deadline it does not");
    assert!(!held(&apply_at(&mut sm, 4, 1_500, exists)), "an older stamp: the clock stays");
    assert_eq!(sm.clock_ms(), 2_000);
    assert!(sm.take_changes().is_empty(), "compares delete nothing");
    assert_eq!(sm.len(), 1, "still held until a write or an expiry deletes it");

    apply_at(&mut sm, 5, 2_100, |b| b.put(b"t", b"again"));
    let meta = sm.get_at(b"t", 0).unwrap().meta;
    assert_eq!(meta, KeyMeta { create_index: 5, mod_index: 5, version: 1 }, "created again");
    let changes = sm.take_changes();
    let kinds: Vec<(bool, bool)> = changes.iter().map(|c| (c.expired, c.put.is_some())).collect();
    assert_eq!(kinds, [(true, false), (false, true)], "the expiry, then the put");
    assert_eq!(changes.iter().next().unwrap().prev.unwrap().1, Some(&b"v"[..]));
    assert_eq!((sm.timed_keys(), sm.get_at(b"t", u64::MAX).unwrap().expires_ms), (0, 0));

    // A delete of a key past its deadline: not there for the caller, an expiry for
    // watchers.
    apply_at(&mut sm, 6, 2_200, |b| b.put_ttl(b"u", b"v", 2_300));
    sm.take_changes();
    assert_eq!(apply_at(&mut sm, 7, 2_300, |b| b.delete(b"u")), ["Delete(false)"]);
    assert!(sm.take_changes().iter().next().unwrap().expired);
    assert_eq!((sm.len(), sm.timed_keys()), (1, 0));
}

// Shows: an expiry deletes the keys past their deadline that were not written since it
// was proposed, in one entry, recorded as expiries; one applied in another term than it
// was proposed in deletes nothing; the deadline index lists due keys in deadline order
// from where a pass stopped.
#[test]
fn expiries_are_conditional_and_bound_to_their_term() {
    let mut sm = StateMachine::new();
    apply_at(&mut sm, 1, 1_000, |b| {
        b.put_ttl(b"a", b"1", 1_300);
        b.put_ttl(b"b", b"1", 1_100);
        b.put_ttl(b"c", b"1", 1_200);
        b.put_ttl(b"later", b"1", 9_000);
    });
    let due: Vec<(&[u8], u64)> = sm.due(1_300, None).map(|(k, ms, _)| (k, ms)).collect();
    assert_eq!(due, [(&b"b"[..], 1_100), (&b"c"[..], 1_200), (&b"a"[..], 1_300)]);
    let cursor = sm.due(1_300, None).next().unwrap().2.to_vec();
    assert_eq!(sm.due(1_300, Some(&cursor)).count(), 2, "after the cursor");
    // "a" is rewritten (same deadline) before the expiry applies: it stays.
    apply_at(&mut sm, 2, 1_050, |b| b.put_ttl(b"a", b"2", 1_300));
    sm.record_changes(true);
    let keys = [(&b"a"[..], 1u64), (&b"b"[..], 1), (&b"c"[..], 1)];
    let mut b = BatchBuilder::new();
    b.expire(2, keys.into_iter());
    let mut out = Vec::new();
    sm.apply(3, 3, &b.take(1_400), |r| out.push(format!("{r:?}"))).unwrap();
    assert_eq!(out, ["Expire(None)"], "proposed in term 2, applied in term 3");
    assert_eq!(sm.len(), 4);
    b.expire(3, keys.into_iter());
    let mut out = Vec::new();
    sm.apply(4, 3, &b.take(1_400), |r| out.push(format!("{r:?}"))).unwrap();
    assert_eq!(out, ["Expire(Some([1100, 1200]))"]);
    let changes = sm.take_changes();
    let expired: Vec<(&[u8], bool)> = changes.iter().map(|c| (c.key, c.expired)).collect();
    assert_eq!(expired, [(&b"b"[..], true), (&b"c"[..], true)]);
    assert!(sm.get(b"b").is_none() && sm.get(b"c").is_none());
    assert_eq!(sm.get(b"a").unwrap().value, b"2", "written since: kept");
    assert_eq!(sm.timed_keys(), 2);
}

// Shows: a scan over keys past their deadline passes over at most SCAN_SKIPPED_MAX of
// them in a row, then says after which it stopped, and going on from there reaches the
// live keys; live keys in between reset the count.
#[test]
fn scans_over_expired_keys_stop_after_a_bound() {
    use crate::constants::SCAN_SKIPPED_MAX;
    let mut sm = StateMachine::new();
    let n = SCAN_SKIPPED_MAX * 2 + 5;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("e{i:06}").into_bytes()).collect();
    apply_at(&mut sm, 1, 1_000, |b| {
        for key in &keys {
            b.put_ttl(key, b"v", 1_500);
        }
        b.put(b"live", b"v");
    });
    let mut pages = 0;
    let mut lower = Bound::Unbounded;
    let mut seen = Vec::new();
    loop {
        pages += 1;
        let end = sm.scan(lower, Bound::Unbounded, 2_000, |k, _| {
            seen.push(k.to_vec());
            true
        });
        match end.skipped_to {
            Some(key) => {
                assert!(end.more);
                lower = Bound::Excluded(key);
            }
            None => {
                assert!(!end.more);
                break;
            }
        }
    }
    assert_eq!(seen, [b"live".to_vec()]);
    assert_eq!(pages, 3, "two stops after {SCAN_SKIPPED_MAX} skipped keys each, then the end");
    // Before the deadline nothing is skipped.
    let end = sm.scan(Bound::Unbounded, Bound::Unbounded, 1_200, |_, _| true);
    assert_eq!(end, ScanEnd::default());
}

// Shows: deadlines and the clock survive a snapshot: the restored state machine lists the
// same due keys and reads the same.
#[test]
fn deadlines_survive_a_snapshot() {
    let mut sm = StateMachine::new();
    apply_at(&mut sm, 1, 1_000, |b| {
        b.put_ttl(b"a", b"1", 5_000);
        b.put(b"b", b"1");
    });
    let frozen = sm.freeze().unwrap();
    let restored = restore_frozen(&frozen, 0);
    assert_eq!(restored.clock_ms(), 1_000);
    assert_eq!(
        restored.due(5_000, None).map(|(k, ms, _)| (k.to_vec(), ms)).collect::<Vec<_>>(),
        [(b"a".to_vec(), 5_000)]
    );
    assert!(restored.get_at(b"a", 5_000).is_none());
    assert_eq!(restored.get_at(b"a", 4_999).unwrap().expires_ms, 5_000);
    assert_eq!(restored.get_at(b"b", u64::MAX).unwrap().expires_ms, 0);
}

// Shows: scans respect bounds and limits and say whether more keys follow.
#[test]
fn scans() {
    let mut sm = StateMachine::new();
    apply_one(&mut sm, 1, |b| {
        for k in ["a", "b", "ba", "bb", "c"] {
            b.put(k.as_bytes(), b"v");
        }
    });
    let keys = |lower, upper, limit: usize| {
        let mut out = Vec::new();
        let more = sm.scan(lower, upper, 0, |k, _| {
            if out.len() == limit {
                return false;
            }
            out.push(String::from_utf8(k.to_vec()).unwrap());
            true
        });
        (out, more.more)
    };
    assert_eq!(
        keys(Bound::Included(&b"b"[..]), Bound::Excluded(&b"c"[..]), 10),
        (vec!["b".into(), "ba".into(), "bb".into()], false)
    );
    assert_eq!(
        keys(Bound::Excluded(&b"b"[..]), Bound::Unbounded, 2),
        (vec!["ba".into(), "bb".into()], true)
    );
    assert_eq!(keys(Bound::Included(&b"z"[..]), Bound::Excluded(&b"a"[..]), 10), (vec![], false));
}

// Shows: a batch that does not decode changes nothing but is applied (index advances).
#[test]
fn malformed_batch_is_a_deterministic_no_op() {
    let mut sm = StateMachine::new();
    assert!(sm.apply(1, 1, &[1, 9, 0, 0, 0], |_| panic!("no results")).is_err());
    assert_eq!((sm.applied_index(), sm.len()), (1, 0));
}

/// A term-aware `apply_at`: the entry's term is `term`.
fn apply_in_term(
    sm: &mut StateMachine,
    index: u64,
    term: u64,
    stamp_ms: u64,
    build: impl FnOnce(&mut BatchBuilder),
) -> Vec<String> {
    let mut b = BatchBuilder::new();
    build(&mut b);
    let mut out = Vec::new();
    sm.apply(index, term, &b.take(stamp_ms), |r| out.push(format!("{r:?}"))).unwrap();
    out
}

// Shows: a grant's deadline is its stamp plus the time to live and its id names the shard;
// keys put with it (in the grant, by a put, a batch put, a transaction put) are attached;
// a put naming a missing lease changes nothing, in a transaction too; a plain put or a
// delete detaches a key; revoking deletes the attached keys in its entry and says how many.
#[test]
fn leases_attach_keys_and_revoking_deletes_them() {
    let mut sm = StateMachine::new();
    sm.record_changes(true);
    let r = apply_at(&mut sm, 1, 1_000, |b| {
        b.lease_grant(2, 5_000, [(&b"g"[..], &b"1"[..])].into_iter())
    });
    let id = crate::lease::lease_id(2, 1);
    assert_eq!(r, vec![format!("LeaseGranted {{ lease: {id}, ttl_ms: 5000, deadline_ms: 6000, metas: [KeyMeta {{ create_index: 1, mod_index: 1, version: 1 }}] }}")]);
    assert_eq!(sm.leases().get(id).map(|l| (l.ttl_ms, l.deadline_ms)), Some((5_000, 6_000)));
    apply_at(&mut sm, 2, 1_100, |b| {
        b.put_lease(b"p", b"1", id);
        b.batch_put_lease([(&b"q"[..], &b"1"[..]), (&b"r"[..], &b"1"[..])].into_iter(), id);
        b.txn(
            std::iter::empty(),
            [TxnOp { lease: id, ..TxnOp::new(TxnOpKind::PutLease, b"t", b"1") }].into_iter(),
            std::iter::empty(),
        );
    });
    let missing = id + 1;
    let r = apply_at(&mut sm, 3, 1_200, |b| {
        b.put_lease(b"x", b"1", missing);
        b.txn(
            std::iter::empty(),
            [
                TxnOp::new(TxnOpKind::Put, b"y", b"1"),
                TxnOp { lease: missing, ..TxnOp::new(TxnOpKind::PutLease, b"z", b"1") },
            ]
            .into_iter(),
            std::iter::empty(),
        );
    });
    assert_eq!(r, vec![format!("LeaseMissing({missing})"), format!("LeaseMissing({missing})")]);
    assert!(sm.get(b"x").is_none() && sm.get(b"y").is_none(), "nothing of either changed");
    let attached = |sm: &StateMachine| -> Vec<Vec<u8>> {
        sm.leases().get(id).map_or(vec![], |l| l.keys.iter().map(|k| k.to_vec()).collect())
    };
    assert_eq!(
        attached(&sm),
        vec![b"g".to_vec(), b"p".to_vec(), b"q".to_vec(), b"r".to_vec(), b"t".to_vec()]
    );
    apply_at(&mut sm, 4, 1_300, |b| {
        b.put(b"p", b"2");
        b.delete(b"q");
    });
    assert_eq!(sm.leases().lease_of(b"p"), None);
    assert_eq!(attached(&sm), vec![b"g".to_vec(), b"r".to_vec(), b"t".to_vec()]);
    sm.take_changes();
    let r = apply_at(&mut sm, 5, 1_400, |b| {
        b.lease_revoke(id);
        b.lease_revoke(id);
    });
    assert_eq!(
        r,
        vec![
            format!("LeaseRevoked {{ lease: {id}, found: true, keys: 3 }}"),
            format!("LeaseRevoked {{ lease: {id}, found: false, keys: 0 }}")
        ]
    );
    assert!(sm.get(b"g").is_none() && sm.get(b"t").is_none() && sm.get(b"p").is_some());
    let changes = sm.take_changes();
    let deleted: Vec<(&[u8], bool)> =
        changes.iter().map(|c| (c.key, c.put.is_none() && !c.expired)).collect();
    assert_eq!(deleted, vec![(&b"g"[..], true), (&b"r"[..], true), (&b"t"[..], true)]);
    assert!(sm.leases().is_empty() && sm.leases().lease_of(b"g").is_none());
}

// Shows: a checkpoint only moves a deadline later; an expiry ends a lease only while its
// deadline is the one the expiry names (a checkpoint in between wins) and only in the term it
// names; an expiry's deletes are recorded as expiries.
#[test]
fn lease_expiries_are_conditional_and_bound_to_their_term() {
    let mut sm = StateMachine::new();
    sm.record_changes(true);
    apply_in_term(&mut sm, 1, 2, 1_000, |b| {
        b.lease_grant(0, 2_000, [(&b"k"[..], &b"v"[..])].into_iter())
    });
    let id = crate::lease::lease_id(0, 1);
    apply_in_term(&mut sm, 2, 2, 1_500, |b| {
        b.lease_checkpoint([(id, 4_000)].into_iter());
        b.lease_checkpoint([(id, 3_500)].into_iter());
    });
    assert_eq!(sm.leases().get(id).map(|l| l.deadline_ms), Some(4_000));
    // Seen before the checkpoint: refused.
    let r = apply_in_term(&mut sm, 3, 2, 4_100, |b| b.lease_expire(2, [(id, 3_000)].into_iter()));
    assert_eq!(r, vec!["LeaseExpired(Some([]))"]);
    // Decided in term 2, proposed in term 3: refused.
    let r = apply_in_term(&mut sm, 4, 3, 4_100, |b| b.lease_expire(2, [(id, 4_000)].into_iter()));
    assert_eq!(r, vec!["LeaseExpired(None)"]);
    assert!(sm.get(b"k").is_some());
    sm.take_changes();
    let r = apply_in_term(&mut sm, 5, 3, 4_200, |b| b.lease_expire(3, [(id, 4_000)].into_iter()));
    assert_eq!(r, vec![format!("LeaseExpired(Some([({id}, 4000)]))")]);
    assert!(sm.get(b"k").is_none() && sm.leases().is_empty());
    let changes = sm.take_changes();
    assert_eq!(
        changes.iter().map(|c| (c.key, c.expired)).collect::<Vec<_>>(),
        vec![(&b"k"[..], true)]
    );
}

// Shows: leases, their deadlines and attached keys, and the grant counter survive a
// snapshot; a snapshot being written keeps the leases as they were when it froze.
#[test]
fn leases_survive_a_snapshot() {
    let mut sm = StateMachine::new();
    apply_at(&mut sm, 1, 1_000, |b| {
        b.lease_grant(1, 5_000, [(&b"a"[..], &b"1"[..])].into_iter());
        b.lease_grant(1, 9_000, std::iter::empty());
        b.put(b"plain", b"1");
    });
    let (first, second) = (crate::lease::lease_id(1, 1), crate::lease::lease_id(1, 2));
    apply_at(&mut sm, 2, 1_000, |b| b.put_lease(b"b", b"1", second));
    let frozen = sm.freeze().unwrap();
    apply_at(&mut sm, 3, 1_000, |b| b.lease_revoke(second));
    let mut restored = restore_frozen(&frozen, 1);
    assert_eq!(restored.leases().len(), 2, "the revoke came after the freeze");
    assert_eq!(restored.leases().lease_of(b"a"), Some(first));
    assert_eq!(restored.leases().lease_of(b"b"), Some(second));
    assert_eq!(
        restored.leases().get(second).map(|l| (l.ttl_ms, l.deadline_ms)),
        Some((9_000, 10_000))
    );
    let r = apply_at(&mut restored, 3, 1_000, |b| b.lease_grant(1, 5_000, std::iter::empty()));
    assert!(r[0].contains(&format!("lease: {}", crate::lease::lease_id(1, 3))), "{r:?}");
}

/// Applies one transaction of `ops` (no compares) at `index`, stamped `stamp_ms`; its results.
fn computed_txn(
    sm: &mut StateMachine,
    index: u64,
    stamp_ms: u64,
    ops: &[TxnOp<'_>],
) -> Vec<TxnResult> {
    let mut b = BatchBuilder::new();
    b.txn([].into_iter(), ops.iter().copied(), [].into_iter());
    assert!(b.has_computed_ops() == ops.iter().any(|op| op.kind.is_computed()));
    let mut results = Vec::new();
    sm.apply(index, 1, &b.take(stamp_ms), |r| {
        if let OpResult::Txn(t) = r {
            results = t.results.to_vec();
        }
    })
    .unwrap();
    results
}

// Shows computed ops read and write in one apply: INCR creates, adds and keeps the key's
// deadline; a failing op changes nothing while the transaction's other ops apply; APPEND
// and SETRANGE answer lengths; KEEPTTL keeps the deadline; SET-DEADLINE sets, conditions
// and removes one, and does nothing to a missing key.
#[test]
fn computed_ops_read_modify_write() {
    let mut sm = StateMachine::new();
    let op = |kind, key, value| TxnOp::new(kind, key, value);
    assert_eq!(
        computed_txn(&mut sm, 1, 1_000, &[op(TxnOpKind::Incr, b"n", b"5")]),
        [TxnResult::Value(b"5".to_vec())]
    );
    apply_at(&mut sm, 2, 1_000, |b| b.put_ttl(b"t", b"10", 9_000));
    let results = computed_txn(
        &mut sm,
        3,
        1_000,
        &[
            op(TxnOpKind::Incr, b"t", b"-3"),
            op(TxnOpKind::Append, b"s", b"ab"),
            op(TxnOpKind::Incr, b"s", b"1"),
        ],
    );
    assert_eq!(results[0], TxnResult::Value(b"7".to_vec()));
    assert_eq!(results[1], TxnResult::Length(2));
    assert_eq!(results[2], TxnResult::Failed("ERR value is not an integer or out of range".into()));
    let t = sm.get_at(b"t", 1_000).unwrap();
    assert_eq!((t.value, t.expires_ms, t.meta.version), (&b"7"[..], 9_000, 2));
    assert_eq!(sm.get_at(b"s", 0).unwrap().value, b"ab", "the failed INCR changed nothing");

    let range = TxnOp { number: 4, ..op(TxnOpKind::SetRange, b"s", b"xy") };
    assert_eq!(computed_txn(&mut sm, 4, 1_000, &[range]), [TxnResult::Length(6)]);
    assert_eq!(sm.get_at(b"s", 0).unwrap().value, b"ab\0\0xy");
    let keep = op(TxnOpKind::PutKeepTtl, b"t", b"kept");
    assert!(matches!(computed_txn(&mut sm, 5, 1_000, &[keep])[0], TxnResult::Put(_)));
    assert_eq!(sm.get_at(b"t", 1_000).unwrap().expires_ms, 9_000);

    let deadline = |key, expires_ms, condition| TxnOp {
        expires_ms,
        number: condition,
        ..op(TxnOpKind::SetDeadline, key, b"")
    };
    let later_only = 3;
    assert_eq!(
        computed_txn(&mut sm, 6, 1_000, &[deadline(b"t", 5_000, later_only)]),
        [TxnResult::Applied(false)]
    );
    assert_eq!(
        computed_txn(&mut sm, 7, 1_000, &[deadline(b"t", 5_000, 0)]),
        [TxnResult::Applied(true)]
    );
    assert_eq!(sm.get_at(b"t", 1_000).unwrap().expires_ms, 5_000);
    assert_eq!(
        computed_txn(&mut sm, 8, 1_000, &[deadline(b"t", 0, 0)]),
        [TxnResult::Applied(true)]
    );
    assert_eq!(sm.get_at(b"t", u64::MAX).unwrap().value, b"kept", "no deadline any more");
    assert_eq!(
        computed_txn(&mut sm, 9, 1_000, &[deadline(b"gone", 5_000, 0)]),
        [TxnResult::Applied(false)]
    );
    assert!(sm.get_at(b"gone", 0).is_none());
}
