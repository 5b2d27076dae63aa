//! The systems under test: corekv through the client crate, and (with the `etcd` feature)
//! etcd through `etcd-client`, driven with identical operations.

use corekv_client::{Client, Compare, Error, ReadOptions, Txn, TxnOp, TxnOpResult, WriteOptions};
use std::time::Duration;

/// Why an operation failed, as a short label for the error table.
pub type ErrorKind = &'static str;

/// One connection set to the system under test.
#[derive(Clone)]
pub enum Target {
    /// corekv: a client (one multiplexed connection per node and shard).
    Corekv(Client),
    /// etcd: a KV client over one gRPC channel (boxed: it is much larger than a corekv client).
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

fn corekv_error(error: &Error) -> ErrorKind {
    match error {
        Error::Unavailable { .. } => "unavailable",
        Error::Indeterminate(_) => "indeterminate",
        Error::TooLarge { .. } => "too_large",
        Error::InvalidRequest(_) | Error::InvalidArgument(_) | Error::ChangeRefused(_) => "invalid",
        Error::WrongShard { .. } => "wrong_shard",
        Error::Compacted { .. } => "compacted",
        Error::LeaseNotFound(_) => "lease_not_found",
        Error::PermissionDenied(_) => "permission_denied",
        Error::Protocol(_) => "protocol",
        Error::Output(_) => "output",
        Error::Handshake { .. } | Error::Registry(_) | Error::Tls(_) => "config",
    }
}

impl Target {
    /// The corekv client, when it is one.
    pub fn corekv(self) -> Option<Client> {
        match self {
            Target::Corekv(client) => Some(client),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => None,
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        match self {
            Target::Corekv(client) => client
                .put_with(key, value, WriteOptions::with_timeout(timeout))
                .await
                .map(|_| ())
                .map_err(|e| corekv_error(&e)),
            #[cfg(feature = "etcd")]
            Target::Etcd(kv) => tokio::time::timeout(timeout, kv.put(key, value, None))
                .await
                .map_err(|_| "timeout")?
                .map(|_| ())
                .map_err(|_| "etcd"),
        }
    }

    /// Reads `key`; returns whether it exists.
    pub async fn get(
        &mut self,
        key: &[u8],
        stale: bool,
        timeout: Duration,
    ) -> Result<bool, ErrorKind> {
        match self {
            Target::Corekv(client) => {
                let options = if stale { ReadOptions::stale() } else { ReadOptions::default() };
                client
                    .get_with(key, options.with_timeout(timeout))
                    .await
                    .map(|v| v.is_some())
                    .map_err(|e| corekv_error(&e))
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(kv) => {
                let options = stale.then(|| etcd_client::GetOptions::new().with_serializable());
                tokio::time::timeout(timeout, kv.get(key, options))
                    .await
                    .map_err(|_| "timeout")?
                    .map(|r| !r.kvs().is_empty())
                    .map_err(|_| "etcd")
            }
        }
    }

    /// Writes many keys at once (prefill).
    pub async fn put_many(
        &mut self,
        items: &[(Vec<u8>, Vec<u8>)],
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        match self {
            Target::Corekv(client) => client
                .batch_put(items, WriteOptions::with_timeout(timeout))
                .await
                .map(|_| ())
                .map_err(|e| corekv_error(&e)),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => {
                for (key, value) in items {
                    self.put(key, value, timeout).await?;
                }
                Ok(())
            }
        }
    }

    /// Compare-and-set: writes `value` if the key is still at `*version`; either way leaves the
    /// key's current version in `*version`. Returns whether the write applied.
    pub async fn cas(
        &mut self,
        key: &[u8],
        value: &[u8],
        version: &mut u64,
        timeout: Duration,
    ) -> Result<bool, ErrorKind> {
        match self {
            Target::Corekv(client) => {
                let txn = Txn::new()
                    .when(Compare::version(key).eq(*version))
                    .and_then([TxnOp::put(key, value)])
                    .or_else([TxnOp::get(key)]);
                let response = client
                    .txn_with(&txn, WriteOptions::with_timeout(timeout))
                    .await
                    .map_err(|e| corekv_error(&e))?;
                match response.results.first() {
                    Some(TxnOpResult::Put(meta)) => *version = meta.version,
                    Some(TxnOpResult::Get(found)) => {
                        *version = found.as_ref().map_or(0, |e| e.meta.version)
                    }
                    _ => {}
                }
                Ok(response.succeeded)
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(kv) => {
                use etcd_client::{
                    Compare as EtcdCompare, CompareOp, Txn as EtcdTxn, TxnOp as EtcdOp,
                    TxnOpResponse,
                };
                let txn = EtcdTxn::new()
                    .when([EtcdCompare::version(key, CompareOp::Equal, *version as i64)])
                    .and_then([EtcdOp::put(key, value, None)])
                    .or_else([EtcdOp::get(key, None)]);
                let response = tokio::time::timeout(timeout, kv.txn(txn))
                    .await
                    .map_err(|_| "timeout")?
                    .map_err(|_| "etcd")?;
                if response.succeeded() {
                    *version += 1;
                } else if let Some(TxnOpResponse::Get(get)) = response.op_responses().first() {
                    *version = get.kvs().first().map_or(0, |kv| kv.version() as u64);
                }
                Ok(response.succeeded())
            }
        }
    }
}
