//! Membership: the shard's voters and learners are its raft configuration, changed through
//! raft-rs's `ConfChangeV2`, one change at a time, and each member's addresses travel in the
//! change that adds it.
//!
//! ```text
//!  operator ── propose_membership_change ──► checks (below) ──► ConfChangeV2 entry
//!                                             │ refused: ChangeRefused, said why    │ context: the
//!                                             ▼                                     │ new members'
//!                                          nothing proposed                         │ addresses
//!                        committed, applied on every replica ◄──────────────────────┘
//!                          raft-rs's configuration and `Membership` move together
//! ```
//!
//! What a replica's membership is, and where it comes from:
//!
//! - at start: the newest snapshot's (the configuration as of its index, with the addresses);
//!   with no snapshot, a new cluster's first voters (the registry's nodes), or nothing at all
//!   for a node started with `--join` and no data (it takes its membership from the leader's
//!   snapshot; see `catch_up`);
//! - then every configuration change in the log after it, applied in order (`apply_conf_entry`);
//! - a leader's snapshot, installed, replaces it.
//!
//! The checks before a change is proposed (raft-rs itself turns a second change into an
//! empty entry, silently, so they come first):
//!
//! - this replica leads, and leads no leadership transfer;
//! - no change is under way: none proposed and not yet applied, no joint configuration left
//!   to leave;
//! - adding: the id is not a member already;
//! - promoting (and the new node of a replacement): the node is a learner, and caught up
//!   (replicating, within [`PROMOTE_LAG_ENTRIES_MAX`] entries of the leader's log);
//! - removing (and the old node of a replacement): the node is a member; not this leader
//!   (leadership moves first); and the voters left, once it is gone, hold a healthy majority
//!   (each one this leader heard from within an election timeout) that holds everything
//!   committed (by the leader's match indexes).

use corekv_types::ids::NodeId;
use corekv_types::membership::{MemberAddr, Membership, MembershipChange};
use corekv_types::registry::Node;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};

use super::ShardCore;

/// A learner is promoted only when its log is within this many entries of the leader's.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1_000;

/// Why a change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRefused {
    /// This replica does not lead the shard; `leader` is the one it knows of.
    NotLeader {
        /// The leader, [`NodeId::NONE`] when none is known.
        leader: NodeId,
    },
    /// Another change is under way (proposed and not applied yet, or a joint configuration
    /// not left yet), or a leadership transfer is.
    ChangePending {
        /// What is under way.
        what: String,
    },
    /// The node to add is a member already.
    AlreadyMember {
        /// The node.
        id: NodeId,
    },
    /// The node is not a member.
    NotMember {
        /// The node.
        id: NodeId,
    },
    /// The node to promote is not a learner.
    NotLearner {
        /// The node.
        id: NodeId,
    },
    /// The learner to promote is too far behind the leader's log.
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// The last index the leader knows it holds.
        matched: u64,
        /// The leader's last index.
        last: u64,
    },
    /// The node to remove leads the shard: move leadership away first.
    IsLeader {
        /// The node.
        id: NodeId,
    },
    /// The voters left after the change do not hold, as a majority, everything committed:
    /// they could not elect a leader that has it until the lagging ones catch up.
    NewMajorityBehind {
        /// The node removed.
        id: NodeId,
        /// The highest index a majority of the voters after the change holds.
        held: u64,
        /// The leader's commit index.
        commit: u64,
    },
    /// Removing the node would leave fewer healthy voters than a majority.
    BelowMajority {
        /// The node.
        id: NodeId,
        /// Voters left after the change that this leader hears from.
        healthy: usize,
        /// Voters left after the change.
        voters: usize,
    },
    /// A member (or the node to add) runs a corekv too old to apply membership changes.
    OldPeer {
        /// The node.
        id: NodeId,
        /// The peer protocol it speaks.
        protocol: u32,
    },
    /// raft-rs refused or dropped the proposal.
    Raft(String),
}

