//! Replies and admission: who is waiting for an answer ([`Caller`]), the one check that a
//! request needing the leader can be taken, and error replies (each counted by its
//! [`super::ErrorKind`]).

use corekv_proto::encode::ErrorInfo;

use super::{ConnId, ErrorKind, Op, Outputs, ShardCore};

/// A client waiting for an answer: which connection, which request, what kind, since when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller {
    pub(super) conn: ConnId,
    pub(super) id: u64,
    pub(super) op: Op,
    pub(super) start_us: u64,
}

impl ShardCore {
    /// Whether a read or write that needs the leader can be taken now; when not, `caller` is
    /// answered why (shutting down, failed, not the leader, or `busy`: its path is full).
    pub(super) fn admit(&mut self, caller: Caller, busy: bool) -> bool {
        if self.shutting_down {
            let error = ErrorInfo::Unavailable { reason: "the node is shutting down" };
            self.reply_error(caller, &error);
        } else if let Some(failure) = self.failure.clone() {
            self.reply_error(caller, &ErrorInfo::Unavailable { reason: &failure });
        } else if !self.is_leader() {
            self.reply_not_leader(caller);
        } else if busy {
            let error = ErrorInfo::Busy { retry_after_ms: crate::constants::BUSY_RETRY_AFTER_MS };
            self.reply_error(caller, &error);
        } else {
            return true;
        }
        false
    }

    /// The `NotLeader` error for this shard, with the leader's address when known.
    pub(super) fn not_leader(&self) -> (u64, Option<String>) {
        // raft-rs's own: newer than the last Ready's when this replica just stepped down.
        let leader_id = self.raw.raft.leader_id;
        let leader = corekv_types::ids::NodeId(leader_id);
        let addr = self
            .membership
            .addrs
            .get(&leader)
            .map(|addr| addr.node(leader))
            .or_else(|| self.cfg.registry.iter().find(|n| n.id == leader).cloned())
            .filter(|_| leader_id != raft::INVALID_ID)
            .map(|node| node.client_addr(self.cfg.shard));
        (leader_id, addr)
    }

    /// Answers `caller` with `error`.
    pub(super) fn reply_error(&mut self, caller: Caller, error: &ErrorInfo<'_>) {
        self.metrics.error(ErrorKind::of(error));
        self.metrics.replied(caller.op, self.now_us.saturating_sub(caller.start_us));
        let frame = self.encoder.error(caller.id, error);
        push_reply(&mut self.out, caller.conn, frame);
    }

    /// Answers `caller` that this replica does not lead, naming the leader when known.
    pub(super) fn reply_not_leader(&mut self, caller: Caller) {
        let (leader_id, addr) = self.not_leader();
        let error = ErrorInfo::NotLeader { leader_id, leader_addr: addr.as_deref() };
        self.reply_error(caller, &error);
    }
}

/// Appends one reply frame to the outputs.
pub(super) fn push_reply(out: &mut Outputs, conn: ConnId, frame: &[u8]) {
    let start = out.reply_bytes.len();
    out.reply_bytes.extend_from_slice(frame);
    out.replies.push((conn, start..out.reply_bytes.len()));
}

/// Queues a stream frame for `conn`: one of several a request is answered with (a watch's
/// events and progress), which is not the request's answer (see [`Outputs::streamed`]).
pub(super) fn push_stream(out: &mut Outputs, conn: ConnId, frame: &[u8]) {
    out.streamed.push(out.replies.len());
    push_reply(out, conn, frame);
}
