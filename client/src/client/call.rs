//! One call to a shard: its connection (opened and cached per node and shard), the attempt,
//! and the loop that asks [`crate::retry`] what to do next — the I/O around the rules.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_proto::client::{self as wire, ErrorKind};
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::VerifiedReply;
use corekv_types::ids::{NodeId, ShardId};

use crate::connection::{CallError, Connection, OpenError};
use crate::error::{Error, Result};
use crate::retry::{self, Outcome, Retry, Rules, ServerError, Step, Target, Wait};
use crate::types::Consistency;

use super::wire_map::encode;
use super::Client;

impl Client {
    pub(super) async fn connection(
        &self,
        node: NodeId,
        shard: ShardId,
    ) -> Result<Arc<Connection>, OpenError> {
        if let Some(conn) =
            self.inner.connections.lock().unwrap_or_else(|p| p.into_inner()).get(&(node, shard))
        {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let config = &self.inner.config;
        let addr = self.client_addr(node, shard).ok_or_else(|| {
            OpenError::Fatal(Error::InvalidArgument(format!(
                "node {node} is not in the registry, and no node has said where it is"
            )))
        })?;
        let conn = Connection::open(
            &addr,
            config.greeting(),
            self.tls()?,
            config.connect_timeout,
            config.max_in_flight_per_connection,
        )
        .await?;
        let mut connections = self.inner.connections.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have connected meanwhile: keep one.
        let entry = connections.entry((node, shard)).or_insert_with(|| conn.clone());
        if entry.is_closed() {
            *entry = conn;
        }
        Ok(entry.clone())
    }

    pub(super) fn abort_connection(&self, node: NodeId, shard: ShardId, conn: &Connection) {
        self.drop_connection(node, shard);
        conn.abort();
    }

    /// A node could not be reached: the membership may have changed (see
    /// `admin::nodes_for_call`). Returns `outcome`.
    fn lost(&self, outcome: Outcome) -> Outcome {
        self.members_changed();
        outcome
    }

    /// A `NotLeader` naming a leader the client has an address for: the rules follow it.
    fn note_hint(&self, outcome: &Outcome, shard: ShardId, rules: &mut Rules<'_>) {
        if let Outcome::Refusal(ServerError::NotLeader { leader: Some(leader) }) = outcome {
            if self.client_addr(*leader, shard).is_some() {
                rules.learn(*leader);
            }
        }
    }

    /// Where node `node` serves shard `shard`: the registry's address, else the one a node
    /// named.
    pub(super) fn client_addr(&self, node: NodeId, shard: ShardId) -> Option<String> {
        let registry = self.inner.config.registry.node(node).map(|n| n.client_addr(shard));
        registry.or_else(|| {
            let learned = self.inner.learned.lock().unwrap_or_else(|p| p.into_inner());
            learned.get(&(node, shard)).cloned()
        })
    }

    /// Notes where node `node` serves shard `shard`, when the registry does not say.
    pub(super) fn learn_addr(&self, node: NodeId, shard: ShardId, addr: &str) {
        if node == NodeId::NONE || self.inner.config.registry.node(node).is_some() {
            return;
        }
        let mut learned = self.inner.learned.lock().unwrap_or_else(|p| p.into_inner());
        learned.insert((node, shard), addr.to_string());
    }

    pub(super) fn drop_connection(&self, node: NodeId, shard: ShardId) {
        self.inner.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&(node, shard));
    }

    /// The node to try first: the cached leader, else the shard's preferred leader while it
    /// is a member, else a member by the same rule.
    pub(super) fn first_node(&self, shard: ShardId, nodes: &[NodeId]) -> NodeId {
        let preferred = self.registry().preferred_leader(shard);
        self.cached_leader(shard).unwrap_or_else(|| {
            if nodes.contains(&preferred) || nodes.is_empty() {
                preferred
            } else {
                nodes[shard.get() as usize % nodes.len()]
            }
        })
    }

    /// The node after `node` among `nodes` (the shard's members).
    pub(super) fn next_node(&self, nodes: &[NodeId], node: NodeId) -> NodeId {
        let i = nodes.iter().position(|&n| n == node);
        match i {
            Some(i) => nodes[(i + 1) % nodes.len()],
            None => nodes.first().copied().unwrap_or(node),
        }
    }