impl std::fmt::Display for ChangeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeRefused::NotLeader { leader } if *leader == NodeId::NONE => {
                write!(f, "this node does not lead the shard, and knows of no leader")
            }
            ChangeRefused::NotLeader { leader } => {
                write!(f, "this node does not lead the shard; node {leader} does")
            }
            ChangeRefused::ChangePending { what } => {
                write!(f, "another change is under way ({what}); one change at a time per shard")
            }
            ChangeRefused::AlreadyMember { id } => write!(f, "node {id} is a member already"),
            ChangeRefused::NotMember { id } => write!(f, "node {id} is not a member"),
            ChangeRefused::NotLearner { id } => {
                write!(f, "node {id} is not a learner (only a learner is promoted)")
            }
            ChangeRefused::LearnerBehind { id, matched, last } => write!(
                f,
                "learner {id} is not caught up (it holds up to index {matched}, the leader's log \
                 ends at {last}; promotion waits until it is within {PROMOTE_LAG_ENTRIES_MAX} \
                 entries)"
            ),
            ChangeRefused::IsLeader { id } => {
                write!(f, "node {id} leads the shard: move leadership away first")
            }
            ChangeRefused::BelowMajority { id, healthy, voters } => write!(
                f,
                "removing node {id} would leave {healthy} healthy voters of {voters}, fewer than \
                 a majority ({}): bring the unhealthy voters back first",
                voters / 2 + 1
            ),
            ChangeRefused::NewMajorityBehind { id, held, commit } => write!(
                f,
                "without node {id}, a majority of the voters is not caught up (they hold the log \
                 up to index {held}, the commit index is {commit}): bring the lagging voters \
                 back, or wait until they catch up"
            ),
            ChangeRefused::OldPeer { id, protocol } => write!(
                f,
                "node {id} runs an older corekv (peer protocol {protocol}) that cannot apply \
                 membership changes: upgrade it first"
            ),
            ChangeRefused::Raft(reason) => write!(f, "raft refused the change: {reason}"),
        }
    }
}

impl std::error::Error for ChangeRefused {}

/// raft-rs's configuration for `membership`.
pub(super) fn conf_state(membership: &Membership) -> ConfState {
    let ids = |list: &[NodeId]| list.iter().map(|id| id.get()).collect::<Vec<u64>>();
    ConfState {
        voters: ids(&membership.voters),
        learners: ids(&membership.learners),
        voters_outgoing: ids(&membership.voters_outgoing),
        learners_next: ids(&membership.learners_next),
        auto_leave: membership.auto_leave,
        ..Default::default()
    }
}

/// `membership` with raft-rs's configuration `conf` (the addresses kept for members only).
fn with_conf(mut membership: Membership, conf: &ConfState) -> Membership {
    let ids = |list: &[u64]| {
        let mut ids: Vec<NodeId> = list.iter().map(|&id| NodeId(id)).collect();
        ids.sort_unstable();
        ids
    };
    membership.voters = ids(conf.get_voters());
    membership.learners = ids(conf.get_learners());
    membership.voters_outgoing = ids(conf.get_voters_outgoing());
    membership.learners_next = ids(conf.get_learners_next());
    membership.auto_leave = conf.auto_leave;
    let members = membership.members();
    membership.addrs.retain(|id, _| members.contains(id));
    let learners = membership.learners.clone();
    membership.promote.retain(|id| learners.contains(id));
    membership
}

/// A snapshot's membership, with the addresses a version 1 file lacks taken from the
/// registry.
pub(super) fn with_registry_addrs(mut membership: Membership, registry: &[Node]) -> Membership {
    for id in membership.members() {
        if let Some(node) = registry.iter().find(|n| n.id == id) {
            membership.addrs.entry(id).or_insert_with(|| MemberAddr::from(node));
        }
    }
    membership
}

fn single(change_type: ConfChangeType, id: NodeId) -> ConfChangeSingle {
    let mut change = ConfChangeSingle::default();
    change.set_change_type(change_type);
    change.node_id = id.get();
    change
}

