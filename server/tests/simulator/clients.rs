//! The simulated clients: what they ask, how they retry, and the history they record.

use super::*;

impl Sim {
    pub(crate) fn next_op_later(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.generation += 1;
        let generation = c.generation;
        let think = self.rng.range(2_000, 30_000);
        self.schedule(think, Event::ClientWake { client, generation });
    }

    /// The client stops waiting for its operation: a write's outcome becomes unknown (and the
    /// client continues as a new checker thread); a read is dropped.
    pub(crate) fn give_up(&mut self, client: usize) {
        let Some(pending) = self.clients[client].pending.take() else { return };
        match pending.kind {
            Kind::Read => self.forget(pending.op),
            Kind::Write => {
                self.clients[client].thread = self.next_thread;
                self.next_thread += 1;
            }
        }
        // The connection is suspect: the next operation opens a new one.
        let c = &mut self.clients[client];
        c.conns.retain(|_, conn| *conn != pending.conn);
        c.leaders.remove(&pending.shard);
    }

    /// Drops operation `op`: it was refused before it could take effect.
    pub(crate) fn forget(&mut self, op: OpRef) {
        match op {
            OpRef::Checked(id) => self.history.forget(id),
            OpRef::Ttl(i) => self.ttl.forget(i),
            OpRef::Lease(i) => self.leases.forget(i),
        }
    }

    pub(crate) fn issue(&mut self, client: usize) {
        if !self.opts.clock_skews.is_empty() && self.rng.chance(0.2) {
            return self.issue_ttl(client);
        }
        if !self.opts.clock_skews.is_empty() && self.rng.chance(0.2) {
            return self.issue_lease(client);
        }
        let key = self.rng.below(self.keys.len() as u64) as usize;
        let key_bytes = self.keys[key].clone();
        let shard = shard_for_key(&key_bytes, self.opts.shards).get();
        let (conn, fresh) = self.connection(client, shard);
        let c = &mut self.clients[client];
        c.written += 1;
        let value = format!("c{client}.{}", c.written).into_bytes();
        let request = self.next_request;
        self.next_request += 1;
        let roll = self.rng.below(100);
        let known = &self.values[key];
        // Runs with computed ops take their share from puts (appends) and deletes
        // (increments, which mostly find a value that is not a number unless a delete or an
        // increment came last).
        let computed = match roll {
            60..70 if self.opts.computed => Some(true),
            92..100 if self.opts.computed => Some(false),
            _ => None,
        };
        let (op, kind, frame) = if let Some(append) = computed {
            let (kind, value, op) = if append {
                let tail = format!("+c{client}.{}", self.clients[client].written).into_bytes();
                (TxnOpKind::Append, tail.clone(), KvOp::Append(tail))
            } else {
                let delta = self.rng.range(1, 9) as i64 - 4;
                (TxnOpKind::Incr, delta.to_string().into_bytes(), KvOp::Incr(delta))
            };
            let spec = TxnOpSpec {
                kind,
                key: &key_bytes,
                value: Some(&value),
                ttl_ms: 0,
                lease: 0,
                number: 0,
            };
            let frame = self.encoder.txn(request, &[], &[spec], &[]).to_vec();
            (op, Kind::Write, frame)
        } else if roll < 35 {
            let frame = self.encoder.get(request, &key_bytes, Consistency::Linearizable).to_vec();
            (KvOp::Get, Kind::Read, frame)
        } else if roll < 70 {
            let frame = self.encoder.put(request, &key_bytes, &value).to_vec();
            (KvOp::Put(value.clone()), Kind::Write, frame)
        } else if roll < 85 && !known.is_empty() {
            let expect =
                known[known.len() - 1 - self.rng.below(known.len().min(3) as u64) as usize].clone();
            let compare = CompareSpec {
                key: &key_bytes,
                target: CompareTarget::Value,
                op: CompareOp::Equal,
                value: Some(&expect),
                number: 0,
            };
            let put = TxnOpSpec {
                kind: TxnOpKind::Put,
                key: &key_bytes,
                value: Some(&value),
                ttl_ms: 0,
                lease: 0,
                number: 0,
            };
            let frame = self.encoder.txn(request, &[compare], &[put], &[]).to_vec();
            (KvOp::Cas { expect, new: value.clone() }, Kind::Write, frame)
        } else {
            let frame = self.encoder.delete(request, &key_bytes).to_vec();
            (KvOp::Delete, Kind::Write, frame)
        };
        if matches!(op, KvOp::Put(_) | KvOp::Cas { .. }) {
            self.values[key].push(value);
        }
        let thread = self.clients[client].thread;
        let id = self.history.invoke(thread, &key_bytes, op, self.now);
        let op = OpRef::Checked(id);
        self.clients[client].pending = Some(Pending { op, request, kind, conn, shard });
        self.send_request(client, conn, fresh, frame);
    }

