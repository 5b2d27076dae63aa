//! One multiplexed connection to one shard of one node.
//!
//! Many requests share the connection at once: each gets a request id, the writer task sends frames
//! in the order they are handed over (coalescing whatever is queued into one write, after one turn
//! of the scheduler when other requests are in flight, so that callers woken by the same read go
//! together), and the reader task matches replies — which may come back in any order — to their
//! callers by id. At most `max_in_flight` requests are outstanding; further callers wait for a
//! slot. When the connection fails, every request in flight fails at once with [`CallError::Lost`]
//! (the server may or may not have received it) and the connection is discarded; the client
//! reconnects lazily on the next call.
//!
//! A connection the client gives up on ([`Connection::abort`]: a node that did not answer in
//! time) is reset, not closed: what the kernel still holds unsent is thrown away. Closed
//! normally, a request the client has since sent elsewhere would still be delivered when the
//! link came back — a write from seconds ago, applied after later ones (a partition test
//! saw a key go back to an older value that way).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corekv_proto::constants::CLIENT_PROTOCOL_VERSION;
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::{verify_reply, FrameBuffer, VerifiedReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::net::{self, ReadHalf, Stream, TlsConfig, WriteHalf};

/// Frames queued for the writer task before callers wait.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// Read buffer chunk.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a call on a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The request never left: the connection was already closed. Safe to retry.
    NotSent(String),
    /// The request was handed to the connection, which then failed: the server may or may not
    /// have received it.
    Lost(String),
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Nothing listens there: the node is down, or the port is not one of its shards'.
    Refused(String),
    /// The node did not answer in time, or the connection failed: try another node.
    Unreachable(String),
    /// The node answered and refused this client (another cluster, another shard count, an
    /// unsupported protocol), or its answer made no sense. Retrying will not help.
    Fatal(Error),
}

