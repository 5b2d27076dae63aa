//! A transaction: compare-and-set on a version, over two keys kept on one shard by a hash tag.
//!
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example transaction`

use corekv_client::{Client, Compare, Txn, TxnOp, TxnOpResult};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    // `{account:7}` is the hash tag: both keys live on the same shard.
    let balance = "{account:7}:balance";
    let history = "{account:7}:last-change";
    client.put(balance, "100").await?;

    loop {
        let current = client.get(balance).await?.expect("just written");
        let amount: i64 = String::from_utf8_lossy(&current.value).parse()?;
        let txn = Txn::new()
            // Only if nobody changed the balance since we read it...
            .when(Compare::version(balance).eq(current.meta.version))
            // ...write the new balance and a note, atomically.
            .and_then([TxnOp::put(balance, (amount - 30).to_string()), TxnOp::put(history, "-30")])
            // Otherwise tell us what it is now.
            .or_else([TxnOp::get(balance)]);
        let response = client.txn(&txn).await?;
        if response.succeeded {
            println!("withdrew 30 at log index {}", response.index);
            break;
        }
        if let Some(TxnOpResult::Get(Some(now))) = response.results.first() {
            println!(
                "balance changed to {:?} meanwhile; retrying",
                String::from_utf8_lossy(&now.value)
            );
        }
    }
    Ok(())
}
