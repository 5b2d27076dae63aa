//! Leases: grant (with keys put attached, in one request), keep alive, revoke, time to live.
//!
//! A lease lives on one shard — its id says which — and keys attached to it must be on that
//! shard: grant it near the keys it will carry ([`Client::lease_grant_for`]), and give keys
//! that share a lease a hash tag (`{service:api}/...`). Keep-alives cost the cluster no log
//! entry; the recipes in [`crate::recipes`] keep leases alive for you.

use std::time::Duration;

use corekv_proto::constants::{BATCH_KEYS_MAX, LEASE_TTL_MS_MIN, TTL_MS_MAX};
use corekv_types::ids::ShardId;

use crate::error::{Error, Result};
use crate::retry::Retry;
use crate::types::{Consistency, KeyMeta, Lease, LeaseId, LeaseInfo, LeaseKept};

use super::wire_map::{check_key, check_value, protocol};
use super::Client;

/// A lease's time to live in whole milliseconds, checked against the limits.
fn lease_ttl_ms(ttl: Duration) -> Result<u64> {
    let ms = ttl.as_millis();
    if ms < u128::from(LEASE_TTL_MS_MIN) || ms > u128::from(TTL_MS_MAX) {
        return Err(Error::InvalidArgument(format!(
            "a lease's time to live must be from {LEASE_TTL_MS_MIN} ms to {TTL_MS_MAX} ms (ten \
             years), not {ttl:?}"
        )));
    }
    Ok(ms as u64)
}

impl Client {
    /// Grants a lease of `ttl` on shard `shard`.
    pub async fn lease_grant_on(&self, shard: ShardId, ttl: Duration) -> Result<Lease> {
        self.grant(shard, ttl, &[], None).await
    }

    /// Grants a lease of `ttl` on the shard that holds `key`: keys with the same hash tag as
    /// `key` can be attached to it.
    pub async fn lease_grant_for(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Lease> {
        let key = key.as_ref();
        check_key(key)?;
        self.grant(self.shard_of(key), ttl, &[], None).await
    }

    /// Grants a lease of `ttl` and puts `items` attached to it, in one entry: the keys exist
    /// exactly as long as the lease. Every key must be on one shard (give them a hash tag).
    pub async fn lease_grant_with<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        ttl: Duration,
        items: &[(K, V)],
        timeout: Option<Duration>,
    ) -> Result<Lease> {
        let Some((first, _)) = items.first() else {
            return Err(Error::InvalidArgument(
                "a grant with keys needs at least one key (lease_grant_on grants one without)"
                    .to_string(),
            ));
        };
        if items.len() > BATCH_KEYS_MAX {
            return Err(Error::TooLarge {
                what: "batch (keys per request)".into(),
                size: items.len() as u64,
                limit: BATCH_KEYS_MAX as u64,
            });
        }
        let shard = self.shard_of(first.as_ref());
        let mut pairs = Vec::with_capacity(items.len());
        for (key, value) in items {
            let (key, value) = (key.as_ref(), value.as_ref());
            check_key(key)?;
            check_value(value)?;
            if self.shard_of(key) != shard {
                return Err(Error::InvalidArgument(format!(
                    "the keys of one lease must be on one shard: {:?} is on shard {}, {:?} on \
                     shard {shard} (give them a hash tag)",
                    String::from_utf8_lossy(key),
                    self.shard_of(key),
                    String::from_utf8_lossy(first.as_ref()),
                )));
            }
            pairs.push((key, value));
        }
        self.grant(shard, ttl, &pairs, timeout).await
    }

