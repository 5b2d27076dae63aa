//! Whether a replica serves: what `/health` and `/status`'s `"serving"` report.
//!
//! A replica serves when all of these hold:
//!
//! 1. its WAL works and it is not shutting down;
//! 2. it is not rebuilding its data (joining);
//! 3. it knows a leader, has caught up with it if it started with an empty log, and hears
//!    from it: a follower has had a message from the leader within
//!    the last election timeout; a leader has heard from a majority of the voters (itself
//!    included) within the last election timeout — the condition under which check-quorum
//!    keeps it leading;
//! 4. a follower is not behind: it has applied at least what its leader had reported
//!    committed one election timeout ago (in the first election timeout after start, what it
//!    reported at all). A follower that keeps up stays within a round trip of the leader; one
//!    that is being sent a snapshot or streamed a backlog does not.
//!
//! So a node whose every shard serves can lose its next peer without a shard losing its
//! quorum because of this node: that is what `deploy/bare-metal/rolling-restart.sh` waits for.
//!
//! The tracker learns from the messages the core steps ([`Health::heard`]) and samples the
//! leader's commit index once per tick ([`Health::tick`]); it does no I/O and keeps a bounded
//! amount of state (one entry per peer, one sample per tick of one election timeout).

use std::collections::{BTreeMap, HashSet, VecDeque};

use raft::eraftpb::{Message, MessageType};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Per peer, when a message from it was last stepped (µs, the core's clock).
    last_heard_us: BTreeMap<u64, u64>,
    /// The highest commit index a leader has reported to this replica (in appends, heartbeats
    /// and snapshots).
    leader_commit: u64,
    /// `(time µs, leader_commit)` once per tick, for the last election timeout and one more.
    samples: VecDeque<(u64, u64)>,
}

/// What the tracker needs of the replica to judge it.
pub(crate) struct Replica<'a> {
    pub(crate) now_us: u64,
    pub(crate) election_timeout_us: u64,
    pub(crate) node_id: u64,
    pub(crate) leader_id: u64,
    pub(crate) is_leader: bool,
    pub(crate) role: &'a str,
    pub(crate) term: u64,
    /// The shard's voters.
    pub(crate) voters: &'a [u64],
    /// Whether these nodes make a quorum of the voters (raft-rs's rule, which also covers a
    /// joint configuration).
    pub(crate) is_quorum: &'a dyn Fn(&HashSet<u64>) -> bool,
    pub(crate) applied_index: u64,
    pub(crate) failure: Option<&'a str>,
    pub(crate) shutting_down: bool,
    pub(crate) joining: bool,
    pub(crate) fresh: bool,
    /// Removed from the shard's membership.
    pub(crate) removed: bool,
}