impl OpenError {
    /// The caller's error, for a call that tried for `after`.
    pub(crate) fn into_error(self, after: Duration) -> Error {
        match self {
            OpenError::Refused(addr) => {
                Error::Unavailable { after, last_error: format!("connection refused by {addr}") }
            }
            OpenError::Unreachable(reason) => Error::Unavailable { after, last_error: reason },
            OpenError::Fatal(error) => error,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<VerifiedReply>>>>;

/// See the module docs.
pub(crate) struct Connection {
    pub(crate) addr: String,
    frames: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    slots: Semaphore,
    closed: Arc<AtomicBool>,
    /// The reader and writer tasks, which own the socket.
    tasks: [AbortHandle; 2],
}

impl Connection {
    /// Connects, says hello (naming the cluster and the registry's shard count, which the
    /// node checks), and starts the reader and writer tasks.
    pub(crate) async fn open(
        addr: &str,
        greeting: Greeting<'_>,
        tls: Option<&TlsConfig>,
        connect_timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Arc<Connection>, OpenError> {
        let mut stream = net::open(addr, tls, connect_timeout).await?;
        hello(&mut stream, addr, greeting, connect_timeout).await?;
        let (read, write) = stream.into_split();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_loop(read, pending.clone(), closed.clone()));
        let writer = tokio::spawn(write_loop(write, queue, pending.clone(), closed.clone()));
        Ok(Arc::new(Connection {
            tasks: [reader.abort_handle(), writer.abort_handle()],
            addr: addr.to_string(),
            frames,
            pending,
            next_id: AtomicU64::new(1),
            slots: Semaphore::new(max_in_flight),
            closed,
        }))
    }

    /// Gives up on the connection: every request in flight fails with [`CallError::Lost`], and
    /// the socket is reset, dropping whatever the kernel has not sent yet.
    pub(crate) fn abort(&self) {
        close(&self.pending, &self.closed);
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Whether the connection has failed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends the request `build` makes for a fresh request id; returns the reply, verified
    /// once, by the reader.
    pub(crate) async fn call(
        &self,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<VerifiedReply, CallError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| CallError::NotSent("connection closed".into()))?;
        if self.is_closed() {
            return Err(CallError::NotSent(format!("connection to {} closed", self.addr)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if self.frames.send(build(id)).await.is_err() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(CallError::NotSent(format!("connection to {} closed", self.addr)));
        }
        // The reader marks the connection closed before failing what is pending; a request
        // registered after that sweep must not wait forever.
        if self.is_closed() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        rx.await.map_err(|_| CallError::Lost(format!("connection to {} lost", self.addr)))
    }
}

/// Marks the connection closed and fails every request in flight (their senders drop).
fn close(pending: &Pending, closed: &AtomicBool) {
    closed.store(true, Ordering::Release);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

async fn read_loop(mut read: ReadHalf, pending: Pending, closed: Arc<AtomicBool>) {
    let mut buffer = FrameBuffer::new(READ_CHUNK_BYTES);
    'read: loop {
        match read.read(buffer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.commit(n),
        }
        loop {
            let frame = match buffer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            // A reply that does not verify cannot be matched to a caller; the stream is not to
            // be trusted after it.
            let Ok(reply) = VerifiedReply::new(frame.to_vec()) else { break 'read };
            let id = reply.reply().id();
            let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(reply);
            }
        }
    }
    close(&pending, &closed);
}

async fn write_loop(
    mut write: WriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(READ_CHUNK_BYTES);
    let one_thread = matches!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    while let Some(frame) = queue.recv().await {
        batch.extend_from_slice(&frame);
        // Callers woken together (by the replies of one read) queue their next requests one
        // after another: written at once, each would go in a socket write (and a TLS record)
        // of its own. One turn of the scheduler lets them all be queued first; a lone caller
        // (nothing else in flight) is not kept waiting for it. On several threads the callers
        // may be running on another one meanwhile, so the writer waits for its thread's next
        // look at the sockets too (`yield_now`); on one thread that cost the HTTP gateway a
        // fifth of its HTTP/1.1 gets, so there it only lets the tasks already runnable go first.
        if pending.lock().unwrap_or_else(|p| p.into_inner()).len() > 1 {
            if one_thread {
                run_others_first().await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        while let Ok(frame) = queue.try_recv() {
            batch.extend_from_slice(&frame);
            if batch.len() > READ_CHUNK_BYTES * 16 {
                break;
            }
        }
        if write.write_all(&batch).await.is_err() || write.flush().await.is_err() {
            break;
        }
        batch.clear();
    }
    close(&pending, &closed);
    let _ = write.shutdown().await;
}

/// Lets the tasks already waiting to run go first: the task wakes itself and so goes to the back
/// of the run queue. (`tokio::task::yield_now` also waits for the runtime's next look at the
/// sockets: on the HTTP gateway's one thread that cost a fifth of its HTTP/1.1 gets.)
async fn run_others_first() {
    let mut waited = false;
    std::future::poll_fn(|cx| {
        if waited {
            std::task::Poll::Ready(())
        } else {
            waited = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// A plaintext hello answered with a TLS alert.
#[derive(Debug)]
struct PlaintextToTls;

impl std::fmt::Display for PlaintextToTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node answered with a TLS alert")
    }
}

impl std::error::Error for PlaintextToTls {}

/// What a hello says: the cluster name and shard count of this client's registry, and who
/// the client is (a token's user; the user it acts for).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Greeting<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) shards: u32,
    pub(crate) token: Option<&'a str>,
    pub(crate) as_user: Option<&'a str>,
}

impl crate::ClientConfig {
    pub(crate) fn greeting(&self) -> Greeting<'_> {
        Greeting {
            cluster: &self.registry.cluster,
            shards: self.registry.shards,
            token: self.token.as_deref(),
            as_user: self.act_as.as_deref(),
        }
    }
}

/// The hello exchange on a new connection: the cluster name and shard count this client's
/// registry names, and the node's acceptance (or its one-line refusal).
pub(crate) async fn hello(
    stream: &mut Stream,
    addr: &str,
    greeting: Greeting<'_>,
    timeout: Duration,
) -> Result<(), OpenError> {
    let unavailable = OpenError::Unreachable;
    let Greeting { cluster, shards, token, as_user } = greeting;
    let hello = RequestEncoder::new().hello_as(0, cluster, shards, token, as_user).to_vec();
    let plaintext = matches!(stream, Stream::Plain(_));
    let handshake = async {
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut buffer = FrameBuffer::new(4096);
        loop {
            // A TLS alert record (type 21, version 3.1-3.4, 2 bytes long): the node speaks
            // TLS, this client not. A reply frame never starts so before the hello's reply.
            let alert = |b: &[u8]| {
                b.len() >= 5
                    && b[0] == 0x15
                    && b[1] == 0x03
                    && (1..=4).contains(&b[2])
                    && b[3..5] == [0, 2]
            };
            if plaintext && alert(buffer.pending()) {
                return Err(std::io::Error::other(PlaintextToTls));
            }
            if let Some(frame) = buffer
                .next_frame()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                return Ok::<Vec<u8>, std::io::Error>(frame.to_vec());
            }
            let n = stream.read(buffer.spare()).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.commit(n);
        }
    };
    let reply = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| unavailable(format!("hello to {addr} timed out")))?
        .map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<PlaintextToTls>()) {
                return OpenError::Fatal(Error::Tls(format!(
                    "{addr} speaks TLS and this client plaintext (it answered with a TLS alert): \
                     the registry file needs the cluster's [tls] section, or give the client a \
                     TLS configuration (corekvctl: --cacert)"
                )));
            }
            net::tls_failure(addr, &e)
                .unwrap_or_else(|| unavailable(format!("hello to {addr}: {e}")))
        })?;
    let frame = verify_reply(&reply)
        .map_err(|e| OpenError::Fatal(Error::Protocol(format!("hello reply from {addr}: {e}"))))?;
    let Some(accepted) = frame.reply_as_hello_reply() else {
        let error = frame.reply_as_error_reply();
        // An unknown token, or a user that may not act as it asked.
        if let Some(denied) = error.and_then(|e| e.kind_as_permission_denied()) {
            let reason = denied.reason().unwrap_or("refused").to_string();
            return Err(OpenError::Fatal(Error::PermissionDenied(reason)));
        }
        let reason = error
            .and_then(|e| e.kind_as_invalid_request())
            .and_then(|e| e.reason())
            .unwrap_or("unexpected reply to hello")
            .to_string();
        return Err(OpenError::Fatal(Error::Handshake { addr: addr.to_string(), reason }));
    };
    // A node older than this client would answer in fields it does not fill (version 1
    // sends no serving state in status replies): refused, not misread.
    if accepted.protocol_version() < CLIENT_PROTOCOL_VERSION {
        return Err(OpenError::Fatal(Error::Handshake {
            addr: addr.to_string(),
            reason: format!(
                "the node speaks client protocol {}, this client needs {CLIENT_PROTOCOL_VERSION}: \
                 upgrade the node first (nodes serve older clients, not the reverse)",
                accepted.protocol_version()
            ),
        }));
    }
    // A node from before the hello carried the shard count accepts any; its reply says how
    // many it has.
    if accepted.shards() != shards {
        return Err(OpenError::Fatal(Error::Handshake {
            addr: addr.to_string(),
            reason: corekv_types::registry::shard_count_mismatch(accepted.shards(), shards),
        }));
    }
    Ok(())
}