    async fn grant(
        &self,
        shard: ShardId,
        ttl: Duration,
        items: &[(&[u8], &[u8])],
        timeout: Option<Duration>,
    ) -> Result<Lease> {
        let ttl_ms = lease_ttl_ms(ttl)?;
        self.check_shard(shard)?;
        let frame = self
            .call(shard, Retry::Write, timeout, Consistency::Linearizable, |id, e| {
                e.lease_grant(id, ttl_ms, items)
            })
            .await?;
        let reply = frame.reply();
        let grant = reply.reply_as_lease_grant_reply().ok_or_else(|| protocol("lease grant"))?;
        Ok(Lease {
            id: LeaseId(grant.lease()),
            ttl: Duration::from_millis(grant.ttl_ms()),
            metas: grant.metas().iter().flatten().map(KeyMeta::from).collect(),
            index: grant.index(),
        })
    }

    /// Keeps `lease` alive: the shard's leader keeps it its whole time to live again from
    /// when it answers, and the answer says how long any later leader surely keeps it
    /// ([`LeaseKept::durable`]). Costs the cluster no log entry; answered by the shard's
    /// leader once it confirmed it leads. [`Error::LeaseNotFound`] when it is gone.
    pub async fn lease_keep_alive(&self, lease: LeaseId) -> Result<LeaseKept> {
        self.lease_keep_alive_within(lease, None).await
    }

    /// [`Client::lease_keep_alive`] with a deadline for the call.
    pub async fn lease_keep_alive_within(
        &self,
        lease: LeaseId,
        timeout: Option<Duration>,
    ) -> Result<LeaseKept> {
        let shard = self.lease_shard(lease)?;
        let frame = self
            .call(shard, Retry::Read, timeout, Consistency::Linearizable, |id, e| {
                e.lease_keep_alive(id, lease.0)
            })
            .await?;
        let reply = frame.reply();
        let keep = reply.reply_as_lease_keep_alive_reply().ok_or_else(|| protocol("keep-alive"))?;
        Ok(LeaseKept {
            ttl: Duration::from_millis(keep.ttl_ms()),
            durable: Duration::from_millis(keep.durable_ms()),
        })
    }

    /// Revokes `lease`: it ends and every key attached to it is deleted, in one entry.
    /// Returns how many keys went. [`Error::LeaseNotFound`] when it was already gone.
    pub async fn lease_revoke(&self, lease: LeaseId) -> Result<u64> {
        let shard = self.lease_shard(lease)?;
        let frame = self
            .call(shard, Retry::Write, None, Consistency::Linearizable, |id, e| {
                e.lease_revoke(id, lease.0)
            })
            .await?;
        let reply = frame.reply();
        let revoke = reply.reply_as_lease_revoke_reply().ok_or_else(|| protocol("lease revoke"))?;
        Ok(revoke.keys())
    }

    /// What the shard's leader knows of `lease`: its time to live, the time left, and (when
    /// `keys`) the keys attached to it.
    pub async fn lease_time_to_live(&self, lease: LeaseId, keys: bool) -> Result<LeaseInfo> {
        let shard = self.lease_shard(lease)?;
        let frame = self
            .call(shard, Retry::Read, None, Consistency::Linearizable, |id, e| {
                e.lease_time_to_live(id, lease.0, keys)
            })
            .await?;
        let reply = frame.reply();
        let info =
            reply.reply_as_lease_time_to_live_reply().ok_or_else(|| protocol("lease ttl"))?;
        Ok(LeaseInfo {
            id: LeaseId(info.lease()),
            ttl: Duration::from_millis(info.ttl_ms()),
            remaining: Duration::from_millis(info.remaining_ms()),
            keys: info.keys().iter().flatten().map(|k| k.key().bytes().to_vec()).collect(),
        })
    }

    /// The shard `lease` lives on, checked against the cluster's shard count.
    fn lease_shard(&self, lease: LeaseId) -> Result<ShardId> {
        let shard = lease.shard();
        if lease.0 == 0 || shard.get() >= self.shard_count() {
            return Err(Error::InvalidArgument(format!(
                "lease {lease} names shard {shard}; the cluster has {} shards",
                self.shard_count()
            )));
        }
        Ok(shard)
    }

    /// Shards in the cluster (the registry's count).
    pub fn shard_count(&self) -> u32 {
        self.inner.config.registry.shards
    }
}
