//! Scans: one page at a time with continuations, and as a stream.
//!
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example scan`

use corekv_client::{Client, ScanOptions, ScanRange, WriteOptions};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    let items: Vec<(String, String)> =
        (0..25).map(|i| (format!("example:item:{i:02}"), i.to_string())).collect();
    client.batch_put(&items, WriteOptions::default()).await?;

    // Pages of 10, merged in key order across every shard.
    let range = ScanRange::prefix("example:item:");
    let mut options = ScanOptions { limit: 10, ..Default::default() };
    loop {
        let page = client.scan(&range, &options).await?;
        let keys: Vec<String> =
            page.entries.iter().map(|e| String::from_utf8_lossy(&e.key).into()).collect();
        println!("page: {keys:?}");
        match page.continuation {
            Some(next) => options.continuation = Some(next),
            None => break,
        }
    }

    // The same as a stream.
    let count = client
        .scan_stream(range, ScanOptions::default())
        .filter(|e| std::future::ready(e.is_ok()))
        .count()
        .await;
    println!("{count} items");
    Ok(())
}
