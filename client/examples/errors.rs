//! Handling errors: what each error means and what to do about it.
//!
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example errors`

use std::time::Duration;

use corekv_client::{Client, Compare, Error, Txn, TxnOp, WriteOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    // Limits are checked before anything is sent.
    match client.put("example:big", vec![0u8; 2 * 1024 * 1024]).await {
        Err(Error::TooLarge { what, size, limit }) => {
            println!("refused: {what} is {size} bytes, limit {limit}")
        }
        other => println!("unexpected: {other:?}"),
    }

    // Transaction keys must share a shard: the error says how.
    let txn = Txn::new().and_then([TxnOp::put("example:a", "1"), TxnOp::put("example:b", "2")]);
    if let Err(Error::InvalidArgument(advice)) = client.txn(&txn).await {
        println!("refused: {advice}");
    }

    // A short deadline, and what each outcome means.
    let options = WriteOptions::with_timeout(Duration::from_millis(200));
    let guarded = Txn::new()
        .when(Compare::missing("example:once"))
        .and_then([TxnOp::put("example:once", "1")]);
    match client.txn_with(&guarded, options).await {
        Ok(response) => println!("applied: {}", response.succeeded),
        // Sent, but the answer never came: it may or may not have applied. Read before retrying.
        Err(Error::Indeterminate(reason)) => {
            println!(
                "outcome unknown ({reason}); the key now holds {:?}",
                client.get("example:once").await?
            );
        }
        // Nothing was applied: no leader or no quorum within the deadline. Retry later.
        Err(Error::Unavailable { after, last_error }) => {
            println!("unavailable after {after:?}: {last_error}")
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}