impl ShardCore {
    /// The shard's membership as of the applied index.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether the shell keeps a link to `node`: a member, or a node this leader removed and
    /// still tells so (see `tell_removed`).
    pub fn keeps_link(&self, node: u64) -> bool {
        self.membership.contains(NodeId(node)) || self.removed_peers.contains_key(&node)
    }

    /// Counts the membership's changes: when it moves, the shell re-syncs its peer links.
    pub fn membership_epoch(&self) -> u64 {
        self.membership_epoch
    }

    /// Node `node` said, in its peer hello, that it speaks peer protocol `version`.
    pub fn note_peer_protocol(&mut self, node: u64, version: u32) {
        self.peer_protocols.insert(node, version);
    }

    /// Replaces the membership (a snapshot installed, a change applied).
    pub(super) fn set_membership(&mut self, membership: Membership) {
        self.membership = membership;
        self.membership_epoch += 1;
    }

    /// Proposes `change` (see the module docs for what is refused). `Ok` is the index of its
    /// entry: the change holds once that index is applied.
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<u64, ChangeRefused> {
        self.check_change(&change)?;
        let mut context = Membership::default();
        let mut cc = ConfChangeV2::default();
        match &change {
            MembershipChange::AddLearner { id, addr, promote } => {
                context.addrs.insert(*id, addr.clone());
                if *promote {
                    context.promote.push(*id);
                }
                cc.mut_changes().push(single(ConfChangeType::AddLearnerNode, *id));
            }
            MembershipChange::Promote { id } => {
                cc.mut_changes().push(single(ConfChangeType::AddNode, *id));
            }
            MembershipChange::Remove { id } => {
                cc.mut_changes().push(single(ConfChangeType::RemoveNode, *id));
            }
            MembershipChange::Replace { old, new } => {
                cc.mut_changes().push(single(ConfChangeType::AddNode, *new));
                cc.mut_changes().push(single(ConfChangeType::RemoveNode, *old));
                // Two voters change: raft-rs enters a joint configuration, and leaves it by
                // itself once the entry applies.
                cc.set_transition(raft::eraftpb::ConfChangeTransition::Implicit);
            }
        }
        let before = self.raw.raft.pending_conf_index;
        let bug = (self.injected_bug == Some(super::InjectedBug::ConfChangeBeforeCommit))
            .then(|| (cc.clone(), context.encode()));
        self.raw
            .propose_conf_change(context.encode(), cc)
            .map_err(|e| ChangeRefused::Raft(e.to_string()))?;
        let index = self.raw.raft.pending_conf_index;
        if index == before {
            // raft-rs replaced the entry with an empty one (it says why in its log).
            return Err(ChangeRefused::Raft("the proposal was dropped".to_string()));
        }
        tracing::info!(shard = %self.cfg.shard, ?change, index, "membership change proposed");
        if let Some((cc, context)) = bug {
            self.apply_before_commit(index, cc, context);
        }
        Ok(index)
    }

