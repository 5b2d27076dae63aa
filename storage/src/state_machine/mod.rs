//! A shard's state machine: an ordered map from key to value and per-key metadata, changed
//! only by applying committed raft entries, in log order.
//!
//! `apply(index, batch)` is deterministic: every replica that applies the same entries ends in
//! the same state. Each key carries
//! - `create_index`: the log index of the write that created it (after a delete, the next put
//!   creates it again);
//! - `mod_index`: the log index of the write that last changed it;
//! - `version`: writes since it was created (1 after the first put).
//!
//! A key may have a deadline (`expires_ms`, ms since the Unix epoch, fixed by the leader that
//! proposed its write). The state machine's clock is the largest batch stamp applied so far
//! ([`crate::command`]): a key whose deadline is at or before it no longer exists for the
//! writes, compares and transaction reads applied from then on — the same on every replica —
//! and the first of them that touches it deletes it as an expiry (recorded for watchers as
//! one). The leader proposes `EXPIRE` for keys past their deadline, so they go without
//! another write; reads on a node pass its own clock ([`StateMachine::get_at`]).
//!
//! Several writes of one batch share a log index; they are applied one after the other, so a
//! key written twice in one batch ends at version + 2 with that index as its mod index. Reads
//! never see a batch half applied: apply runs to completion before anything else on the shard.
//!
//! The applied index lives here, with the data it describes: the state machine is rebuilt on
//! start-up from the newest snapshot plus the log after it, and raft-rs is told the applied
//! index, so a restart neither re-applies nor skips an entry.
//!
//! # Layers
//!
//! ```text
//!   reads look here first ─► overlay   changes since `frozen` (or since `base`)   mutable
//!                            frozen    changes being written into the next snapshot  Arc, read-only
//!                            base      the newest snapshot, an rkyv archive          Arc, read-only
//! ```
//!
//! Each layer holds, per key, a value or a deletion; the first layer that knows a key decides.
//! Taking a snapshot freezes the overlay (a pointer move) and hands `base + frozen` — both
//! immutable — to another thread, which merges them into a new archive; meanwhile the shard
//! keeps applying writes to a fresh overlay. When the new archive is durable it becomes the
//! base and the frozen layer is dropped. A restart loads the newest archive and reads it in
//! place: one read of the file, no rebuild.

use std::collections::BTreeSet;
use std::sync::Arc;

mod computed;
mod leases;
mod reads;

pub use reads::ScanEnd;

use crate::key::Key;
use crate::lease::LeaseTable;
use crate::snapshot::{Archive, Overlay};

use crate::constants::PREV_VALUE_BYTES_PER_ENTRY_MAX;
use crate::history::ChangeSet;

use crate::command::{
    decode_batch, CommandError, Compare, CompareOp, CompareTarget, Op, TxnOp, TxnOpKind,
};

pub use corekv_types::meta::KeyMeta;

pub use crate::value::{Record, ValueRef};

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    /// A get: the key, and its value and metadata or `None` when it does not exist. Owned,
    /// because later operations of the same transaction may change the key.
    Get {
        /// The key read.
        key: Vec<u8>,
        /// Its value, metadata, deadline (0: none) and lease (0: none), when it exists.
        found: Option<(Vec<u8>, KeyMeta, u64, u64)>,
    },
    /// A put: the key's metadata after it.
    Put(KeyMeta),
    /// A delete: whether the key existed.
    Delete(bool),
    /// [`TxnOpKind::Incr`], [`TxnOpKind::IncrFloat`]: the new value.
    Value(Vec<u8>),
    /// [`TxnOpKind::Append`], [`TxnOpKind::SetRange`]: the value's new length.
    Length(u64),
    /// [`TxnOpKind::SetDeadline`]: whether the deadline was set.
    Applied(bool),
    /// A computed op that could not apply (and changed nothing): why, as a Redis error
    /// (`ERR value is not an integer or out of range`).
    Failed(String),
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome<'a> {
    /// Every compare held and the success branch ran.
    pub succeeded: bool,
    /// The first compare that did not hold (0-based), when one did not.
    pub failed_compare: Option<u32>,
    /// Whether the branch that ran had no operations.
    pub branch_empty: bool,
    /// One result per operation of the branch that ran.
    pub results: &'a [TxnResult],
}

