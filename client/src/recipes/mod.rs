//! Coordination recipes on leases and watches, like etcd's `concurrency` package:
//!
//! - [`Session`]: leases kept alive by background tasks — one per shard the session is used
//!   on — that tell their owner when a lease is lost.
//! - [`Mutex`]: a distributed lock with a fencing token that grows with each holder; a waiter
//!   waits on a watch, not by polling.
//! - [`Election`]: campaign, observe the leader, proclaim a new value, resign.
//!
//! Every contender writes one key under the recipe's name, attached to its session's lease;
//! the key created first (the smallest create index) holds the lock or leads. Keys of one
//! name share a hash tag (`{lock/NAME}/…`), so they live on one shard, where their create
//! indexes order them; a contender whose session ends (revoked, or its keep-alives stopped
//! for its time to live) loses its key with its lease, and the next one goes ahead.
//!
//! A holder knows its lease lives at least until [`Session::valid_until`]: the latest
//! answered keep-alive's sending plus the time the log then held for the lease (its
//! `durable_ms`), less the clock skew between nodes — whatever happens to the shard's
//! leader. Past that moment — a process paused, a network cut —
//! another contender may hold the lock: fence what the lock protects with the token
//! ([`LockGuard::token`]), which the protected resource should check is not smaller than
//! the largest it has seen.

mod election;
mod mutex;
mod session;

pub use election::{Election, Leader};
pub use mutex::{LockGuard, Mutex};
pub use session::{Session, SessionLost};

/// The keys of recipe `kind`'s `name`: one hash tag, so they share a shard.
fn prefix(kind: &str, name: &str) -> Vec<u8> {
    format!("{{{kind}/{name}}}/").into_bytes()
}
