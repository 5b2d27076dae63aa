//! Catching up: a replica that may have lost data takes no part in elections until it has
//! what a leader says is committed.
//!
//! ```text
//!                 start, empty log, no --join
//!                        │
//!                        ▼
//!   ┌─────────────────  Fresh  ───────────────────────┐
//!   │ entries or a snapshot from a leader that        │ applied what a leader said was
//!   │ committed something (the cluster has data       │ committed, or elected leader
//!   │ this replica lacks)                             │
//!   ▼                                                 ▼
//! Joining ── applied join_target, or its promotion ─► Member ◄── start, log not empty
//!   ▲  ▲                                              │
//!   │  └── start with --join, or with the log's       │ a leader's heartbeat commits past
//!   │      rebuilding mark set (restarted part way)   │ the end of this replica's log (it
//!   └─────────────────────────────────────────────────┘ lost acknowledged entries)
//! ```
//!
//! - *Fresh* answers no (pre-)vote request from a candidate that knows of a committed entry;
//!   it votes for candidates that know of none, and campaigns.
//! - *Joining* neither votes, nor campaigns, nor takes a leadership transfer; its election
//!   timer does not run. The log's rebuilding mark holds `join_target`. One exception: a
//!   replica that is a learner (in the membership it has applied) answers vote requests by
//!   raft's rules. A candidate that asks it counts it as a voter, so it was promoted by a
//!   change it has not applied yet; its acknowledgements as a learner counted for no commit,
//!   and whatever it may have acknowledged as a voter before it lost its data came before
//!   it was removed, so the voters of each configuration since hold it. Withheld, its vote
//!   could be the one a new configuration lacks, with no leader left to bring it the change.
//! - *Member* votes and campaigns like any replica.
//!
//! A replica whose data directory was wiped or replaced has lost entries it acknowledged,
//! and its vote: voting with what is left could elect a leader that lacks a committed
//! write (with three replicas, its vote and a stale replica's make a majority). So a
//! replica that may have lost data takes no part in elections — it neither votes, nor
//! campaigns, nor takes a leadership transfer — until it has applied what a leader said
//! was committed. That is *joining*; it starts so with `--join`, and turns to it itself:
//!
//! - when a leader's heartbeat commits past its log: a leader only tells a follower to
//!   commit what the follower acknowledged having, so the replica lost acknowledged
//!   entries (the commit index is then capped to its log until it has caught up);
//! - when, with an empty log, it receives entries or a snapshot from a leader whose commit
//!   index is past zero: the cluster has committed data this replica does not hold (it was
//!   wiped, or is new to a running cluster).
//!
//! Joining sets the log's rebuilding mark ([`RaftLogStore::set_rebuilding`]) with the
//! commit index it catches up to, durable before any entry that arrives with it, so a
//! replica restarted part way through catching up goes on joining towards the same target
//! instead of taking its partial log for a whole one (and one restarted after it reached
//! the target, before the mark was cleared, counts itself caught up at once).
//!
//! Before a leader has told it anything, a replica that started with an empty log is
//! *fresh*: it may be new, or wiped with no leader left that remembers what it
//! acknowledged. It leaves (pre-)vote requests unanswered from any candidate that knows of
//! a committed entry (vote requests carry the candidate's commit index), but votes for
//! candidates that know of none and campaigns itself — that is how a new cluster elects
//! its first leader, also when the first one died before its first entry committed. (So
//! that a restart cannot make a replica forget it knew of a commit, the first commit index
//! a replica learns is flushed at once; see `handle_ready`.) Left uncovered (`--join`
//! covers them): a candidate that knows of no commit in a cluster that has committed data
//! (a replica cut off since the cluster was created, voted for by a wiped fresh one while
//! the replicas holding the data are down); and, with five replicas or more, a new leader
//! whose first commit index lags entries it inherited, so that a joining replica stops
//! joining too early.

use raft::eraftpb::Message;

use super::ShardCore;

/// Where a replica stands in catching up (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// Started with an empty log; no leader has told it anything yet.
    Fresh,
    /// May have lost acknowledged entries: catching up to `join_target` before it takes
    /// part in elections.
    Joining,
    /// Takes part in elections like any replica.
    Member,
}

