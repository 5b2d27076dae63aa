//! Watches: what to follow, where to start, and what comes back.
//!
//! A shard's revision is its raft log index, the same on every replica, so a position in the
//! cluster's history is a [`Cursor`]: per shard, the next index whose changes are wanted.
//! Order is total within a shard (keys with one hash tag share one) and per shard only across
//! shards: two changes on different shards have no order a watcher can rely on.
//!
//! [`Client::watch`](crate::Client::watch) returns a [`Watch`], a stream of
//! [`WatchMessage`]s from every shard the scope covers, which resumes by itself — at the next
//! leader after an election, at another node after a crash or a lost connection — from
//! exactly where it was: no change missed, none repeated. It ends only when the caller drops
//! it, or with an error that retrying cannot fix, such as [`Error::Compacted`] (the cursor is
//! older than the history the cluster keeps: list again).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corekv_types::ids::ShardId;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::types::{KeyMeta, KeyValue};

/// The keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    /// One key.
    Key(Vec<u8>),
    /// Every key that starts with these bytes (empty: every key).
    Prefix(Vec<u8>),
    /// Every key in `[start, end)`; `end: None` has no end.
    Range {
        /// The first key.
        start: Vec<u8>,
        /// The end, not included.
        end: Option<Vec<u8>>,
    },
}

/// What to watch, from where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The keys.
    pub scope: WatchScope,
    /// Where to start: the shards a cursor names from its indexes, the others from now.
    pub from: Option<Cursor>,
    /// Each change carries the key's value and metadata before it.
    pub prev_value: bool,
    /// Yield a [`WatchMessage::Progress`] at least this often per shard while nothing
    /// changes (`None`: none are yielded; the client still asks for them, to notice a node
    /// that went silent).
    pub progress: Option<Duration>,
}

impl WatchSpec {
    /// A watch of one key, from now.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self::of(WatchScope::Key(key.into()))
    }

    /// A watch of every key with this prefix, from now.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self::of(WatchScope::Prefix(prefix.into()))
    }

    /// A watch of every key in `[start, end)`, from now.
    pub fn range(start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> Self {
        Self::of(WatchScope::Range { start: start.into(), end })
    }

    fn of(scope: WatchScope) -> Self {
        WatchSpec { scope, from: None, prev_value: false, progress: None }
    }

    /// Starts from `cursor` (a [`Watch::cursor`] or a listing's) instead of now.
    pub fn from(mut self, cursor: Cursor) -> Self {
        self.from = Some(cursor);
        self
    }

    /// Has each change carry the key's value and metadata before it.
    pub fn with_prev_value(mut self) -> Self {
        self.prev_value = true;
        self
    }

    /// Yields progress at least this often per shard while nothing changes.
    pub fn with_progress(mut self, every: Duration) -> Self {
        self.progress = Some(every);
        self
    }
}

/// A position in the cluster's history: per shard, the next raft index whose changes are
/// wanted (everything before it was seen). Written as `SHARD:INDEX` pairs joined by commas
/// (`0:1042,1:977`), which [`FromStr`] reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    next: BTreeMap<ShardId, u64>,
}

impl Cursor {
    /// An empty cursor: every shard from now.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next index of `shard`, if the cursor names it.
    pub fn next(&self, shard: ShardId) -> Option<u64> {
        self.next.get(&shard).copied()
    }

    /// Sets the next index of `shard`.
    pub fn set(&mut self, shard: ShardId, next: u64) {
        self.next.insert(shard, next);
    }

    /// Moves `shard` on to after `index` (never back).
    pub fn advance(&mut self, shard: ShardId, index: u64) {
        let next = self.next.entry(shard).or_insert(0);
        *next = (*next).max(index + 1);
    }

