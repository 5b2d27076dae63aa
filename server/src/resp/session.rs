//! One RESP connection's state and its commands: which protocol it speaks, its name, whether
//! it reads stale, who it is; the requests it has sent the shard core and how to answer each;
//! the replies in the order the commands came.
//!
//! Redis answers a connection's commands in order; the shard core answers requests when they
//! are done (a read can overtake a write). Each command gets the next sequence number, which
//! is also its request id in the core: answers wait in `ready` until every earlier command's
//! answer is out, then go to `out` in order.
//!
//! Sans-IO: the connection task in the runtime feeds commands ([`Session::command`]) and the
//! core's reply frames ([`Session::on_reply`]) in, writes [`Session::out`] to the socket, and
//! answers the [`Host`] calls (topology, authentication, scan cursors, submitting requests).

use std::collections::{BTreeMap, HashMap, VecDeque};

use corekv_proto::client::ReplyFrame;
use corekv_proto::encode::RequestEncoder;
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::placement::{shard_for_slot, slot};

use super::commands::{self, Spec};
use super::render::Render;
use super::reply::Reply;

/// What the connection task provides a session.
pub trait Host {
    /// Hands the request frame in `frame` (request id = the command's sequence number) to the
    /// shard core.
    fn submit(&mut self, frame: &[u8]);
    /// `host:port` of shard `shard`'s RESP listener on node `node`, when it has one.
    fn resp_addr(&self, node: NodeId, shard: ShardId) -> Option<String>;
    /// Every shard as this node last heard of it.
    fn shard_views(&self) -> Vec<ShardView>;
    /// Whether the cluster checks who clients are.
    fn auth_enabled(&self) -> bool;
    /// Authenticates the connection with bearer token `token` (of user `user`, when given):
    /// the user it names, or why not.
    fn authenticate(&mut self, user: Option<&str>, token: &str) -> Result<String, String>;
    /// Keys in this shard's state, as this replica has applied it (`DBSIZE`, `INFO`).
    fn key_count(&self) -> u64;
    /// Wall-clock time, ms since the Unix epoch (for `EXAT`, `PXAT`).
    fn now_ms(&self) -> u64;
    /// Remembers where a `SCAN` stopped; the cursor that names it.
    fn save_cursor(&mut self, after: Vec<u8>) -> u64;
    /// Where cursor `cursor` stopped; `None` when unknown (expired, or never given).
    fn load_cursor(&mut self, cursor: u64) -> Option<Vec<u8>>;
}

/// A shard as a node last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// The shard.
    pub shard: ShardId,
    /// Its leader; [`NodeId::NONE`] when unknown.
    pub leader: NodeId,
    /// Its voters and learners.
    pub members: Vec<NodeId>,
}

/// Where the session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// This node.
    pub node: NodeId,
    /// The shard whose RESP port the connection came to.
    pub shard: ShardId,
    /// Shards in the cluster.
    pub shards: u32,
    /// The cluster's name.
    pub cluster: String,
}

/// What a command does to the shard's state, for ordering a connection's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Reads it.
    Read = 0,
    /// Writes it (and may read it).
    Write = 1,
    /// Neither: answered by the session.
    Local = 2,
    /// Changes what the connection watches (`WATCH`, `MULTI`, `EXEC`…): runs once nothing
    /// of the connection is in the core.
    Barrier = 3,
}

/// An answer: written now, or waiting for the core.
pub(super) enum Answer {
    /// The reply's bytes.
    Now(Vec<u8>),
    /// A request went to the core; this renders its reply. The slot its keys are in, for a
    /// redirection.
    Core(Render, Option<u32>),
    /// The reply's bytes, then close (`QUIT`, a protocol error).
    Close(Vec<u8>),
}