impl ShardCore {
    /// The state a core starts in, from its recovered log and `--join`.
    pub(super) fn init_catch_up(&mut self) {
        if let Some(target) = self.raw.store().rebuilding() {
            // Restarted part way through catching up: on towards the same target.
            self.catch_up = CatchUp::Joining;
            self.join_target = target;
        } else if self.cfg.join {
            // Joining even if the WAL refused the mark: `tick_catch_up` sets it later.
            self.start_joining();
            self.catch_up = CatchUp::Joining;
        } else if self.raw.raft.raft_log.last_index() == 0 {
            self.catch_up = CatchUp::Fresh;
        }
    }

    /// Once a tick: a replica that has applied what it was catching up to is a member again,
    /// and the rebuilding mark follows.
    pub(super) fn tick_catch_up(&mut self) {
        let caught_up = self.join_target > 0 && self.sm.applied_index() >= self.join_target;
        if self.catch_up == CatchUp::Joining && caught_up {
            self.catch_up = CatchUp::Member;
            tracing::info!(
                shard = %self.cfg.shard,
                applied = self.sm.applied_index(),
                "caught up with the cluster; taking part in elections again"
            );
        }
        self.sync_rebuilding_mark();
        if self.catch_up == CatchUp::Fresh && caught_up {
            self.catch_up = CatchUp::Member;
            tracing::debug!(
                shard = %self.cfg.shard,
                applied = self.sm.applied_index(),
                "started empty and caught up with the leader; votes in every election now"
            );
        }
    }

    /// This replica, a learner, applied its own promotion: a replica still catching up is a
    /// member now. Its log holds every entry up to the promotion, all of them committed, so it
    /// holds whatever it may have acknowledged as a voter before it lost its data (that was
    /// before it was removed, or it would not have been a learner), and a learner's
    /// acknowledgements count for no commit. Left joining, it would withhold its vote while
    /// counted among the voters: the leader promotes a learner whose log is close to its
    /// own, but the learner's target (the highest commit index a leader told it) moves with
    /// every message, and a leader lost before it is reached leaves the shard short of votes.
    pub(super) fn promoted_from_learner(&mut self) {
        if self.catching_up() {
            tracing::info!(
                shard = %self.cfg.shard,
                applied = self.sm.applied_index(),
                "promoted from learner: taking part in elections"
            );
            self.catch_up = CatchUp::Member;
            self.sync_rebuilding_mark();
        }
    }

    /// Elected: its log is the shard's, nothing left to catch up with.
    pub(super) fn elected_catch_up(&mut self) {
        if self.catch_up == CatchUp::Fresh {
            self.catch_up = CatchUp::Member;
        }
    }

    /// Whether this replica is still catching up before it votes like any other (it is
    /// joining, or started with an empty log; see [`ShardCore::step`]).
    pub fn catching_up(&self) -> bool {
        self.catch_up != CatchUp::Member
    }

    /// Whether this replica is joining: catching up before it votes or campaigns at all.
    pub fn joining(&self) -> bool {
        self.catch_up == CatchUp::Joining
    }

    /// Makes the log's rebuilding mark say what this replica is doing: joining, towards
    /// `join_target`, or not. Retried on the next call while the WAL refuses it.
    pub(super) fn sync_rebuilding_mark(&mut self) {
        let mark = self.joining().then_some(self.join_target);
        if self.raw.store().rebuilding() != mark {
            let _ = self.raw.mut_store().set_rebuilding(mark);
        }
    }

    /// Turns this replica to joining, and sets the log's rebuilding mark so that a restart
    /// before it has caught up goes on joining. False (and still not joining) when the WAL
    /// refused the mark; the caller then drops the message that called for it.
    pub(super) fn start_joining(&mut self) -> bool {
        if let Err(refused) = self.raw.mut_store().set_rebuilding(Some(self.join_target)) {
            tracing::debug!(shard = %self.cfg.shard, ?refused, "the rebuilding mark waits");
            return false;
        }
        self.catch_up = CatchUp::Joining;
        true
    }

