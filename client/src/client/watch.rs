//! Watches ([`crate::watch`] has the types): one task per shard the scope covers, each
//! running its watch on the client's watch connection to the shard's leader (`watch_mux`),
//! whose reader puts the events straight into the one bounded channel the [`Watch`] stream
//! reads. A task that loses its leader — told `NotLeader` or `ShuttingDown`, the connection
//! lost, nothing heard for three progress intervals — watches again, at the leader it was
//! told of or the next member, from the index after the last message passed on, so the
//! stream misses and repeats nothing. A slow consumer fills the channel, then the
//! connection's reader stops reading, then TCP pushes back, and the server catches the
//! watcher up from its history once it reads again.
//!
//! [`Client::list_and_watch`] lists a prefix consistently without a snapshot read: it pages
//! through each shard, noting the index each page was read at, then watches the shard from
//! the first page's index until the server says it has sent everything up to the last page's,
//! applying to each key the changes made after its own page was read. The listing is then the
//! shard's state at the last page's index, and the watch goes on from the index after.

use std::collections::BTreeMap;
use std::time::Duration;

use corekv_proto::client::{self as wire, WatchEndReason};
use corekv_proto::constants::KEY_BYTES_MAX;
use corekv_proto::encode::{RequestEncoder, ScanSpec, WatchSpec as WireSpec};
use corekv_types::ids::{NodeId, ShardId};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::watch_mux::{Delivery, Lease, Refusal, Route};
use super::wire_map::{key_value, protocol};
use super::Client;
use crate::connection::OpenError;
use crate::error::{Error, Result};
use crate::retry::Retry;
use crate::types::{Consistency, KeyValue};
use crate::watch::{Cursor, Listing, Watch, WatchMessage, WatchScope, WatchSpec};

/// Messages buffered between the shards' tasks and the stream's reader.
const WATCH_CHANNEL_MESSAGES: usize = 256;

/// How often the client asks each shard for progress when the caller asks for none: what it
/// notices a silent node by.
const DEFAULT_PROGRESS: Duration = Duration::from_secs(1);

/// Silence, in progress intervals, after which a watch connection is given up.
const SILENT_INTERVALS: u32 = 3;

/// Times a listing starts over when its watch finds the history moved past it.
const LISTING_ATTEMPTS: usize = 3;

impl Client {
    /// Watches `spec`'s keys: a stream of every change, in log order per shard, that resumes
    /// by itself across leader changes, node crashes and lost connections, missing and
    /// repeating nothing (see [`crate::watch`]). Errors only when retrying cannot help
    /// ([`Error::Compacted`], [`Error::InvalidRequest`], ...), then ends. Call it within a
    /// tokio runtime: the watch runs on tasks of its own.
    pub fn watch(&self, spec: WatchSpec) -> Result<Watch> {
        check_scope(&spec.scope)?;
        let shards = self.shards_of(&spec.scope);
        Ok(self.watch_shards(spec, shards))
    }

    /// A watch of `spec` on `shards` only.
    fn watch_shards(&self, spec: WatchSpec, shards: Vec<ShardId>) -> Watch {
        let (sender, messages) = mpsc::channel(WATCH_CHANNEL_MESSAGES);
        let from = spec.from.clone().unwrap_or_default();
        let mut tasks = Vec::new();
        for shard in shards {
            let follower = ShardWatch {
                client: self.clone(),
                shard,
                spec: spec.clone(),
                next: from.next(shard),
                sender: sender.clone(),
            };
            tasks.push(tokio::spawn(follower.run()).abort_handle());
        }
        let mut cursor = Cursor::new();
        for (shard, next) in from.iter() {
            cursor.set(shard, next);
        }
        Watch { messages, cursor, tasks, ended: false }
    }

