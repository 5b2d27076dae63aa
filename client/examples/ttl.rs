//! Keys with a time to live: write one, read the time it has left, and see its expiry on a
//! watch.
//!
//! Run against a cluster (`corekv dev` prints the registry path):
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example ttl`

use std::time::Duration;

use corekv_client::{Client, WatchMessage, WatchSpec, WriteOptions};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    let mut watch = client.watch(WatchSpec::key("example:ttl:session"))?;
    // The key expires a second after the shard's leader takes the write.
    let options = WriteOptions::with_ttl(Duration::from_secs(1));
    client.put_with("example:ttl:session", "alive", options).await?;
    if let Some(entry) = client.get("example:ttl:session").await? {
        println!("written; {:?} left", entry.ttl);
    }

    // No read returns it after its deadline; the leader deletes it soon after, and the
    // watch says so.
    loop {
        let Some(message) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await?
        else {
            break;
        };
        let WatchMessage::Event(event) = message? else { continue };
        if let Some(change) = event.changes.iter().find(|c| c.expired) {
            println!(
                "{:?} expired at {}:{}",
                String::from_utf8_lossy(&change.key),
                event.shard,
                event.index
            );
            break;
        }
    }
    assert!(client.get("example:ttl:session").await?.is_none());
    Ok(())
}
