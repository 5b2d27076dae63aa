//! A session: leases kept alive in the background, one per shard it is used on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::types::LeaseId;
use crate::{Client, ShardId};

/// Why a session's lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLost {
    /// The lease.
    pub lease: LeaseId,
    /// What happened.
    pub reason: String,
}

/// What the answered keep-alives of one lease say.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    /// When the last answered keep-alive (or the grant) was answered: the lease surely ends
    /// by this plus its time to live (by the leader's clock) without another.
    acked: Instant,
    /// Until when the lease surely lives, whatever happens to the shard's leader: the
    /// latest of each answered keep-alive's sending plus the durable time it reported.
    safe_until: Instant,
}

/// One lease of the session and its keep-alive task.
struct Kept {
    lease: LeaseId,
    renewed: Arc<StdMutex<Renewal>>,
    task: JoinHandle<()>,
}

struct Inner {
    client: Client,
    ttl: Duration,
    leases: tokio::sync::Mutex<BTreeMap<ShardId, Kept>>,
    lost: watch::Sender<Option<SessionLost>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for kept in self.leases.get_mut().values() {
            kept.task.abort();
        }
    }
}

/// Leases kept alive by background tasks (tokio), one per shard the session is used on,
/// granted on first use. When a lease is lost — the cluster says it is gone, or no
/// keep-alive got through for its whole time to live — the session is lost: every waiter on
/// [`Session::lost`] hears why, and the session grants no more. Dropping the session stops
/// its keep-alives (its leases then expire); [`Session::close`] revokes them at once.
///
/// ```no_run
/// # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
/// use std::time::Duration;
/// use corekv_client::recipes::Session;
///
/// let session = Session::new(&client, Duration::from_secs(10));
/// let lease = session.lease_for(b"{svc}/api/instance-1").await?;
/// client.put_with("{svc}/api/instance-1", "10.0.0.7:8080", corekv_client::WriteOptions::with_lease(lease)).await?;
/// // The key lives while this process keeps the session; if the process dies, it goes
/// // within the time to live.
/// let lost = session.lost().await;
/// eprintln!("registration lost: {}", lost.reason);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl Session {
    /// A session whose leases live `ttl` (at least 2 s; 10 s or more rides out a change of
    /// shard leader with room to spare) unless kept alive.
    pub fn new(client: &Client, ttl: Duration) -> Session {
        let (lost, _) = watch::channel(None);
        Session {
            inner: Arc::new(Inner {
                client: client.clone(),
                ttl,
                leases: tokio::sync::Mutex::new(BTreeMap::new()),
                lost,
            }),
        }
    }

    /// The client the session uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The leases' time to live.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The session's lease on the shard that holds `key` (granted, and kept alive from then
    /// on, at the first call for that shard).
    pub async fn lease_for(&self, key: &[u8]) -> Result<LeaseId> {
        self.lease_on(self.inner.client.shard_of(key)).await
    }

    /// The session's lease on `shard`.
    pub async fn lease_on(&self, shard: ShardId) -> Result<LeaseId> {
        if let Some(lost) = self.is_lost() {
            return Err(lost_error(&lost));
        }
        let mut leases = self.inner.leases.lock().await;
        if let Some(kept) = leases.get(&shard) {
            return Ok(kept.lease);
        }
        let sent = Instant::now();
        let lease = self.inner.client.lease_grant_on(shard, self.inner.ttl).await?;
        // The grant is in the log: its deadline holds under any leader.
        let renewal = Renewal { acked: Instant::now(), safe_until: sent + lease.ttl };
        let renewed = Arc::new(StdMutex::new(renewal));
        let task = tokio::spawn(keep_alive(Arc::downgrade(&self.inner), lease.id, renewed.clone()));
        leases.insert(shard, Kept { lease: lease.id, renewed, task });
        Ok(lease.id)
    }

    /// Until when every lease of the session surely lives, whatever happens to the
    /// shards' leaders: for each, the latest answered keep-alive's sending plus the time the
    /// log then held for it ([`crate::LeaseKept::durable`]) — about a keep-alive period and a
    /// checkpoint interval (500 ms with the default ticks) short of the time to live — less
    /// the clock skew between nodes. `None` when the session holds no lease yet, or
    /// was lost. A lock holder past it may no longer hold the lock.
    pub async fn valid_until(&self) -> Option<Instant> {
        if self.is_lost().is_some() {
            return None;
        }
        let leases = self.inner.leases.lock().await;
        let renewal = |k: &Kept| *k.renewed.lock().unwrap_or_else(|p| p.into_inner());
        leases.values().map(|k| renewal(k).safe_until).min()
    }

    /// Why the session was lost, if it was.
    pub fn is_lost(&self) -> Option<SessionLost> {
        self.inner.lost.borrow().clone()
    }

    /// Waits until the session is lost; why.
    pub async fn lost(&self) -> SessionLost {
        let mut receiver = self.inner.lost.subscribe();
        loop {
            if let Some(lost) = receiver.borrow_and_update().clone() {
                return lost;
            }
            if receiver.changed().await.is_err() {
                // Unreachable while `self` holds the sender; treat as lost.
                return SessionLost { lease: LeaseId(0), reason: "the session ended".into() };
            }
        }
    }

    /// Revokes the session's leases (their keys go at once) and stops keeping them alive.
    pub async fn close(self) -> Result<()> {
        let mut leases = self.inner.leases.lock().await;
        let mut result = Ok(());
        for (_, kept) in std::mem::take(&mut *leases) {
            kept.task.abort();
            match self.inner.client.lease_revoke(kept.lease).await {
                Ok(_) | Err(Error::LeaseNotFound(_)) => {}
                Err(error) => result = Err(error),
            }
        }
        let lease = LeaseId(0);
        self.inner.lost.send_replace(Some(SessionLost { lease, reason: "closed".into() }));
        result
    }
}

