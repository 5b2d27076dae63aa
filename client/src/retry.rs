//! The retry rules of one call, as a pure function: given what an attempt came to, what the
//! call does next ([`Rules::after`]). The client's call loop ([`crate::client`]) does the I/O
//! and carries out the [`Step`]s; every rule is tested here without a socket.
//!
//! The rules (all inside the call's deadline):
//! - `NotLeader` with a hint: go to the hinted leader at once and cache it (waiting after the
//!   third attempt, so a stale hint cannot spin). Without a hint (an election is under way):
//!   the next node, after a backoff.
//! - `Busy`: wait what the server asked (plus jitter), then the same node.
//! - `Unavailable`, a refused or failed connection: the next node, after a backoff. When every
//!   node refused the connection in a row, the call ends at once.
//! - A request that never left (its connection had closed): the same node again, at once.
//! - A connection lost after the request was sent, or a server `Timeout`: reads go to the next
//!   node; a write ends [`Error::Indeterminate`] — it is never sent twice, since a late first
//!   copy applying after another client's write would undo that write.
//! - No answer within the attempt's time: reads go to the next node; puts and deletes end
//!   `Indeterminate`. (A transaction's attempt lasts its whole deadline.)
//! - The deadline passes: [`Error::Unavailable`], or `Indeterminate` for a write that was sent
//!   without a definite answer.

use std::time::Duration;

use corekv_types::ids::NodeId;

use crate::error::Error;

/// Whether a request may be sent again after its outcome became unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads: always.
    Read,
    /// Put and delete (and their batches): never once sent, and an attempt that gets no
    /// answer within `attempt_timeout` ends the call.
    Write,
    /// Transactions: never once sent; an attempt lasts the call's whole deadline.
    Once,
}

/// What one attempt came to, short of a reply to hand back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No connection: nothing listens at this address.
    Refused(String),
    /// No connection: it timed out or failed otherwise.
    Unreachable(String),
    /// The request never left: its connection had already closed.
    NotSent(String),
    /// The request was sent, then the connection failed.
    Lost(String),
    /// The request was sent and no answer came within the attempt's time (this long).
    NoAnswer(Duration),
    /// The node answered with an error.
    Refusal(ServerError),
}

/// An error reply, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerError {
    /// Not the leader; `leader` the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// Overloaded: retry after this long.
    Busy { retry_after: Duration },
    /// No quorum, shutting down, or a failed disk: the text says which.
    Unavailable(String),
    /// The server gave up waiting for the request (a write's outcome is then unknown).
    Timeout,
    /// A client error the server names; retrying will not help.
    Final(Error),
}

/// Which node the next attempt goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The node just tried.
    Same,
    /// The next node of the registry.
    Next,
    /// The leader a `NotLeader` named.
    Hinted(NodeId),
}

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Not at all.
    No,
    /// The capped exponential backoff for the attempt just made (`Rules::attempt - 1`).
    Backoff,
    /// This long, plus jitter of up to as much again.
    For(Duration),
}

/// What the cached leader of the shard becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leader {
    /// Unchanged.
    Keep,
    /// Forgotten, if it was the node just tried.
    Forget,
    /// This node.
    Set(NodeId),
    /// The next node, if it was the node just tried (or unknown): the shard's next call starts
    /// there instead of at a node that did not answer.
    MoveOn,
}

/// What becomes of the connection just used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// Kept for the next call.
    Keep,
    /// Dropped from the pool (it failed).
    Drop,
    /// Reset: what its kernel still holds unsent is thrown away, so a request given up on
    /// cannot reach the node later.
    Reset,
}

/// What the call does after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Try again.
    Again { target: Target, wait: Wait, leader: Leader, connection: Connection },
    /// End the call with this error.
    Fail { error: Error, leader: Leader, connection: Connection },
    /// Every node refused the connection: end the call (the caller says why).
    EveryNodeRefused,
}

/// The rules' state over one call.
#[derive(Debug)]
pub(crate) struct Rules<'a> {
    retry: Retry,
    /// The registry's node ids.
    nodes: &'a [NodeId],
    /// Attempts made so far.
    pub(crate) attempt: u32,
    /// Whether a request was sent without a definite answer.
    sent: bool,
    /// The last failure seen, for the error the call ends with.
    pub(crate) last_error: String,
    /// Nodes that refused the connection in a row, with nothing else in between.
    refused: Vec<NodeId>,
    /// Nodes learned during the call (a leader a node named, with its address), whose hints
    /// are followed like those to `nodes`.
    learned: Vec<NodeId>,
}

