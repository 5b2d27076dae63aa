//! Sessions driven without a socket or a core: a host that records the requests a session
//! submits and answers nothing by itself; the tests hand the session the core's replies.

use corekv_proto::client::{KeyMeta, Request};
use corekv_proto::encode::{EntryRef, ErrorInfo, ReplyEncoder, TxnResultRef};
use corekv_proto::frame::{verify_reply, verify_request};
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::placement::slot;

use super::{Host, Place, Session, ShardView};

/// A two-shard cluster of nodes 1–3 seen from node 1, shard 0 (leader of shard 0: node 1; of
/// shard 1: node 2).
struct FakeHost {
    submitted: Vec<Vec<u8>>,
    auth: bool,
    leaders: [u64; 2],
}

impl Host for FakeHost {
    fn submit(&mut self, frame: &[u8]) {
        verify_request(frame).expect("sessions submit valid requests");
        self.submitted.push(frame.to_vec());
    }
    fn resp_addr(&self, node: NodeId, shard: ShardId) -> Option<String> {
        Some(format!("10.0.0.{}:{}", node.get(), 6379 + shard.get()))
    }
    fn shard_views(&self) -> Vec<ShardView> {
        (0..2)
            .map(|s| ShardView {
                shard: ShardId(s),
                leader: NodeId(self.leaders[s as usize]),
                members: vec![NodeId(1), NodeId(2), NodeId(3)],
            })
            .collect()
    }
    fn auth_enabled(&self) -> bool {
        self.auth
    }
    fn authenticate(&mut self, user: Option<&str>, token: &str) -> Result<String, String> {
        match (user, token) {
            (None | Some("app"), "secret") => Ok("app".into()),
            _ => Err("unknown token".into()),
        }
    }
    fn key_count(&self) -> u64 {
        7
    }
    fn now_ms(&self) -> u64 {
        1_000_000
    }
    fn save_cursor(&mut self, _after: Vec<u8>) -> u64 {
        42
    }
    fn load_cursor(&mut self, _cursor: u64) -> Option<Vec<u8>> {
        None
    }
}

fn setup() -> (Session, FakeHost) {
    let place = Place { node: NodeId(1), shard: ShardId(0), shards: 2, cluster: "t".into() };
    (Session::new(place, 5, None), FakeHost { submitted: Vec::new(), auth: false, leaders: [1, 2] })
}

fn run(session: &mut Session, host: &mut FakeHost, words: &[&str]) {
    session.command(words.iter().map(|w| w.as_bytes().to_vec()).collect(), host);
}

fn take(session: &mut Session) -> String {
    String::from_utf8(std::mem::take(&mut session.out)).expect("test replies are text")
}

/// A key of shard 0 (slots 0–8191).
fn key0(n: u32) -> String {
    (0..).map(|i| format!("k{n}-{i}")).find(|k| slot(k.as_bytes()) < 8192).unwrap()
}

fn reply(session: &mut Session, host: &mut FakeHost, frame: &[u8]) {
    let frame = verify_reply(frame).expect("test replies verify");
    session.on_reply(&frame, host);
}

// Shows answers go out in command order though the core answers out of order, and commands
// the session answers itself wait behind earlier ones.
#[test]
fn answers_keep_command_order() {
    let (mut session, mut host) = setup();
    let (a, b) = (key0(1), key0(2));
    run(&mut session, &mut host, &["GET", &a]);
    run(&mut session, &mut host, &["GET", &b]);
    run(&mut session, &mut host, &["PING"]);
    assert_eq!(host.submitted.len(), 2, "reads go to the core together");
    assert_eq!(take(&mut session), "", "nothing may overtake the first GET");
    let mut encoder = ReplyEncoder::new();
    let entry = EntryRef {
        key: b.as_bytes(),
        value: Some(b"x"),
        meta: KeyMeta::default(),
        ttl_ms: 0,
        lease: 0,
    };
    reply(&mut session, &mut host, encoder.get(2, Some(&entry), false, 9));
    assert_eq!(take(&mut session), "");
    assert_eq!(session.unanswered(), 3);
    reply(&mut session, &mut host, encoder.get(1, None, false, 9));
    assert_eq!(take(&mut session), "$-1\r\n$1\r\nx\r\n+PONG\r\n");
    assert_eq!(session.unanswered(), 0);
}

