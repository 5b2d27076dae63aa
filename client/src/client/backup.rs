//! Backup streams: a shard's snapshot, read from its leader on a connection of its own (the
//! stream is long and large; calls never wait behind it), written to the caller's writer as
//! it comes. The leader is found as calls find it: the cached one first, `NotLeader` hints
//! followed, other members tried; `Busy`, `Unavailable` and unreachable nodes are retried
//! with backoff until the deadline to start. Once bytes are flowing, a stream that stalls
//! or breaks fails the call: the caller's writer holds part of a file, which only the caller
//! can throw away (`corekvctl backup save` starts the shard over).

use std::time::{Duration, Instant};

use corekv_proto::client::{self as wire, Reply};
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::{FrameBuffer, VerifiedReply};
use corekv_types::ids::{NodeId, ShardId};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::call::server_error;
use super::Client;
use crate::connection::{hello, OpenError};
use crate::error::{Error, Result};
use crate::retry::ServerError;

/// The backup's request id: the only request on its connection.
const BACKUP_REQUEST_ID: u64 = 1;

/// Read buffer chunk: a chunk of the stream is a 1 MiB frame.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// How a shard's snapshot is streamed.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Most bytes per second the leader sends; 0: the node's snapshot write rate
    /// (`--snapshot-write-mib`). Nodes refuse rates under 1 MiB/s (a stream holds one of a
    /// shard's two backup places while it lasts).
    pub bytes_per_sec: u64,
    /// How long to try before the stream starts: the leader may have to take a snapshot
    /// first, which on a large shard takes seconds.
    pub start_timeout: Duration,
    /// How long a started stream may send nothing before it is given up.
    pub stall_timeout: Duration,
}

