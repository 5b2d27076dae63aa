//! Backup frames (client protocol 7): a client's request for a shard's snapshot, and the
//! chunks of the snapshot file a shard's leader streams back.

use super::{ReplyEncoder, RequestEncoder};
use crate::client as c;

/// Where a chunk of a backup stream lies in the snapshot it is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The shard.
    pub shard: u32,
    /// The snapshot's last log index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The chunk's first byte in the file.
    pub offset: u64,
    /// The file's size.
    pub total: u64,
}

impl RequestEncoder {
    /// Asks the shard's leader for a snapshot of its state, sent at most `bytes_per_sec`
    /// (0: the node's snapshot write rate).
    pub fn backup(&mut self, id: u64, bytes_per_sec: u64) -> &[u8] {
        self.fbb.reset();
        let backup =
            c::BackupRequest::create(&mut self.fbb, &c::BackupRequestArgs { bytes_per_sec });
        self.finish(id, c::Request::BackupRequest, backup.as_union_value())
    }
}

impl ReplyEncoder {
    /// One chunk of a backup stream; `last` ends it.
    pub fn backup_chunk(&mut self, id: u64, place: ChunkPlace, data: &[u8], last: bool) -> &[u8] {
        self.fbb.reset();
        let data = Some(self.fbb.create_vector(data));
        let ChunkPlace { shard, index, term, offset, total } = place;
        let chunk = c::BackupChunk::create(
            &mut self.fbb,
            &c::BackupChunkArgs { shard, index, term, offset, total, data, last },
        );
        self.finish(id, c::Reply::BackupChunk, chunk.as_union_value())
    }
}
