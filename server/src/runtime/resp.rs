//! Redis (RESP) connections on `resp_port + s`: one task per connection that parses commands,
//! runs them through a [`Session`] (which hands requests to the shard core), turns the
//! core's replies into Redis's and writes them in command order.
//!
//! Backpressure as on the client port: with [`RESP_COMMANDS_IN_FLIGHT_MAX`] commands
//! unanswered, [`RESP_HELD_COMMAND_BYTES_MAX`] bytes of commands taken and not run, or
//! [`CONNECTION_OUTPUT_BYTES_MAX`] reply bytes unsent (or held back behind a slower
//! command), the connection is not read from; whole commands already read wait in the input
//! buffer and are taken as room comes. After `QUIT` or a protocol error nothing more is read,
//! and the connection closes once every command before it is answered. A connection whose
//! unwritten answers pass [`RESP_OUTPUT_BYTES_HARD_MAX`] (a client that does not read) is
//! closed. Bytes that are not RESP get Redis's
//! `-ERR Protocol error` and the connection closes; other connections are not affected.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use corekv_proto::frame::verify_reply;
use corekv_types::ids::{NodeId, ShardId};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpListener;

use super::net::{self, Stream};
use super::state::{ClientConn, Shard};
use crate::constants::{
    CONNECTION_OUTPUT_BYTES_MAX, RESP_ARGS_MAX, RESP_BULK_BYTES_MAX, RESP_COMMANDS_IN_FLIGHT_MAX,
    RESP_COMMAND_BYTES_MAX, RESP_HELD_COMMAND_BYTES_MAX, RESP_INLINE_BYTES_MAX,
    RESP_OUTPUT_BYTES_HARD_MAX, SOCKET_READ_CHUNK_BYTES,
};
use crate::core::ConnId;
use crate::resp::frame::{self, Limits, Parsed};
use crate::resp::{Host, Place, Session, ShardView};

const LIMITS: Limits = Limits {
    bulk_bytes_max: RESP_BULK_BYTES_MAX,
    args_max: RESP_ARGS_MAX,
    inline_bytes_max: RESP_INLINE_BYTES_MAX,
    command_bytes_max: RESP_COMMAND_BYTES_MAX,
};

/// Accepts RESP connections for the shard.
pub(crate) async fn accept_resp(shard: Rc<Shard>, listener: TcpListener) {
    net::accept_clients_with(shard, listener, "redis", |shard, stream| async move {
        let id = shard.next_conn_id();
        let user = stream.peer_cert().and_then(|cert| corekv_types::tls::subject_common_name(cert));
        shard.core.borrow_mut().on_resp_connected(id, user.clone());
        let conn = Rc::new(ClientConn::default());
        shard.conns.borrow_mut().insert(id, conn.clone());
        shard.metrics.resp_connections.fetch_add(1, Relaxed);
        let place = Place {
            node: shard.node_id,
            shard: shard.shard,
            shards: shard.registry.shards,
            cluster: shard.registry.cluster.clone(),
        };
        let mut session = Session::new(place, id, user);
        if let Err(error) = serve(&shard, id, &conn, &mut session, stream).await {
            tracing::debug!(shard = %shard.shard, conn = id, %error, "redis connection closed");
        }
        shard.conns.borrow_mut().remove(&id);
        shard.core.borrow_mut().on_client_closed(id);
        shard.metrics.resp_connections.fetch_sub(1, Relaxed);
    })
    .await
}

/// What a session asks of the shard, answered from the shard's state.
struct ShardHost<'a> {
    shard: &'a Shard,
    conn: ConnId,
}

impl Host for ShardHost<'_> {
    fn submit(&mut self, frame: &[u8]) {
        let mut core = self.shard.core.borrow_mut();
        core.set_now(self.shard.now_us());
        // RESP connections have no hello: the shell speaks for them.
        core.on_client_frame(self.conn, &mut true, frame);
    }

    fn resp_addr(&self, node: NodeId, shard: ShardId) -> Option<String> {
        // The membership's address (a node added since start carries its own), else the
        // registry's.
        let member = self.shard.core.borrow().membership().addrs.get(&node).cloned();
        match member {
            Some(addr) if addr.resp_port.is_some() => addr.node(node).resp_addr(shard),
            _ => self.shard.registry.node(node)?.resp_addr(shard),
        }
    }

    fn shard_views(&self) -> Vec<ShardView> {
        let view = |status: &crate::core::ReplicaStatus| ShardView {
            shard: status.shard,
            leader: status.leader_id,
            members: status.voters.iter().chain(&status.learners).copied().collect(),
        };
        (0..self.shard.registry.shards)
            .map(ShardId)
            .map(|s| {
                if s == self.shard.shard {
                    return view(&self.shard.core.borrow().status());
                }
                let published = self.shard.statuses[s.get() as usize]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|p| view(&p.status));
                // A shard still starting: its members as the registry has them, no leader.
                published.unwrap_or_else(|| ShardView {
                    shard: s,
                    leader: NodeId::NONE,
                    members: self.shard.registry.nodes.iter().map(|n| n.id).collect(),
                })
            })
            .collect()
    }

    fn auth_enabled(&self) -> bool {
        self.shard.core.borrow().checks_access()
    }

    fn authenticate(&mut self, user: Option<&str>, token: &str) -> Result<String, String> {
        self.shard.core.borrow_mut().authenticate_resp(self.conn, user, token)
    }

    fn key_count(&self) -> u64 {
        self.shard.core.borrow().status().keys
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn save_cursor(&mut self, after: Vec<u8>) -> u64 {
        self.shard.resp_cursors.borrow_mut().save(after)
    }

    fn load_cursor(&mut self, cursor: u64) -> Option<Vec<u8>> {
        self.shard.resp_cursors.borrow().load(cursor)
    }
}