impl Default for BackupOptions {
    /// The node's rate, 120 s to start, 30 s without a byte.
    fn default() -> Self {
        BackupOptions {
            bytes_per_sec: 0,
            start_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// One shard's snapshot, as streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: ShardId,
    /// The node that sent it: the shard's leader when its ReadIndex round confirmed the
    /// request (one that stepped down while taking the snapshot still sends it).
    pub node: NodeId,
    /// The last log index it covers: it holds every write acknowledged before it was asked.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The file's size.
    pub bytes: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// What one attempt at a node came to, before any byte was written.
enum Attempt {
    /// The stream started and ended: the snapshot was written whole.
    Done(ShardSnapshot),
    /// Not this node, or not now; `String` says why, for the final error.
    Again { hint: Option<NodeId>, wait: Option<Duration>, why: String },
}

impl Client {
    /// Streams a snapshot of shard `shard` from its leader into `out`, calling
    /// `progress(bytes so far, file size)` after each chunk. The snapshot is of an index the
    /// leader applied after the request came, so it holds every write acknowledged before.
    pub async fn backup_shard<W: AsyncWrite + Unpin>(
        &self,
        shard: ShardId,
        options: &BackupOptions,
        out: &mut W,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<ShardSnapshot> {
        self.check_shard(shard)?;
        let started = Instant::now();
        let deadline = started + options.start_timeout;
        let nodes = self.nodes_for_call(shard);
        let mut node = self.first_node(shard, &nodes);
        let mut attempt = 0u32;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            match self.backup_attempt(node, shard, options, deadline, out, progress).await? {
                Attempt::Done(snapshot) => return Ok(snapshot),
                Attempt::Again { hint, wait, why } => {
                    last_error = format!("node {node}: {why}");
                    node = match hint {
                        Some(leader) if self.client_addr(leader, shard).is_some() => leader,
                        _ => self.next_node(&nodes, node),
                    };
                    let delay = wait.unwrap_or_else(|| self.backoff(attempt));
                    attempt += 1;
                    self.sleep_until(delay, deadline).await;
                }
            }
        }
        Err(Error::Unavailable { after: started.elapsed(), last_error })
    }

    /// Asks `node` for the snapshot and, if it streams one, writes it all.
    async fn backup_attempt<W: AsyncWrite + Unpin>(
        &self,
        node: NodeId,
        shard: ShardId,
        options: &BackupOptions,
        deadline: Instant,
        out: &mut W,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Attempt> {
        let again = |why: String| Ok(Attempt::Again { hint: None, wait: None, why });
        let Some(addr) = self.client_addr(node, shard) else {
            return again("no address known".to_string());
        };
        let config = &self.inner.config;
        let tls = self.tls().map_err(|e| e.into_error(Duration::ZERO))?;
        let mut stream = match crate::net::open(&addr, tls, config.connect_timeout).await {
            Ok(stream) => stream,
            Err(OpenError::Fatal(error)) => return Err(error),
            Err(OpenError::Refused(why) | OpenError::Unreachable(why)) => return again(why),
        };
        match hello(&mut stream, &addr, config.greeting(), config.connect_timeout).await {
            Ok(()) => {}
            Err(OpenError::Fatal(error)) => return Err(error),
            Err(OpenError::Refused(why) | OpenError::Unreachable(why)) => return again(why),
        }
        let request =
            RequestEncoder::new().backup(BACKUP_REQUEST_ID, options.bytes_per_sec).to_vec();
        if let Err(e) = async {
            stream.write_all(&request).await?;
            stream.flush().await
        }
        .await
        {
            return again(format!("sending to {addr}: {e}"));
        }
        let mut reader = Frames { stream, buffer: FrameBuffer::new(READ_CHUNK_BYTES), addr };
        // The first reply may wait for a snapshot to be taken: up to the deadline to start.
        let wait = deadline.saturating_duration_since(Instant::now());
        let first = match reader.next(wait).await {
            Ok(reply) => reply,
            Err(why) => return again(why),
        };
        if let Some(error) = first.reply().reply_as_error_reply() {
            return self.refused(&error, node, shard);
        }
        let snapshot = receive(&mut reader, first, node, shard, options, out, progress).await?;
        Ok(Attempt::Done(snapshot))
    }

    /// What a node's refusal of a backup means for the next attempt.
    fn refused(
        &self,
        error: &wire::ErrorReply<'_>,
        node: NodeId,
        shard: ShardId,
    ) -> Result<Attempt> {
        let again = |hint, wait, why: String| Ok(Attempt::Again { hint, wait, why });
        match server_error(error) {
            Some(ServerError::NotLeader { leader }) => {
                if let Some((hint, addr)) = error.kind_as_not_leader().and_then(|h| {
                    h.leader_addr().map(|addr| (NodeId(h.leader_id()), addr.to_string()))
                }) {
                    self.learn_addr(hint, shard, &addr);
                }
                // With backoff: two nodes whose hints name each other (an election under way)
                // are not asked in a tight loop.
                again(leader, None, "not the leader".into())
            }
            Some(ServerError::Busy { retry_after }) => {
                let wait = retry_after.max(Duration::from_millis(100));
                again(Some(node), Some(wait), "busy with other backups".into())
            }
            Some(ServerError::Unavailable(why)) => again(None, None, why),
            Some(ServerError::Timeout) => again(None, None, "timed out".into()),
            Some(ServerError::Final(error)) => Err(error),
            None => Err(Error::Protocol("a backup answered CompareFailed".into())),
        }
    }
}

/// The reply frames of one connection.
struct Frames {
    stream: crate::net::Stream,
    buffer: FrameBuffer,
    addr: String,
}

impl Frames {
    /// The next verified reply, within `wait`.
    async fn next(&mut self, wait: Duration) -> std::result::Result<VerifiedReply, String> {
        let addr = self.addr.clone();
        let read = async {
            loop {
                match self.buffer.next_frame() {
                    Ok(Some(frame)) => {
                        return VerifiedReply::new(frame.to_vec())
                            .map_err(|e| format!("a reply from {addr} does not verify: {e}"));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("a frame from {addr}: {e}")),
                }
                match self.stream.read(self.buffer.spare()).await {
                    Ok(0) => return Err(format!("{addr} closed the connection")),
                    Ok(n) => self.buffer.commit(n),
                    Err(e) => return Err(format!("reading from {addr}: {e}")),
                }
            }
        };
        match tokio::time::timeout(wait, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("{addr} sent nothing for {} ms", wait.as_millis())),
        }
    }
}

/// Writes the chunks of a started stream to `out`, checking that they follow one another
/// and describe one file.
async fn receive<W: AsyncWrite + Unpin>(
    reader: &mut Frames,
    first: VerifiedReply,
    node: NodeId,
    shard: ShardId,
    options: &BackupOptions,
    out: &mut W,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<ShardSnapshot> {
    let broken = |why: String| Error::Unavailable {
        after: Duration::ZERO,
        last_error: format!("the backup stream of shard {shard} from node {node} broke: {why}"),
    };
    let mut reply = first;
    let mut snapshot = None::<ShardSnapshot>;
    let mut crc = 0u32;
    let mut received = 0u64;
    loop {
        let frame = reply.reply();
        let chunk = match (frame.reply_type(), frame.reply_as_backup_chunk()) {
            (Reply::BackupChunk, Some(chunk)) => chunk,
            _ => {
                let reason = match frame.reply_as_error_reply().and_then(|e| server_error(&e)) {
                    Some(error) => format!("the node ended it: {error:?}"),
                    None => format!("unexpected reply {:?}", frame.reply_type()),
                };
                return Err(broken(reason));
            }
        };
        let expected = snapshot.get_or_insert(ShardSnapshot {
            shard,
            node,
            index: chunk.index(),
            term: chunk.term(),
            bytes: chunk.total(),
            crc32c: 0,
        });
        let data = chunk.data().bytes();
        let fits = frame.id() == BACKUP_REQUEST_ID
            && (!data.is_empty() || chunk.last())
            && chunk.shard() == shard.get()
            && (chunk.index(), chunk.term(), chunk.total())
                == (expected.index, expected.term, expected.bytes)
            && chunk.offset() == received
            && received + data.len() as u64 <= expected.bytes
            && (chunk.last() == (received + data.len() as u64 == expected.bytes));
        if !fits {
            return Err(Error::Protocol(format!(
                "backup chunk (request {}) of shard {} at {} of {} bytes ({} of data) does not \
                 follow {received} bytes of shard {shard}'s snapshot of {} bytes",
                frame.id(),
                chunk.shard(),
                chunk.offset(),
                chunk.total(),
                data.len(),
                expected.bytes
            )));
        }
        out.write_all(data).await.map_err(|e| Error::Output(e.to_string()))?;
        crc = crc32c::crc32c_append(crc, data);
        received += data.len() as u64;
        progress(received, expected.bytes);
        if chunk.last() {
            out.flush().await.map_err(|e| Error::Output(e.to_string()))?;
            let mut done = *expected;
            done.crc32c = crc;
            return Ok(done);
        }
        reply = reader.next(options.stall_timeout).await.map_err(broken)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    // Shows: a backup of a shard the cluster does not have is refused at once, nothing sent
    // (the registry's node listens nowhere: an attempt would fail otherwise).
    #[tokio::test]
    async fn a_shard_the_cluster_lacks_is_refused() {
        let text = "cluster = \"c\"\nshards = 2\n[[node]]\nid = 1\nhost = \"127.0.0.1\"\n\
                    client_port = 10\npeer_port = 20\nhttp_port = 30\n";
        let registry = Registry::parse(text, "test").unwrap();
        let client = Client::connect(crate::ClientConfig::new(registry));
        let mut out = Vec::new();
        let error = client
            .backup_shard(ShardId(2), &BackupOptions::default(), &mut out, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains("shards 0 to 1")),
            "{error}"
        );
        assert!(out.is_empty());
    }
}