/// One connection's state.
pub struct Session {
    pub(super) place: Place,
    /// The connection's id (`CLIENT ID`).
    pub(super) id: u64,
    pub(super) resp3: bool,
    pub(super) name: Option<Vec<u8>>,
    pub(super) lib: (Option<Vec<u8>>, Option<Vec<u8>>),
    /// `READONLY`: reads are served by this replica from its applied state.
    pub(super) readonly: bool,
    /// The user, once known (a client certificate or `AUTH`).
    pub(super) user: Option<String>,
    /// The `MULTI` being queued, if any.
    pub(super) multi: Option<super::multi::Multi>,
    /// `WATCH`ed keys and the mod index each had (0: missing).
    pub(super) watched: Vec<(Vec<u8>, u64)>,
    pub(super) encoder: RequestEncoder,
    /// Requests in the core, by sequence number: how to answer, the slot of its keys, what
    /// it does, and whether it was sent under RESP3 (a later `HELLO` does not change how it
    /// is answered).
    pending: HashMap<u64, (Render, Option<u32>, Effect, bool)>,
    /// Requests in the core that read, and that write.
    in_core: [usize; 2],
    /// Commands read off the socket and not run yet: a read waits for this connection's
    /// writes in the core to be answered, and a write for its reads, so each command sees
    /// the effect of every one before it and of none after (the core answers concurrent
    /// requests in any order). Everything after a waiting command waits too.
    waiting: VecDeque<Waiting>,
    /// Bytes of the commands in `waiting`.
    waiting_bytes: usize,
    /// The core answered a request this session cannot place (a bug): the connection is
    /// closed rather than left waiting for an answer that will not come.
    pub failed: bool,
    /// Answers that wait for an earlier one.
    ready: BTreeMap<u64, Vec<u8>>,
    /// The next command's sequence number.
    next_seq: u64,
    /// The next sequence number to write out.
    next_out: u64,
    /// Replies in order, for the socket.
    pub out: Vec<u8>,
    /// Close once every command taken is answered and `out` is written; read no more.
    pub close: bool,
}

/// A command read and not run yet, or a protocol error to answer in its turn.
#[derive(Debug)]
enum Waiting {
    Command(Vec<Vec<u8>>),
    ProtocolError(String),
}

/// Bytes a command's arguments take.
fn command_bytes(args: &[Vec<u8>]) -> usize {
    args.iter().map(Vec::len).sum::<usize>() + args.len()
}

impl Session {
    /// A session for connection `id`; `user`: its client certificate's, if any.
    pub fn new(place: Place, id: u64, user: Option<String>) -> Self {
        Session {
            place,
            id,
            resp3: false,
            name: None,
            lib: (None, None),
            readonly: false,
            user,
            multi: None,
            watched: Vec::new(),
            encoder: RequestEncoder::new(),
            pending: HashMap::new(),
            in_core: [0, 0],
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            failed: false,
            ready: BTreeMap::new(),
            next_seq: 1,
            next_out: 1,
            out: Vec::new(),
            close: false,
        }
    }

    /// Commands whose answers are not in `out` yet.
    pub fn unanswered(&self) -> usize {
        (self.next_seq - self.next_out) as usize + self.waiting.len()
    }

    /// Bytes of answers held back behind an earlier command's.
    pub fn held_bytes(&self) -> usize {
        self.ready.values().map(Vec::len).sum()
    }

    /// Bytes of commands taken and not run: waiting, or queued in a `MULTI`.
    pub fn held_command_bytes(&self) -> usize {
        self.waiting_bytes + self.multi.as_ref().map_or(0, super::multi::Multi::bytes)
    }

    /// Whether the connection is done: closing, and every command taken answered.
    pub fn finished(&self) -> bool {
        self.failed || (self.close && self.unanswered() == 0)
    }

    /// Takes one command (its arguments, the name first): runs it, or queues it behind
    /// requests of the other kind (see `waiting`).
    pub fn command(&mut self, args: Vec<Vec<u8>>, host: &mut dyn Host) {
        self.waiting_bytes += command_bytes(&args);
        self.waiting.push_back(Waiting::Command(args));
        self.run_waiting(host);
    }

