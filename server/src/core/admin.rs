//! The operator's requests on the client port (client protocol 3): the shard's membership,
//! a membership change, a leadership transfer. A change is answered once it is applied on
//! the leader, a transfer once leadership moved; both say why when they did not.
//!
//! ```text
//!  MemberChangeRequest ─► propose_membership_change ─┬─ refused ──► ChangeRefused{reason}
//!                                                    │              (NotLeader: not the leader)
//!                                                    └─ index ──► waits ─► applied: reply(index)
//!                                       lost leadership, replaced by a snapshot, or no apply
//!                                       within PROPOSAL_TIMEOUT_MS ─► Timeout (outcome unknown)
//!  TransferLeaderRequest ─► checks ─► raft-rs transfer ─► waits ─► leader is the target: reply
//!                                                       └ another leader, or none within two
//!                                                         election timeouts ─► ChangeRefused
//! ```

use corekv_proto::encode::ErrorInfo;
use corekv_types::ids::{LogIndex, NodeId};
use corekv_types::membership::{MembershipChange, ShardMembers};
use raft::eraftpb::Entry;

use super::membership::ChangeRefused;
use super::replies::{push_reply, Caller};
use super::{Op, ShardCore};
use crate::constants::PROPOSAL_TIMEOUT_MS;

/// A membership change proposed for an operator, waiting to apply.
#[derive(Debug)]
pub(super) struct ChangeWaiter {
    index: u64,
    term: u64,
    caller: Caller,
}

/// A leadership transfer asked for by an operator.
#[derive(Debug)]
pub(super) struct TransferWaiter {
    to: u64,
    caller: Caller,
    deadline_us: u64,
}

/// The operator's requests waiting for an outcome.
#[derive(Debug, Default)]
pub(super) struct Admin {
    changes: Vec<ChangeWaiter>,
    transfers: Vec<TransferWaiter>,
}

impl Admin {
    /// Takes out the waiting changes `which` picks; the others go on waiting.
    fn take_changes(&mut self, which: impl Fn(&ChangeWaiter) -> bool) -> Vec<ChangeWaiter> {
        let (taken, left) = std::mem::take(&mut self.changes).into_iter().partition(which);
        self.changes = left;
        taken
    }

    /// Takes out the waiting transfers `which` picks; the others go on waiting.
    fn take_transfers(&mut self, which: impl Fn(&TransferWaiter) -> bool) -> Vec<TransferWaiter> {
        let (taken, left) = std::mem::take(&mut self.transfers).into_iter().partition(which);
        self.transfers = left;
        taken
    }
}

impl ShardCore {
    /// The shard's membership as this replica knows it.
    pub fn shard_members(&self) -> ShardMembers {
        let raft = &self.raw.raft;
        let peers = self.peer_progress();
        ShardMembers {
            node_id: self.cfg.node_id,
            shard: self.cfg.shard,
            leader_id: NodeId(self.leader_id),
            membership: self.membership.clone(),
            peers,
            last_index: LogIndex(raft.raft_log.last_index()),
            applied_index: LogIndex(self.sm.applied_index()),
            pending_change: LogIndex(self.pending_change()),
        }
    }

    pub(super) fn members_reply(&mut self, caller: Caller) {
        let members = self.shard_members();
        let frame = self.encoder.members(caller.id, &members);
        push_reply(&mut self.out, caller.conn, frame);
        self.metrics.replied(Op::Members, 0);
    }

    /// Proposes an operator's change, and answers it once applied (or why not).
    pub(super) fn member_change_request(&mut self, caller: Caller, change: MembershipChange) {
        if self.failure.is_some() || self.shutting_down {
            let reason = "this node cannot take changes now (failed or shutting down)";
            return self.reply_error(caller, &ErrorInfo::Unavailable { reason });
        }
        match self.propose_membership_change(change) {
            Ok(index) => {
                let term = self.raw.raft.term;
                self.admin.changes.push(ChangeWaiter { index, term, caller });
            }
            Err(ChangeRefused::NotLeader { .. }) => self.reply_not_leader(caller),
            Err(refused) => {
                let reason = refused.to_string();
                self.reply_error(caller, &ErrorInfo::ChangeRefused { reason: &reason });
            }
        }
    }