impl Health {
    /// A message from a peer was stepped at `now_us`.
    pub(crate) fn heard(&mut self, message: &Message, now_us: u64) {
        self.last_heard_us.insert(message.from, now_us);
        let commit = match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgHeartbeat => message.commit,
            MessageType::MsgSnapshot => message.get_snapshot().get_metadata().index,
            _ => return,
        };
        self.leader_commit = self.leader_commit.max(commit);
    }

    /// Whether a message from `node` was stepped less than `within_us` before `now_us`.
    pub(crate) fn heard_within(&self, node: u64, now_us: u64, within_us: u64) -> bool {
        self.last_heard_us.get(&node).is_some_and(|&at| now_us.saturating_sub(at) < within_us)
    }

    /// The leader is sending this replica a snapshot of index `index` (its first chunk
    /// arrived): the replica is behind at least that far.
    pub(crate) fn snapshot_incoming(&mut self, index: u64) {
        self.leader_commit = self.leader_commit.max(index);
    }

    /// Once per tick: samples the leader's commit index.
    pub(crate) fn tick(&mut self, now_us: u64, election_timeout_us: u64) {
        self.samples.push_back((now_us, self.leader_commit));
        // Keep the newest sample at least one election timeout old, and those after it.
        while self
            .samples
            .get(1)
            .is_some_and(|&(at, _)| now_us.saturating_sub(at) >= election_timeout_us)
        {
            self.samples.pop_front();
        }
    }

    /// Why the replica does not serve; `None` when it does.
    pub(crate) fn problem(&self, r: &Replica<'_>) -> Option<String> {
        if let Some(failure) = r.failure {
            return Some(format!("stopped accepting writes: {failure}"));
        }
        if r.shutting_down {
            return Some("shutting down".to_string());
        }
        if r.removed {
            return Some(
                "no longer a member of this shard (it was removed); its data can be deleted"
                    .to_string(),
            );
        }
        if r.joining {
            return Some(format!(
                "rebuilding its data from the leader (joining): applied {}, needs {}",
                r.applied_index,
                self.leader_commit.max(r.applied_index)
            ));
        }
        if r.leader_id == 0 {
            return Some(format!(
                "no leader known (this replica is {} in term {})",
                r.role, r.term
            ));
        }
        if r.fresh {
            return Some("started with an empty log; catching up with the leader".to_string());
        }
        let recent = |node: u64| {
            self.last_heard_us
                .get(&node)
                .is_some_and(|&at| r.now_us.saturating_sub(at) < r.election_timeout_us)
        };
        let timeout_ms = r.election_timeout_us / 1000;
        if r.is_leader {
            let heard: HashSet<u64> =
                r.voters.iter().copied().filter(|&v| v == r.node_id || recent(v)).collect();
            if !(r.is_quorum)(&heard) {
                return Some(format!(
                    "leader without a quorum: heard from {} of {} voters (itself included) in \
                     the last {timeout_ms} ms",
                    heard.len(),
                    r.voters.len()
                ));
            }
            return None;
        }
        if !recent(r.leader_id) {
            return Some(match self.last_heard_us.get(&r.leader_id) {
                Some(&at) => format!(
                    "no message from leader {} for {} ms (election timeout {timeout_ms} ms)",
                    r.leader_id,
                    r.now_us.saturating_sub(at) / 1000
                ),
                None => format!("no message from leader {} yet", r.leader_id),
            });
        }
        let target = self.lag_target(r.now_us, r.election_timeout_us);
        if r.applied_index < target {
            return Some(format!(
                "catching up: applied {}, the leader had committed {target} by one election \
                 timeout ago",
                r.applied_index
            ));
        }
        None
    }

    /// What a follower must have applied: the leader's commit index as of one election
    /// timeout ago, or, when this replica has not run that long, the newest it knows.
    fn lag_target(&self, now_us: u64, election_timeout_us: u64) -> u64 {
        match self.samples.front() {
            Some(&(at, commit)) if now_us.saturating_sub(at) >= election_timeout_us => commit,
            _ => self.leader_commit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT_US: u64 = 500_000;
    const TICK_US: u64 = 50_000;

    fn message(from: u64, kind: MessageType, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.commit = commit;
        m
    }

    fn follower(now_us: u64, applied_index: u64) -> Replica<'static> {
        Replica {
            now_us,
            election_timeout_us: TIMEOUT_US,
            node_id: 2,
            leader_id: 1,
            is_leader: false,
            role: "follower",
            term: 3,
            voters: &[1, 2, 3],
            is_quorum: &|nodes| nodes.len() >= 2,
            applied_index,
            failure: None,
            shutting_down: false,
            joining: false,
            fresh: false,
            removed: false,
        }
    }

    // Shows: a follower serves while it hears from its leader and keeps up; it stops serving
    // one election timeout after the leader went quiet, and says so.
    #[test]
    fn a_follower_serves_while_it_hears_from_its_leader() {
        let mut health = Health::default();
        assert_eq!(
            health.problem(&follower(0, 0)).as_deref(),
            Some("no message from leader 1 yet")
        );
        health.heard(&message(1, MessageType::MsgHeartbeat, 10), 0);
        health.tick(0, TIMEOUT_US);
        assert_eq!(health.problem(&follower(TICK_US, 10)), None);
        let quiet = health.problem(&follower(TIMEOUT_US + 1, 10)).expect("leader quiet");
        assert!(quiet.contains("no message from leader 1 for 500 ms"), "{quiet}");
    }

    // Shows: a follower behind what the leader had committed one election timeout ago is
    // catching up; one that is only behind the newest commit (a round trip) is not.
    #[test]
    fn a_follower_behind_its_leader_is_catching_up() {
        let mut health = Health::default();
        let mut now = 0;
        for commit in [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200] {
            health.heard(&message(1, MessageType::MsgAppend, commit), now);
            health.tick(now, TIMEOUT_US);
            now += TICK_US;
        }
        // The sample of one election timeout ago (10 ticks) says 200.
        assert_eq!(health.problem(&follower(now, 1150)), None, "within the window");
        let behind = health.problem(&follower(now, 150)).expect("behind");
        assert!(behind.starts_with("catching up: applied 150"), "{behind}");
        // Before one election timeout has passed, the newest commit counts.
        let mut young = Health::default();
        young.heard(&message(1, MessageType::MsgAppend, 5000), 0);
        young.tick(0, TIMEOUT_US);
        assert!(young.problem(&follower(TICK_US, 10)).is_some());
        assert_eq!(young.problem(&follower(TICK_US, 5000)), None);
        // A snapshot on its way means the replica is behind at least that far.
        young.snapshot_incoming(9000);
        assert!(young.problem(&follower(TICK_US, 5000)).is_some());
    }

    // Shows: a leader serves while it hears from a majority of the voters, itself included.
    #[test]
    fn a_leader_needs_a_quorum_it_heard_from() {
        let mut health = Health::default();
        let leader = |now_us| Replica {
            node_id: 1,
            is_leader: true,
            role: "leader",
            leader_id: 1,
            ..follower(now_us, 0)
        };
        let alone = health.problem(&leader(0)).expect("alone");
        assert!(alone.contains("heard from 1 of 3 voters"), "{alone}");
        health.heard(&message(3, MessageType::MsgHeartbeatResponse, 0), 0);
        assert_eq!(health.problem(&leader(TICK_US)), None);
        assert!(health.problem(&leader(TIMEOUT_US)).is_some(), "the follower went quiet");
    }

    // Shows: the replica's own state comes first: a failed WAL, shutdown, joining, an empty
    // log not caught up, no leader.
    #[test]
    fn the_replicas_own_state_is_reported_first() {
        let mut health = Health::default();
        health.heard(&message(1, MessageType::MsgHeartbeat, 10), 0);
        let at = |f: fn(&mut Replica<'static>)| {
            let mut r = follower(TICK_US, 10);
            f(&mut r);
            health.problem(&r).unwrap_or_default()
        };
        assert!(at(|r| r.failure = Some("disk full")).contains("disk full"));
        assert_eq!(at(|r| r.shutting_down = true), "shutting down");
        assert!(at(|r| r.joining = true).contains("joining"));
        assert!(at(|r| r.fresh = true).contains("empty log"));
        assert!(at(|r| r.leader_id = 0).starts_with("no leader known"));
        let fresh_without_leader = at(|r| {
            r.leader_id = 0;
            r.fresh = true;
        });
        assert!(fresh_without_leader.starts_with("no leader known"));
    }
}
