//! Keys with a time to live, in runs whose nodes' clocks are apart: clients put keys of their
//! own (not the linearizability-checked ones) with times to live of 5–400 ms (as a put, a
//! batch put or a transaction's put) and read them
//! linearizably, and every read is checked against the puts by the rule of docs/DESIGN.md
//! ("Time"): with node clocks at most [`CLOCK_SKEW_MS_MAX`] from a common one, a deadline
//! fixed on the leader's clock, and reads going by the serving node's, a read finds a key
//! only if it started before its put's acknowledgement plus its time to live plus the
//! clocks' spread (and 1 ms of rounding), and misses it only if it ended after its put was
//! sent plus its time to live minus that — unless another put of the key overlapped.
//!
//! The replicas' agreement on deadlines and on the state machine's clock is checked with the
//! rest of their state (`checker::digest`), expiries in the watch histories with the other
//! changes (`watchers`).

use super::*;

/// How far a node's clock may be from the common one, each way.
pub(crate) const CLOCK_SKEW_MS_MAX: i64 = 25;

/// What the clocks' spread and the nodes' whole-millisecond clocks allow, µs.
const SLACK_US: u64 = (2 * CLOCK_SKEW_MS_MAX as u64 + 1) * 1000;

/// The wall clock at 0 of node `id`: a common start, moved by the node's skew.
pub(crate) fn wall_epoch_ms(opts: &Options, id: u64) -> u64 {
    match opts.clock_skews.get(id as usize - 1) {
        Some(&skew) => (1_000_000 + skew) as u64,
        None => 0,
    }
}

/// The keys with a time to live: one per client thread is too few to overlap; four, shared.
const TTL_KEYS: [&[u8]; 4] = [b"ttl-a", b"ttl-b", b"ttl-c", b"ttl-d"];

#[derive(Debug, Clone)]
enum TtlOp {
    Put {
        value: Vec<u8>,
        ttl_ms: u64,
    },
    /// A linearizable read, or a stale one (any replica, its own applied state and clock).
    Get {
        stale: bool,
    },
}

#[derive(Debug, Clone)]
struct TtlRecord {
    key: &'static [u8],
    op: TtlOp,
    invoked: u64,
    /// When it returned, and what a get found.
    returned: Option<(u64, Option<Vec<u8>>)>,
    forgotten: bool,
}

/// The operations on keys with a time to live.
#[derive(Debug, Default)]
pub(crate) struct TtlLog {
    ops: Vec<TtlRecord>,
}

impl TtlLog {
    pub(crate) fn forget(&mut self, i: usize) {
        self.ops[i].forgotten = true;
    }

    pub(crate) fn is_stale_read(&self, i: usize) -> bool {
        matches!(self.ops[i].op, TtlOp::Get { stale: true })
    }

    pub(crate) fn complete(&mut self, i: usize, ret: KvRet, at: u64) {
        let found = match ret {
            KvRet::Get(found) => found,
            _ => None,
        };
        self.ops[i].returned = Some((at, found));
    }
}

impl Sim {
    /// Issues a put with a time to live, or a read, of a key with one.
    pub(crate) fn issue_ttl(&mut self, client: usize) {
        let key = TTL_KEYS[self.rng.below(TTL_KEYS.len() as u64) as usize];
        let shard = shard_for_key(key, self.opts.shards).get();
        let stale = self.rng.chance(0.25);
        let (conn, fresh) = if stale {
            let node = self.rng.range(1, self.opts.all_nodes());
            self.connection_to(client, shard, node)
        } else {
            self.connection(client, shard)
        };
        let request = self.next_request;
        self.next_request += 1;
        let (op, kind, frame) = if stale {
            let frame = self.encoder.get(request, key, Consistency::Stale).to_vec();
            (TtlOp::Get { stale: true }, Kind::Read, frame)
        } else if self.rng.chance(0.5) {
            let c = &mut self.clients[client];
            c.written += 1;
            let value = format!("t{client}.{}", c.written).into_bytes();
            let ttl_ms = self.rng.range(5, 400);
            // The same write three ways: a put, a batch put of one key, a transaction's put.
            let frame = match self.rng.below(3) {
                0 => self.encoder.put_ttl(request, key, &value, ttl_ms).to_vec(),
                1 => self.encoder.batch_put_ttl(request, &[(key, &value[..])], ttl_ms).to_vec(),
                _ => {
                    let put = TxnOpSpec {
                        kind: TxnOpKind::Put,
                        key,
                        value: Some(&value),
                        ttl_ms,
                        lease: 0,
                        number: 0,
                    };
                    self.encoder.txn(request, &[], &[put], &[]).to_vec()
                }
            };
            (TtlOp::Put { value, ttl_ms }, Kind::Write, frame)
        } else {
            let frame = self.encoder.get(request, key, Consistency::Linearizable).to_vec();
            (TtlOp::Get { stale: false }, Kind::Read, frame)
        };
        let record = TtlRecord { key, op, invoked: self.now, returned: None, forgotten: false };
        self.ttl.ops.push(record);
        let op = OpRef::Ttl(self.ttl.ops.len() - 1);
        self.clients[client].pending = Some(Pending { op, request, kind, conn, shard });
        self.send_request(client, conn, fresh, frame);
    }

