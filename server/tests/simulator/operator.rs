//! The simulated operator (membership runs): changes a shard's members while the faults go
//! on — adds spare nodes as learners (promoted once caught up, or kept learners), promotes
//! learners, removes members, replaces a voter with a learner in one joint change, and moves
//! leadership — through the client port's membership requests, as `corekvctl` does. One
//! request at a time; every refusal and outcome is counted, and an answer the operator's
//! tool could not read fails the run.

use super::*;
use corekv_types::ids::NodeId;
use corekv_types::membership::{MemberAddr, Membership, MembershipChange};

/// What the operator asks for.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    Change(MembershipChange),
    Transfer(NodeId),
}

impl Sim {
    /// The address a simulated node is reached at (as in its registry entry).
    pub(crate) fn member_addr(id: u64) -> MemberAddr {
        MemberAddr {
            host: format!("10.0.0.{id}"),
            client_port: 7100,
            peer_port: 7200,
            http_port: 7300,
            resp_port: None,
        }
    }

    /// The shard's membership as its leader (the one in the highest term, if any is up)
    /// knows it, and that leader.
    pub(crate) fn leader_view(&self, shard: u32) -> Option<(u64, Membership)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up)
            .filter_map(|(i, n)| {
                n.replicas[shard as usize].core.as_ref().map(|c| (i as u64 + 1, c))
            })
            .filter(|(_, c)| c.is_leader())
            .max_by_key(|(_, c)| c.raft().raft.term)
            .map(|(id, c)| (id, c.membership().clone()))
    }

    /// The operator's turn: a request while the faults go on, and the next turn.
    pub(crate) fn operator_turn(&mut self) {
        if self.faults {
            self.operate();
            let mean = self.opts.operator_us;
            let delay = self.member_rng.range(mean / 2, mean * 3 / 2);
            self.schedule(delay, Event::Operator);
        }
    }

    /// One operator step: picks a shard and a change that its membership allows (the core
    /// may still refuse it: a learner not caught up, a majority not healthy, another change
    /// under way), and sends it, most often to the leader.
    pub(crate) fn operate(&mut self) {
        if let Some(pending) = &self.operator.pending {
            if self.now.saturating_sub(pending.sent_at) < CLIENT_TIMEOUT_US {
                return;
            }
            self.operator.pending = None;
            self.stats.operator_unanswered += 1;
        }
        let shard = self.member_rng.below(self.opts.shards as u64) as u32;
        let Some((leader, m)) = self.leader_view(shard) else { return };
        let Some(action) = self.pick_action(leader, &m) else { return };
        let node = if self.member_rng.chance(0.85) {
            leader
        } else {
            self.member_rng.range(1, self.opts.all_nodes())
        };
        let request = self.next_request;
        self.next_request += 1;
        let frame = match &action {
            Action::Change(change) => self.encoder.member_change(request, change).to_vec(),
            Action::Transfer(to) => self.encoder.transfer_leader(request, *to).to_vec(),
        };
        self.trace(|| format!("operator: shard {shard} {action:?} to n{node} (leader n{leader})"));
        let hello = self.encoder.hello(0, "sim", self.opts.shards).to_vec();
        let conn = self.next_conn;
        self.next_conn += 1;
        let incarnation = self.nodes[node as usize - 1].incarnation;
        self.conns
            .insert(conn, Conn { client: OPERATOR, node, shard, incarnation, greeted: false });
        self.operator.pending = Some(OperatorPending { conn, request, sent_at: self.now, action });
        let delay = self.rng.range(20, 500);
        self.schedule(delay, Event::Request { conn, frame: hello });
        self.schedule(delay, Event::Request { conn, frame });
    }

    fn pick_action(&mut self, leader: u64, m: &Membership) -> Option<Action> {
        // While a node's disk is lost and it rebuilds, only that node may leave: removing
        // another voter meanwhile is two faults at once (the leader may not have noticed the
        // lost disk yet, and counts the rebuilding node as holding what it held), as a
        // careful operator knows (the simulator once ended with two voters, one of them wiped).
        let rebuilding: Vec<NodeId> = (1..=self.opts.all_nodes())
            .filter(|&id| self.nodes[id as usize - 1].wiped)
            .map(NodeId)
            .collect();
        let may_remove = |id: NodeId| rebuilding.is_empty() || rebuilding == [id];
        let rng = &mut self.member_rng;
        let members = m.members();
        let spares: Vec<u64> =
            (1..=self.opts.all_nodes()).filter(|&id| !members.contains(&NodeId(id))).collect();
        let others: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v.get() != leader).collect();
        let mut actions = Vec::new();
        if !spares.is_empty() {
            let id = rng.pick(&spares);
            let promote = rng.chance(0.7);
            let addr = Sim::member_addr(id);
            actions.push(Action::Change(MembershipChange::AddLearner {
                id: NodeId(id),
                addr,
                promote,
            }));
        }
        if !m.learners.is_empty() {
            let learner = rng.pick(&m.learners);
            actions.push(Action::Change(MembershipChange::Promote { id: learner }));
            let old = rng.pick(&m.voters);
            if may_remove(old) {
                actions.push(Action::Change(MembershipChange::Replace { old, new: learner }));
            }
            actions.push(Action::Change(MembershipChange::Remove { id: learner }));
        }
        // Voters are removed down to two (a wipe then still leaves one voter with the data).
        if m.voters.len() > 2 {
            let id = rng.pick(&m.voters);
            if may_remove(id) {
                actions.push(Action::Change(MembershipChange::Remove { id }));
            }
        }
        if !others.is_empty() {
            actions.push(Action::Transfer(rng.pick(&others)));
        }
        if actions.is_empty() {
            return None;
        }
        let i = rng.below(actions.len() as u64) as usize;
        Some(actions.swap_remove(i))
    }

    /// The operator's request never reached a live node (connection refused or reset).
    pub(crate) fn operator_conn_lost(&mut self, conn: ConnId) {
        if self.operator.pending.as_ref().is_some_and(|p| p.conn == conn) {
            self.operator.pending = None;
            self.stats.operator_unanswered += 1;
        }
    }

    /// An answer to the operator: a change applied, a transfer made, or a refusal it can
    /// read (any other answer is a bug).
    pub(crate) fn on_operator_reply(&mut self, conn: ConnId, frame: &[u8]) -> SimResult<()> {
        let reply = verify_reply(frame).map_err(|e| format!("bad reply frame: {e}"))?;
        let Some(pending) = &self.operator.pending else { return Ok(()) };
        if pending.conn != conn || pending.request != reply.id() {
            return Ok(());
        }
        let pending = self.operator.pending.take().expect("checked");
        let node = self.conns.get(&conn).map_or(0, |c| c.node);
        self.trace(|| {
            let error = reply.reply_as_error_reply().map(|e| format!("{:?}", e.kind_type()));
            format!(
                "operator: {:?} answered {:?} {}",
                pending.action,
                reply.reply_type(),
                error.unwrap_or_default()
            )
        });
        match reply.reply_type() {
            Reply::MemberChangeReply => self.stats.conf_changes += 1,
            Reply::TransferLeaderReply => self.stats.transfers += 1,
            Reply::ErrorReply => {
                let error = reply.reply_as_error_reply().expect("typed");
                match error.kind_type() {
                    ErrorKind::ChangeRefused
                    | ErrorKind::NotLeader
                    | ErrorKind::NotMember
                    | ErrorKind::Unavailable
                    | ErrorKind::Busy
                    | ErrorKind::Timeout => self.stats.operator_refused += 1,
                    other => {
                        return Err(format!(
                            "node {node} answered the operator's {:?} with {other:?}",
                            pending.action
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "node {node} answered the operator's {:?} with {other:?}",
                    pending.action
                ));
            }
        }
        Ok(())
    }
}