/// Reads commands and writes answers on one connection until either side closes.
async fn serve(
    shard: &Shard,
    id: ConnId,
    conn: &ClientConn,
    session: &mut Session,
    mut stream: Stream,
) -> io::Result<()> {
    let plaintext_port = matches!(stream, Stream::Plain(_));
    // Unconsumed bytes (a command not whole yet), and the buffer reads land in.
    let mut input: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; SOCKET_READ_CHUNK_BYTES];
    // The core's reply frames, swapped out of the connection's output (the two buffers keep
    // their capacity between turns).
    let mut frames: Vec<u8> = Vec::new();
    let mut read_any = false;
    // `input` holds whole commands not taken yet (the connection reached a bound).
    let mut input_held = false;
    let (mut written, mut unflushed) = (0usize, false);
    poll_fn(|cx| loop {
        let mut progress = take_replies(shard, id, conn, session, &mut frames);
        while written < session.out.len() {
            match Pin::new(&mut stream).poll_write(cx, &session.out[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    unflushed = true;
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => break,
            }
        }
        if written == session.out.len() && unflushed {
            match Pin::new(&mut stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        if written == session.out.len() && !unflushed {
            session.out.clear();
            written = 0;
            if session.finished() {
                return Poll::Ready(Ok(()));
            }
        }
        if session.failed {
            return Poll::Ready(Err(io::Error::other("the core answered a request unknown here")));
        }
        if session.out.len() - written + session.held_bytes() > RESP_OUTPUT_BYTES_HARD_MAX {
            tracing::warn!(shard = %shard.shard, conn = id, "closing a redis connection whose unread answers passed {RESP_OUTPUT_BYTES_HARD_MAX} bytes");
            return Poll::Ready(Err(io::Error::other("output limit")));
        }
        if shard.stopping.get() {
            return Poll::Ready(Ok(()));
        }
        let room = !session.close
            && session.unanswered() < RESP_COMMANDS_IN_FLIGHT_MAX
            && session.held_command_bytes() < RESP_HELD_COMMAND_BYTES_MAX
            && session.out.len() + session.held_bytes() < CONNECTION_OUTPUT_BYTES_MAX;
        if room && input_held {
            // Commands read before and not taken then: nothing more may come to take them.
            input_held = take_commands(shard, id, session, &mut input);
            shard.wake.notify();
            progress = true;
        } else if room {
            match Pin::new(&mut stream).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => {
                    input.extend_from_slice(&chunk[..n]);
                    progress = true;
                    if plaintext_port && !read_any && net::looks_like_tls(&input) {
                        tracing::warn!(shard = %shard.shard, conn = id, "refused a redis client that speaks TLS: this node's registry file has no [tls] section");
                        return Poll::Ready(Ok(()));
                    }
                    read_any = true;
                    input_held = take_commands(shard, id, session, &mut input);
                    shard.wake.notify();
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        if !progress {
            *conn.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
    })
    .await
}

/// Runs the whole commands in `input` (as many as there is room for) and drops their bytes;
/// whether it stopped at a bound with whole commands left.
fn take_commands(shard: &Shard, id: ConnId, session: &mut Session, input: &mut Vec<u8>) -> bool {
    let mut host = ShardHost { shard, conn: id };
    let mut at = 0;
    let mut held = false;
    while at < input.len() && !session.close {
        if session.unanswered() >= RESP_COMMANDS_IN_FLIGHT_MAX
            || session.held_command_bytes() >= RESP_HELD_COMMAND_BYTES_MAX
        {
            held = true;
            break;
        }
        match frame::parse(&input[at..], &LIMITS) {
            Ok(Parsed::Incomplete) => break,
            Ok(Parsed::Nothing { consumed }) => at += consumed,
            Ok(Parsed::Command { args, consumed }) => {
                at += consumed;
                session.command(args, &mut host);
            }
            Err(error) => {
                shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                tracing::debug!(shard = %shard.shard, conn = id, %error, "closing a redis connection");
                session.protocol_error(&error, &mut host);
                at = input.len();
            }
        }
    }
    if session.close {
        // Nothing after QUIT or a protocol error is read.
        input.clear();
        return false;
    }
    input.drain(..at);
    held
}

/// Hands the core's replies for this connection to the session; whether there were any.
fn take_replies(
    shard: &Shard,
    id: ConnId,
    conn: &ClientConn,
    session: &mut Session,
    frames: &mut Vec<u8>,
) -> bool {
    frames.clear();
    std::mem::swap(&mut *conn.out.borrow_mut(), frames);
    if frames.is_empty() {
        return false;
    }
    let mut host = ShardHost { shard, conn: id };
    let mut at = 0;
    while at + 4 <= frames.len() {
        let length =
            u32::from_le_bytes([frames[at], frames[at + 1], frames[at + 2], frames[at + 3]]);
        let end = (at + 4).saturating_add(length as usize).min(frames.len());
        match verify_reply(&frames[at..end]) {
            Ok(reply) => session.on_reply(&reply, &mut host),
            // The core's own encoder made it: a bug, said loudly. Its command cannot be
            // answered, so the connection closes rather than wait for the answer.
            Err(error) => {
                tracing::error!(shard = %shard.shard, conn = id, %error, "the core sent a redis connection a reply that does not verify");
                session.failed = true;
            }
        }
        at = end;
    }
    // The driver's turn may have queued these before the connection task ran: the core
    // drains a connection's output to let watchers know; RESP has none.
    conn.notify_drained.set(false);
    true
}