    /// Hands leadership to `to`, answering once it has moved (or why not).
    pub(super) fn transfer_leader_request(&mut self, caller: Caller, to: NodeId) {
        if !self.is_leader() {
            return self.reply_not_leader(caller);
        }
        let refused = if to == self.cfg.node_id {
            let frame = self.encoder.transfer_leader(caller.id, to);
            push_reply(&mut self.out, caller.conn, frame);
            return self.metrics.replied(Op::TransferLeader, 0);
        } else if !self.membership.voters.contains(&to) || self.membership.is_joint() {
            Some(format!("node {to} is not a voter of shard {}", self.cfg.shard))
        } else if let Some(other) = self.raw.raft.lead_transferee {
            Some(format!("leadership is already moving to node {other}"))
        } else if self.raw.raft.has_pending_conf() {
            Some("a membership change is under way; transfer once it applied".to_string())
        } else {
            None
        };
        if let Some(reason) = refused {
            return self.reply_error(caller, &ErrorInfo::ChangeRefused { reason: &reason });
        }
        tracing::info!(shard = %self.cfg.shard, %to, "handing leadership over (asked by an operator)");
        self.raw.transfer_leader(to.get());
        let deadline_us = self.now_us + 2 * self.election_timeout_us();
        self.admin.transfers.push(TransferWaiter { to: to.get(), caller, deadline_us });
    }

    /// A configuration change entry applied: its operator, if waiting here, is answered.
    pub(super) fn change_applied(&mut self, entry: &Entry) {
        for w in self.admin.take_changes(|w| w.index <= entry.index) {
            if w.index == entry.index && w.term == entry.term {
                let frame = self.encoder.member_change(w.caller.id, entry.index);
                push_reply(&mut self.out, w.caller.conn, frame);
                self.metrics
                    .replied(Op::MemberChange, self.now_us.saturating_sub(w.caller.start_us));
            } else {
                let reason = "the change was replaced in the log by a new leader's entries";
                self.reply_error(w.caller, &ErrorInfo::ChangeRefused { reason });
            }
        }
    }

    /// A configuration change entry was skipped: its operator, if waiting here, is told.
    pub(super) fn change_skipped(&mut self, index: u64, reason: &str) {
        for w in self.admin.take_changes(|w| w.index == index) {
            self.reply_error(w.caller, &ErrorInfo::ChangeRefused { reason });
        }
    }

    /// The leader this replica knows of changed (or it lost leadership): transfers end, and
    /// changes it proposed have an unknown outcome now.
    pub(super) fn admin_on_leader_change(&mut self, was_leader: bool) {
        if was_leader && !self.is_leader() {
            for w in std::mem::take(&mut self.admin.changes) {
                self.reply_error(w.caller, &ErrorInfo::Timeout);
            }
        }
        let leader = self.leader_id;
        if leader == 0 {
            return;
        }
        for w in std::mem::take(&mut self.admin.transfers) {
            if w.to == leader {
                let frame = self.encoder.transfer_leader(w.caller.id, NodeId(leader));
                push_reply(&mut self.out, w.caller.conn, frame);
                self.metrics
                    .replied(Op::TransferLeader, self.now_us.saturating_sub(w.caller.start_us));
            } else {
                let reason = format!("leadership moved to node {leader} instead of node {}", w.to);
                self.reply_error(w.caller, &ErrorInfo::ChangeRefused { reason: &reason });
            }
        }
    }

    /// Once a tick: operators' requests that waited too long are answered.
    pub(super) fn expire_admin(&mut self) {
        let now = self.now_us;
        let timeout_us = PROPOSAL_TIMEOUT_MS * 1000;
        for w in self.admin.take_changes(|w| now.saturating_sub(w.caller.start_us) > timeout_us) {
            self.reply_error(w.caller, &ErrorInfo::Timeout);
        }
        for w in self.admin.take_transfers(|w| now > w.deadline_us) {
            let reason = format!(
                "leadership did not move to node {} within two election timeouts (it may be \
                 behind or unreachable); node {} leads",
                w.to, self.cfg.node_id
            );
            self.reply_error(w.caller, &ErrorInfo::ChangeRefused { reason: &reason });
        }
    }

    /// Operators' changes whose entries a snapshot replaced: the outcome is unknown here.
    pub(super) fn admin_snapshot_installed(&mut self, index: u64) {
        for w in self.admin.take_changes(|w| w.index <= index) {
            self.reply_error(w.caller, &ErrorInfo::Timeout);
        }
    }

    /// Every operator request still waiting, answered at shutdown.
    pub(super) fn admin_shutdown(&mut self) {
        for w in std::mem::take(&mut self.admin.changes) {
            self.reply_error(w.caller, &ErrorInfo::Timeout);
        }
        let reason = "the node is shutting down";
        for w in std::mem::take(&mut self.admin.transfers) {
            self.reply_error(w.caller, &ErrorInfo::Unavailable { reason });
        }
    }

    /// Whether this replica was removed from its shard: it knows a membership, and is not in
    /// it.
    pub fn removed(&self) -> bool {
        !self.membership.voters.is_empty() && !self.membership.contains(self.cfg.node_id)
    }
}
