//! Leases, in the runs whose nodes' clocks are apart: each client holds at most one lease at
//! a time, granted with one key of its own (`lease-cN`, its value new with each grant), and
//! keeps it alive, reads the key (linearizably) and now and then revokes it. Every read is
//! checked by the rule of docs/DESIGN.md ("Leases"):
//! - it never finds the key of a lease after a revoke of it was acknowledged, or after the
//!   cluster said the lease was gone;
//! - it never misses the key of the lease last granted before it began while the lease
//!   surely lived: up to the grant's sending plus the time to live, and each answered
//!   keep-alive's sending plus the durable time it reported — less the clocks' spread — unless
//!   a revoke of it was sent first.
//!
//! The replicas' agreement on the leases (ids, times to live, deadlines, attached keys) is
//! checked with the rest of their state (`checker::digest`); a lease's expiry deletes its key
//! in the watch histories like any change (`watchers`).

use super::*;

/// What the clocks' spread and the nodes' whole-millisecond clocks allow, µs.
const SLACK_US: u64 = (2 * ttl::CLOCK_SKEW_MS_MAX as u64 + 1) * 1000;

#[derive(Debug, Clone)]
enum LeaseOp {
    Grant { value: Vec<u8>, ttl_ms: u64 },
    KeepAlive { lease: u64 },
    Revoke { lease: u64 },
    Get,
}

/// What a lease operation returned.
#[derive(Debug, Clone)]
pub(crate) enum LeaseRet {
    Granted(u64),
    /// A keep-alive's answer: the durable time left it reported, ms.
    Kept(u64),
    Revoked,
    /// The cluster said the lease is gone.
    NotFound,
    Found(Option<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct LeaseRecord {
    client: usize,
    op: LeaseOp,
    invoked: u64,
    returned: Option<(u64, LeaseRet)>,
    forgotten: bool,
}

/// The operations on leases, and each client's lease.
#[derive(Debug, Default)]
pub(crate) struct LeaseLog {
    ops: Vec<LeaseRecord>,
    /// Each client's lease (from an acknowledged grant), until it is revoked or found gone.
    held: HashMap<usize, u64>,
}

impl LeaseLog {
    pub(crate) fn forget(&mut self, i: usize) {
        self.ops[i].forgotten = true;
    }

    pub(crate) fn complete(&mut self, i: usize, ret: LeaseRet, at: u64) {
        let client = self.ops[i].client;
        match (&self.ops[i].op, &ret) {
            (LeaseOp::Grant { .. }, LeaseRet::Granted(lease)) => {
                self.held.insert(client, *lease);
            }
            (LeaseOp::Revoke { .. }, _) | (_, LeaseRet::NotFound) => {
                self.held.remove(&client);
            }
            _ => {}
        }
        self.ops[i].returned = Some((at, ret));
    }
}

/// An acknowledged grant.
#[derive(Debug, Clone, Copy)]
struct Grant<'a> {
    client: usize,
    value: &'a [u8],
    ttl_us: u64,
    lease: u64,
    /// When it was sent and acknowledged.
    sent: u64,
    acked: u64,
}

/// The key of client `client`'s leases.
fn lease_key(client: usize) -> Vec<u8> {
    format!("lease-c{client}").into_bytes()
}

impl Sim {
    /// Issues the client's next lease operation: a grant when it holds none, else mostly
    /// keep-alives and reads, and sometimes a revoke.
    pub(crate) fn issue_lease(&mut self, client: usize) {
        let key = lease_key(client);
        let shard = shard_for_key(&key, self.opts.shards).get();
        let (conn, fresh) = self.connection(client, shard);
        let request = self.next_request;
        self.next_request += 1;
        let (op, kind, frame) = match self.leases.held.get(&client).copied() {
            None => {
                let c = &mut self.clients[client];
                c.written += 1;
                let value = format!("g{client}.{}", c.written).into_bytes();
                // The simulated ticks are 10 ms: the shortest lease is 400 ms.
                let ttl_ms = self.rng.range(400, 900);
                let frame =
                    self.encoder.lease_grant(request, ttl_ms, &[(&key[..], &value[..])]).to_vec();
                (LeaseOp::Grant { value, ttl_ms }, Kind::Write, frame)
            }
            Some(lease) => match self.rng.below(100) {
                0..55 => {
                    let frame = self.encoder.lease_keep_alive(request, lease).to_vec();
                    (LeaseOp::KeepAlive { lease }, Kind::Read, frame)
                }
                55..95 => {
                    let frame = self.encoder.get(request, &key, Consistency::Linearizable).to_vec();
                    (LeaseOp::Get, Kind::Read, frame)
                }
                _ => {
                    let frame = self.encoder.lease_revoke(request, lease).to_vec();
                    (LeaseOp::Revoke { lease }, Kind::Write, frame)
                }
            },
        };
        let record =
            LeaseRecord { client, op, invoked: self.now, returned: None, forgotten: false };
        self.leases.ops.push(record);
        let op = OpRef::Lease(self.leases.ops.len() - 1);
        self.clients[client].pending = Some(Pending { op, request, kind, conn, shard });
        self.send_request(client, conn, fresh, frame);
    }