// Shows a connection's reads and writes take effect in its order: a write waits while a read
// of its connection is in the core, a read while a write is, and whatever follows a waiting
// command waits behind it (the core answers concurrent requests in any order).
#[test]
fn reads_and_writes_do_not_overtake() {
    let (mut session, mut host) = setup();
    let key = key0(8);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["SET", &key, "1"]);
    run(&mut session, &mut host, &["SET", &key, "2"]);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["PING"]);
    assert_eq!(host.submitted.len(), 1, "the writes wait for the read");
    assert_eq!(session.unanswered(), 5);
    let mut encoder = ReplyEncoder::new();
    reply(&mut session, &mut host, encoder.get(1, None, false, 9));
    assert_eq!(host.submitted.len(), 3, "both writes went, the read waits for them");
    reply(&mut session, &mut host, encoder.put(3, KeyMeta::default()));
    assert_eq!(host.submitted.len(), 3);
    reply(&mut session, &mut host, encoder.put(2, KeyMeta::default()));
    assert_eq!(host.submitted.len(), 4, "the read went once both writes were answered");
    assert_eq!(take(&mut session), "$-1\r\n+OK\r\n+OK\r\n");
    let entry = EntryRef {
        key: key.as_bytes(),
        value: Some(b"2"),
        meta: KeyMeta::default(),
        ttl_ms: 0,
        lease: 0,
    };
    reply(&mut session, &mut host, encoder.get(4, Some(&entry), false, 9));
    assert_eq!(take(&mut session), "$1\r\n2\r\n+PONG\r\n");
}

// Shows routing: keys of another shard are MOVED to that shard's leader before anything is
// sent; keys of two slots are CROSSSLOT; a NotLeader from the core is MOVED to the leader it
// names, or TRYAGAIN when it knows none.
#[test]
fn redirections() {
    let (mut session, mut host) = setup();
    let other = (0..).map(|i| format!("o{i}")).find(|k| slot(k.as_bytes()) >= 8192).unwrap();
    run(&mut session, &mut host, &["GET", &other]);
    let moved = format!("-MOVED {} 10.0.0.2:6380\r\n", slot(other.as_bytes()));
    assert_eq!(take(&mut session), moved);
    run(&mut session, &mut host, &["MGET", &key0(1), &other]);
    assert!(take(&mut session).starts_with("-CROSSSLOT"));
    assert!(host.submitted.is_empty());
    let key = key0(3);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["SET", &key, "v"]);
    let mut encoder = ReplyEncoder::new();
    let not_leader = ErrorInfo::NotLeader { leader_id: 3, leader_addr: None };
    reply(&mut session, &mut host, encoder.error(3, &not_leader));
    let electing = ErrorInfo::NotLeader { leader_id: 0, leader_addr: None };
    reply(&mut session, &mut host, encoder.error(4, &electing));
    let text = take(&mut session);
    assert_eq!(
        text,
        format!(
            "-MOVED {} 10.0.0.3:6379\r\n-TRYAGAIN shard 0 is electing a leader; retry\r\n",
            slot(key.as_bytes())
        )
    );
    host.leaders[1] = 0;
    run(&mut session, &mut host, &["GET", &other]);
    assert!(take(&mut session).starts_with("-TRYAGAIN"));
}