/// The result of applying one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult<'a> {
    /// A put: the key's new metadata.
    Put(KeyMeta),
    /// A delete: whether the key existed.
    Delete(bool),
    /// A batch put: metadata per item, in order.
    BatchPut(&'a [KeyMeta]),
    /// A batch delete: whether each key existed, in order.
    BatchDelete(&'a [bool]),
    /// A transaction.
    Txn(TxnOutcome<'a>),
    /// An expiry: the deadlines of the keys it deleted, or `None` when it was refused
    /// (proposed in another term than its entry's).
    Expire(Option<&'a [u64]>),
    /// A put, batch put or transaction named a lease that does not exist: nothing changed.
    LeaseMissing(u64),
    /// A lease was granted (and its items put, metadata per item in order).
    LeaseGranted {
        /// Its id.
        lease: u64,
        /// Its time to live, ms.
        ttl_ms: u64,
        /// Its deadline (ms since the Unix epoch).
        deadline_ms: u64,
        /// The metadata of the keys put with it.
        metas: &'a [KeyMeta],
    },
    /// A revoke: whether the lease existed, and how many keys it deleted.
    LeaseRevoked {
        /// The lease.
        lease: u64,
        /// Whether it existed.
        found: bool,
        /// Keys deleted with it.
        keys: u64,
    },
    /// A checkpoint: the leases and deadlines it named (those that exist moved to at least
    /// that deadline).
    LeaseCheckpointed(&'a [(u64, u64)]),
    /// A lease expiry: the leases it ended (each with the deadline it had), or `None` when it
    /// was refused (proposed in another term than its entry's).
    LeaseExpired(Option<&'a [(u64, u64)]>),
}

/// What a key holds as a change is about to be made to it (see `StateMachine::current`).
struct Current {
    /// Its value's length.
    len: usize,
    /// Its metadata.
    meta: KeyMeta,
    /// A copy of its value, when recording and within the budget for values before.
    copy: Option<Box<[u8]>>,
    /// Its deadline; 0: none.
    expires_ms: u64,
}

/// Layers a state machine no longer uses.
#[derive(Debug, Default)]
#[must_use = "drop it where freeing large maps cannot stall requests"]
pub struct Replaced {
    /// A previous base snapshot.
    pub base: Option<Arc<Archive>>,
    /// A previous frozen layer.
    pub frozen: Option<Arc<Overlay>>,
    /// A previous live overlay.
    pub overlay: Option<Overlay>,
}

/// The frozen state a snapshot is built from: `base` overlaid with `overlay`, as of `index`.
#[derive(Debug, Clone)]
pub struct FrozenState {
    /// The snapshot the state builds on.
    pub base: Option<Arc<Archive>>,
    /// Changes since `base`, up to and including `index`.
    pub overlay: Arc<Overlay>,
    /// Last applied index the state includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The state machine's clock then (ms since the Unix epoch).
    pub clock_ms: u64,
    /// The leases then.
    pub leases: Arc<LeaseTable>,
}

/// A shard's data. See the module docs.
#[derive(Debug, Default)]
pub struct StateMachine {
    base: Option<Arc<Archive>>,
    frozen: Option<Arc<Overlay>>,
    overlay: Overlay,
    applied_index: u64,
    applied_term: u64,
    /// The largest batch stamp applied (ms since the Unix epoch).
    clock_ms: u64,
    /// The keys that have a deadline, as [`timer_key`]s: by deadline, then key.
    deadlines: BTreeSet<Key>,
    /// The leases, shared with the snapshot being made (copied on the first change after).
    leases: Arc<LeaseTable>,
    /// Keys, counted across the layers.
    keys: usize,
    /// Bytes of keys and values, counted across the layers.
    data_bytes: usize,
    scratch_metas: Vec<KeyMeta>,
    scratch_flags: Vec<bool>,
    scratch_txn: Vec<TxnResult>,
    scratch_deadlines: Vec<u64>,
    scratch_leases: Vec<(u64, u64)>,
    /// Whether applying records each key's change ([`StateMachine::record_changes`]).
    recording: bool,
    /// The changes of the entries applied since the last [`StateMachine::take_changes`],
    /// encoded as the watch history keeps them.
    changes: ChangeSet,
    /// Bytes of values before that the entry being applied may still copy into its changes.
    prev_budget: usize,
    /// ...and that the entries applied until the caller's next
    /// [`StateMachine::refill_prev_budget`] may (unlimited unless set).
    prev_budget_shared: Option<usize>,
}

impl StateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of a snapshot, read in place.
    pub fn from_snapshot(archive: Arc<Archive>) -> Self {
        let mut sm = Self::new();
        // A new state machine has nothing to replace.
        let _nothing = sm.restore(archive);
        sm
    }

    /// Replaces the whole state with a snapshot (a follower installing its leader's snapshot,
    /// or start-up). A snapshot being built from the old state is abandoned. Returns the old
    /// state, for the caller to drop where freeing it cannot stall requests.
    pub fn restore(&mut self, archive: Arc<Archive>) -> Replaced {
        self.applied_index = archive.meta().index;
        self.applied_term = archive.meta().term;
        self.keys = archive.len();
        self.data_bytes = archive.data_bytes();
        self.clock_ms = archive.clock_ms();
        self.deadlines = archive.deadlines().map(|(key, ms)| timer_key(ms, key)).collect();
        self.leases = Arc::new(archive.leases().clone());
        Replaced {
            base: self.base.replace(archive),
            frozen: self.frozen.take(),
            overlay: Some(std::mem::take(&mut self.overlay)),
        }
    }

    /// Freezes the current state for a snapshot; `None` while a snapshot is already being made.
    pub fn freeze(&mut self) -> Option<FrozenState> {
        if self.frozen.is_some() {
            return None;
        }
        let overlay = Arc::new(std::mem::take(&mut self.overlay));
        self.frozen = Some(overlay.clone());
        Some(FrozenState {
            base: self.base.clone(),
            overlay,
            index: self.applied_index,
            term: self.applied_term,
            clock_ms: self.clock_ms,
            leases: self.leases.clone(),
        })
    }

    /// Whether a frozen layer exists (a snapshot is being made).
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// The snapshot made from the frozen state is durable: it becomes the base and the frozen
    /// layer goes; they are returned, for the caller to drop where freeing them (a million-key
    /// overlay takes tens of milliseconds) cannot stall requests. Returns `None` (changing
    /// nothing) when it is not the snapshot of the current frozen state (a `restore` abandoned
    /// it meanwhile).
    pub fn adopt_snapshot(&mut self, archive: Arc<Archive>, frozen_index: u64) -> Option<Replaced> {
        let expected = self.frozen.is_some()
            && archive.meta().index == frozen_index
            && self.base.as_ref().is_none_or(|b| b.meta().index <= frozen_index);
        expected.then(|| Replaced {
            base: self.base.replace(archive),
            frozen: self.frozen.take(),
            overlay: None,
        })
    }

    /// Making the snapshot failed: fold the frozen layer back under the live overlay.
    pub fn thaw(&mut self) {
        if let Some(frozen) = self.frozen.take() {
            let mut merged = Arc::try_unwrap(frozen).unwrap_or_else(|shared| (*shared).clone());
            merged.append(&mut self.overlay);
            self.overlay = merged;
        }
    }

    /// The snapshot the state builds on.
    pub fn base(&self) -> Option<&Arc<Archive>> {
        self.base.as_ref()
    }

    /// Keys changed (or deleted) since the last snapshot.
    pub fn overlay_len(&self) -> usize {
        self.overlay.len() + self.frozen.as_ref().map_or(0, |f| f.len())
    }

    /// The last applied log index.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// The state machine's clock: the largest batch stamp applied (ms since the Unix epoch).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The leases.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Keys that have a deadline (those past it and not yet deleted included).
    pub fn timed_keys(&self) -> usize {
        self.deadlines.len()
    }

    /// The keys whose deadline is at or before `now_ms`, by deadline, after the timer key
    /// `after` (where a previous pass stopped): each key, its deadline and its timer key.
    pub fn due<'s>(
        &'s self,
        now_ms: u64,
        after: Option<&'s [u8]>,
    ) -> impl Iterator<Item = (&'s [u8], u64, &'s [u8])> + 's {
        let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.deadlines
            .range::<[u8], _>((lower, std::ops::Bound::Unbounded))
            .map(|timer| {
                let (ms, key) = timer.split_at(8);
                (key, u64::from_be_bytes(ms.try_into().expect("8 bytes")), &timer[..])
            })
            .take_while(move |(_, ms, _)| *ms <= now_ms)
    }

    /// Records that entry `index` of `term` carried nothing to apply (an empty entry a new
    /// leader appends, or a configuration entry).
    pub fn apply_empty(&mut self, index: u64, term: u64) {
        self.advance(index, term);
    }

    fn advance(&mut self, index: u64, term: u64) {
        assert!(index > self.applied_index, "applying {index} after {}", self.applied_index);
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Applies the command batch of entry `index`, calling `on_result` with each operation's
    /// result in order. A batch that does not decode changes nothing (on every replica alike)
    /// and is returned as an error; the index is applied either way.
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        batch: &[u8],
        mut on_result: impl FnMut(OpResult<'_>),
    ) -> Result<(), CommandError> {
        self.advance(index, term);
        self.prev_budget = PREV_VALUE_BYTES_PER_ENTRY_MAX;
        let entry_term = term;
        if self.recording {
            // The keys and values, their values before (mostly as long) and metadata: about
            // twice the batch.
            self.changes.reserve(batch.len() * 2 + 64);
        }
        let batch = decode_batch(batch)?;
        let stamp_ms = batch.stamp_ms.unwrap_or(self.clock_ms);
        if let Some(stamp) = batch.stamp_ms {
            self.clock_ms = self.clock_ms.max(stamp);
        }
        for op in batch.ops {
            match op {
                Op::Put { lease, .. } | Op::BatchPut { lease, .. }
                    if lease != 0 && self.leases.get(lease).is_none() =>
                {
                    on_result(OpResult::LeaseMissing(lease))
                }
                Op::Put { key, value, expires_ms, lease } => {
                    on_result(OpResult::Put(self.put(index, key, value, expires_ms, lease)))
                }
                Op::Delete { key } => on_result(OpResult::Delete(self.delete(key))),
                Op::BatchPut { items, expires_ms, lease } => {
                    let mut metas = std::mem::take(&mut self.scratch_metas);
                    metas.clear();
                    metas.extend(
                        items.iter().map(|(k, v)| self.put(index, k, v, expires_ms, lease)),
                    );
                    on_result(OpResult::BatchPut(&metas));
                    self.scratch_metas = metas;
                }
                op @ (Op::LeaseGrant { .. }
                | Op::LeaseRevoke { .. }
                | Op::LeaseCheckpoint(_)
                | Op::LeaseExpire { .. }) => {
                    self.apply_lease_op(index, entry_term, stamp_ms, op, &mut on_result)
                }
                Op::BatchDelete(keys) => {
                    let mut flags = std::mem::take(&mut self.scratch_flags);
                    flags.clear();
                    flags.extend(keys.iter().map(|k| self.delete(k)));
                    on_result(OpResult::BatchDelete(&flags));
                    self.scratch_flags = flags;
                }
                Op::Txn { compares, success, failure } => {
                    let failed_compare =
                        compares.iter().position(|c| !self.compare_holds(c)).map(|i| i as u32);
                    let branch = if failed_compare.is_none() { &success } else { &failure };
                    let missing = branch.iter().find(|op| {
                        op.kind == TxnOpKind::PutLease && self.leases.get(op.lease).is_none()
                    });
                    if let Some(op) = missing {
                        on_result(OpResult::LeaseMissing(op.lease));
                        continue;
                    }
                    let mut results = std::mem::take(&mut self.scratch_txn);
                    results.clear();
                    for op in branch {
                        results.push(self.txn_op(index, op));
                    }
                    on_result(OpResult::Txn(TxnOutcome {
                        succeeded: failed_compare.is_none(),
                        failed_compare,
                        branch_empty: branch.is_empty(),
                        results: &results,
                    }));
                    self.scratch_txn = results;
                }
                Op::Expire { term, keys } if term == entry_term => {
                    let mut deadlines = std::mem::take(&mut self.scratch_deadlines);
                    deadlines.clear();
                    deadlines.extend(
                        keys.iter().filter_map(|(key, mod_index)| self.expire(key, *mod_index)),
                    );
                    on_result(OpResult::Expire(Some(&deadlines)));
                    self.scratch_deadlines = deadlines;
                }
                Op::Expire { .. } => on_result(OpResult::Expire(None)),
            }
        }
        Ok(())
    }

    /// Has every later put and delete record what it did to its key (with the key's value
    /// before), for [`StateMachine::take_changes`]; off by default.
    pub fn record_changes(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.changes = ChangeSet::default();
        }
    }

    /// The changes recorded since the last call, in the order they were applied (a put or
    /// delete of a missing key changes nothing and is not recorded).
    pub fn take_changes(&mut self) -> ChangeSet {
        std::mem::take(&mut self.changes)
    }

    /// Puts `key`, with a deadline (0: none) or attached to a lease (0: none).
    fn put(
        &mut self,
        index: u64,
        key: &[u8],
        value: &[u8],
        expires_ms: u64,
        lease: u64,
    ) -> KeyMeta {
        let meta = self.put_record(index, key, value, expires_ms);
        self.set_lease(key, lease);
        meta
    }

    fn put_record(&mut self, index: u64, key: &[u8], value: &[u8], expires_ms: u64) -> KeyMeta {
        // Overwriting a live key the overlay already holds (the common case under load): one
        // search; the value's allocation is reused when the length is unchanged, or, when
        // recording, handed to the change as the value before (no copy).
        let clock = self.clock_ms;
        if let Some(Some(record)) =
            self.overlay.get_mut(key).filter(|r| r.as_ref().is_some_and(|r| r.live_at(clock)))
        {
            let old = record.meta;
            retime(&mut self.deadlines, key, record.expires_ms, expires_ms);
            record.expires_ms = expires_ms;
            let meta = KeyMeta {
                create_index: old.create_index,
                mod_index: index,
                version: old.version + 1,
            };
            self.data_bytes = self.data_bytes - record.value.len() + value.len();
            record.meta = meta;
            if !self.recording {
                if record.value.len() == value.len() {
                    record.value.copy_from_slice(value);
                } else {
                    record.value = value.into();
                }
                return meta;
            }
            let budget = self.prev_budget.min(self.prev_budget_shared.unwrap_or(usize::MAX));
            let keep = record.value.len() <= budget;
            let before = keep.then_some(&*record.value);
            self.changes.push(key, Some((value, meta)), Some((old, before)));
            if keep {
                self.prev_budget -= record.value.len();
                if let Some(shared) = &mut self.prev_budget_shared {
                    *shared -= record.value.len();
                }
            }
            if record.value.len() == value.len() {
                record.value.copy_from_slice(value);
            } else {
                record.value = value.into();
            }
            return meta;
        }
        let mut current = self.current(key);
        if current.as_ref().is_some_and(|c| c.expires_ms != 0 && c.expires_ms <= clock) {
            // Past its deadline: it goes as an expiry, and this put creates it again.
            self.remove_current(key, current.take().expect("checked"), false);
        }
        retime(&mut self.deadlines, key, current.as_ref().map_or(0, |c| c.expires_ms), expires_ms);
        let meta = match &current {
            Some(Current { len: old_len, meta: old_meta, .. }) => {
                self.data_bytes = self.data_bytes - old_len + value.len();
                KeyMeta {
                    create_index: old_meta.create_index,
                    mod_index: index,
                    version: old_meta.version + 1,
                }
            }
            None => {
                self.keys += 1;
                self.data_bytes += key.len() + value.len();
                KeyMeta { create_index: index, mod_index: index, version: 1 }
            }
        };
        self.overlay.insert(key.into(), Some(Record { value: value.into(), meta, expires_ms }));
        if self.recording {
            let prev = current.as_ref().map(|c| (c.meta, c.copy.as_deref()));
            self.changes.push(key, Some((value, meta)), prev);
        }
        meta
    }

    /// What `key` holds now — its value's length and its metadata — and, when recording, a
    /// copy of its value for the change about to be made, while the budget for values
    /// before lasts. One search of the layers.
    fn current(&mut self, key: &[u8]) -> Option<Current> {
        let (len, meta, copy, expires_ms) = {
            let current = self.get(key)?;
            let budget = self.prev_budget.min(self.prev_budget_shared.unwrap_or(usize::MAX));
            let keep = self.recording && current.value.len() <= budget;
            let copy = keep.then(|| Box::from(current.value));
            (current.value.len(), current.meta, copy, current.expires_ms)
        };
        if copy.is_some() {
            self.prev_budget -= len;
            if let Some(shared) = &mut self.prev_budget_shared {
                *shared -= len;
            }
        }
        Some(Current { len, meta, copy, expires_ms })
    }

    /// Lets the entries applied from now on copy at most `bytes` of values before into their
    /// changes, all together (besides each entry's own [`PREV_VALUE_BYTES_PER_ENTRY_MAX`]).
    /// The core sets it for each batch of committed entries it applies, so that a follower
    /// catching up on many entries that each replace large values cannot copy without bound.
    pub fn refill_prev_budget(&mut self, bytes: usize) {
        self.prev_budget_shared = Some(bytes);
    }

    /// Deletes `key`; returns whether it existed (a key past its deadline did not: it goes
    /// as an expiry).
    fn delete(&mut self, key: &[u8]) -> bool {
        let Some(current) = self.current(key) else { return false };
        self.remove_current(key, current, false)
    }

    /// Deletes `key` as an expiry if it is past its deadline and its mod index is still
    /// `mod_index`; returns its deadline when it did.
    fn expire(&mut self, key: &[u8], mod_index: u64) -> Option<u64> {
        let due = self
            .get(key)
            .is_some_and(|v| v.meta.mod_index == mod_index && !v.live_at(self.clock_ms));
        let current = due.then(|| self.current(key)).flatten()?;
        let deadline = current.expires_ms;
        self.remove_current(key, current, false);
        Some(deadline)
    }

    /// Removes `key`, which holds `current`: a delete, or an expiry when it is past its
    /// deadline or `lease_expired` (its lease's expiry deletes it). Returns whether it was a
    /// delete (the key existed).
    fn remove_current(&mut self, key: &[u8], current: Current, lease_expired: bool) -> bool {
        let Current { len: old_len, meta, copy, expires_ms } = current;
        let expired = lease_expired || (expires_ms != 0 && expires_ms <= self.clock_ms);
        self.set_lease(key, 0);
        if self.recording {
            if expired {
                self.changes.push_expired(key, (meta, copy.as_deref()));
            } else {
                self.changes.push(key, None, Some((meta, copy.as_deref())));
            }
        }
        retime(&mut self.deadlines, key, expires_ms, 0);
        self.keys -= 1;
        self.data_bytes -= key.len() + old_len;
        if self.base.is_none() && self.frozen.is_none() {
            self.overlay.remove(key);
        } else {
            // A lower layer may hold the key: record the deletion.
            self.overlay.insert(key.into(), None);
        }
        !expired
    }

    /// What `key` holds for the entry being applied: nothing once past its deadline.
    fn live(&self, key: &[u8]) -> Option<ValueRef<'_>> {
        self.get(key).filter(|v| v.live_at(self.clock_ms))
    }

    fn txn_op(&mut self, index: u64, op: &TxnOp<'_>) -> TxnResult {
        match op.kind {
            TxnOpKind::Get => TxnResult::Get {
                key: op.key.to_vec(),
                found: self.live(op.key).map(|v| {
                    let lease = self.leases.lease_of(op.key).unwrap_or(0);
                    (v.value.to_vec(), v.meta, v.expires_ms, lease)
                }),
            },
            TxnOpKind::Put => TxnResult::Put(self.put(index, op.key, op.value, 0, 0)),
            TxnOpKind::PutTtl => {
                TxnResult::Put(self.put(index, op.key, op.value, op.expires_ms, 0))
            }
            TxnOpKind::PutLease => TxnResult::Put(self.put(index, op.key, op.value, 0, op.lease)),
            TxnOpKind::Delete => TxnResult::Delete(self.delete(op.key)),
            _ => self.computed(index, op),
        }
    }

    /// A computed op ([`crate::command`]): reads the key's live value and deadline, writes
    /// what it computes from them (keeping the deadline and the lease, but for
    /// [`TxnOpKind::SetDeadline`]), or fails changing nothing.
    fn computed(&mut self, index: u64, op: &TxnOp<'_>) -> TxnResult {
        let current = self.live(op.key).map(|v| (v.value.to_vec(), v.expires_ms));
        let lease = self.leases.lease_of(op.key).unwrap_or(0);
        let (value, expires_ms) = match current {
            Some((value, expires_ms)) => (Some(value), expires_ms),
            None => (None, 0),
        };
        let computed = match op.kind {
            TxnOpKind::Incr => computed::incr(value.as_deref(), op.value),
            TxnOpKind::IncrFloat => computed::incr_float(value.as_deref(), op.value),
            TxnOpKind::Append => computed::append(value.as_deref(), op.value),
            TxnOpKind::SetRange => computed::set_range(value.as_deref(), op.value, op.number),
            TxnOpKind::PutKeepTtl => {
                Ok(computed::Write::Put(op.value.to_vec(), computed::Outcome::Meta))
            }
            TxnOpKind::SetDeadline => {
                let Some(value) = value else { return TxnResult::Applied(false) };
                if !computed::deadline_holds(op.number, expires_ms, op.expires_ms) {
                    return TxnResult::Applied(false);
                }
                // A lease's key gets a deadline instead (a put detaches it).
                self.put(index, op.key, &value, op.expires_ms, 0);
                return TxnResult::Applied(true);
            }
            _ => unreachable!("{:?} is not computed", op.kind),
        };
        match computed {
            Err(reason) => TxnResult::Failed(reason),
            Ok(computed::Write::Nothing(result)) => result,
            Ok(computed::Write::Put(new, outcome)) => {
                let meta = self.put(index, op.key, &new, expires_ms, lease);
                match outcome {
                    computed::Outcome::Meta => TxnResult::Put(meta),
                    computed::Outcome::Value => TxnResult::Value(new),
                    computed::Outcome::Length => TxnResult::Length(new.len() as u64),
                }
            }
        }
    }

    fn compare_holds(&self, compare: &Compare<'_>) -> bool {
        let current = self.live(compare.key);
        let ordering = match compare.target {
            CompareTarget::Exists => {
                return match compare.op {
                    CompareOp::Equal => current.is_some(),
                    CompareOp::NotEqual => current.is_none(),
                    CompareOp::Less | CompareOp::Greater => false,
                };
            }
            CompareTarget::Value => match current {
                // A missing key has no value: only "not equal" holds.
                None => return compare.op == CompareOp::NotEqual,
                Some(v) => v.value.cmp(compare.value),
            },
            CompareTarget::Version => current.map_or(0, |v| v.meta.version).cmp(&compare.number),
            CompareTarget::ModIndex => current.map_or(0, |v| v.meta.mod_index).cmp(&compare.number),
            CompareTarget::CreateIndex => {
                current.map_or(0, |v| v.meta.create_index).cmp(&compare.number)
            }
        };
        match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }
}

/// A key's entry in the deadline index: its deadline (big-endian, so the index sorts by it),
/// then the key.
fn timer_key(expires_ms: u64, key: &[u8]) -> Key {
    let mut bytes = Vec::with_capacity(8 + key.len());
    bytes.extend_from_slice(&expires_ms.to_be_bytes());
    bytes.extend_from_slice(key);
    Key::from(&bytes[..])
}

/// Moves `key` in the deadline index from deadline `old` to `new` (0: none).
fn retime(deadlines: &mut BTreeSet<Key>, key: &[u8], old: u64, new: u64) {
    if old == new {
        return;
    }
    if old != 0 {
        deadlines.remove(&timer_key(old, key)[..]);
    }
    if new != 0 {
        deadlines.insert(timer_key(new, key));
    }
}

#[cfg(test)]
mod tests;
