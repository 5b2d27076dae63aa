//! Watch frames (client protocol 4), both directions: a client's watch and cancel requests,
//! and the stream a shard's leader answers a watch with (events, progress, the end).

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{bytes_vector, ReplyEncoder, RequestEncoder};
use crate::client::{self as c, ChangeKind, KeyMeta, WatchEndReason, WatchScope};

/// What a watch asks for, as a client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSpec<'a> {
    /// A key, a prefix, or a range.
    pub scope: WatchScope,
    /// The key, the prefix, or the range's start.
    pub key: &'a [u8],
    /// For a range: its end (exclusive); empty for no end.
    pub range_end: &'a [u8],
    /// The first log index to deliver changes from (a cursor's next index); 0 for the
    /// entries applied after the request.
    pub start_index: u64,
    /// Each change carries the key's previous value and metadata.
    pub prev_value: bool,
    /// A progress reply at least this often while nothing else is sent; 0 for none.
    pub progress_ms: u32,
}

/// One key changed by a log entry, borrowed from wherever the server keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// For a put: the new value and the key's metadata after it; `None` for a delete.
    pub put: Option<(&'a [u8], KeyMeta)>,
    /// The value and metadata the key had before, when asked for and it existed; the value
    /// is `None` when the server left it out (an entry's values before are kept up to a
    /// bound).
    pub prev: Option<(Option<&'a [u8]>, KeyMeta)>,
    /// A delete because the key's deadline passed.
    pub expired: bool,
}

/// How and where a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEnd {
    /// Why.
    pub reason: WatchEndReason,
    /// Every change before this index was delivered: where to watch again from.
    pub next_index: u64,
    /// For [`WatchEndReason::Compacted`]: the oldest index still kept.
    pub first_available: u64,
    /// For [`WatchEndReason::NotLeader`]: the leader, 0 when unknown.
    pub leader_id: u64,
}

impl RequestEncoder {
    /// Starts a watch; its replies carry `id`, which also names it for
    /// [`RequestEncoder::cancel_watch`].
    pub fn watch(&mut self, id: u64, spec: &WatchSpec<'_>) -> &[u8] {
        self.fbb.reset();
        let key = Some(self.fbb.create_vector(spec.key));
        let range_end = Some(self.fbb.create_vector(spec.range_end));
        let args = c::WatchRequestArgs {
            scope: spec.scope,
            key,
            range_end,
            start_index: spec.start_index,
            prev_value: spec.prev_value,
            progress_ms: spec.progress_ms,
        };
        let request = c::WatchRequest::create(&mut self.fbb, &args);
        self.finish(id, c::Request::WatchRequest, request.as_union_value())
    }

    /// Ends the watch that request `watch_id` started on this connection.
    pub fn cancel_watch(&mut self, id: u64, watch_id: u64) -> &[u8] {
        self.fbb.reset();
        let request =
            c::CancelWatchRequest::create(&mut self.fbb, &c::CancelWatchRequestArgs { watch_id });
        self.finish(id, c::Request::CancelWatchRequest, request.as_union_value())
    }
}

fn change<'b>(fbb: &mut FlatBufferBuilder<'b>, change: &ChangeRef<'_>) -> WIPOffset<c::Change<'b>> {
    let key = Some(fbb.create_vector(change.key));
    let value = bytes_vector(fbb, change.put.map(|(value, _)| value));
    let prev_value = bytes_vector(fbb, change.prev.and_then(|(value, _)| value));
    let args = c::ChangeArgs {
        kind: if change.put.is_some() { ChangeKind::Put } else { ChangeKind::Delete },
        key,
        value,
        meta: change.put.as_ref().map(|(_, meta)| meta),
        prev_value,
        prev_meta: change.prev.as_ref().map(|(_, meta)| meta),
        expired: change.expired,
    };
    c::Change::create(fbb, &args)
}

impl ReplyEncoder {
    /// The changes the entry at `index` made that watch `id` follows — and the watches
    /// `also` of the same connection, which follow the same keys the same way.
    pub fn watch_events(
        &mut self,
        id: u64,
        also: &[u64],
        shard: u32,
        index: u64,
        changes: &[ChangeRef<'_>],
    ) -> &[u8] {
        self.fbb.reset();
        let tables: Vec<_> = changes.iter().map(|c| change(&mut self.fbb, c)).collect();
        let changes = Some(self.fbb.create_vector(&tables));
        let also_ids = (!also.is_empty()).then(|| self.fbb.create_vector(also));
        let args = c::WatchEventsArgs { shard, index, changes, also_ids };
        let events = c::WatchEvents::create(&mut self.fbb, &args);
        self.finish(id, c::Reply::WatchEvents, events.as_union_value())
    }

    /// Watch `id` has been sent every change up to and including `index`.
    pub fn watch_progress(&mut self, id: u64, shard: u32, index: u64) -> &[u8] {
        self.fbb.reset();
        let progress =
            c::WatchProgress::create(&mut self.fbb, &c::WatchProgressArgs { shard, index });
        self.finish(id, c::Reply::WatchProgress, progress.as_union_value())
    }

    /// The last reply of watch `id`.
    pub fn watch_ended(&mut self, id: u64, shard: u32, end: &WatchEnd) -> &[u8] {
        self.fbb.reset();
        let args = c::WatchEndedArgs {
            shard,
            reason: end.reason,
            next_index: end.next_index,
            first_available: end.first_available,
            leader_id: end.leader_id,
        };
        let ended = c::WatchEnded::create(&mut self.fbb, &args);
        self.finish(id, c::Reply::WatchEnded, ended.as_union_value())
    }

    /// Answers a cancel request: whether the watch was running.
    pub fn cancel_watch(&mut self, id: u64, found: bool) -> &[u8] {
        self.fbb.reset();
        let reply = c::CancelWatchReply::create(&mut self.fbb, &c::CancelWatchReplyArgs { found });
        self.finish(id, c::Reply::CancelWatchReply, reply.as_union_value())
    }
}