fn lost_error(lost: &SessionLost) -> Error {
    Error::InvalidArgument(format!("the session is lost (lease {}: {})", lost.lease, lost.reason))
}

/// Keeps `lease` alive every third of the time to live (again 50 ms after a failure that
/// may pass), until it is lost or the session dropped.
async fn keep_alive(
    session: std::sync::Weak<Inner>,
    lease: LeaseId,
    renewed: Arc<StdMutex<Renewal>>,
) {
    loop {
        let Some(inner) = session.upgrade() else { return };
        let (client, ttl) = (inner.client.clone(), inner.ttl);
        drop(inner);
        let last = *renewed.lock().unwrap_or_else(|p| p.into_inner());
        let gone_at = last.acked + ttl;
        let sent = Instant::now();
        if sent >= gone_at {
            return report(&session, lease, format!("no keep-alive got through for {ttl:?}"));
        }
        let timeout = (gone_at - sent).min(ttl / 3).max(Duration::from_millis(100));
        match client.lease_keep_alive_within(lease, Some(timeout)).await {
            Ok(kept) => {
                {
                    let mut renewal = renewed.lock().unwrap_or_else(|p| p.into_inner());
                    renewal.acked = Instant::now();
                    renewal.safe_until = renewal.safe_until.max(sent + kept.durable);
                }
                tokio::time::sleep_until((sent + ttl / 3).into()).await;
            }
            Err(Error::LeaseNotFound(_)) => {
                return report(&session, lease, "the cluster says the lease is gone".into());
            }
            Err(error) if error.is_unavailable() => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            // A failure no retry mends (a registry that does not match the cluster, ...).
            Err(error) => return report(&session, lease, format!("keep-alive failed: {error}")),
        }
    }
}

fn report(session: &std::sync::Weak<Inner>, lease: LeaseId, reason: String) {
    if let Some(inner) = session.upgrade() {
        inner.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            *lost = Some(SessionLost { lease, reason });
            true
        });
    }
}