    /// What a reply to a lease operation says, if it is an answer (`None`: an error the
    /// client handles as for any request).
    pub(crate) fn lease_outcome(reply: &corekv_proto::client::ReplyFrame<'_>) -> Option<LeaseRet> {
        Some(match reply.reply_type() {
            Reply::LeaseGrantReply => {
                LeaseRet::Granted(reply.reply_as_lease_grant_reply()?.lease())
            }
            Reply::LeaseKeepAliveReply => {
                LeaseRet::Kept(reply.reply_as_lease_keep_alive_reply()?.durable_ms())
            }
            Reply::LeaseRevokeReply => LeaseRet::Revoked,
            Reply::GetReply => LeaseRet::Found(
                reply
                    .reply_as_get_reply()?
                    .entry()
                    .and_then(|e| e.value())
                    .map(|v| v.bytes().to_vec()),
            ),
            Reply::ErrorReply
                if reply.reply_as_error_reply()?.kind_type() == ErrorKind::LeaseNotFound =>
            {
                LeaseRet::NotFound
            }
            _ => return None,
        })
    }

    /// Checks every read of a lease's key against the lease operations (see the module
    /// docs).
    pub(crate) fn check_leases(&mut self) -> SimResult<()> {
        let ops: Vec<&LeaseRecord> = self.leases.ops.iter().filter(|o| !o.forgotten).collect();
        let grants: Vec<Grant<'_>> = ops
            .iter()
            .filter_map(|o| match (&o.op, &o.returned) {
                (LeaseOp::Grant { value, ttl_ms }, Some((acked, LeaseRet::Granted(lease)))) => {
                    Some(Grant {
                        client: o.client,
                        value,
                        ttl_us: *ttl_ms * 1000,
                        lease: *lease,
                        sent: o.invoked,
                        acked: *acked,
                    })
                }
                _ => None,
            })
            .collect();
        // Ops on `lease` (keep-alives, revokes) other than reads.
        let on = |lease: u64| {
            ops.iter().filter(move |o| {
                matches!(o.op, LeaseOp::KeepAlive { lease: l } | LeaseOp::Revoke { lease: l } if l == lease)
            })
        };
        for get in ops.iter().filter(|o| matches!(o.op, LeaseOp::Get)) {
            let Some((returned, LeaseRet::Found(found))) = &get.returned else { continue };
            self.stats.lease_reads += 1;
            match found {
                Some(value) => {
                    let Some(&Grant { lease, .. }) =
                        grants.iter().find(|g| g.client == get.client && g.value == &value[..])
                    else {
                        continue; // a grant whose answer was lost
                    };
                    let ended_before = on(lease).find(|o| {
                        matches!(o.returned, Some((at, LeaseRet::Revoked | LeaseRet::NotFound)) if at < get.invoked)
                    });
                    if let Some(ended) = ended_before {
                        return Err(format!(
                            "client {}'s read at {}us found the key of lease {lease:x}, which \
                             {:?} ended at {}us",
                            get.client,
                            get.invoked,
                            ended.op,
                            ended.returned.as_ref().map_or(0, |r| r.0)
                        ));
                    }
                }
                None => {
                    self.stats.lease_reads_empty += 1;
                    // The client's last grant acknowledged before the read began.
                    let Some(&Grant { ttl_us, lease, sent, .. }) = grants
                        .iter()
                        .filter(|g| g.client == get.client && g.acked < get.invoked)
                        .max_by_key(|g| g.acked)
                    else {
                        continue;
                    };
                    let revoked = on(lease)
                        .any(|o| matches!(o.op, LeaseOp::Revoke { .. }) && o.invoked <= *returned);
                    if revoked {
                        continue;
                    }
                    let kept = on(lease).filter_map(|o| match o.returned {
                        Some((at, LeaseRet::Kept(durable_ms))) if at < get.invoked => {
                            Some(o.invoked + durable_ms * 1000)
                        }
                        _ => None,
                    });
                    let safe_until = kept.fold(sent + ttl_us, u64::max);
                    if *returned + SLACK_US < safe_until {
                        return Err(format!(
                            "client {}'s read ending at {returned}us missed the key of lease \
                             {lease:x}, which surely lived until {safe_until}us",
                            get.client
                        ));
                    }
                }
            }
        }
        self.stats.lease_grants = grants.len() as u64;
        Ok(())
    }
}
