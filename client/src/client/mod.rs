//! The client: routes each key to its shard, finds and caches each shard's leader, retries
//! within a deadline ([`crate::retry`] has the rules), and turns replies into Rust values.
//! Batches and scans fan out to their shards at once and come back in the caller's order.
//!
//! `ops` has the operations, `call` one call's connection, attempts and retry loop,
//! `wire_map` the conversions between the client's types and the wire's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corekv_types::ids::{NodeId, ShardId};

use crate::connection::{Connection, OpenError};
use crate::error::Result;
use crate::net::TlsConfig;
use crate::placement::shard_for_key;
use crate::registry::Registry;

mod admin;
mod backup;
mod call;
mod lease;
mod ops;
mod watch;
mod watch_mux;
mod wire_map;

pub use backup::{BackupOptions, ShardSnapshot};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster.
    pub registry: Registry,
    /// Deadline of a call when its options name none.
    pub timeout: Duration,
    /// Deadline of connecting to one node.
    pub connect_timeout: Duration,
    /// How long one node may take to answer a read before the read tries another node, or a
    /// put or delete before it ends as [`Error::Indeterminate`](crate::Error::Indeterminate) (writes are never sent twice).
    /// A node cut off by a partition or paused (a long GC-like stall) answers nothing and
    /// resets nothing; without this, every call would wait its whole deadline on it.
    /// Transactions wait their deadline.
    pub attempt_timeout: Duration,
    /// Requests in flight on one connection; more wait for a slot.
    pub max_in_flight_per_connection: usize,
    /// First retry backoff.
    pub backoff_min: Duration,
    /// Longest retry backoff.
    pub backoff_max: Duration,
    /// TLS to the nodes; required when the registry file has a `[tls]` section (see
    /// [`TlsConfig::for_registry`]).
    pub tls: Option<TlsConfig>,
    /// A bearer token naming the user, for a cluster with `[auth]` (it wins over the client
    /// certificate's user). Sent only over TLS.
    pub token: Option<String>,
    /// The user to act for: the client's own user (certificate or token) needs a role with
    /// `proxy = true` in the cluster's policy, and every request is then checked as this
    /// user's (what the HTTP gateway does for the clients whose certificates it verified).
    /// Sent only over TLS.
    pub act_as: Option<String>,
}

impl ClientConfig {
    /// Defaults for `registry`: 5 s calls, 1 s connects, 1 s per node before trying another,
    /// 1024 requests in flight per connection, backoff from 5 ms to 500 ms.
    pub fn new(registry: Registry) -> Self {
        ClientConfig {
            registry,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            max_in_flight_per_connection: 1024,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(500),
            tls: None,
            token: None,
            act_as: None,
        }
    }
}

/// A corekv client. Cheap to clone; clones share connections and the leader cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Node ids, ascending.
    nodes: Vec<NodeId>,
    /// Cached leader per shard, as its number (0: unknown, `NodeId::NONE`).
    leaders: Vec<AtomicU64>,
    connections: Mutex<HashMap<(NodeId, ShardId), Arc<Connection>>>,
    /// Watch connections, apart from the calls' (see `watch_mux`).
    watch_muxes: Mutex<HashMap<(NodeId, ShardId), watch_mux::Muxes>>,
    /// Client addresses of nodes the registry does not list (members added since), as the
    /// nodes named them: in `NotLeader` replies and membership replies.
    learned: Mutex<HashMap<(NodeId, ShardId), String>>,
    /// Each shard's members as last learned from the nodes (the registry's at first), and
    /// when they were (see `admin::refresh_members`).
    members: Mutex<Members>,
    /// xorshift state for jitter.
    rng: AtomicU64,
}

/// What a client knows of each shard's members (see `admin::refresh_members`).
struct Members {
    /// Per shard, its members, ascending (shared: every call reads them).
    shards: Vec<Arc<[NodeId]>>,
    /// When every shard's membership was last asked for; `None`: ask at the next call.
    refreshed: Option<std::time::Instant>,
    /// A refresh is under way.
    refreshing: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster", &self.inner.config.registry.cluster)
            .field("shards", &self.inner.config.registry.shards)
            .finish()
    }
}

impl Client {
    /// A client for the cluster in the registry file at `path`. Connections open lazily.
    /// With a `[tls]` section, nodes are checked against its CA and the client shows no
    /// certificate (set [`ClientConfig::tls`] to show one).
    pub fn from_registry(path: impl AsRef<std::path::Path>) -> Result<Client> {
        let mut config = ClientConfig::new(Registry::load(path)?);
        if config.registry.tls.is_some() {
            config.tls = Some(TlsConfig::for_registry(&config.registry, None, None)?);
        }
        Ok(Self::connect(config))
    }

    /// The TLS connections use: an error when the registry has a `[tls]` section and the
    /// configuration no TLS (plaintext would be refused by every node).
    pub(crate) fn tls(&self) -> std::result::Result<Option<&TlsConfig>, OpenError> {
        let config = &self.inner.config;
        match (&config.tls, &config.registry.tls) {
            (None, Some(_)) => Err(OpenError::Fatal(crate::Error::Tls(
                "the registry file has a [tls] section: the client needs a TLS configuration \
                 (ClientConfig::tls; corekvctl reads the registry's CA, --cacert, --cert, --cert-key)"
                    .into(),
            ))),
            (None, None) if config.token.is_some() || config.act_as.is_some() => {
                Err(OpenError::Fatal(crate::Error::Tls(
                    "a token or a user to act for is only sent over TLS, and the registry file \
                     has no [tls] section"
                        .into(),
                )))
            }
            (tls, _) => Ok(tls.as_ref()),
        }
    }

    /// A client with this configuration. Connections open lazily, on first use.
    pub fn connect(config: ClientConfig) -> Client {
        let nodes = config.registry.node_ids();
        let (nodes_copy, shards) = (nodes.clone(), config.registry.shards as usize);
        let leaders = (0..config.registry.shards).map(|_| AtomicU64::new(0)).collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Client {
            inner: Arc::new(Inner {
                config,
                nodes,
                leaders,
                connections: Mutex::default(),
                watch_muxes: Mutex::default(),
                learned: Mutex::default(),
                members: Mutex::new(Members {
                    shards: vec![Arc::from(nodes_copy); shards],
                    refreshed: None,
                    refreshing: false,
                }),
                rng: AtomicU64::new(seed),
            }),
        }
    }

    /// The registry the client routes by.
    pub fn registry(&self) -> &Registry {
        &self.inner.config.registry
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.inner.config.registry.shards)
    }

    /// The leader this client believes shard `shard` has, if it knows one.
    pub fn cached_leader(&self, shard: ShardId) -> Option<NodeId> {
        let leader = NodeId(self.inner.leaders[shard.get() as usize].load(Ordering::Relaxed));
        (leader != NodeId::NONE).then_some(leader)
    }

    // ----------------------------------------------------------------------------------
    // Single keys
    // ----------------------------------------------------------------------------------

    // ----------------------------------------------------------------------------------
    // Batches: split by shard, sent in parallel, results in the caller's order. Atomic per
    // shard, not across shards.
    // ----------------------------------------------------------------------------------

    // ----------------------------------------------------------------------------------
    // Scans
    // ----------------------------------------------------------------------------------

    // ----------------------------------------------------------------------------------
    // Transactions
    // ----------------------------------------------------------------------------------

    // ----------------------------------------------------------------------------------
    // Status
    // ----------------------------------------------------------------------------------

    // ----------------------------------------------------------------------------------
    // Routing and retries
    // ----------------------------------------------------------------------------------
}