    pub(super) fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.inner.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.inner.rng.store(x, Ordering::Relaxed);
        let nanos = max.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { x % nanos })
    }

    /// Backoff before attempt `attempt` (from 0): capped exponential, half fixed, half jitter.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.inner.config;
        let exp =
            config.backoff_min.saturating_mul(1u32 << attempt.min(16)).min(config.backoff_max);
        exp / 2 + self.jitter(exp / 2)
    }

    /// Sends a request to shard `shard`'s leader (or any replica for stale reads), following
    /// the rules of [`crate::retry`]. Returns the verified reply; `CompareFailed` replies are
    /// returned for the caller to read as the transaction's outcome.
    pub(super) async fn call(
        &self,
        shard: ShardId,
        retry: Retry,
        timeout: Option<Duration>,
        consistency: Consistency,
        build: impl Fn(u64, &mut RequestEncoder) -> &[u8],
    ) -> Result<VerifiedReply> {
        let timeout = timeout.unwrap_or(self.inner.config.timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let nodes = self.nodes_for_call(shard);
        let mut rules = Rules::new(retry, &nodes);
        let mut node = self.first_node(shard, &nodes);
        loop {
            if Instant::now() >= deadline {
                return Err(rules.expired(timeout));
            }
            let connected =
                tokio::time::timeout_at(deadline.into(), self.connection(node, shard)).await;
            let (outcome, conn) = match connected {
                // The deadline passed while connecting: the check above ends the call.
                Err(_) => continue,
                Ok(Err(OpenError::Fatal(error))) => return Err(error),
                Ok(Err(OpenError::Refused(addr))) => (self.lost(Outcome::Refused(addr)), None),
                Ok(Err(OpenError::Unreachable(why))) => {
                    (self.lost(Outcome::Unreachable(why)), None)
                }
                Ok(Ok(conn)) => {
                    rules.connected();
                    match self.attempt(&conn, shard, retry, deadline, &build).await {
                        Ok(reply) => {
                            if consistency != Consistency::Stale {
                                self.inner.leaders[shard.get() as usize]
                                    .store(node.get(), Ordering::Relaxed);
                            }
                            return Ok(reply);
                        }
                        Err(outcome) => {
                            self.note_hint(&outcome, shard, &mut rules);
                            (outcome, Some(conn))
                        }
                    }
                }
            };
            let (target, wait) = match rules.after(node, outcome) {
                Step::EveryNodeRefused => {
                    return Err(self.every_node_refused(shard, started).await)
                }
                Step::Fail { error, leader, connection } => {
                    self.settle(shard, node, leader, connection, conn.as_deref());
                    return Err(error);
                }
                Step::Again { target, wait, leader, connection } => {
                    self.settle(shard, node, leader, connection, conn.as_deref());
                    (target, wait)
                }
            };
            node = match target {
                Target::Same => node,
                Target::Next => self.next_node(&nodes, node),
                Target::Hinted(leader) => leader,
            };
            self.wait(wait, rules.attempt, deadline).await;
        }
    }

    /// Waits as a step says before the next attempt (never past `deadline`).
    async fn wait(&self, wait: Wait, attempt: u32, deadline: Instant) {
        match wait {
            Wait::No => {}
            Wait::Backoff => {
                let delay = self.backoff(attempt.saturating_sub(1));
                self.sleep_until(delay, deadline).await;
            }
            Wait::For(delay) => self.sleep_until(delay + self.jitter(delay), deadline).await,
        }
    }

    /// One attempt on `conn`: the reply to hand back (a success, or `CompareFailed`), or what
    /// the attempt came to for the retry rules. A transaction's attempt lasts until the
    /// deadline; other calls' last at most `attempt_timeout`.
    pub(super) async fn attempt(
        &self,
        conn: &Connection,
        shard: ShardId,
        retry: Retry,
        deadline: Instant,
        build: &impl Fn(u64, &mut RequestEncoder) -> &[u8],
    ) -> Result<VerifiedReply, Outcome> {
        let attempt_started = Instant::now();
        let attempt_deadline = if retry == Retry::Once {
            deadline
        } else {
            deadline.min(attempt_started + self.inner.config.attempt_timeout)
        };
        let answer = tokio::time::timeout_at(
            attempt_deadline.into(),
            conn.call(|id| encode(|e| build(id, e))),
        )
        .await;
        let reply = match answer {
            Err(_) => return Err(Outcome::NoAnswer(attempt_started.elapsed())),
            Ok(Err(CallError::NotSent(reason))) => return Err(Outcome::NotSent(reason)),
            Ok(Err(CallError::Lost(reason))) => return Err(Outcome::Lost(reason)),
            Ok(Ok(reply)) => reply,
        };
        let Some(error) = reply.reply().reply_as_error_reply() else { return Ok(reply) };
        if let Some(hint) = error.kind_as_not_leader() {
            if let (Some(addr), leader) = (hint.leader_addr(), NodeId(hint.leader_id())) {
                self.learn_addr(leader, shard, addr);
            }
        }
        match server_error(&error) {
            Some(refusal) => Err(Outcome::Refusal(refusal)),
            None => Ok(reply),
        }
    }

    /// Carries out what a step says of the shard's cached leader and of the connection used.
    pub(super) fn settle(
        &self,
        shard: ShardId,
        node: NodeId,
        leader: retry::Leader,
        connection: retry::Connection,
        conn: Option<&Connection>,
    ) {
        let slot = &self.inner.leaders[shard.get() as usize];
        match leader {
            retry::Leader::Keep => {}
            retry::Leader::Forget => self.forget_leader(shard, node),
            retry::Leader::Set(leader) => slot.store(leader.get(), Ordering::Relaxed),
            retry::Leader::MoveOn => {
                let next = self.next_node(&self.shard_nodes(shard), node).get();
                let _ = slot
                    .compare_exchange(node.get(), next, Ordering::Relaxed, Ordering::Relaxed)
                    .or_else(|_| {
                        let unknown = NodeId::NONE.get();
                        slot.compare_exchange(unknown, next, Ordering::Relaxed, Ordering::Relaxed)
                    });
            }
        }
        match (connection, conn) {
            (retry::Connection::Keep, _) => {}
            (retry::Connection::Drop, _) => self.drop_connection(node, shard),
            (retry::Connection::Reset, Some(conn)) => self.abort_connection(node, shard, conn),
            (retry::Connection::Reset, None) => self.drop_connection(node, shard),
        }
    }

    /// The error for a call whose every node refused the connection to `shard`'s port. When
    /// that is not shard 0, the registry file may give the cluster more shards than it has
    /// (the ports past its last shard are not listened on): shard 0's hello then says so.
    pub(super) async fn every_node_refused(&self, shard: ShardId, started: Instant) -> Error {
        if shard != ShardId(0) {
            for &node in &self.inner.nodes {
                match self.connection(node, ShardId(0)).await {
                    Err(OpenError::Fatal(error)) => return error,
                    Err(OpenError::Refused(_)) => continue,
                    // A node that serves shard 0 and accepts this client's shard count: the
                    // refusals are about this shard alone.
                    Ok(_) | Err(OpenError::Unreachable(_)) => break,
                }
            }
        }
        let addrs: Vec<String> =
            self.registry().nodes.iter().map(|n| n.client_addr(shard)).collect();
        Error::Unavailable {
            after: started.elapsed(),
            last_error: format!(
                "every node refused the connection (nothing listens on {}): are the nodes \
                 running?",
                addrs.join(", ")
            ),
        }
    }

    pub(super) fn forget_leader(&self, shard: ShardId, node: NodeId) {
        let _ = self.inner.leaders[shard.get() as usize].compare_exchange(
            node.get(),
            NodeId::NONE.get(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(super) async fn sleep_until(&self, delay: Duration, deadline: Instant) {
        let wake = (Instant::now() + delay).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// An error reply as the retry rules take it; `None` for `CompareFailed`, which is the
/// transaction's outcome for the caller to read.
pub(super) fn server_error(error: &wire::ErrorReply<'_>) -> Option<ServerError> {
    Some(match error.kind_type() {
        ErrorKind::NotLeader => ServerError::NotLeader {
            leader: error
                .kind_as_not_leader()
                .map(|e| NodeId(e.leader_id()))
                .filter(|&leader| leader != NodeId::NONE),
        },
        ErrorKind::Busy => {
            let ms = error.kind_as_busy().map(|b| b.retry_after_ms() as u64).unwrap_or(5);
            ServerError::Busy { retry_after: Duration::from_millis(ms.max(1)) }
        }
        ErrorKind::Unavailable => ServerError::Unavailable(
            error
                .kind_as_unavailable()
                .and_then(|e| e.reason())
                .unwrap_or("no reason given")
                .into(),
        ),
        ErrorKind::Timeout => ServerError::Timeout,
        ErrorKind::CompareFailed => return None,
        ErrorKind::WrongShard => ServerError::Final(Error::WrongShard {
            shard: ShardId(error.kind_as_wrong_shard().map(|w| w.shard()).unwrap_or(0)),
        }),
        ErrorKind::InvalidRequest => ServerError::Final(Error::InvalidRequest(
            error
                .kind_as_invalid_request()
                .and_then(|e| e.reason())
                .unwrap_or("invalid request")
                .into(),
        )),
        // A replica removed from its shard: ask the others.
        ErrorKind::NotMember => ServerError::NotLeader { leader: None },
        ErrorKind::ChangeRefused => ServerError::Final(Error::ChangeRefused(
            error
                .kind_as_change_refused()
                .and_then(|e| e.reason())
                .unwrap_or("no reason given")
                .into(),
        )),
        ErrorKind::PermissionDenied => ServerError::Final(Error::PermissionDenied(
            error
                .kind_as_permission_denied()
                .and_then(|e| e.reason())
                .unwrap_or("no reason given")
                .into(),
        )),
        ErrorKind::LeaseNotFound => ServerError::Final(Error::LeaseNotFound(crate::LeaseId(
            error.kind_as_lease_not_found().map(|e| e.lease()).unwrap_or(0),
        ))),
        ErrorKind::TooLarge => {
            let t = error.kind_as_too_large();
            ServerError::Final(Error::TooLarge {
                what: t.and_then(|t| t.what()).unwrap_or("request").to_string(),
                size: t.map(|t| t.size()).unwrap_or(0),
                limit: t.map(|t| t.limit()).unwrap_or(0),
            })
        }
        kind => ServerError::Final(Error::Protocol(format!("unknown error kind {}", kind.0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_proto::encode::{ErrorInfo, ReplyEncoder};
    use corekv_proto::frame::VerifiedReply;

    fn mapped(error: &ErrorInfo<'_>) -> Option<ServerError> {
        let reply = VerifiedReply::new(ReplyEncoder::new().error(1, error).to_vec()).unwrap();
        server_error(&reply.reply().reply_as_error_reply().unwrap())
    }

    // Shows: every error kind reaches the retry rules as what it means; CompareFailed is left
    // for the transaction to read.
    #[test]
    fn error_replies_map_to_what_the_rules_act_on() {
        let none = ErrorInfo::NotLeader { leader_id: 0, leader_addr: None };
        assert_eq!(mapped(&none), Some(ServerError::NotLeader { leader: None }));
        let hint = ErrorInfo::NotLeader { leader_id: 3, leader_addr: Some("h:1") };
        assert_eq!(mapped(&hint), Some(ServerError::NotLeader { leader: Some(NodeId(3)) }));
        let busy = mapped(&ErrorInfo::Busy { retry_after_ms: 7 });
        assert_eq!(busy, Some(ServerError::Busy { retry_after: Duration::from_millis(7) }));
        let down = mapped(&ErrorInfo::Unavailable { reason: "no quorum" });
        assert_eq!(down, Some(ServerError::Unavailable("no quorum".into())));
        assert_eq!(mapped(&ErrorInfo::Timeout), Some(ServerError::Timeout));
        assert_eq!(mapped(&ErrorInfo::CompareFailed { compare: 1 }), None);
        let big = mapped(&ErrorInfo::TooLarge { what: "value", size: 9, limit: 8 });
        assert_eq!(
            big,
            Some(ServerError::Final(Error::TooLarge { what: "value".into(), size: 9, limit: 8 }))
        );
        let bad = mapped(&ErrorInfo::InvalidRequest { reason: "empty key" });
        assert_eq!(bad, Some(ServerError::Final(Error::InvalidRequest("empty key".into()))));
        let removed = mapped(&ErrorInfo::NotMember { node_id: 3, shard: 0 });
        assert_eq!(removed, Some(ServerError::NotLeader { leader: None }), "ask the others");
        let refused = mapped(&ErrorInfo::ChangeRefused { reason: "pending" });
        assert_eq!(refused, Some(ServerError::Final(Error::ChangeRefused("pending".into()))));
    }
}
