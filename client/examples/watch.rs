//! Watch: list a prefix and follow its changes, then resume from a saved cursor.
//!
//! Run against a cluster (`corekv dev` prints the registry path):
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example watch`

use std::time::Duration;

use corekv_client::{Client, Cursor, WatchMessage, WatchSpec};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    // A consistent listing, and a watch that continues exactly after it.
    client.put("example:watch:a", "1").await?;
    let spec = WatchSpec::prefix("example:watch:").with_prev_value();
    let (listing, mut watch) = client.list_and_watch("example:watch:", spec).await?;
    println!("{} keys as of {}", listing.entries.len(), listing.cursor);

    // Changes made now come through the watch, each with the value before.
    client.put("example:watch:a", "2").await?;
    client.delete("example:watch:a").await?;
    let mut seen = 0;
    while seen < 2 {
        let Some(message) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await?
        else {
            break;
        };
        if let WatchMessage::Event(event) = message? {
            for change in event.changes.iter() {
                let before = change.prev.as_ref().and_then(|p| p.value.clone());
                println!(
                    "{:?} {:?} at {}:{} (before: {:?})",
                    change.kind,
                    String::from_utf8_lossy(&change.key),
                    event.shard,
                    event.index,
                    before.map(|v| String::from_utf8_lossy(&v).into_owned())
                );
                seen += 1;
            }
        }
    }

    // Where the watch stands, as text a program can save and start from later.
    let saved = watch.cursor().to_string();
    drop(watch);
    client.put("example:watch:b", "3").await?;
    let resumed = WatchSpec::prefix("example:watch:").from(saved.parse::<Cursor>()?);
    let mut watch = client.watch(resumed)?;
    if let Some(Ok(WatchMessage::Event(event))) =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await?
    {
        println!("resumed from {saved}: the change made while away, at {}", event.index);
    }
    Ok(())
}