    /// A protocol error: answered in its turn (after the commands before it), then the
    /// connection closes.
    pub fn protocol_error(&mut self, error: &super::frame::ProtocolError, host: &mut dyn Host) {
        self.waiting.push_back(Waiting::ProtocolError(format!("ERR {error}")));
        self.run_waiting(host);
    }

    /// Runs waiting commands, in order, while they need not wait.
    fn run_waiting(&mut self, host: &mut dyn Host) {
        while let Some(next) = self.waiting.front() {
            if self.close {
                // After QUIT or a protocol error nothing more runs.
                self.waiting.clear();
                self.waiting_bytes = 0;
                return;
            }
            let (spec, effect) = match next {
                Waiting::Command(args) => {
                    let spec = commands::find(&args[0]);
                    (spec, self.effect(spec))
                }
                Waiting::ProtocolError(_) => (None, Effect::Local),
            };
            let reads = self.in_core[Effect::Read as usize];
            let writes = self.in_core[Effect::Write as usize];
            let blocked = match effect {
                Effect::Local => false,
                Effect::Read => writes > 0,
                Effect::Write => reads > 0,
                Effect::Barrier => reads + writes > 0,
            };
            if blocked {
                return;
            }
            match self.waiting.pop_front().expect("looked at") {
                Waiting::Command(args) => {
                    self.waiting_bytes -= command_bytes(&args);
                    self.run(args, spec, effect, host);
                }
                Waiting::ProtocolError(text) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let bytes = self.reply(|r| r.error(&text));
                    self.answered(seq, bytes);
                    self.close = true;
                }
            }
        }
    }

    fn run(
        &mut self,
        args: Vec<Vec<u8>>,
        spec: Option<&'static Spec>,
        effect: Effect,
        host: &mut dyn Host,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let answer = self.answer(seq, &args, spec, host);
        match answer {
            Answer::Now(bytes) => self.answered(seq, bytes),
            Answer::Core(render, slot) => {
                // A local command sends no request, nor does a barrier but `WATCH` and
                // `EXEC`: counting them as writes keeps the next read and write waiting
                // for them.
                let effect = if effect == Effect::Read { Effect::Read } else { Effect::Write };
                self.in_core[effect as usize] += 1;
                self.pending.insert(seq, (render, slot, effect, self.resp3));
            }
            Answer::Close(bytes) => {
                self.answered(seq, bytes);
                self.close = true;
            }
        }
    }

    /// What the command (`spec`, as the table has it; `None`: unknown) does to the shard's
    /// state.
    fn effect(&self, spec: Option<&Spec>) -> Effect {
        let Some(spec) = spec else { return Effect::Local };
        match spec.name {
            // They change what the connection watches: after every request before them.
            "exec" | "discard" | "multi" | "watch" | "unwatch" => Effect::Barrier,
            _ if self.multi.is_some() => Effect::Local,
            "scan" | "keys" => Effect::Read,
            _ if spec.first_key > 0 && spec.writes => Effect::Write,
            _ if spec.first_key > 0 => Effect::Read,
            _ => Effect::Local,
        }
    }

    /// Takes the core's reply frame (verified) to one of this session's requests.
    pub fn on_reply(&mut self, frame: &ReplyFrame<'_>, host: &mut dyn Host) {
        let seq = frame.id();
        let Some((render, slot, effect, resp3)) = self.pending.remove(&seq) else {
            // Id 0 answers a frame the core could not verify, and a stray id cannot be
            // placed: a command is left without its answer, so the connection closes.
            tracing::error!(
                conn = self.id,
                id = seq,
                "a RESP connection got a reply it did not ask for: closing it"
            );
            self.failed = true;
            return;
        };
        if let Render::Watch(keys) = &render {
            self.watched_read(keys, frame);
        }
        let now = std::mem::replace(&mut self.resp3, resp3);
        let bytes = self.render(&render, slot, frame, host);
        self.resp3 = now;
        self.answered(seq, bytes);
        self.in_core[effect as usize] -= 1;
        self.run_waiting(host);
    }

    fn answered(&mut self, seq: u64, bytes: Vec<u8>) {
        if seq == self.next_out {
            self.out.extend_from_slice(&bytes);
            self.next_out += 1;
            while let Some(next) = self.ready.remove(&self.next_out) {
                self.out.extend_from_slice(&next);
                self.next_out += 1;
            }
        } else {
            self.ready.insert(seq, bytes);
        }
    }

    /// A reply written by `write` in this connection's protocol.
    pub(super) fn reply(&self, write: impl FnOnce(&mut Reply<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        write(&mut Reply { buf: &mut buf, resp3: self.resp3 });
        buf
    }

    pub(super) fn error(&self, text: &str) -> Answer {
        Answer::Now(self.reply(|r| r.error(text)))
    }

    fn answer(
        &mut self,
        seq: u64,
        args: &[Vec<u8>],
        spec: Option<&'static Spec>,
        host: &mut dyn Host,
    ) -> Answer {
        let no_auth = spec.is_some_and(|spec| spec.flags.contains(&"no-auth"));
        if self.user.is_none() && !no_auth && host.auth_enabled() {
            return self.error("NOAUTH Authentication required.");
        }
        let name = spec.map_or("", |spec| spec.name);
        if let Some(answer) = self.transaction_command(seq, name, args, host) {
            return answer;
        }
        if self.multi.is_some() && name != "quit" {
            return self.queue(args.to_vec(), host);
        }
        let Some(spec) = spec else {
            return self.error(&unknown_command(args));
        };
        if !spec.arity_ok(args.len()) {
            return self
                .error(&format!("ERR wrong number of arguments for '{}' command", spec.name));
        }
        if spec.first_key > 0 {
            return match self.route(spec, args, host) {
                Ok(slot) => self.keyed(seq, spec, args, slot, host),
                Err(refusal) => self.error(&refusal),
            };
        }
        self.unkeyed(seq, spec, args, host)
    }

    /// The slot the command's keys share, when this shard owns it; the error to answer
    /// otherwise: `CROSSSLOT`, or `MOVED` to the shard's leader (`TRYAGAIN` with none known).
    pub(super) fn route(
        &self,
        spec: &Spec,
        args: &[Vec<u8>],
        host: &dyn Host,
    ) -> Result<u32, String> {
        let mut keys = spec.key_indexes(args.len()).map(|i| &args[i]);
        let first = keys.next().map(|key| slot(key)).unwrap_or(0);
        if keys.any(|key| slot(key) != first) {
            return Err("CROSSSLOT Keys in request don't hash to the same slot".into());
        }
        let owner = shard_for_slot(first, self.place.shards);
        if owner == self.place.shard {
            return Ok(first);
        }
        Err(self.moved(first, owner, host))
    }

    /// The redirection for `slot` of `shard`: `MOVED` to its leader's RESP port.
    pub(super) fn moved(&self, slot: u32, shard: ShardId, host: &dyn Host) -> String {
        let leader = host.shard_views().into_iter().find(|v| v.shard == shard).map(|v| v.leader);
        match leader.filter(|l| *l != NodeId::NONE).and_then(|l| host.resp_addr(l, shard)) {
            Some(addr) => format!("MOVED {slot} {addr}"),
            None => format!("TRYAGAIN shard {shard} has no leader this node knows of; retry"),
        }
    }
}

/// Redis's answer to a command it does not know.
pub(super) fn unknown_command(args: &[Vec<u8>]) -> String {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0]).chars().take(128).collect::<String>()
    );
    for arg in args.iter().skip(1).take(8) {
        let arg = String::from_utf8_lossy(arg).chars().take(64).collect::<String>();
        text.push_str(&format!("'{arg}' "));
    }
    text
}

/// An integer argument, as Redis reads one.
pub(super) fn integer(arg: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|text| !(text.starts_with('+') || text.len() > 1 && text.starts_with('0')))
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| "ERR value is not an integer or out of range".to_string())
}

/// Whether `arg` is `word`, in any case.
pub(super) fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}
