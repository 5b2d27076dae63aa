//! The state machine's lease operations: grants, revokes, checkpoints, expiries, and the
//! attachment of keys to leases (see [`crate::lease`]).

use std::sync::Arc;

use super::{OpResult, StateMachine};
use crate::command::Op;

impl StateMachine {
    /// Applies lease operation `op` of entry `index` (of `entry_term`, stamped `stamp_ms`).
    pub(super) fn apply_lease_op(
        &mut self,
        index: u64,
        entry_term: u64,
        stamp_ms: u64,
        op: Op<'_>,
        on_result: &mut impl FnMut(OpResult<'_>),
    ) {
        match op {
            Op::LeaseGrant { shard, ttl_ms, items } => {
                let deadline_ms = stamp_ms.saturating_add(ttl_ms);
                let lease = Arc::make_mut(&mut self.leases).grant(shard, ttl_ms, deadline_ms);
                let mut metas = std::mem::take(&mut self.scratch_metas);
                metas.clear();
                metas.extend(items.iter().map(|(k, v)| self.put(index, k, v, 0, lease)));
                on_result(OpResult::LeaseGranted { lease, ttl_ms, deadline_ms, metas: &metas });
                self.scratch_metas = metas;
            }
            Op::LeaseRevoke { lease } => {
                let keys = self.end_lease(lease, false);
                on_result(OpResult::LeaseRevoked {
                    lease,
                    found: keys.is_some(),
                    keys: keys.unwrap_or(0),
                });
            }
            Op::LeaseCheckpoint(pairs) => {
                if pairs.iter().any(|&(lease, _)| self.leases.get(lease).is_some()) {
                    let leases = Arc::make_mut(&mut self.leases);
                    for &(lease, deadline_ms) in &pairs {
                        leases.checkpoint(lease, deadline_ms);
                    }
                }
                on_result(OpResult::LeaseCheckpointed(&pairs));
            }
            Op::LeaseExpire { term, leases } if term == entry_term => {
                let mut ended = std::mem::take(&mut self.scratch_leases);
                ended.clear();
                for (lease, seen_ms) in leases {
                    let due = self.leases.get(lease).is_some_and(|l| l.deadline_ms == seen_ms);
                    if due && self.end_lease(lease, true).is_some() {
                        ended.push((lease, seen_ms));
                    }
                }
                on_result(OpResult::LeaseExpired(Some(&ended)));
                self.scratch_leases = ended;
            }
            Op::LeaseExpire { .. } => on_result(OpResult::LeaseExpired(None)),
            _ => unreachable!("only lease operations come here"),
        }
    }

    /// Ends lease `lease`, deleting its keys (as expiries when `expired`); returns how many
    /// it deleted, or `None` when it does not exist.
    pub(super) fn end_lease(&mut self, lease: u64, expired: bool) -> Option<u64> {
        self.leases.get(lease)?;
        let keys = Arc::make_mut(&mut self.leases).remove(lease)?;
        let mut deleted = 0;
        for key in &keys {
            if let Some(current) = self.current(key) {
                self.remove_current(key, current, expired);
                deleted += 1;
            }
        }
        Some(deleted)
    }

    /// Attaches `key` to `lease` (0: detaches it from any).
    pub(super) fn set_lease(&mut self, key: &[u8], lease: u64) {
        if lease != 0 {
            Arc::make_mut(&mut self.leases).attach(key, lease);
        } else if self.leases.lease_of(key).is_some() {
            Arc::make_mut(&mut self.leases).detach(key);
        }
    }
}
