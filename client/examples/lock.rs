//! Leases and the recipes on them: register a service under a session's lease, take a lock
//! with a fencing token, and lead an election.
//!
//! Run against a cluster (`corekv dev` prints the registry path):
//! `COREKV_REGISTRY=corekv-dev/corekv.toml cargo run -p corekv-client --example lock`

use std::time::Duration;

use corekv_client::recipes::{Election, Mutex, Session};
use corekv_client::{Client, WriteOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::var("COREKV_REGISTRY").unwrap_or_else(|_| "corekv.toml".into());
    let client = Client::from_registry(registry)?;
    let session = Session::new(&client, Duration::from_secs(10));

    // A registration that lives as long as this process keeps its session: the key is on
    // the lease's shard (the session grants one there on first use).
    let key = "{services}/api/instance-1";
    let lease = session.lease_for(key.as_bytes()).await?;
    client.put_with(key, "10.0.0.7:8080", WriteOptions::with_lease(lease)).await?;
    let info = client.lease_time_to_live(lease, true).await?;
    println!("lease {lease}: {:?} left, keys {:?}", info.remaining, info.keys.len());

    // A lock: the token grows with each holder; what the lock protects should refuse a
    // writer whose token is smaller than one it has seen.
    let guard = Mutex::new(&session, "example-job").lock().await?;
    println!("holding the lock with token {}", guard.token());
    guard.unlock().await?;

    // An election: lead, change the value others observe, step down.
    let election = Election::new(&session, "example-scheduler");
    let leader = election.campaign(b"host-a:9000").await?;
    println!("leading with token {}", leader.revision);
    election.proclaim(b"host-a:9001").await?;
    if let Some(now) = election.leader().await? {
        println!("the leader says {:?}", String::from_utf8_lossy(&now.value));
    }
    election.resign().await?;

    // Revoke the session's leases: the registration goes at once.
    session.close().await?;
    println!("registration gone: {}", client.get(key).await?.is_none());
    Ok(())
}