    /// The shards it names, with their next indexes.
    pub fn iter(&self) -> impl Iterator<Item = (ShardId, u64)> + '_ {
        self.next.iter().map(|(&shard, &next)| (shard, next))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (shard, next) in &self.next {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{shard}:{next}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: String| Error::InvalidArgument(format!("cursor {text:?}: {why}"));
        let mut cursor = Cursor::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (shard, next) =
                pair.split_once(':').ok_or_else(|| bad(format!("{pair:?} is not SHARD:INDEX")))?;
            let shard: u32 = shard.parse().map_err(|_| bad(format!("shard {shard:?}")))?;
            let next: u64 = next.parse().map_err(|_| bad(format!("index {next:?}")))?;
            if next == 0 {
                return Err(bad("indexes start at 1".to_string()));
            }
            if cursor.next.insert(ShardId(shard), next).is_some() {
                return Err(bad(format!("shard {shard} named twice")));
            }
        }
        Ok(cursor)
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key was written.
    Put,
    /// The key was deleted (it existed).
    Delete,
}

/// One key changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Put or delete.
    pub kind: ChangeKind,
    /// The key.
    pub key: Vec<u8>,
    /// For a put: the new value and the key's metadata after it.
    pub value: Option<KeyValue>,
    /// When asked for ([`WatchSpec::prev_value`]) and the key existed: what it held before.
    pub prev: Option<PrevValue>,
    /// A delete because the key's deadline passed (its time to live ran out).
    pub expired: bool,
}

/// A key's value and metadata before a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevValue {
    /// Its metadata then.
    pub meta: KeyMeta,
    /// Its value then; `None` when the server left it out (it keeps the values an entry
    /// replaced up to 4 MiB).
    pub value: Option<Vec<u8>>,
}

/// Every change one raft entry made in the watched keys (a batch's, a transaction's:
/// together), at its revision `(shard, index)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The shard.
    pub shard: ShardId,
    /// The raft index of the entry: every change carries it as its mod index.
    pub index: u64,
    /// The changes, in the order the entry made them (shared by every watch of the client
    /// that got the same frame).
    pub changes: Arc<[Change]>,
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes.
    Event(WatchEvent),
    /// Every change of `shard` up to and including `index` has been yielded (only when
    /// [`WatchSpec::progress`] asks for it).
    Progress {
        /// The shard.
        shard: ShardId,
        /// Its index.
        index: u64,
    },
}

impl WatchMessage {
    /// The shard and index it speaks of.
    pub fn position(&self) -> (ShardId, u64) {
        match self {
            WatchMessage::Event(event) => (event.shard, event.index),
            WatchMessage::Progress { shard, index } => (*shard, *index),
        }
    }
}

/// A running watch: a [`Stream`] of [`WatchMessage`]s from every shard its scope covers (see
/// the module docs). Dropping it ends the watch on the servers.
pub struct Watch {
    pub(crate) messages: mpsc::Receiver<Result<WatchMessage>>,
    pub(crate) cursor: Cursor,
    pub(crate) tasks: Vec<AbortHandle>,
    pub(crate) ended: bool,
}

impl Watch {
    /// Where the watch stands: per shard, the index after the last message yielded (a shard
    /// watched from now appears once its first message is yielded). A watch started from it
    /// continues exactly after what this one yielded.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }
}

impl Stream for Watch {
    type Item = Result<WatchMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = self.messages.poll_recv(cx);
        match &polled {
            Poll::Ready(Some(Ok(message))) => {
                let (shard, index) = message.position();
                self.cursor.advance(shard, index);
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("cursor", &self.cursor).finish()
    }
}

/// A consistent listing of a prefix: every key as of one index per shard, and the cursor a
/// watch continues from (see [`Client::list_and_watch`](crate::Client::list_and_watch)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The keys, in key order, with their values and metadata.
    pub entries: Vec<KeyValue>,
    /// Per shard, the index after the one the listing shows the state at.
    pub cursor: Cursor,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: a cursor writes as SHARD:INDEX pairs and reads back; bad text is refused with
    // a reason; advancing never moves back.
    #[test]
    fn cursors_print_parse_and_only_advance() {
        let mut cursor = Cursor::new();
        cursor.advance(ShardId(1), 976);
        cursor.advance(ShardId(0), 1041);
        cursor.advance(ShardId(0), 10);
        assert_eq!(cursor.to_string(), "0:1042,1:977");
        assert_eq!("0:1042, 1:977".parse::<Cursor>().unwrap(), cursor);
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::new());
        for bad in ["0", "x:1", "0:y", "0:0", "0:1,0:2", "-1:4"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
