//! Peer frames: the hello and its answer, raft batches, snapshot chunks and their acks.

use crate::constants::PEER_PROTOCOL_VERSION;
use crate::peer as p;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::BUILDER_CAPACITY_BYTES;

/// What a dialer says about itself in its hello.
#[derive(Debug, Clone, Copy)]
pub struct PeerHello<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// The dialer's node id.
    pub node_id: u64,
    /// The shard both ends serve.
    pub shard: u32,
    /// Shards per node in the dialer's registry.
    pub shards: u32,
    /// The peer protocol the dialer speaks ([`PEER_PROTOCOL_VERSION`]; tests say others).
    pub protocol_version: u32,
    /// Where the dialer's peer listener for this shard is reached.
    pub peer_host: &'a str,
    /// Its port.
    pub peer_port: u16,
}

impl<'a> PeerHello<'a> {
    /// The hello of this build: [`PEER_PROTOCOL_VERSION`].
    pub fn new(cluster: &'a str, node_id: u64, shard: u32, shards: u32) -> Self {
        PeerHello {
            cluster,
            node_id,
            shard,
            shards,
            protocol_version: PEER_PROTOCOL_VERSION,
            peer_host: "",
            peer_port: 0,
        }
    }

    /// With the dialer's peer address for this shard.
    pub fn from_addr(mut self, host: &'a str, port: u16) -> Self {
        self.peer_host = host;
        self.peer_port = port;
        self
    }
}

/// Builds peer frames.
pub struct PeerEncoder {
    fbb: FlatBufferBuilder<'static>,
    messages: Vec<WIPOffset<p::RaftMessage<'static>>>,
}

impl Default for PeerEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerEncoder {
    /// An encoder with a fresh builder.
    pub fn new() -> Self {
        PeerEncoder {
            fbb: FlatBufferBuilder::with_capacity(BUILDER_CAPACITY_BYTES),
            messages: Vec::new(),
        }
    }

    fn finish(
        &mut self,
        message_type: p::PeerMessage,
        message: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> &[u8] {
        let frame = p::PeerFrame::create(
            &mut self.fbb,
            &p::PeerFrameArgs { message_type, message: Some(message) },
        );
        self.fbb.finish_size_prefixed(frame, None);
        self.fbb.finished_data()
    }

    /// The dialer's first frame.
    pub fn hello(&mut self, hello: &PeerHello<'_>) -> &[u8] {
        self.fbb.reset();
        let cluster = self.fbb.create_string(hello.cluster);
        let peer_host = self.fbb.create_string(hello.peer_host);
        let args = p::HelloArgs {
            cluster: Some(cluster),
            node_id: hello.node_id,
            shard: hello.shard,
            protocol_version: hello.protocol_version,
            shards: hello.shards,
            peer_host: Some(peer_host),
            peer_port: hello.peer_port,
        };
        let hello = p::Hello::create(&mut self.fbb, &args);
        self.finish(p::PeerMessage::Hello, hello.as_union_value())
    }

    /// The acceptor's answer to a hello; `reason` says why it was refused.
    pub fn hello_ack(&mut self, node_id: u64, refused: Option<&str>) -> &[u8] {
        self.fbb.reset();
        let reason = refused.map(|r| self.fbb.create_string(r));
        let ack = p::HelloAck::create(
            &mut self.fbb,
            &p::HelloAckArgs { accepted: refused.is_none(), reason, node_id },
        );
        self.finish(p::PeerMessage::HelloAck, ack.as_union_value())
    }

    /// A batch of raft messages, each already in raft-rs's protobuf encoding.
    pub fn raft_batch<'m>(&mut self, messages: impl IntoIterator<Item = &'m [u8]>) -> &[u8] {
        self.fbb.reset();
        self.messages.clear();
        for message in messages {
            let data = self.fbb.create_vector(message);
            let table =
                p::RaftMessage::create(&mut self.fbb, &p::RaftMessageArgs { data: Some(data) });
            self.messages.push(table);
        }
        let messages = self.fbb.create_vector(&self.messages);
        let batch =
            p::RaftBatch::create(&mut self.fbb, &p::RaftBatchArgs { messages: Some(messages) });
        self.finish(p::PeerMessage::RaftBatch, batch.as_union_value())
    }

    /// A piece of a snapshot file.
    pub fn snapshot_chunk(
        &mut self,
        index: u64,
        term: u64,
        offset: u64,
        total_size: u64,
        data: &[u8],
        last: bool,
    ) -> &[u8] {
        self.fbb.reset();
        let data = self.fbb.create_vector(data);
        let chunk = p::SnapshotChunk::create(
            &mut self.fbb,
            &p::SnapshotChunkArgs { index, term, offset, total_size, data: Some(data), last },
        );
        self.finish(p::PeerMessage::SnapshotChunk, chunk.as_union_value())
    }

    /// The receiver's progress on a snapshot transfer; `error` ends the transfer.
    pub fn snapshot_ack(
        &mut self,
        index: u64,
        term: u64,
        received: u64,
        done: bool,
        error: Option<&str>,
    ) -> &[u8] {
        self.fbb.reset();
        let error = error.map(|e| self.fbb.create_string(e));
        let ack = p::SnapshotAck::create(
            &mut self.fbb,
            &p::SnapshotAckArgs { index, term, received, done, error },
        );
        self.finish(p::PeerMessage::SnapshotAck, ack.as_union_value())
    }
}
