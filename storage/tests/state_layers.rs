//! The layered state machine (snapshot archive + frozen overlay + live overlay) against a
//! plain ordered map: random writes and deletes interleaved with freezing, building and
//! adopting snapshots, failed snapshots folded back, and restores from snapshot files must
//! always read exactly like the model — gets, scans, key counts, byte counts and metadata.

use corekv_types::membership::Membership;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use corekv_storage::command::BatchBuilder;
use corekv_storage::snapshot::{Archive, SnapshotMeta};
use corekv_storage::state_machine::{KeyMeta, StateMachine};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Freeze,
    /// Build the frozen state into a snapshot and adopt it (or, if false, fail and thaw).
    FinishSnapshot(bool),
    /// Build a snapshot of the whole state, write it out, and restore a fresh machine from it.
    Reload,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        3 => (0u8..40).prop_map(Step::Delete),
        1 => Just(Step::Freeze),
        1 => any::<bool>().prop_map(Step::FinishSnapshot),
        1 => Just(Step::Reload),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, KeyMeta)>;

fn apply(
    sm: &mut StateMachine,
    model: &mut Model,
    index: u64,
    build: impl FnOnce(&mut BatchBuilder),
) {
    let mut batch = BatchBuilder::new();
    build(&mut batch);
    sm.apply(index, 1, &batch.take(0), |_| {}).unwrap();
    let _ = model;
}

fn check(sm: &StateMachine, model: &Model) {
    assert_eq!(sm.len(), model.len(), "key count");
    let bytes: usize = model.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
    assert_eq!(sm.data_bytes(), bytes, "byte count");
    let all: Vec<(Vec<u8>, Vec<u8>, KeyMeta)> =
        sm.iter().map(|(k, v)| (k.to_vec(), v.value.to_vec(), v.meta)).collect();
    let expected: Vec<(Vec<u8>, Vec<u8>, KeyMeta)> =
        model.iter().map(|(k, (v, m))| (k.clone(), v.clone(), *m)).collect();
    assert_eq!(all, expected, "full scan");
    for k in 0..40u8 {
        let got = sm.get(&key(k)).map(|v| (v.value.to_vec(), v.meta));
        assert_eq!(got, model.get(&key(k)).cloned(), "get key {k}");
    }
    let (lo, hi) = (key(10), key(20));
    let mut ranged = Vec::new();
    let more = sm.scan(Bound::Excluded(&lo), Bound::Included(&hi), 0, |k, _| {
        if ranged.len() == 3 {
            return false;
        }
        ranged.push(k.to_vec());
        true
    });
    let expected: Vec<Vec<u8>> = model
        .range::<Vec<u8>, _>((Bound::Excluded(&lo), Bound::Included(&hi)))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(ranged, expected.iter().take(3).cloned().collect::<Vec<_>>());
    assert_eq!(more.more, expected.len() > 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    // Shows: see the module docs.
    #[test]
    fn layers_read_like_one_map(steps in proptest::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new();
        let mut model = Model::new();
        let mut index = 0u64;
        let mut frozen: Option<corekv_storage::state_machine::FrozenState> = None;
        for step in steps {
            match step {
                Step::Put(k, v) => {
                    index += 1;
                    let meta = match model.get(&key(k)) {
                        Some((_, m)) => KeyMeta { create_index: m.create_index, mod_index: index, version: m.version + 1 },
                        None => KeyMeta { create_index: index, mod_index: index, version: 1 },
                    };
                    model.insert(key(k), (vec![v; (v % 7) as usize + 1], meta));
                    let value = vec![v; (v % 7) as usize + 1];
                    apply(&mut sm, &mut model, index, |b| b.put(&key(k), &value));
                }
                Step::Delete(k) => {
                    index += 1;
                    model.remove(&key(k));
                    apply(&mut sm, &mut model, index, |b| b.delete(&key(k)));
                }
                Step::Freeze => {
                    if let Some(f) = sm.freeze() {
                        prop_assert!(frozen.is_none());
                        frozen = Some(f);
                    } else {
                        prop_assert!(frozen.is_some(), "freeze refused only while frozen");
                    }
                }
                Step::FinishSnapshot(succeed) => {
                    if let Some(f) = frozen.take() {
                        if succeed {
                            let meta = SnapshotMeta { cluster: "t".into(), shard: 0, index: f.index, term: f.term };
                            let archive = Archive::build(meta, &Membership::default(), f.base.as_deref(), &f.overlay, f.clock_ms, &f.leases).unwrap();
                            prop_assert!(sm.adopt_snapshot(Arc::new(archive), f.index).is_some());
                        } else {
                            sm.thaw();
                        }
                        prop_assert!(!sm.is_frozen());
                    }
                }
                Step::Reload => {
                    // A full snapshot of the current state, through a file, into a fresh machine.
                    sm.thaw();
                    frozen = None;
                    let f = sm.freeze().unwrap();
                    let meta = SnapshotMeta { cluster: "t".into(), shard: 0, index: f.index, term: f.term };
                    let archive = Archive::build(meta, &Membership::default(), f.base.as_deref(), &f.overlay, f.clock_ms, &f.leases).unwrap();
                    let path = dir.path().join("s.snap");
                    std::fs::write(&path, archive.file_bytes()).unwrap();
                    let loaded = Archive::load(&path, "t", 0).unwrap();
                    sm = StateMachine::from_snapshot(Arc::new(loaded));
                    prop_assert_eq!(sm.applied_index(), index);
                }
            }
            check(&sm, &model);
        }
    }
}
