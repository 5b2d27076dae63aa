//! The client's errors. Every variant says what the caller can do about it.

use std::time::Duration;

use corekv_types::ids::ShardId;

use crate::registry::RegistryError;

/// A failed client call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The registry file is missing or invalid. Fix the file; retrying will not help.
    #[error("{0}")]
    Registry(#[from] RegistryError),

    /// The call's arguments cannot succeed (an empty key, a transaction whose keys live on
    /// different shards, ...). Fix the call; retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A key, value or batch is over a protocol limit (DESIGN.md §6). Make it smaller or split
    /// the batch.
    #[error("{what} of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// What is too large.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The server refused the request as invalid. Fix the request; retrying will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// No replica could serve the call before its deadline: no leader (an election, a
    /// minority partition), nodes down, or every replica busy. Retry later, or with a longer
    /// timeout. `last_error` is the last reason seen.
    #[error("cluster unavailable after {after:?}: {last_error}")]
    Unavailable {
        /// How long the call tried.
        after: Duration,
        /// The last failure seen.
        last_error: String,
    },

    /// A write was sent, but whether it applied is unknown (the connection failed after
    /// sending it, the node did not answer in time, or its deadline passed). It is not sent
    /// again automatically: a copy applying late, after another client's write to the same
    /// key, would undo that write. Read the keys to find out before retrying.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),

    /// The server says the key belongs to another shard: the client's registry file does not
    /// match the cluster's. Use the same registry file as the servers.
    #[error("the server placed the key on shard {shard}; this client's registry disagrees")]
    WrongShard {
        /// The shard the server named.
        shard: ShardId,
    },

    /// A reply could not be understood (a protocol version mismatch or a server bug). Check
    /// that client and server versions match.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The shard's leader refused a membership change or leadership transfer, and said why
    /// (another change under way, a learner not caught up, a removal that would leave no
    /// healthy majority, ...). Nothing changed; retrying as is will not help until what it
    /// names changes.
    #[error("refused: {0}")]
    ChangeRefused(String),

    /// A watch asked for changes older than the history the cluster keeps (its retention,
    /// the registry's `[watch]` section): changes of `shard` from `next` on are gone, the
    /// oldest kept is `first_available`. List again and watch from the listing
    /// ([`Client::list_and_watch`](crate::Client::list_and_watch)).
    #[error("watch history of shard {shard} starts at index {first_available}; changes from {next} are no longer kept: list again")]
    Compacted {
        /// The shard.
        shard: ShardId,
        /// The first index the watch still needed.
        next: u64,
        /// The oldest index the shard's history holds.
        first_available: u64,
    },

    /// The lease named does not exist: never granted, revoked, or expired (its keys are
    /// gone). Nothing changed. Grant a new one.
    #[error("lease {0} not found (revoked or expired)")]
    LeaseNotFound(crate::LeaseId),

    /// Writing what a call streams (a backup) to the caller's writer failed: a full disk, a
    /// closed pipe. Fix the destination and call again.
    #[error("writing the output: {0}")]
    Output(String),

    /// A node refused the connection handshake (a different cluster name, an unsupported
    /// protocol version). Check the registry file.
    #[error("handshake refused by {addr}: {reason}")]
    Handshake {
        /// The node's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The cluster's auth refused the request: no user (neither a client certificate nor a
    /// token it knows), or the user's roles do not grant it. Nothing changed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// TLS failed or is misconfigured: a certificate one side does not trust, a missing
    /// client certificate, plaintext against a TLS node, unreadable certificate files.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    /// Whether the cluster was unreachable or too slow (exit status 3 in `corekvctl`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Indeterminate(_))
    }
}

/// Result alias for client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
