//! A distributed lock with a fencing token.

use std::collections::BTreeMap;

use futures_util::StreamExt;

use super::{prefix, Session};
use crate::error::{Error, Result};
use crate::types::{Compare, Txn, TxnOp, TxnOpResult};
use crate::watch::{ChangeKind, WatchSpec};
use crate::WatchMessage;

/// A distributed lock named by a string. Holders are sessions: tasks that share a session
/// share its holding (as in etcd), so give each task that must exclude the others its own
/// session. Each contender puts one key,
/// `{lock/NAME}/LEASE`, attached to its session's lease; the key created first holds the
/// lock (keys created by one raft entry go in key order), and the others wait — on a watch
/// of the name's keys — until every key created before theirs is gone (released, or its
/// session's lease expired). The new holder then writes its key again, conditional on it
/// being its own still: the index of that write is its fencing token — a raft index of the
/// name's shard, written after the previous holder's key was gone, so it grows with each
/// holder.
///
/// ```no_run
/// # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
/// use std::time::Duration;
/// use corekv_client::recipes::{Mutex, Session};
///
/// let session = Session::new(&client, Duration::from_secs(10));
/// let mutex = Mutex::new(&session, "nightly-report");
/// let guard = mutex.lock().await?;
/// // Hand the token to what the lock protects: it refuses writes with a smaller one.
/// println!("holding the lock with token {}", guard.token());
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mutex {
    session: Session,
    prefix: Vec<u8>,
}

/// A held lock. [`LockGuard::unlock`] releases it; dropping it does not (a guard dropped
/// without unlocking holds the lock until its session ends). It keeps its session, and so
/// the session's keep-alives, going.
pub struct LockGuard {
    session_key: Vec<u8>,
    create_index: u64,
    token: u64,
    session: Session,
}

impl Mutex {
    /// The lock `name`, taken with `session`'s lease.
    pub fn new(session: &Session, name: &str) -> Mutex {
        Mutex { session: session.clone(), prefix: prefix("lock", name) }
    }

    /// Waits until this session holds the lock; the guard carries the fencing token. Fails
    /// when the session is lost meanwhile (its key went with its lease).
    pub async fn lock(&self) -> Result<LockGuard> {
        let client = self.session.client().clone();
        let lease = self.session.lease_for(&self.prefix).await?;
        let mut key = self.prefix.clone();
        key.extend_from_slice(lease.to_string().as_bytes());
        // Put the key unless this session already has one (a lock taken twice waits on
        // itself no more than once).
        let txn = Txn::new()
            .when(Compare::missing(&key))
            .and_then([TxnOp::put_with_lease(&key, b"", lease)])
            .or_else([TxnOp::get(&key)]);
        let response = client.txn(&txn).await?;
        let mine = match response.results.first() {
            Some(TxnOpResult::Put(meta)) => meta.create_index,
            Some(TxnOpResult::Get(Some(entry))) => entry.meta.create_index,
            _ => return Err(Error::Protocol("lock: unexpected transaction result".into())),
        };
        wait_for_turn(&client, &self.prefix, &key, mine).await?;
        let token = take_turn(&client, &key, mine, b"", lease).await?;
        Ok(LockGuard { session_key: key, create_index: mine, token, session: self.session.clone() })
    }
}

impl LockGuard {
    /// The fencing token: larger than every earlier holder's.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The key that holds the lock.
    pub fn key(&self) -> &[u8] {
        &self.session_key
    }

    /// Until when the lock is surely still held ([`Session::valid_until`]).
    pub async fn valid_until(&self) -> Option<std::time::Instant> {
        self.session.valid_until().await
    }

    /// The session holding the lock ([`Session::lost`] says when it is lost).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Releases the lock: deletes its key, if it is still this holder's. An error when it
    /// was not (the session's lease ended meanwhile: another may have held the lock). After
    /// an error that leaves the outcome unknown (`Error::Indeterminate`), call it again: it
    /// is conditional, so a second call is safe.
    pub async fn unlock(&self) -> Result<()> {
        let txn = Txn::new()
            .when(Compare::create_index(&self.session_key).eq(self.create_index))
            .and_then([TxnOp::delete(&self.session_key)]);
        let response = self.session.client().txn(&txn).await?;
        if response.succeeded {
            Ok(())
        } else {
            Err(lost_key(&self.session_key))
        }
    }
}

/// Writes the contender's key `key` (created at `mine`) again with `value`, if it is still
/// its own; the index of that write (the fencing token). Fails when the key is gone.
pub(super) async fn take_turn(
    client: &crate::Client,
    key: &[u8],
    mine: u64,
    value: &[u8],
    lease: crate::LeaseId,
) -> Result<u64> {
    let txn = Txn::new()
        .when(Compare::create_index(key).eq(mine))
        .and_then([TxnOp::put_with_lease(key, value, lease)]);
    let response = client.txn(&txn).await?;
    match response.results.first() {
        Some(TxnOpResult::Put(meta)) if response.succeeded => Ok(meta.mod_index),
        _ => Err(lost_key(key)),
    }
}

/// Waits until no key under `prefix` was created before the contender's key `key`, created
/// at `mine` (by create index, then key: one entry may create several). Fails when `key`
/// itself goes (the session's lease ended).
pub(super) async fn wait_for_turn(
    client: &crate::Client,
    prefix: &[u8],
    key: &[u8],
    mine: u64,
) -> Result<()> {
    let (listing, mut watch) =
        client.list_and_watch(prefix.to_vec(), WatchSpec::prefix(prefix.to_vec())).await?;
    let mut before: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut present = false;
    for entry in listing.entries {
        if entry.key == key {
            present = entry.meta.create_index == mine;
        } else if (entry.meta.create_index, &entry.key[..]) < (mine, key) {
            before.insert(entry.key, entry.meta.create_index);
        }
    }
    if !present {
        return Err(lost_key(key));
    }
    while !before.is_empty() {
        let Some(message) = watch.next().await else {
            return Err(Error::Protocol("the lock's watch ended".into()));
        };
        let WatchMessage::Event(event) = message? else { continue };
        for change in event.changes.iter() {
            if change.kind != ChangeKind::Delete {
                continue;
            }
            if change.key == key {
                return Err(lost_key(key));
            }
            before.remove(&change.key);
        }
    }
    Ok(())
}

fn lost_key(key: &[u8]) -> Error {
    Error::InvalidArgument(format!(
        "{} is gone: the session's lease ended while waiting",
        String::from_utf8_lossy(key)
    ))
}
