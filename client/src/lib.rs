//! The Rust client of corekv, a strongly consistent, replicated key-value store.
//!
//! The client reads the cluster's registry file, routes every key to the shard that owns it
//! (CRC16 of its hash tag, as in Redis Cluster), finds each shard's leader and caches it,
//! follows `NotLeader` hints, and retries within a per-call deadline. One multiplexed TCP
//! connection per node and shard carries many requests at once.
//!
//! # Connecting
//!
//! ```no_run
//! # async fn example() -> corekv_client::Result<()> {
//! use corekv_client::Client;
//!
//! // Reads the same registry file the servers use; connections open on first use.
//! let client = Client::from_registry("corekv.toml")?;
//! # Ok(()) }
//! ```
//!
//! # Reading and writing
//!
//! ```no_run
//! # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
//! use corekv_client::ReadOptions;
//!
//! let meta = client.put("greeting", "hello").await?;
//! assert_eq!(meta.version, 1);
//!
//! let entry = client.get("greeting").await?.expect("just written");
//! assert_eq!(entry.value, b"hello");
//!
//! // A stale read may be served by any replica: cheaper, but it may miss recent writes.
//! let _maybe_old = client.get_with("greeting", ReadOptions::stale()).await?;
//!
//! assert!(client.delete("greeting").await?);
//! # Ok(()) }
//! ```
//!
//! # Transactions
//!
//! A transaction runs atomically on one shard. Keys that share a hash tag — the part between
//! `{` and `}` — share a shard:
//!
//! ```
//! use corekv_client::placement::shard_for_key;
//! assert_eq!(shard_for_key(b"{user:1}:name", 8), shard_for_key(b"{user:1}:mail", 8));
//! ```
//!
//! ```no_run
//! # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
//! use corekv_client::{Compare, Txn, TxnOp};
//!
//! // Compare-and-set: write only if nobody changed the key since version 3.
//! let txn = Txn::new()
//!     .when(Compare::version("{user:1}:name").eq(3))
//!     .and_then([TxnOp::put("{user:1}:name", "Ada"), TxnOp::put("{user:1}:mail", "ada@example.com")])
//!     .or_else([TxnOp::get("{user:1}:name")]);
//! let response = client.txn(&txn).await?;
//! if !response.succeeded {
//!     println!("lost the race: {:?}", response.results);
//! }
//! # Ok(()) }
//! ```
//!
//! # Scanning
//!
//! ```no_run
//! # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
//! use corekv_client::{ScanOptions, ScanRange};
//! use futures_util::StreamExt;
//!
//! // Page by page...
//! let page = client.scan(&ScanRange::prefix("user:"), &ScanOptions { limit: 100, ..Default::default() }).await?;
//! for entry in &page.entries {
//!     println!("{:?}", entry.key);
//! }
//! // ...or as a stream that fetches pages as it goes.
//! let mut stream = std::pin::pin!(client.scan_stream(ScanRange::prefix("user:"), ScanOptions::default()));
//! while let Some(entry) = stream.next().await {
//!     let entry = entry?;
//!     println!("{:?} = {:?}", entry.key, entry.value);
//! }
//! # Ok(()) }
//! ```
//!
//! # Watching
//!
//! A watch streams every change to a key, a prefix or a range, in log order per shard, and
//! resumes by itself after a leader change, a node crash or a lost connection, missing and
//! repeating nothing. [`Client::list_and_watch`] lists a prefix consistently and follows it
//! from there; a [`Cursor`] says where a watch stands, to start another from it later.
//!
//! ```no_run
//! # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
//! use corekv_client::{WatchMessage, WatchSpec};
//! use futures_util::StreamExt;
//!
//! let (listing, mut watch) = client.list_and_watch("config/", WatchSpec::prefix("config/")).await?;
//! println!("{} keys as of {}", listing.entries.len(), listing.cursor);
//! while let Some(message) = watch.next().await {
//!     if let WatchMessage::Event(event) = message? {
//!         for change in event.changes.iter() {
//!             println!("{:?} at {}:{}", change.key, event.shard, event.index);
//!         }
//!     }
//!     // Save `watch.cursor()` to resume later with `WatchSpec::prefix(..).from(cursor)`;
//!     // a cursor older than the history the cluster keeps ends the stream with
//!     // `Error::Compacted`: list again.
//! }
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every [`Error`] variant says what to do. The one that needs thought is
//! [`Error::Indeterminate`]: a write was sent and its outcome is unknown (a leader died or
//! stopped answering meanwhile). The client never sends a write twice — a late copy could
//! undo another client's later write — so the caller decides, typically by reading the key.
//!
//! ```
//! use corekv_client::Error;
//! use std::time::Duration;
//!
//! fn advice(error: &Error) -> &'static str {
//!     match error {
//!         Error::Indeterminate(_) => "read the keys to learn whether the write applied",
//!         Error::Unavailable { .. } => "retry later: no leader or nodes down",
//!         Error::InvalidArgument(_) | Error::TooLarge { .. } => "fix the call",
//!         _ => "see the message",
//!     }
//! }
//! let e = Error::Unavailable { after: Duration::from_secs(5), last_error: "no leader".into() };
//! assert_eq!(advice(&e), "retry later: no leader or nodes down");
//! ```
//!
//! # Modules
//!
//! - [`registry`] and [`placement`]: the registry file and where keys live (the
//!   `corekv-types` crate the server uses too, re-exported).
//! - The client itself ([`Client`], [`ClientConfig`]) and its value types.
//! - [`watch`]: what a watch follows, where it starts, and what it yields.
#![deny(missing_docs)]

mod client;
mod connection;
mod error;
mod net;
pub mod recipes;
mod retry;
pub mod text;
mod types;
pub mod watch;

pub use corekv_types::ids::{LogIndex, NodeId, ShardId, Term};
pub use corekv_types::{membership, placement, registry};

pub use client::{BackupOptions, Client, ClientConfig, ShardSnapshot};
pub use error::{Error, Result};
pub use net::TlsConfig;
pub use types::{
    Compare, CompareBuilder, CompareOp, CompareTarget, Consistency, KeyMeta, KeyValue, Lease,
    LeaseId, LeaseInfo, LeaseKept, Operand, PeerProgress, ReadOptions, ReplicaReport,
    ReplicaStatus, Role, ScanOptions, ScanPage, ScanRange, Txn, TxnOp, TxnOpResult, TxnResponse,
    WriteOptions,
};
pub use watch::{Cursor, Watch, WatchMessage, WatchSpec};
