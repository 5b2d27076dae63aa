//! Put and get: write a key, read it back with its metadata, read it stale, delete it.
//!
//! Run against a cluster (`corekv dev` prints the registry path):
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example put_get`

use corekv_client::{Client, ReadOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;

    let meta = client.put("example:greeting", "hello").await?;
    println!("wrote version {} at log index {}", meta.version, meta.mod_index);

    if let Some(entry) = client.get("example:greeting").await? {
        println!(
            "read {:?} (version {})",
            String::from_utf8_lossy(&entry.value),
            entry.meta.version
        );
    }

    // Any replica may serve a stale read; it may miss the very latest writes.
    let stale = client.get_with("example:greeting", ReadOptions::stale()).await?;
    println!("stale read found the key: {}", stale.is_some());

    println!("deleted: {}", client.delete("example:greeting").await?);
    Ok(())
}
