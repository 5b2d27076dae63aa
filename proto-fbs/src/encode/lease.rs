//! Lease frames (client protocol 6), both directions: a client's grant, revoke, keep-alive
//! and time-to-live requests, and a shard's answers.

use super::{key_tables, ReplyEncoder, RequestEncoder};
use crate::client::{self as c, KeyMeta};

impl RequestEncoder {
    /// Grants a lease of `ttl_ms` on the receiving shard, with `items` put attached to it.
    pub fn lease_grant(&mut self, id: u64, ttl_ms: u64, items: &[(&[u8], &[u8])]) -> &[u8] {
        self.fbb.reset();
        let items = Some(super::request::key_values(&mut self.fbb, items));
        let grant = c::LeaseGrantRequest::create(
            &mut self.fbb,
            &c::LeaseGrantRequestArgs { ttl_ms, items },
        );
        self.finish(id, c::Request::LeaseGrantRequest, grant.as_union_value())
    }

    /// Revokes lease `lease`.
    pub fn lease_revoke(&mut self, id: u64, lease: u64) -> &[u8] {
        self.fbb.reset();
        let revoke =
            c::LeaseRevokeRequest::create(&mut self.fbb, &c::LeaseRevokeRequestArgs { lease });
        self.finish(id, c::Request::LeaseRevokeRequest, revoke.as_union_value())
    }

    /// Keeps lease `lease` alive.
    pub fn lease_keep_alive(&mut self, id: u64, lease: u64) -> &[u8] {
        self.fbb.reset();
        let keep = c::LeaseKeepAliveRequest::create(
            &mut self.fbb,
            &c::LeaseKeepAliveRequestArgs { lease },
        );
        self.finish(id, c::Request::LeaseKeepAliveRequest, keep.as_union_value())
    }

    /// Asks for lease `lease`'s time to live, time left and (when `keys`) attached keys.
    pub fn lease_time_to_live(&mut self, id: u64, lease: u64, keys: bool) -> &[u8] {
        self.fbb.reset();
        let ttl = c::LeaseTimeToLiveRequest::create(
            &mut self.fbb,
            &c::LeaseTimeToLiveRequestArgs { lease, keys },
        );
        self.finish(id, c::Request::LeaseTimeToLiveRequest, ttl.as_union_value())
    }
}

impl ReplyEncoder {
    /// Answers a grant: the lease, its time to live, the metadata of the keys put with it
    /// and the grant's index.
    pub fn lease_grant(
        &mut self,
        id: u64,
        lease: u64,
        ttl_ms: u64,
        metas: &[KeyMeta],
        index: u64,
    ) -> &[u8] {
        self.fbb.reset();
        let metas = Some(self.fbb.create_vector(metas));
        let grant = c::LeaseGrantReply::create(
            &mut self.fbb,
            &c::LeaseGrantReplyArgs { lease, ttl_ms, metas, index },
        );
        self.finish(id, c::Reply::LeaseGrantReply, grant.as_union_value())
    }

    /// Answers a revoke: the keys it deleted and its index.
    pub fn lease_revoke(&mut self, id: u64, keys: u64, index: u64) -> &[u8] {
        self.fbb.reset();
        let revoke =
            c::LeaseRevokeReply::create(&mut self.fbb, &c::LeaseRevokeReplyArgs { keys, index });
        self.finish(id, c::Reply::LeaseRevokeReply, revoke.as_union_value())
    }

    /// Answers a keep-alive: the lease's time to live, and the ms left of its durable
    /// deadline.
    pub fn lease_keep_alive(&mut self, id: u64, lease: u64, ttl_ms: u64, durable_ms: u64) -> &[u8] {
        self.fbb.reset();
        let keep = c::LeaseKeepAliveReply::create(
            &mut self.fbb,
            &c::LeaseKeepAliveReplyArgs { lease, ttl_ms, durable_ms },
        );
        self.finish(id, c::Reply::LeaseKeepAliveReply, keep.as_union_value())
    }

    /// Answers a time-to-live request.
    pub fn lease_time_to_live(
        &mut self,
        id: u64,
        lease: u64,
        ttl_ms: u64,
        remaining_ms: u64,
        keys: Option<&[&[u8]]>,
    ) -> &[u8] {
        self.fbb.reset();
        let keys = keys.map(|keys| {
            let tables = key_tables(&mut self.fbb, keys);
            self.fbb.create_vector(&tables)
        });
        let ttl = c::LeaseTimeToLiveReply::create(
            &mut self.fbb,
            &c::LeaseTimeToLiveReplyArgs { lease, ttl_ms, remaining_ms, keys },
        );
        self.finish(id, c::Reply::LeaseTimeToLiveReply, ttl.as_union_value())
    }
}