    /// The client's connection for `shard`, at the leader it knows (else a node drawn), and
    /// whether it is new.
    pub(crate) fn connection(&mut self, client: usize, shard: u32) -> (ConnId, bool) {
        let node = match self.clients[client].leaders.get(&shard) {
            Some(&node) => node,
            None => self.rng.range(1, self.opts.all_nodes()),
        };
        self.connection_to(client, shard, node)
    }

    /// The client's connection to `node` for `shard`, and whether it is new.
    pub(crate) fn connection_to(&mut self, client: usize, shard: u32, node: u64) -> (ConnId, bool) {
        let c = &mut self.clients[client];
        let (conn, fresh) = match c.conns.get(&(node, shard)) {
            Some(&conn) => (conn, false),
            None => {
                let conn = self.next_conn;
                self.next_conn += 1;
                c.conns.insert((node, shard), conn);
                (conn, true)
            }
        };
        if fresh {
            let incarnation = self.nodes[node as usize - 1].incarnation;
            self.conns.insert(conn, Conn { client, node, shard, incarnation, greeted: false });
        }
        (conn, fresh)
    }

    /// Sends the client's request `frame` on `conn` (after a hello on a new one), and
    /// schedules its timeout.
    pub(crate) fn send_request(
        &mut self,
        client: usize,
        conn: ConnId,
        fresh: bool,
        frame: Vec<u8>,
    ) {
        let delay = self.rng.range(20, 500);
        if fresh {
            let hello = self.encoder.hello(0, "sim", self.opts.shards).to_vec();
            self.schedule(delay, Event::Request { conn, frame: hello });
        }
        self.schedule(delay, Event::Request { conn, frame });
        let generation = self.clients[client].generation;
        self.schedule(CLIENT_TIMEOUT_US, Event::ClientWake { client, generation });
    }

