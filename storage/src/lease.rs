//! Leases, as the state machine keeps them: a shard's table of leases, each with its time to
//! live, its deadline and the keys attached to it.
//!
//! A lease's id names its shard: the shard in the high 16 bits, then a counter the shard's
//! state machine advances with each grant (so ids are never reused on a shard, the same on
//! every replica). Its deadline (ms since the Unix epoch, on the clock batches are stamped
//! with) is set by the grant (the grant's stamp plus the time to live) and moved later only by
//! checkpoints: keep-alives live in the leader's memory and reach the table through the
//! checkpoints it proposes. A lease ends when it is revoked or when a leader proposes its
//! expiry; either deletes every key attached to it in the entry that ends it. A key is
//! attached to at most one lease; a write without that lease, or the key's delete or expiry,
//! detaches it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::key::Key;

/// Bits of a lease id below its shard.
pub const LEASE_SHARD_SHIFT: u32 = 48;

/// The id of a shard's `counter`th lease.
pub fn lease_id(shard: u32, counter: u64) -> u64 {
    (u64::from(shard) << LEASE_SHARD_SHIFT) | (counter & ((1 << LEASE_SHARD_SHIFT) - 1))
}

/// The shard a lease id names.
pub fn lease_shard(id: u64) -> u32 {
    (id >> LEASE_SHARD_SHIFT) as u32
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The time to live it was granted, ms.
    pub ttl_ms: u64,
    /// Its deadline as the state machine knows it (ms since the Unix epoch).
    pub deadline_ms: u64,
    /// The keys attached to it.
    pub keys: BTreeSet<Key>,
}

/// A shard's leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTable {
    /// The counter of the last lease granted (the next grant takes the one after).
    pub(crate) last_counter: u64,
    pub(crate) leases: BTreeMap<u64, Lease>,
    /// Which lease each attached key has.
    pub(crate) key_leases: HashMap<Key, u64>,
}

impl LeaseTable {
    /// A table restored from a snapshot: the last counter, each lease (id, time to live,
    /// deadline) and each attached key with its lease. `None` when a key names a lease the
    /// table does not hold.
    pub fn restore<'a>(
        last_counter: u64,
        leases: impl Iterator<Item = (u64, u64, u64)>,
        keys: impl Iterator<Item = (&'a [u8], u64)>,
    ) -> Option<Self> {
        let mut table = LeaseTable { last_counter, ..Self::default() };
        for (id, ttl_ms, deadline_ms) in leases {
            table.leases.insert(id, Lease { ttl_ms, deadline_ms, keys: BTreeSet::new() });
        }
        for (key, id) in keys {
            table.leases.get_mut(&id)?.keys.insert(Key::from(key));
            table.key_leases.insert(Key::from(key), id);
        }
        Some(table)
    }

    /// The counter of the last lease granted.
    pub fn last_counter(&self) -> u64 {
        self.last_counter
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there is no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Keys attached to a lease.
    pub fn attached_keys(&self) -> usize {
        self.key_leases.len()
    }

    /// One lease.
    pub fn get(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Lease)> + '_ {
        self.leases.iter().map(|(&id, lease)| (id, lease))
    }

    /// The lease `key` is attached to.
    pub fn lease_of(&self, key: &[u8]) -> Option<u64> {
        if self.key_leases.is_empty() {
            return None;
        }
        self.key_leases.get(key).copied()
    }

    /// Grants a lease on `shard` with `ttl_ms` until `deadline_ms`; returns its id.
    pub(crate) fn grant(&mut self, shard: u32, ttl_ms: u64, deadline_ms: u64) -> u64 {
        self.last_counter += 1;
        let id = lease_id(shard, self.last_counter);
        self.leases.insert(id, Lease { ttl_ms, deadline_ms, keys: BTreeSet::new() });
        id
    }

    /// Attaches `key` to lease `id` (which exists), detaching it from any other.
    pub(crate) fn attach(&mut self, key: &[u8], id: u64) {
        if let Some(old) = self.key_leases.insert(Key::from(key), id) {
            if old == id {
                return;
            }
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.keys.remove(key);
            }
        }
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(Key::from(key));
        }
    }

    /// Detaches `key` from its lease, if it has one.
    pub(crate) fn detach(&mut self, key: &[u8]) {
        if self.key_leases.is_empty() {
            return;
        }
        if let Some(old) = self.key_leases.remove(key) {
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.keys.remove(key);
            }
        }
    }

    /// Removes lease `id`; returns its keys, in order (still attached: the caller deletes
    /// them, which detaches them).
    pub(crate) fn remove(&mut self, id: u64) -> Option<BTreeSet<Key>> {
        self.leases.remove(&id).map(|lease| lease.keys)
    }

    /// Moves lease `id`'s deadline to `deadline_ms` if that is later; returns whether the
    /// lease exists.
    pub(crate) fn checkpoint(&mut self, id: u64, deadline_ms: u64) -> bool {
        match self.leases.get_mut(&id) {
            Some(lease) => {
                lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: an id carries its shard and counter; attaching moves a key between leases;
    // removing a lease hands back its keys; a checkpoint only moves a deadline later.
    #[test]
    fn ids_attachments_and_checkpoints() {
        let mut table = LeaseTable::default();
        let a = table.grant(3, 5_000, 10_000);
        let b = table.grant(3, 5_000, 10_000);
        assert_eq!((lease_shard(a), a & 0xffff_ffff_ffff), (3, 1));
        assert_eq!(b, lease_id(3, 2));
        table.attach(b"k", a);
        table.attach(b"k", b);
        assert_eq!(table.lease_of(b"k"), Some(b));
        assert!(table.get(a).is_some_and(|l| l.keys.is_empty()));
        assert!(table.checkpoint(b, 20_000) && table.checkpoint(b, 15_000));
        assert_eq!(table.get(b).map(|l| l.deadline_ms), Some(20_000));
        let keys = table.remove(b).unwrap();
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), vec![Key::from(&b"k"[..])]);
        assert!(!table.checkpoint(b, 1));
        assert!(LeaseTable::restore(
            1,
            [(a, 5_000, 10_000)].into_iter(),
            [(&b"x"[..], b)].into_iter()
        )
        .is_none());
    }
}