    /// Lists every key with `prefix`, consistently (each shard's part as of one index), and
    /// watches it from there: the Kubernetes informer's list-then-watch, with no compaction
    /// cliff between the two (see the module docs). `spec` says how to watch (its scope and
    /// start are replaced by the prefix and the listing's cursor).
    pub async fn list_and_watch(
        &self,
        prefix: impl Into<Vec<u8>>,
        spec: WatchSpec,
    ) -> Result<(Listing, Watch)> {
        let prefix = prefix.into();
        let scope = WatchScope::Prefix(prefix.clone());
        check_scope(&scope)?;
        let shards = self.shards_of(&scope);
        let listed = shards.iter().map(|&shard| self.list_shard(shard, &prefix));
        let parts = futures_util::future::try_join_all(listed).await?;
        let mut entries = Vec::new();
        let mut cursor = Cursor::new();
        for (shard, part, next) in parts {
            entries.extend(part.into_values());
            cursor.set(shard, next);
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let watch = self.watch(WatchSpec { scope, from: Some(cursor.clone()), ..spec })?;
        Ok((Listing { entries, cursor: cursor.clone() }, watch))
    }

    /// One shard's part of a listing: its keys as of one index, and the index after it.
    async fn list_shard(
        &self,
        shard: ShardId,
        prefix: &[u8],
    ) -> Result<(ShardId, BTreeMap<Vec<u8>, KeyValue>, u64)> {
        let mut last_error = None;
        for _ in 0..LISTING_ATTEMPTS {
            let pages = self.scan_pages(shard, prefix).await?;
            match self.settle_listing(shard, prefix, pages).await {
                Ok((listing, next)) => return Ok((shard, listing, next)),
                Err(error @ Error::Compacted { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Every page of a shard's part of `prefix`: the entries, the index each was read at, and
    /// the key it ended at (its continuation; `None` for the last).
    async fn scan_pages(&self, shard: ShardId, prefix: &[u8]) -> Result<Vec<Page>> {
        let mut pages = Vec::new();
        let mut continuation: Option<Vec<u8>> = None;
        loop {
            let spec = ScanSpec {
                start: None,
                end: None,
                prefix: Some(prefix),
                continuation: continuation.as_deref(),
                limit: corekv_proto::constants::SCAN_LIMIT_MAX as u32,
                keys_only: false,
                consistency: wire::Consistency::Linearizable,
            };
            let frame = self
                .call(shard, Retry::Read, None, Consistency::Linearizable, |id, e| {
                    e.scan(id, &spec)
                })
                .await?;
            let reply = frame.reply();
            let scan = reply.reply_as_scan_reply().ok_or_else(|| protocol("scan"))?;
            let entries: Vec<KeyValue> = scan.entries().iter().map(|e| key_value(&e)).collect();
            continuation = scan.continuation().map(|next| next.bytes().to_vec());
            pages.push((entries, scan.read_index(), continuation.clone()));
            if continuation.is_none() {
                return Ok(pages);
            }
        }
    }

    /// Brings pages read at different indexes to one: watches the shard from the first
    /// page's index until everything up to the last page's is sent, applying each change to
    /// a key whose page was read before it.
    async fn settle_listing(
        &self,
        shard: ShardId,
        prefix: &[u8],
        pages: Vec<Page>,
    ) -> Result<(BTreeMap<Vec<u8>, KeyValue>, u64)> {
        // Page i covers the keys after the page before, up to the key it ended at (its last
        // entry, or past keys its node skipped; the last page: all the rest).
        let bounds: Vec<(Option<Vec<u8>>, u64)> =
            pages.iter().map(|(_, index, end)| (end.clone(), *index)).collect();
        let first = pages.iter().map(|p| p.1).min().unwrap_or(0);
        let last = pages.iter().map(|p| p.1).max().unwrap_or(0);
        let mut listing: BTreeMap<Vec<u8>, KeyValue> = pages
            .into_iter()
            .flat_map(|(entries, _, _)| entries)
            .map(|e| (e.key.clone(), e))
            .collect();
        if first == last {
            return Ok((listing, last + 1));
        }
        let read_at = |key: &[u8]| {
            bounds
                .iter()
                .find(|(end, _)| end.as_deref().is_none_or(|end| key <= end))
                .map_or(last, |b| b.1)
        };
        let mut from = Cursor::new();
        from.set(shard, first + 1);
        let spec =
            WatchSpec::prefix(prefix.to_vec()).from(from).with_progress(Duration::from_millis(100));
        // This shard only: another shard's progress must not end the wait.
        let mut watch = self.watch_shards(spec, vec![shard]);
        while let Some(message) = watch.next().await {
            match message? {
                WatchMessage::Progress { index, .. } if index >= last => break,
                WatchMessage::Progress { .. } => {}
                WatchMessage::Event(event) if event.index > last => break,
                WatchMessage::Event(event) => {
                    for change in event.changes.iter() {
                        if event.index <= read_at(&change.key) {
                            continue;
                        }
                        match &change.value {
                            Some(value) => listing.insert(change.key.clone(), value.clone()),
                            None => listing.remove(&change.key),
                        };
                    }
                }
            }
        }
        Ok((listing, last + 1))
    }

    /// The shards a scope's keys can live on, which a watch of it follows: one for a key, or
    /// for a prefix that starts with a whole hash tag (`{user:1}...`); every shard otherwise.
    pub fn shards_of(&self, scope: &WatchScope) -> Vec<ShardId> {
        let one = match scope {
            WatchScope::Key(key) => Some(self.shard_of(key)),
            WatchScope::Prefix(prefix) => whole_hash_tag(prefix).then(|| self.shard_of(prefix)),
            WatchScope::Range { .. } => None,
        };
        match one {
            Some(shard) => vec![shard],
            None => (0..self.registry().shards).map(ShardId).collect(),
        }
    }
}

/// A page of a listing: its entries, the index it was read at, and the key it ended at.
type Page = (Vec<KeyValue>, u64, Option<Vec<u8>>);

/// Whether every key starting with `prefix` has the same hash tag: the prefix starts with
/// `{`, and a `}` closes a non-empty tag within it.
fn whole_hash_tag(prefix: &[u8]) -> bool {
    prefix.first() == Some(&b'{') && prefix.iter().skip(2).any(|&b| b == b'}')
}

fn check_scope(scope: &WatchScope) -> Result<()> {
    let too_large = |what: &str, len: usize| Error::TooLarge {
        what: what.to_string(),
        size: len as u64,
        limit: KEY_BYTES_MAX as u64,
    };
    match scope {
        WatchScope::Key(key) if key.is_empty() => {
            Err(Error::InvalidArgument("a watched key is empty".to_string()))
        }
        WatchScope::Key(key) | WatchScope::Prefix(key) if key.len() > KEY_BYTES_MAX => {
            Err(too_large("key", key.len()))
        }
        WatchScope::Range { start, end } => {
            if start.len() > KEY_BYTES_MAX {
                return Err(too_large("range start", start.len()));
            }
            match end {
                Some(end) if end.len() > KEY_BYTES_MAX => Err(too_large("range end", end.len())),
                Some(end) if end <= start => Err(Error::InvalidArgument(
                    "a watched range's end must be after its start".to_string(),
                )),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// How one attempt at a shard's watch ended.
enum Ended {
    /// The stream was dropped.
    Dropped,
    /// Retrying cannot help.
    Fatal(Error),
    /// Watch again: at `leader` when known, else the next member.
    Again { leader: Option<NodeId> },
}

/// One shard's part of a watch (see the module docs).
struct ShardWatch {
    client: Client,
    shard: ShardId,
    spec: WatchSpec,
    /// The index after the last message passed on (`None`: from now, nothing seen yet).
    next: Option<u64>,
    sender: mpsc::Sender<Result<WatchMessage>>,
}

/// Cancels a watch on its node when the attempt ends while it still runs (the stream was
/// dropped, or the node went silent).
struct Running<'a> {
    mux: &'a Lease,
    id: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.mux.cancel(self.id);
    }
}

impl ShardWatch {
    async fn run(mut self) {
        let mut node: Option<NodeId> = None;
        let mut failures = 0u32;
        loop {
            let members = self.client.nodes_for_call(self.shard);
            let target =
                node.take().unwrap_or_else(|| self.client.first_node(self.shard, &members));
            let before = self.next;
            match self.attempt(target).await {
                Ended::Dropped => return,
                Ended::Fatal(error) => {
                    let _ = self.sender.send(Err(error)).await;
                    return;
                }
                Ended::Again { leader } => {
                    failures = if self.next != before { 0 } else { failures + 1 };
                    let known =
                        leader.filter(|&l| self.client.client_addr(l, self.shard).is_some());
                    if leader.is_none() {
                        self.client.members_changed();
                    }
                    node = Some(known.unwrap_or_else(|| self.client.next_node(&members, target)));
                    if failures > 0 {
                        tokio::time::sleep(self.client.backoff(failures - 1)).await;
                    }
                }
            }
        }
    }

    /// One watch request to `node`, followed until it ends.
    async fn attempt(&mut self, node: NodeId) -> Ended {
        let mux = match self.client.watch_mux(node, self.shard).await {
            Ok(mux) => mux,
            Err(OpenError::Fatal(error)) => return Ended::Fatal(error),
            Err(OpenError::Refused(_) | OpenError::Unreachable(_)) => {
                self.client.members_changed();
                return Ended::Again { leader: None };
            }
        };
        let progress = self.spec.progress.unwrap_or(DEFAULT_PROGRESS);
        // The connection's reader puts this attempt's events and progress straight into the
        // stream; only the end comes here.
        let route = Route::new(self.sender.clone(), self.spec.progress.is_some(), self.next());
        let started = mux.start(|id| self.request(id, progress), route.clone()).await;
        let Some((id, mut ends)) = started else {
            self.resume_from(route.finish());
            return Ended::Again { leader: None };
        };
        let running = Running { mux: &mux, id };
        let silence = progress * SILENT_INTERVALS + Duration::from_secs(1);
        let end = loop {
            match tokio::time::timeout(silence, ends.recv()).await {
                Ok(end) => break end,
                Err(_) if mux.silent_for(silence) => {
                    // The node went silent: its connection goes, for every watch on it.
                    mux.abort();
                    break None;
                }
                // Quiet, but not the connection (or its reader waits on a full stream).
                Err(_) => continue,
            }
        };
        // Nothing more goes into the stream from this attempt; the next starts after it.
        self.resume_from(route.finish());
        match end {
            Some(Delivery::Ended { reason, next, first_available, leader }) => {
                std::mem::forget(running);
                self.ended(reason, next, first_available, leader)
            }
            Some(Delivery::Refused(refusal)) => {
                std::mem::forget(running);
                self.refused(refusal)
            }
            // The stream was dropped.
            _ if route.is_dropped() => Ended::Dropped,
            // The connection closed (or went silent).
            _ => Ended::Again { leader: None },
        }
    }

    /// Where the next attempt starts (0: from now).
    fn next(&self) -> u64 {
        self.next.unwrap_or(0)
    }

    /// The next attempt starts at `next` (0: from now, nothing passed on yet) or later.
    fn resume_from(&mut self, next: u64) {
        if next > 0 {
            self.next = Some(self.next().max(next));
        }
    }

    fn request(&self, id: u64, progress: Duration) -> Vec<u8> {
        let (scope, key, range_end): (wire::WatchScope, &[u8], &[u8]) = match &self.spec.scope {
            WatchScope::Key(key) => (wire::WatchScope::Key, key, b""),
            WatchScope::Prefix(prefix) => (wire::WatchScope::Prefix, prefix, b""),
            WatchScope::Range { start, end } => {
                (wire::WatchScope::Range, start, end.as_deref().unwrap_or_default())
            }
        };
        let spec = WireSpec {
            scope,
            key,
            range_end,
            start_index: self.next.unwrap_or(0),
            prev_value: self.spec.prev_value,
            progress_ms: progress.as_millis().clamp(1, u32::MAX as u128) as u32,
        };
        RequestEncoder::new().watch(id, &spec).to_vec()
    }

    fn ended(
        &mut self,
        reason: WatchEndReason,
        next: u64,
        first_available: u64,
        leader: Option<NodeId>,
    ) -> Ended {
        if next > 0 {
            self.next = Some(self.next.unwrap_or(0).max(next));
        }
        match reason {
            WatchEndReason::Compacted => {
                Ended::Fatal(Error::Compacted { shard: self.shard, next, first_available })
            }
            WatchEndReason::NotLeader => Ended::Again { leader },
            WatchEndReason::Cancelled => Ended::Dropped,
            _ => Ended::Again { leader: None },
        }
    }

    fn refused(&mut self, refusal: Refusal) -> Ended {
        match refusal {
            Refusal::NotLeader { leader, addr } => {
                if let (Some(leader), Some(addr)) = (leader, addr) {
                    self.client.learn_addr(leader, self.shard, &addr);
                }
                Ended::Again { leader }
            }
            Refusal::Fatal(error) => Ended::Fatal(error),
            Refusal::Later => Ended::Again { leader: None },
        }
    }
}