    /// [`InjectedBug::ConfChangeBeforeCommit`](super::InjectedBug): the change proposed at
    /// `index` applied at once.
    fn apply_before_commit(&mut self, index: u64, cc: ConfChangeV2, context: Vec<u8>) {
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryConfChangeV2);
        entry.index = index;
        entry.term = self.raw.raft.term;
        entry.data = cc.write_to_bytes().unwrap_or_default().into();
        entry.context = context.into();
        if self.change_membership(&entry).is_ok() {
            self.applied_before_commit = Some(index);
        }
    }

    fn check_change(&self, change: &MembershipChange) -> Result<(), ChangeRefused> {
        let raft = &self.raw.raft;
        if !self.is_leader() {
            return Err(ChangeRefused::NotLeader { leader: NodeId(self.leader_id) });
        }
        if raft.has_pending_conf() {
            let what =
                format!("the change at index {} is not applied yet", raft.pending_conf_index);
            return Err(ChangeRefused::ChangePending { what });
        }
        if self.membership.is_joint() {
            let what = "the joint configuration is not left yet".to_string();
            return Err(ChangeRefused::ChangePending { what });
        }
        if let Some(to) = raft.lead_transferee {
            let what = format!("leadership is moving to node {to}");
            return Err(ChangeRefused::ChangePending { what });
        }
        let added = match *change {
            MembershipChange::AddLearner { id, .. } => Some(id),
            _ => None,
        };
        for id in self.membership.members().into_iter().chain(added) {
            match self.peer_protocols.get(&id.get()) {
                Some(&protocol) if protocol < 2 => {
                    return Err(ChangeRefused::OldPeer { id, protocol });
                }
                _ => {}
            }
        }
        let m = &self.membership;
        match *change {
            MembershipChange::AddLearner { id, .. } if m.contains(id) || id == NodeId::NONE => {
                Err(ChangeRefused::AlreadyMember { id })
            }
            MembershipChange::AddLearner { .. } => Ok(()),
            MembershipChange::Promote { id } => self.check_promotable(id),
            MembershipChange::Remove { id } => self.check_removable(id, None),
            MembershipChange::Replace { old, new } => {
                self.check_promotable(new)?;
                self.check_removable(old, Some(new))
            }
        }
    }

    fn check_promotable(&self, id: NodeId) -> Result<(), ChangeRefused> {
        if !self.membership.is_learner(id) {
            return Err(ChangeRefused::NotLearner { id });
        }
        let last = self.raw.raft.raft_log.last_index();
        let progress = self.raw.raft.prs().get(id.get());
        let matched = progress.map_or(0, |p| p.matched);
        let replicating = progress.is_some_and(|p| p.state == raft::ProgressState::Replicate);
        if !replicating || matched + PROMOTE_LAG_ENTRIES_MAX < last {
            return Err(ChangeRefused::LearnerBehind { id, matched, last });
        }
        Ok(())
    }

    /// Whether `id` can leave (with `joining` becoming a voter in the same change).
    fn check_removable(&self, id: NodeId, joining: Option<NodeId>) -> Result<(), ChangeRefused> {
        if !self.membership.contains(id) {
            return Err(ChangeRefused::NotMember { id });
        }
        if id == self.cfg.node_id {
            return Err(ChangeRefused::IsLeader { id });
        }
        if !self.membership.is_voter(id) {
            return Ok(());
        }
        let left: Vec<NodeId> =
            self.membership.voters.iter().copied().filter(|&v| v != id).chain(joining).collect();
        let healthy = left.iter().filter(|&&v| self.voter_is_healthy(v)).count();
        if healthy <= left.len() / 2 {
            return Err(ChangeRefused::BelowMajority { id, healthy, voters: left.len() });
        }
        // The voters left must hold everything committed as a majority: the commit that
        // counted the leaving node may be held by too few of them (a replica that never
        // received an entry votes for no candidate that knows of a commit; see `catch_up`).
        let mut matched: Vec<u64> = left
            .iter()
            .map(|v| self.raw.raft.prs().get(v.get()).map_or(0, |p| p.matched))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let held = matched.get(left.len() / 2).copied().unwrap_or(0);
        // (At least one entry: a voter that holds none withholds its vote from candidates
        // that know of a commit, and the change itself commits counting the leaving node.)
        let commit = self.raw.raft.raft_log.committed;
        if held < commit.max(1) {
            return Err(ChangeRefused::NewMajorityBehind { id, held, commit });
        }
        Ok(())
    }

    /// Whether this leader counts voter `id` as healthy: itself, or a follower it heard from
    /// within an election timeout.
    fn voter_is_healthy(&self, id: NodeId) -> bool {
        id == self.cfg.node_id
            || self.health.heard_within(id.get(), self.now_us, self.election_timeout_us())
    }

    /// Applies a committed configuration change entry: raft-rs's configuration and the
    /// membership move together; the addresses of added members come from the entry's
    /// context. An entry raft-rs refuses (it validated the change when it was proposed, so
    /// this is a bug) is logged and skipped, the same on every replica.
    pub(super) fn apply_conf_entry(&mut self, entry: &Entry) {
        if self.applied_before_commit.take() == Some(entry.index) {
            return self.sm.apply_empty(entry.index, entry.term);
        }
        if let Err(reason) = self.change_membership(entry) {
            tracing::error!(shard = %self.cfg.shard, index = entry.index, %reason,
                "a committed configuration change was skipped");
            self.change_skipped(entry.index, &reason);
        } else {
            self.change_applied(entry);
        }
        self.sm.apply_empty(entry.index, entry.term);
    }

    fn change_membership(&mut self, entry: &Entry) -> Result<(), String> {
        let mut cc = ConfChangeV2::default();
        let decoded = match entry.get_entry_type() {
            EntryType::EntryConfChangeV2 => cc.merge_from_bytes(&entry.data).map(|()| cc),
            _ => {
                // corekv proposes version 2 changes only; a version 1 one is one change.
                let mut v1 = raft::eraftpb::ConfChange::default();
                v1.merge_from_bytes(&entry.data).map(|()| {
                    let mut cc = ConfChangeV2::default();
                    cc.mut_changes().push(single(v1.get_change_type(), NodeId(v1.node_id)));
                    cc
                })
            }
        };
        let cc = decoded.map_err(|e| format!("the change does not decode: {e}"))?;
        // An empty context: raft-rs's own entry that leaves a joint configuration.
        let added = if entry.context.is_empty() {
            Ok(Membership::default())
        } else {
            Membership::decode(&entry.context)
        };
        let added = added.map_err(|e| format!("its member addresses do not decode: {e}"))?;
        let leaving = self.note_leaving(&cc, entry.index);
        let was_learner = self.membership.is_learner(self.cfg.node_id);
        let conf = self.raw.apply_conf_change(&cc).map_err(|e| format!("raft refused it: {e}"))?;
        let mut membership = self.membership.clone();
        membership.addrs.extend(added.addrs);
        membership.promote.extend(added.promote);
        membership.promote.sort_unstable();
        membership.promote.dedup();
        self.set_membership(with_conf(membership, &conf));
        self.metrics.conf_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            shard = %self.cfg.shard,
            index = entry.index,
            voters = ?self.membership.voters,
            learners = ?self.membership.learners,
            outgoing = ?self.membership.voters_outgoing,
            "membership changed"
        );
        if self.removed() {
            tracing::warn!(
                shard = %self.cfg.shard,
                "this node was removed from the shard: it no longer serves it, and answers \
                 clients that it is not a member. Once `corekvctl member list` shows it in no \
                 shard, stop it; its data directory can then be deleted"
            );
        }
        if was_learner && self.membership.is_voter(self.cfg.node_id) {
            self.promoted_from_learner();
        }
        self.tell_removed(leaving);
        self.after_conf_change();
        Ok(())
    }

    /// On a leader: the nodes `cc` removes, each with the highest index up to `index` the
    /// leader knows it holds (before raft-rs forgets its progress).
    fn note_leaving(&self, cc: &ConfChangeV2, index: u64) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        cc.get_changes()
            .iter()
            .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
            .filter_map(|c| {
                let matched = self.raw.raft.prs().get(c.node_id)?.matched;
                Some((c.node_id, matched.min(index)))
            })
            .collect()
    }

    /// Tells removed nodes what they hold is committed up to their removal, so that they
    /// apply it and know they were removed: raft-rs's leader stops sending to a node once
    /// the change that removes it applies, and the node would otherwise wait, campaigning,
    /// for a leader that never comes. Sent again when a removed node is heard from.
    fn tell_removed(&mut self, leaving: Vec<(u64, u64)>) {
        for (node, commit) in leaving {
            self.removed_peers.insert(node, (commit, self.now_us));
            self.send_removal_heartbeat(node, commit);
        }
    }

    fn send_removal_heartbeat(&mut self, node: u64, commit: u64) {
        let mut message = raft::eraftpb::Message::default();
        message.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        message.to = node;
        message.from = self.cfg.node_id.get();
        message.term = self.raw.raft.term;
        message.commit = commit;
        self.out.messages.push(message);
    }

    /// A message from a node this leader removed: told again, at most once per election
    /// timeout.
    pub(super) fn heard_from_removed(&mut self, from: u64) {
        // On every message stepped: the (usually empty) map first.
        let Some(&(commit, sent)) = self.removed_peers.get(&from) else { return };
        if !self.is_leader() || self.membership.contains(NodeId(from)) {
            return;
        }
        let timeout = self.election_timeout_us();
        let now = self.now_us;
        if now.saturating_sub(sent) >= timeout {
            self.removed_peers.insert(from, (commit, now));
            self.send_removal_heartbeat(from, commit);
        }
    }

    /// A leader that is no longer a voter steps down at once (raft-rs 0.7 leaves it leading
    /// without its own progress, and panics on its next persisted entry): the voters elect a
    /// new leader within an election timeout. A leader only in the outgoing half of a joint
    /// configuration hands leadership to an incoming voter, so that it is not the one that
    /// leaves the joint configuration.
    pub(super) fn after_conf_change(&mut self) {
        let me = self.cfg.node_id;
        if !self.is_leader() {
            return;
        }
        if !self.membership.is_voter(me) {
            tracing::info!(shard = %self.cfg.shard, "this leader is no longer a voter: stepping down");
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            return;
        }
        if self.membership.voters.contains(&me) || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let best = self
            .membership
            .voters
            .iter()
            .filter_map(|v| self.raw.raft.prs().get(v.get()).map(|p| (p.matched, *v)))
            .max();
        if let Some((_, to)) = best {
            tracing::info!(shard = %self.cfg.shard, %to,
                "this leader leaves with the joint configuration: handing leadership over");
            self.raw.transfer_leader(to.get());
        }
    }

    /// Once a tick, on the leader: the first learner to promote once caught up, if it has,
    /// is promoted (one change at a time; a refusal waits for the next tick).
    pub(super) fn promote_caught_up_learners(&mut self) {
        if !self.is_leader() || self.membership.promote.is_empty() {
            return;
        }
        let ready = self.membership.promote.iter().copied().find(|&id| {
            let change = MembershipChange::Promote { id };
            self.check_change(&change).is_ok()
        });
        if let Some(id) = ready {
            tracing::info!(shard = %self.cfg.shard, %id, "the learner caught up: promoting it");
            let _ = self.propose_membership_change(MembershipChange::Promote { id });
        }
    }

    /// The voter this shard prefers as its leader (DESIGN.md §4; [`NodeId::NONE`] without
    /// voters).
    pub fn preferred_leader(&self) -> NodeId {
        self.membership.preferred_leader(self.cfg.shard).unwrap_or(NodeId::NONE)
    }

    /// Whether a vote request may reach raft-rs: a voter's does, so a removed replica cannot
    /// disturb the others with elections; and so does one whose log is ahead of this
    /// replica's, since this replica may be the one that is behind — not yet knowing the
    /// configuration that made the candidate a voter. (Found by the simulator: a replica cut
    /// off while a learner was promoted, the only other voter's disk then lost, ignored the
    /// one candidate that could win, and the shard never elected a leader again.)
    pub(super) fn is_member_candidate(&self, request: &raft::eraftpb::Message) -> bool {
        let log = &self.raw.raft.raft_log;
        let ahead = (request.log_term, request.index) > (log.last_term(), log.last_index());
        self.membership.voters.is_empty() || self.membership.is_voter(NodeId(request.from)) || ahead
    }
}