impl<'a> Rules<'a> {
    /// The rules for a call of kind `retry` over the registry's `nodes`.
    pub(crate) fn new(retry: Retry, nodes: &'a [NodeId]) -> Rules<'a> {
        Rules {
            retry,
            nodes,
            attempt: 0,
            sent: false,
            last_error: "no attempt finished".to_string(),
            refused: Vec::new(),
            learned: Vec::new(),
        }
    }

    /// `node` can be reached too (a node named it, with its address, as the leader).
    pub(crate) fn learn(&mut self, node: NodeId) {
        if !self.nodes.contains(&node) && !self.learned.contains(&node) {
            self.learned.push(node);
        }
    }

    /// A connection to a node was made: refusals no longer come in a row.
    pub(crate) fn connected(&mut self) {
        self.refused.clear();
    }

    /// What to do after the attempt at `node` came to `outcome`.
    pub(crate) fn after(&mut self, node: NodeId, outcome: Outcome) -> Step {
        self.attempt += 1;
        let again =
            |target, wait, leader, connection| Step::Again { target, wait, leader, connection };
        match outcome {
            Outcome::Refused(addr) => {
                self.last_error = format!("connection refused by {addr}");
                if !self.refused.contains(&node) {
                    self.refused.push(node);
                }
                if self.refused.len() >= self.nodes.len() {
                    return Step::EveryNodeRefused;
                }
                again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep)
            }
            Outcome::Unreachable(reason) => {
                self.refused.clear();
                self.last_error = reason;
                again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep)
            }
            Outcome::NotSent(reason) => {
                self.last_error = reason;
                again(Target::Same, Wait::No, Leader::Keep, Connection::Drop)
            }
            Outcome::Lost(reason) => self.lost(reason),
            Outcome::NoAnswer(waited) => self.no_answer(node, waited),
            Outcome::Refusal(error) => self.refusal(node, error),
        }
    }

    fn lost(&mut self, reason: String) -> Step {
        if self.retry != Retry::Read {
            return Step::Fail {
                error: Error::Indeterminate(reason),
                leader: Leader::Forget,
                connection: Connection::Drop,
            };
        }
        self.sent = true;
        self.last_error = reason;
        Step::Again {
            target: Target::Next,
            wait: Wait::Backoff,
            leader: Leader::Forget,
            connection: Connection::Drop,
        }
    }

    fn no_answer(&mut self, node: NodeId, waited: Duration) -> Step {
        // The node may be partitioned away or paused: its connection is suspect, and the next
        // attempt (of this call, or of the shard's next call) goes to another node; a
        // NotLeader hint corrects the guess.
        self.sent = true;
        self.last_error = format!("node {node} did not answer");
        if self.retry == Retry::Write {
            return Step::Fail {
                error: Error::Indeterminate(format!(
                    "node {node} did not answer within {waited:?}"
                )),
                leader: Leader::MoveOn,
                connection: Connection::Reset,
            };
        }
        Step::Again {
            target: Target::Next,
            wait: Wait::No,
            leader: Leader::MoveOn,
            connection: Connection::Reset,
        }
    }

    fn refusal(&mut self, node: NodeId, error: ServerError) -> Step {
        let keep = Connection::Keep;
        match error {
            ServerError::NotLeader { leader: Some(leader) }
                if leader != node
                    && (self.nodes.contains(&leader) || self.learned.contains(&leader)) =>
            {
                self.last_error =
                    format!("node {node} is not the leader; following the hint to {leader}");
                // A hint is usually right: no wait for the first few hops.
                let wait = if self.attempt > 3 { Wait::Backoff } else { Wait::No };
                Step::Again {
                    target: Target::Hinted(leader),
                    wait,
                    leader: Leader::Set(leader),
                    connection: keep,
                }
            }
            ServerError::NotLeader { leader } => {
                self.last_error = match leader {
                    None => {
                        "not the leader (no leader known: an election is under way)".to_string()
                    }
                    Some(leader) => format!("not the leader (node {leader} is)"),
                };
                self.other_node()
            }
            ServerError::Unavailable(reason) => {
                self.last_error = format!("unavailable: {reason}");
                self.other_node()
            }
            ServerError::Busy { retry_after } => {
                self.last_error = "busy".to_string();
                Step::Again {
                    target: Target::Same,
                    wait: Wait::For(retry_after),
                    leader: Leader::Keep,
                    connection: keep,
                }
            }
            ServerError::Timeout if self.retry != Retry::Read => Step::Fail {
                error: Error::Indeterminate("the server timed out waiting for the write".into()),
                leader: Leader::Keep,
                connection: keep,
            },
            ServerError::Timeout => {
                self.last_error = "server timeout".to_string();
                self.other_node()
            }
            ServerError::Final(error) => {
                Step::Fail { error, leader: Leader::Keep, connection: keep }
            }
        }
    }

    fn other_node(&self) -> Step {
        Step::Again {
            target: Target::Next,
            wait: Wait::Backoff,
            leader: Leader::Forget,
            connection: Connection::Keep,
        }
    }

    /// The error a call ends with when its deadline (`timeout` after it started) passes.
    pub(crate) fn expired(&self, timeout: Duration) -> Error {
        if self.sent && self.retry != Retry::Read {
            Error::Indeterminate(format!("no answer within {timeout:?} ({})", self.last_error))
        } else {
            Error::Unavailable { after: timeout, last_error: self.last_error.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

    fn again(target: Target, wait: Wait, leader: Leader, connection: Connection) -> Step {
        Step::Again { target, wait, leader, connection }
    }

    fn refused(rules: &mut Rules, node: NodeId) -> Step {
        rules.after(node, Outcome::Refused(format!("h:{node}")))
    }

    // Shows: a NotLeader hint is followed at once and cached; past the third attempt with a
    // wait; a NotLeader without one (an election) or naming the node itself moves on.
    #[test]
    fn not_leader_hints_are_followed_and_elections_waited_out() {
        let mut rules = Rules::new(Retry::Write, &NODES);
        let hint = Outcome::Refusal(ServerError::NotLeader { leader: Some(NodeId(2)) });
        let go_to_2 =
            |wait| again(Target::Hinted(NodeId(2)), wait, Leader::Set(NodeId(2)), Connection::Keep);
        assert_eq!(rules.after(NodeId(1), hint.clone()), go_to_2(Wait::No));
        assert_eq!(rules.after(NodeId(3), hint.clone()), go_to_2(Wait::No));
        assert_eq!(rules.after(NodeId(3), hint.clone()), go_to_2(Wait::No));
        assert_eq!(rules.after(NodeId(3), hint), go_to_2(Wait::Backoff), "a fourth hop waits");
        let next = again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep);
        let election = Outcome::Refusal(ServerError::NotLeader { leader: None });
        assert_eq!(rules.after(NodeId(2), election), next);
        assert!(rules.last_error.contains("no leader known"), "{}", rules.last_error);
        let itself = Outcome::Refusal(ServerError::NotLeader { leader: Some(NodeId(2)) });
        assert_eq!(rules.after(NodeId(2), itself), next);
        assert_eq!(rules.last_error, "not the leader (node 2 is)");
        let stranger = Outcome::Refusal(ServerError::NotLeader { leader: Some(NodeId(9)) });
        assert_eq!(
            rules.after(NodeId(2), stranger),
            next,
            "a hint outside the registry is not followed"
        );
    }

    // Shows: Busy waits what the server asked and retries the same node; Unavailable moves on
    // after a backoff, for reads and writes alike.
    #[test]
    fn busy_waits_and_unavailable_moves_on() {
        for retry in [Retry::Read, Retry::Write, Retry::Once] {
            let mut rules = Rules::new(retry, &NODES);
            let busy = ServerError::Busy { retry_after: Duration::from_millis(5) };
            assert_eq!(
                rules.after(NodeId(1), Outcome::Refusal(busy)),
                again(
                    Target::Same,
                    Wait::For(Duration::from_millis(5)),
                    Leader::Keep,
                    Connection::Keep
                )
            );
            let unavailable = ServerError::Unavailable("no quorum".into());
            assert_eq!(
                rules.after(NodeId(1), Outcome::Refusal(unavailable)),
                again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep)
            );
            assert_eq!(rules.last_error, "unavailable: no quorum");
        }
    }

    // Shows: once a write was sent, losing its connection or a server Timeout ends it
    // Indeterminate; a read goes to the next node instead.
    #[test]
    fn a_sent_write_is_never_sent_again() {
        for retry in [Retry::Write, Retry::Once] {
            let mut rules = Rules::new(retry, &NODES);
            let step = rules.after(NodeId(1), Outcome::Lost("reset".into()));
            assert!(
                matches!(&step, Step::Fail { error: Error::Indeterminate(r), .. } if r == "reset"),
                "{step:?}"
            );
            let step = rules.after(NodeId(1), Outcome::Refusal(ServerError::Timeout));
            assert!(matches!(step, Step::Fail { error: Error::Indeterminate(_), .. }), "{step:?}");
        }
        let mut read = Rules::new(Retry::Read, &NODES);
        assert_eq!(
            read.after(NodeId(1), Outcome::Lost("reset".into())),
            again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Drop)
        );
        assert_eq!(
            read.after(NodeId(2), Outcome::Refusal(ServerError::Timeout)),
            again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep)
        );
    }

    // Shows: no answer within the attempt's time resets the connection and moves the shard's
    // cached leader on; a put or delete then ends Indeterminate, a read tries the next node.
    #[test]
    fn no_answer_moves_on_or_ends_a_write() {
        let mut write = Rules::new(Retry::Write, &NODES);
        assert_eq!(
            write.after(NodeId(1), Outcome::NoAnswer(Duration::from_secs(1))),
            Step::Fail {
                error: Error::Indeterminate("node 1 did not answer within 1s".into()),
                leader: Leader::MoveOn,
                connection: Connection::Reset,
            }
        );
        let mut read = Rules::new(Retry::Read, &NODES);
        assert_eq!(
            read.after(NodeId(1), Outcome::NoAnswer(Duration::from_secs(1))),
            again(Target::Next, Wait::No, Leader::MoveOn, Connection::Reset)
        );
        // A transaction's attempt lasts its deadline; if it had not, it would go on.
        let mut once = Rules::new(Retry::Once, &NODES);
        let step = once.after(NodeId(1), Outcome::NoAnswer(Duration::from_secs(5)));
        assert!(matches!(step, Step::Again { .. }));
    }

    // Shows: a request that never left is sent again at once on a fresh connection to the
    // same node; the deadline's error is Unavailable, or Indeterminate for a write that was
    // sent without an answer.
    #[test]
    fn unsent_requests_retry_and_the_deadline_names_the_right_error() {
        let mut rules = Rules::new(Retry::Once, &NODES);
        assert_eq!(
            rules.after(NodeId(1), Outcome::NotSent("closed".into())),
            again(Target::Same, Wait::No, Leader::Keep, Connection::Drop)
        );
        let expired = rules.expired(Duration::from_secs(5));
        assert_eq!(
            expired,
            Error::Unavailable { after: Duration::from_secs(5), last_error: "closed".into() }
        );
        rules.after(NodeId(1), Outcome::NoAnswer(Duration::from_secs(1)));
        assert!(matches!(rules.expired(Duration::from_secs(5)), Error::Indeterminate(_)));
        let mut read = Rules::new(Retry::Read, &NODES);
        read.after(NodeId(1), Outcome::NoAnswer(Duration::from_secs(1)));
        assert!(matches!(read.expired(Duration::from_secs(5)), Error::Unavailable { .. }));
    }

    // Shows: refusals by every node in a row end the call at once; one node that answers
    // (or fails otherwise) in between starts the count again.
    #[test]
    fn every_node_refusing_in_a_row_ends_the_call() {
        let mut rules = Rules::new(Retry::Write, &NODES);
        let next = again(Target::Next, Wait::Backoff, Leader::Forget, Connection::Keep);
        assert_eq!(refused(&mut rules, NodeId(1)), next);
        assert_eq!(refused(&mut rules, NodeId(2)), next);
        rules.connected();
        assert_eq!(refused(&mut rules, NodeId(3)), next);
        assert_eq!(refused(&mut rules, NodeId(3)), next, "the same node twice counts once");
        assert_eq!(refused(&mut rules, NodeId(1)), next);
        rules.after(NodeId(2), Outcome::Unreachable("timed out".into()));
        assert_eq!(refused(&mut rules, NodeId(2)), next);
        assert_eq!(refused(&mut rules, NodeId(3)), next);
        assert_eq!(refused(&mut rules, NodeId(1)), Step::EveryNodeRefused);
        assert_eq!(rules.last_error, "connection refused by h:1");
    }

    // Shows: client errors the server names end the call as they are.
    #[test]
    fn final_errors_end_the_call() {
        let mut rules = Rules::new(Retry::Read, &NODES);
        let error = Error::WrongShard { shard: corekv_types::ids::ShardId(3) };
        assert_eq!(
            rules.after(NodeId(1), Outcome::Refusal(ServerError::Final(error.clone()))),
            Step::Fail { error, leader: Leader::Keep, connection: Connection::Keep }
        );
    }
}
