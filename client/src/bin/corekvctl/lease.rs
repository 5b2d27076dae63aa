//! `corekvctl lease`: grant, keep alive, revoke, and show leases.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use corekv_client::{Client, Error, LeaseId, ShardId};
use serde_json::json;

use super::output::escape;
use super::{parse_duration, Failure};

#[derive(Subcommand)]
pub(crate) enum LeaseCommand {
    /// Grant a lease; prints its id (16 hex digits). It lives on one shard: the shard of
    /// --key (keys with that key's hash tag can be attached to it), else --shard, else 0.
    Grant {
        /// Its time to live (at least 2s): it ends this long after the last keep-alive.
        #[arg(value_parser = parse_duration)]
        ttl: Duration,
        /// Grant it on the shard that holds this key.
        #[arg(long, conflicts_with = "shard")]
        key: Option<String>,
        /// Grant it on this shard.
        #[arg(long)]
        shard: Option<u32>,
    },
    /// Keep a lease alive until Ctrl-C (a keep-alive every third of its time to live,
    /// printed); exit status 1 once it is gone.
    KeepAlive {
        /// The lease.
        id: LeaseId,
        /// Send one keep-alive and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease: it ends and its keys are deleted at once. Prints how many keys went.
    Revoke {
        /// The lease.
        id: LeaseId,
    },
    /// Show a lease's time to live and the time left (exit status 1 when it is gone).
    Ttl {
        /// The lease.
        id: LeaseId,
        /// List the keys attached to it too.
        #[arg(long)]
        keys: bool,
    },
}

fn print(line: String) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure { code: 3, message: format!("writing output: {e}") })
}

/// Runs a lease command; its exit status.
pub(crate) async fn lease(
    client: &Client,
    json: bool,
    command: LeaseCommand,
) -> Result<u8, Failure> {
    match command {
        LeaseCommand::Grant { ttl, key, shard } => {
            let lease = match (key, shard) {
                (Some(key), _) => client.lease_grant_for(key.as_bytes(), ttl).await?,
                (None, shard) => client.lease_grant_on(ShardId(shard.unwrap_or(0)), ttl).await?,
            };
            print(if json {
                json!({"lease": lease.id.to_string(), "ttl_ms": lease.ttl.as_millis() as u64,
                       "shard": lease.id.shard().get(), "index": lease.index})
                .to_string()
            } else {
                lease.id.to_string()
            })?;
        }
        LeaseCommand::KeepAlive { id, once } => loop {
            let sent = std::time::Instant::now();
            let kept = client.lease_keep_alive(id).await?;
            let ttl = kept.ttl;
            print(if json {
                json!({"lease": id.to_string(), "ttl_ms": ttl.as_millis() as u64,
                       "durable_ms": kept.durable.as_millis() as u64})
                .to_string()
            } else {
                format!("lease {id} kept alive for {ttl:?}")
            })?;
            if once {
                break;
            }
            tokio::time::sleep_until((sent + ttl / 3).into()).await;
        },
        LeaseCommand::Revoke { id } => {
            let keys = client.lease_revoke(id).await?;
            print(if json {
                json!({"lease": id.to_string(), "keys_deleted": keys}).to_string()
            } else {
                format!("lease {id} revoked; {keys} keys deleted")
            })?;
        }
        LeaseCommand::Ttl { id, keys } => {
            let info = match client.lease_time_to_live(id, keys).await {
                Err(Error::LeaseNotFound(_)) => {
                    return Err(Failure { code: 1, message: format!("lease {id} not found") })
                }
                other => other?,
            };
            if json {
                let keys: Vec<String> = info.keys.iter().map(|k| super::output::b64(k)).collect();
                print(
                    json!({"lease": id.to_string(), "ttl_ms": info.ttl.as_millis() as u64,
                           "remaining_ms": info.remaining.as_millis() as u64, "keys": keys})
                    .to_string(),
                )?;
            } else {
                print(format!("lease {id}: ttl {:?}, remaining {:?}", info.ttl, info.remaining))?;
                for key in &info.keys {
                    print(escape(key))?;
                }
            }
        }
    }
    Ok(0)
}