// Shows a write that timed out says its outcome is unknown (a read's timeout is TRYAGAIN),
// and a conditional SET whose condition fails answers null, SETNX 0.
#[test]
fn timeouts_and_failed_conditions() {
    let (mut session, mut host) = setup();
    let key = key0(4);
    run(&mut session, &mut host, &["SET", &key, "v"]);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["SET", &key, "v", "NX"]);
    run(&mut session, &mut host, &["SETNX", &key, "v"]);
    run(&mut session, &mut host, &["GETSET", &key, "w"]);
    let mut encoder = ReplyEncoder::new();
    reply(&mut session, &mut host, encoder.error(1, &ErrorInfo::Timeout));
    reply(&mut session, &mut host, encoder.error(2, &ErrorInfo::Timeout));
    reply(&mut session, &mut host, encoder.error(3, &ErrorInfo::CompareFailed { compare: 0 }));
    reply(&mut session, &mut host, encoder.error(4, &ErrorInfo::CompareFailed { compare: 0 }));
    let old = EntryRef {
        key: key.as_bytes(),
        value: Some(b"v"),
        meta: KeyMeta::default(),
        ttl_ms: 0,
        lease: 0,
    };
    let results = [TxnResultRef::Get(Some(old)), TxnResultRef::Put(KeyMeta::default())];
    reply(&mut session, &mut host, encoder.txn(5, None, &results, 10));
    let text = take(&mut session);
    assert!(text.starts_with("-UNCERTAIN "), "{text}");
    assert!(text.contains("\r\n-TRYAGAIN the read timed out"), "{text}");
    assert!(text.ends_with("\r\n$-1\r\n:0\r\n$1\r\nv\r\n"), "{text}");
}

// Shows SET's options become the right request: a plain put, or a transaction with a
// compare on the key's existence and a get of the old value.
#[test]
fn set_requests() {
    let (mut session, mut host) = setup();
    let key = key0(5);
    run(&mut session, &mut host, &["SET", &key, "v", "PX", "1500"]);
    run(&mut session, &mut host, &["SET", &key, "v", "XX", "GET"]);
    let put = verify_request(&host.submitted[0]).unwrap();
    let put = put.request_as_put_request().expect("a plain SET is a put");
    assert_eq!(put.ttl_ms(), 1500);
    let txn = verify_request(&host.submitted[1]).unwrap();
    assert_eq!(txn.request_type(), Request::TxnRequest);
    let txn = txn.request_as_txn_request().unwrap();
    assert_eq!(txn.compares().map(|c| c.len()), Some(1));
    assert_eq!(txn.success().map(|s| s.len()), Some(2));
    assert_eq!(txn.failure().map(|s| s.len()), Some(1));
}

// Shows a cluster with auth answers NOAUTH until AUTH succeeds, WRONGPASS for a bad token,
// and lets AUTH, HELLO and QUIT through before it.
#[test]
fn auth_gates_commands() {
    let (mut session, mut host) = setup();
    host.auth = true;
    let key = key0(6);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["AUTH", "nope"]);
    run(&mut session, &mut host, &["AUTH", "other", "secret"]);
    assert_eq!(
        take(&mut session),
        "-NOAUTH Authentication required.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    run(&mut session, &mut host, &["HELLO", "3", "AUTH", "app", "secret"]);
    assert!(take(&mut session).starts_with("%7\r\n"));
    run(&mut session, &mut host, &["GET", &key]);
    assert_eq!(host.submitted.len(), 1);
}

// Shows unknown commands, wrong arities and bad arguments get Redis's errors, and the
// connection's own commands answer at once.
#[test]
fn errors_and_connection_commands() {
    let (mut session, mut host) = setup();
    run(&mut session, &mut host, &["LPUSH", "l", "x"]);
    run(&mut session, &mut host, &["GET"]);
    run(&mut session, &mut host, &["SETEX", &key0(7), "0", "v"]);
    run(&mut session, &mut host, &["SELECT", "1"]);
    run(&mut session, &mut host, &["ECHO", "hi"]);
    run(&mut session, &mut host, &["CLUSTER", "KEYSLOT", "{user1}:a"]);
    run(&mut session, &mut host, &["DBSIZE"]);
    run(&mut session, &mut host, &["CLIENT", "SETNAME", "me"]);
    run(&mut session, &mut host, &["CLIENT", "GETNAME"]);
    run(&mut session, &mut host, &["SCAN", "7"]);
    let text = take(&mut session);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR unknown command 'LPUSH'"), "{text}");
    assert_eq!(lines[1], "-ERR wrong number of arguments for 'get' command");
    assert_eq!(lines[2], "-ERR invalid expire time in 'setex' command");
    assert_eq!(lines[3], "-ERR SELECT is not allowed in cluster mode");
    assert_eq!(&lines[4..6], ["$2", "hi"]);
    assert_eq!(lines[6], format!(":{}", slot(b"user1")));
    assert_eq!(lines[7], ":7");
    assert_eq!(&lines[8..11], ["+OK", "$2", "me"]);
    assert!(lines[11].starts_with("-ERR cursor 7 is unknown"), "{text}");
    assert!(host.submitted.is_empty());
    run(&mut session, &mut host, &["QUIT"]);
    assert!(session.close);
}