    /// Checks every read of a key with a time to live against the puts (see the module
    /// docs).
    pub(crate) fn check_ttl(&mut self) -> SimResult<()> {
        let reads =
            self.ttl.ops.iter().filter(|o| {
                !o.forgotten && matches!(o.op, TtlOp::Get { .. }) && o.returned.is_some()
            });
        for read in reads {
            self.stats.ttl_reads += 1;
            self.stats.ttl_reads_empty +=
                u64::from(read.returned.as_ref().is_some_and(|r| r.1.is_none()));
        }
        let expiries = self.truth.values().flat_map(|(_, changes)| changes).filter(|c| c.3);
        self.stats.expired = expiries.count() as u64;
        let ops: Vec<&TtlRecord> = self.ttl.ops.iter().filter(|o| !o.forgotten).collect();
        let puts: Vec<(&TtlRecord, &[u8], u64)> = ops
            .iter()
            .filter_map(|o| match &o.op {
                TtlOp::Put { value, ttl_ms } => Some((*o, &value[..], *ttl_ms * 1000)),
                TtlOp::Get { .. } => None,
            })
            .collect();
        // Whether a put of `key` other than `put` may have taken effect within [from, to].
        let overlapped = |key: &[u8], put: &TtlRecord, from: u64, to: u64| {
            puts.iter().any(|(p, _, _)| {
                p.key == key
                    && !std::ptr::eq(*p, put)
                    && p.invoked <= to
                    && p.returned.as_ref().is_none_or(|(at, _)| *at >= from)
            })
        };
        for get in ops.iter().filter(|o| matches!(o.op, TtlOp::Get { .. })) {
            let stale = matches!(get.op, TtlOp::Get { stale: true });
            let Some((returned, found)) = &get.returned else { continue };
            match found {
                Some(value) => {
                    let Some((put, _, ttl_us)) =
                        puts.iter().find(|(p, v, _)| p.key == get.key && *v == &value[..])
                    else {
                        return Err(format!(
                            "a read of {:?} found {:?}, which no put wrote",
                            String::from_utf8_lossy(get.key),
                            String::from_utf8_lossy(value)
                        ));
                    };
                    let Some((acked, _)) = put.returned else { continue };
                    if get.invoked >= acked + ttl_us + SLACK_US {
                        return Err(format!(
                            "a read of {:?} at {}us found {:?}, acknowledged at {acked}us with a \
                             time to live of {}ms: past its deadline",
                            String::from_utf8_lossy(get.key),
                            get.invoked,
                            String::from_utf8_lossy(value),
                            ttl_us / 1000
                        ));
                    }
                }
                // A stale read may come from a replica that has not applied the put yet.
                None if stale => {}
                None => {
                    // The last put of the key acknowledged before the read began.
                    let before = puts
                        .iter()
                        .filter(|(p, _, _)| {
                            p.key == get.key
                                && p.returned.as_ref().is_some_and(|(at, _)| *at < get.invoked)
                        })
                        .max_by_key(|(p, _, _)| p.returned.as_ref().map(|(at, _)| *at));
                    let Some((put, _, ttl_us)) = before else { continue };
                    if overlapped(get.key, put, put.invoked, *returned) {
                        continue;
                    }
                    if *returned + SLACK_US <= put.invoked + ttl_us {
                        return Err(format!(
                            "a read of {:?} ending at {returned}us found nothing; the put sent at \
                             {}us had a time to live of {}ms",
                            String::from_utf8_lossy(get.key),
                            put.invoked,
                            ttl_us / 1000
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