    /// A raft message from a peer. Messages raft refuses (from unknown peers, local types) are
    /// dropped; a replica catching up screens them first (see the module docs).
    pub fn step(&mut self, mut message: Message) {
        self.health.heard(&message, self.now_us);
        self.heard_from_removed(message.from);
        let Some(ask_to_probe) = self.notice_lost_data(&mut message) else { return };
        if !self.screen(&message) {
            return;
        }
        self.notice_follower_lost_data(&message);
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow {
            self.timeout_now_term = Some(message.term);
        }
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(shard = %self.cfg.shard, %error, "raft refused a message");
        }
        if let Some((leader, commit)) = ask_to_probe {
            self.ask_leader_to_probe(leader, commit);
        }
    }

    /// Turns this replica to joining when `message` shows that it lost data (see the module
    /// docs), capping a heartbeat's commit index to the log. `None` when the message is to be
    /// dropped (the WAL refused the rebuilding mark); else the leader to ask for a probe, and
    /// the commit index it counts on this replica holding, when there is one.
    fn notice_lost_data(&mut self, message: &mut Message) -> Option<Option<(u64, u64)>> {
        use raft::eraftpb::MessageType;
        let last = self.raw.raft.raft_log.last_index();
        let kind = message.get_msg_type();
        let mut ask_to_probe = None;
        if kind == MessageType::MsgHeartbeat && message.commit > last {
            ask_to_probe = Some((message.from, message.commit));
            // What the leader counts on this replica holding is where catching up ends (the
            // commit index passed on to raft is capped to the log below).
            self.join_target = self.join_target.max(message.commit);
            if !self.joining() {
                if !self.start_joining() {
                    return None;
                }
                tracing::warn!(
                    shard = %self.cfg.shard,
                    leader = message.from,
                    leader_commit = message.commit,
                    last_index = last,
                    "this replica lost acknowledged data (its log ends before what the leader \
                     counts on it holding): rebuilding it from the leader, taking no part in \
                     elections until it has caught up"
                );
            }
            message.commit = last;
        }
        let committed_elsewhere = (kind == MessageType::MsgAppend && message.commit > 0)
            || kind == MessageType::MsgSnapshot;
        if self.catch_up == CatchUp::Fresh && last == 0 && committed_elsewhere {
            if !self.start_joining() {
                return None;
            }
            tracing::info!(
                shard = %self.cfg.shard,
                leader = message.from,
                leader_commit = message.commit,
                "this replica has an empty log and the cluster has committed data: catching up \
                 from the leader, taking no part in elections until it has"
            );
        }
        Some(ask_to_probe)
    }

    /// On a leader: a follower's rejection whose hint (where its log ends) is before the index
    /// the leader counts it as holding shows that the follower lost data (a wiped replica). A
    /// follower's log never ends before what it acknowledged otherwise: the acknowledgement
    /// waits for the flush, and a rejection's hint is at least the index where both logs agree.
    /// raft-rs never lowers a follower's match index, and a leader that trusts it sends nothing
    /// but heartbeats once that index is its last: after a snapshot and one message of entries,
    /// a wiped replica of an idle shard would wait for the next write to catch up. So its
    /// progress is set back to what the follower holds for certain (what it says is
    /// committed), and the leader probes it from there. Lowering a match index is always
    /// safe: the commit index never moves back, and a follower counted short only gets
    /// entries again. While a snapshot is on its way, only the match index is lowered, so
    /// that the snapshot's delivery moves the follower on.
    fn notice_follower_lost_data(&mut self, message: &Message) {
        use raft::eraftpb::MessageType;
        if !self.is_leader()
            || message.get_msg_type() != MessageType::MsgAppendResponse
            || !message.reject
        {
            return;
        }
        let Some(progress) = self.raw.raft.mut_prs().get_mut(message.from) else { return };
        if message.reject_hint >= progress.matched {
            return;
        }
        let counted = progress.matched;
        progress.matched = message.commit.min(message.reject_hint);
        let snapshot_on_its_way = progress.state == raft::ProgressState::Snapshot;
        if !snapshot_on_its_way {
            progress.become_probe();
        }
        tracing::info!(
            shard = %self.cfg.shard,
            follower = message.from,
            counted,
            log_ends_at = message.reject_hint,
            now_counted = message.commit.min(message.reject_hint),
            "a follower's log ends before what it acknowledged (it lost its data): probing it \
             from what it holds"
        );
        if !snapshot_on_its_way {
            self.raw.raft.send_append(message.from);
        }
    }

    /// Whether raft-rs gets `message`: a replica catching up withholds votes and refuses
    /// leadership transfers; what a leader sends it moves the target it catches up to.
    fn screen(&mut self, message: &Message) -> bool {
        use raft::eraftpb::MessageType;
        match message.get_msg_type() {
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.catch_up == CatchUp::Fresh && message.commit > 0 =>
            {
                self.metrics.votes_withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    shard = %self.cfg.shard,
                    candidate = message.from,
                    candidate_commit = message.commit,
                    "not voting: this replica started with an empty log and has not caught up \
                     with a leader, and the candidate knows of committed entries this replica \
                     may have acknowledged before losing its data (a wiped node should start \
                     with --join)"
                );
                false
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.joining() && !self.membership.is_learner(self.cfg.node_id) =>
            {
                self.metrics.votes_withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if !self.is_member_candidate(message) =>
            {
                tracing::debug!(shard = %self.cfg.shard, candidate = message.from,
                    "ignoring a vote request from a node that is not a voter of this shard");
                false
            }
            MessageType::MsgAppend
                if self.joining() && self.raw.raft.raft_log.last_index() == 0 =>
            {
                self.join_target = self.join_target.max(message.commit).max(1);
                self.sync_rebuilding_mark();
                self.request_snapshot(message);
                false
            }
            MessageType::MsgTimeoutNow if self.joining() => false,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                if self.catching_up() =>
            {
                let commit = message.commit.max(message.get_snapshot().get_metadata().index);
                self.join_target = self.join_target.max(commit).max(1);
                // Before the entries this message brings, so durable no later than they are.
                self.sync_rebuilding_mark();
                true
            }
            _ => true,
        }
    }

    /// Asks the leader of `append` for its snapshot instead of the entries it sent. A replica
    /// with an empty log that catches up from a running cluster starts from a snapshot, never
    /// from entry 1: the membership the log's first entries apply to is the cluster's first
    /// one, which such a replica may not know (it was added later, or was given a registry
    /// file that lists today's members), while a snapshot carries the membership as of its
    /// index. raft-rs's own request needs a log entry of the current term; this is the
    /// rejection it sends, made here (the leader then sends a snapshot whatever its log
    /// holds, taking one if it has none to send; see `RaftLogStore::take_snapshot_wanted`).
    fn request_snapshot(&mut self, append: &Message) {
        use raft::eraftpb::MessageType;
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppendResponse);
        message.to = append.from;
        message.from = self.cfg.node_id.get();
        message.term = append.term;
        message.reject = true;
        message.index = append.index;
        message.reject_hint = 0;
        message.request_snapshot = 1;
        self.out.messages.push(message);
    }

    /// Tells the leader that this replica's log is not what it thinks. A leader that believes
    /// a follower holds its whole log sends it nothing but heartbeats until the next write, so
    /// a replica that lost data would wait for one. These are the rejections raft-rs's leader
    /// takes as "probe this follower again, from its real end": while replicating, it accepts
    /// any rejected index above the follower's match index (which only the leader knows, hence
    /// the largest index); while probing, the index it last probed at, which is the match
    /// index — what a heartbeat's commit index is, unless the leader's commit lags it. The
    /// leader ignores the other one as stale, and both while it sends a snapshot.
    pub(super) fn ask_leader_to_probe(&mut self, leader: u64, heartbeat_commit: u64) {
        use raft::eraftpb::MessageType;
        let raft = &self.raw.raft;
        for rejected in [heartbeat_commit, u64::MAX] {
            let mut message = Message::default();
            message.set_msg_type(MessageType::MsgAppendResponse);
            message.to = leader;
            message.from = self.cfg.node_id.get();
            message.term = raft.term;
            message.reject = true;
            message.index = rejected;
            message.reject_hint = raft.raft_log.last_index();
            message.commit = raft.raft_log.committed;
            self.out.messages.push(message);
        }
    }
}