// Shows QUIT and a protocol error close only once every command before them is answered,
// each answer in its place; nothing after them runs.
#[test]
fn closing_waits_for_earlier_answers() {
    let (mut session, mut host) = setup();
    let key = key0(9);
    run(&mut session, &mut host, &["SET", &key, "1"]);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["QUIT"]);
    run(&mut session, &mut host, &["SET", &key, "2"]);
    assert!(!session.finished(), "the SET and GET are still unanswered");
    assert_eq!(host.submitted.len(), 1);
    let mut encoder = ReplyEncoder::new();
    reply(&mut session, &mut host, encoder.put(1, KeyMeta::default()));
    assert_eq!(host.submitted.len(), 2, "the GET went after the SET was answered");
    assert!(session.close && !session.finished(), "QUIT ran; the GET is unanswered");
    reply(&mut session, &mut host, encoder.get(2, None, false, 9));
    assert!(session.finished());
    assert_eq!(take(&mut session), "+OK\r\n$-1\r\n+OK\r\n");
    assert_eq!(host.submitted.len(), 2, "nothing after QUIT ran");

    let (mut session, mut host) = setup();
    run(&mut session, &mut host, &["SET", &key, "1"]);
    run(&mut session, &mut host, &["GET", &key]);
    let error = super::frame::ProtocolError("bad".into());
    session.protocol_error(&error, &mut host);
    reply(&mut session, &mut host, encoder.put(1, KeyMeta::default()));
    reply(&mut session, &mut host, encoder.get(2, None, false, 9));
    assert!(session.finished());
    assert_eq!(take(&mut session), "+OK\r\n$-1\r\n-ERR Protocol error: bad\r\n");
}

// Shows a reply the session cannot place (id 0: a request the core could not read) fails
// the connection instead of leaving it waiting for ever.
#[test]
fn an_unplaceable_reply_fails_the_connection() {
    let (mut session, mut host) = setup();
    run(&mut session, &mut host, &["GET", &key0(10)]);
    let mut encoder = ReplyEncoder::new();
    let invalid = ErrorInfo::InvalidRequest { reason: "unreadable" };
    reply(&mut session, &mut host, encoder.error(0, &invalid));
    assert!(session.failed && session.finished());
}

// Shows a command answers in the protocol it was sent under, whatever HELLO came after it,
// and that WATCH-state commands wait for what is in the core (UNWATCH after a pipelined
// WATCH really forgets the key).
#[test]
fn answers_keep_their_protocol_and_unwatch_waits() {
    let (mut session, mut host) = setup();
    let key = key0(11);
    run(&mut session, &mut host, &["GET", &key]);
    run(&mut session, &mut host, &["HELLO", "3"]);
    let mut encoder = ReplyEncoder::new();
    reply(&mut session, &mut host, encoder.get(1, None, false, 9));
    let text = take(&mut session);
    assert!(text.starts_with("$-1\r\n%7\r\n"), "{text}");

    run(&mut session, &mut host, &["WATCH", &key]);
    run(&mut session, &mut host, &["UNWATCH"]);
    run(&mut session, &mut host, &["MULTI"]);
    run(&mut session, &mut host, &["SET", &key, "v"]);
    run(&mut session, &mut host, &["EXEC"]);
    assert_eq!(host.submitted.len(), 2, "UNWATCH waits for the WATCH");
    let entry = EntryRef {
        key: key.as_bytes(),
        value: Some(b"x"),
        meta: KeyMeta::default(),
        ttl_ms: 0,
        lease: 0,
    };
    reply(&mut session, &mut host, encoder.batch_get(3, [Some(entry)], false, 9));
    assert_eq!(host.submitted.len(), 3, "EXEC went once the WATCH was answered");
    let exec = verify_request(&host.submitted[2]).unwrap();
    let txn = exec.request_as_txn_request().expect("EXEC is a transaction");
    assert_eq!(txn.compares().map(|c| c.len()), Some(0), "the UNWATCHed key is not compared");
}