    pub(crate) fn on_request(&mut self, conn: ConnId, frame: &[u8]) -> SimResult<()> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let (node, shard, client) = (c.node, c.shard, c.client);
        if !self.alive(node, c.incarnation) {
            // Connection refused or reset before the request got there: it had no effect.
            self.conns.remove(&conn);
            if client >= watchers::WATCHER_BASE && client != OPERATOR {
                self.watcher_conn_refused(client - watchers::WATCHER_BASE, shard, conn);
                return Ok(());
            }
            if client == OPERATOR {
                self.operator_conn_lost(conn);
                return Ok(());
            }
            let pending = &self.clients[client].pending;
            if pending.as_ref().is_some_and(|p| p.conn == conn) {
                let p = self.clients[client].pending.take().expect("checked");
                self.forget(p.op);
                let c = &mut self.clients[client];
                c.conns.retain(|_, k| *k != conn);
                c.leaders.remove(&shard);
                self.next_op_later(client);
            }
            return Ok(());
        }
        let now = self.now;
        let mut greeted = self.conns[&conn].greeted;
        let core = self.core(node, shard).expect("alive");
        core.set_now(now);
        core.on_client_frame(conn, &mut greeted, frame);
        self.conns.get_mut(&conn).expect("present").greeted = greeted;
        self.drive(node, shard, 0)
    }

    pub(crate) fn on_reply(&mut self, conn: ConnId, frame: &[u8]) -> SimResult<()> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let (client, node, shard) = (c.client, c.node, c.shard);
        if client == OPERATOR {
            return self.on_operator_reply(conn, frame);
        }
        if client >= watchers::WATCHER_BASE {
            return self.on_watch_reply(conn, frame);
        }
        let reply = verify_reply(frame).map_err(|e| format!("bad reply frame: {e}"))?;
        let Some(pending) = &self.clients[client].pending else { return Ok(()) };
        if pending.request != reply.id() || pending.conn != conn {
            return Ok(());
        }
        let pending = self.clients[client].pending.take().expect("checked");
        let now = self.now;
        if let (OpRef::Lease(i), Some(ret)) = (pending.op, Sim::lease_outcome(&reply)) {
            self.leases.complete(i, ret, now);
            self.clients[client].leaders.insert(shard, node);
            self.next_op_later(client);
            return Ok(());
        }
        let outcome = match reply.reply_type() {
            Reply::GetReply => {
                let get = reply.reply_as_get_reply().expect("typed");
                let value = get.entry().and_then(|e| e.value()).map(|v| v.bytes().to_vec());
                if let (OpRef::Ttl(_), Some(entry)) = (pending.op, get.entry()) {
                    if entry.ttl_ms() == 0 {
                        return Err(format!(
                            "node {node} read a key with a time to live without one"
                        ));
                    }
                }
                Some(KvRet::Get(value))
            }
            Reply::PutReply | Reply::BatchPutReply => Some(KvRet::Put),
            Reply::DeleteReply => {
                Some(KvRet::Delete(reply.reply_as_delete_reply().expect("typed").deleted()))
            }
            Reply::TxnReply => {
                let txn = reply.reply_as_txn_reply().expect("typed");
                let asked = match pending.op {
                    OpRef::Checked(id) => Some(self.history.op(id)),
                    _ => None,
                };
                let result = txn.results().iter().next();
                match asked {
                    Some(KvOp::Append(_)) => {
                        let length = result.filter(|r| r.kind() == TxnOpKind::Append);
                        let length = length.ok_or("an append answered without a length")?;
                        Some(KvRet::Length(length.length()))
                    }
                    Some(KvOp::Incr(_)) => {
                        let result = result.ok_or("an increment answered without a result")?;
                        if result.error().is_some() {
                            Some(KvRet::Incr(None))
                        } else {
                            let value = result.value().map(|v| v.bytes()).unwrap_or_default();
                            let value =
                                std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                            Some(KvRet::Incr(Some(
                                value.ok_or("an increment's value is no integer")?,
                            )))
                        }
                    }
                    _ => Some(KvRet::Cas(txn.succeeded())),
                }
            }
            Reply::ErrorReply => {
                let error = reply.reply_as_error_reply().expect("typed");
                match error.kind_type() {
                    ErrorKind::CompareFailed => Some(KvRet::Cas(false)),
                    ErrorKind::NotLeader => {
                        let hint = error.kind_as_not_leader().map_or(0, |h| h.leader_id());
                        let c = &mut self.clients[client];
                        if hint != 0 && hint != node {
                            c.leaders.insert(shard, hint);
                        } else {
                            c.leaders.remove(&shard);
                        }
                        None
                    }
                    ErrorKind::NotMember => {
                        // A removed replica, or a spare not added yet: ask another node.
                        self.clients[client].leaders.remove(&shard);
                        None
                    }
                    ErrorKind::Unavailable | ErrorKind::Busy => None,
                    ErrorKind::Timeout => {
                        // Outcome unknown: the operation stays open.
                        self.clients[client].pending = Some(pending);
                        self.give_up(client);
                        self.next_op_later(client);
                        return Ok(());
                    }
                    other => {
                        return Err(format!("node {node} refused a valid request: {other:?}"));
                    }
                }
            }
            other => return Err(format!("unexpected reply {other:?}")),
        };
        match (outcome, pending.op) {
            (Some(ret), OpRef::Checked(op)) => {
                self.history.complete(op, ret, now);
                self.clients[client].leaders.insert(shard, node);
                if let Some(healed) = self.healed_at {
                    let invoked_after = self.history.invoked_at(op) >= healed;
                    if pending.kind == Kind::Write && invoked_after {
                        self.served_after_heal.insert(shard);
                    }
                }
            }
            (Some(_), OpRef::Lease(i)) => {
                return Err(format!(
                    "lease operation {i} answered as another: {:?}",
                    reply.reply_type()
                ))
            }
            (Some(ret), OpRef::Ttl(i)) => {
                // Any replica answers a stale read: it says nothing of who leads.
                if !self.ttl.is_stale_read(i) {
                    self.clients[client].leaders.insert(shard, node);
                }
                self.ttl.complete(i, ret, now);
            }
            (None, op) => self.forget(op),
        }
        self.next_op_later(client);
        Ok(())
    }
}
