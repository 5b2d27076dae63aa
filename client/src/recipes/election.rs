//! Leader election.

use std::collections::BTreeMap;

use futures_util::stream::Stream;
use futures_util::StreamExt;

use super::mutex::{take_turn, wait_for_turn};
use super::{prefix, Session};
use crate::error::{Error, Result};
use crate::types::{Compare, ScanOptions, ScanRange, Txn, TxnOp, TxnOpResult};
use crate::watch::{ChangeKind, WatchSpec};
use crate::{Client, WatchMessage};

/// A leader election named by a string. A candidate puts one key, `{elect/NAME}/LEASE`, with
/// its proposal as the value, attached to its session's lease; the key created first leads.
/// [`Election::campaign`] waits until this session leads; [`Election::observe`] follows who
/// leads; [`Election::proclaim`] changes the leader's value; [`Election::resign`] steps
/// down (so does the session's end).
///
/// ```no_run
/// # async fn example(client: corekv_client::Client) -> corekv_client::Result<()> {
/// use std::time::Duration;
/// use corekv_client::recipes::{Election, Session};
///
/// let session = Session::new(&client, Duration::from_secs(10));
/// let election = Election::new(&session, "scheduler");
/// let leader = election.campaign(b"host-a:9000").await?;
/// println!("leading; fencing token {}", leader.revision);
/// election.proclaim(b"host-a:9001").await?;
/// election.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    session: Session,
    prefix: Vec<u8>,
}

/// Who leads an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key.
    pub key: Vec<u8>,
    /// Its value (the proposal, or what it proclaimed since).
    pub value: Vec<u8>,
    /// When it started campaigning: its key's create index (leaders go by it, then by
    /// key).
    pub create_index: u64,
    /// Its key's last write: for a leader [`Election::campaign`] returned, the write that
    /// took the lead, which grows with each leader (a fencing token).
    pub revision: u64,
}

impl Election {
    /// The election `name`, campaigned in with `session`'s lease.
    pub fn new(session: &Session, name: &str) -> Election {
        Election { session: session.clone(), prefix: prefix("elect", name) }
    }

    async fn my_key(&self) -> Result<(Vec<u8>, crate::LeaseId)> {
        let lease = self.session.lease_for(&self.prefix).await?;
        let mut key = self.prefix.clone();
        key.extend_from_slice(lease.to_string().as_bytes());
        Ok((key, lease))
    }

    /// Campaigns with `proposal`: waits until this session leads. A session that already
    /// campaigns keeps its place (and its value).
    pub async fn campaign(&self, proposal: &[u8]) -> Result<Leader> {
        let client = self.session.client();
        let (key, lease) = self.my_key().await?;
        let txn = Txn::new()
            .when(Compare::missing(&key))
            .and_then([TxnOp::put_with_lease(&key, proposal, lease)])
            .or_else([TxnOp::get(&key)]);
        let response = client.txn(&txn).await?;
        let (mine, value) = match response.results.into_iter().next() {
            Some(TxnOpResult::Put(meta)) => (meta.create_index, proposal.to_vec()),
            Some(TxnOpResult::Get(Some(entry))) => (entry.meta.create_index, entry.value),
            _ => return Err(Error::Protocol("campaign: unexpected transaction result".into())),
        };
        wait_for_turn(client, &self.prefix, &key, mine).await?;
        let revision = take_turn(client, &key, mine, &value, lease).await?;
        Ok(Leader { key, value, create_index: mine, revision })
    }

    /// Sets the leader's value, if this session leads (campaigned and did not resign).
    pub async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let (key, lease) = self.my_key().await?;
        let leader = self.leader().await?;
        if leader.as_ref().map(|l| &l.key) != Some(&key) {
            return Err(Error::InvalidArgument("proclaim: this session does not lead".into()));
        }
        let create_index = leader.map_or(0, |l| l.create_index);
        let txn = Txn::new()
            .when(Compare::create_index(&key).eq(create_index))
            .and_then([TxnOp::put_with_lease(&key, value, lease)]);
        let response = self.session.client().txn(&txn).await?;
        if response.succeeded {
            Ok(())
        } else {
            Err(Error::InvalidArgument("proclaim: this session no longer leads".into()))
        }
    }

    /// Stops campaigning or leading: deletes this session's key.
    pub async fn resign(&self) -> Result<()> {
        let (key, _) = self.my_key().await?;
        self.session.client().delete(&key).await.map(|_| ())
    }

    /// Who leads now, if anyone.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        leader_of(self.session.client(), &self.prefix).await
    }

    /// Follows who leads: yields the leader now (if any), then each time the leader or its
    /// value changes.
    pub fn observe(&self) -> impl Stream<Item = Result<Option<Leader>>> + Send + 'static {
        let client = self.session.client().clone();
        let prefix = self.prefix.clone();
        futures_util::stream::once(async move {
            let (listing, watch) =
                client.list_and_watch(prefix.clone(), WatchSpec::prefix(prefix)).await?;
            let keys: Candidates = listing
                .entries
                .into_iter()
                .map(|e| (e.key, (e.meta.create_index, e.meta.mod_index, e.value)))
                .collect();
            Ok::<_, Error>((keys, watch))
        })
        .flat_map(|started| match started {
            Err(error) => futures_util::stream::once(async move { Err(error) }).boxed(),
            Ok((keys, watch)) => {
                let first = first_of(&keys);
                let state = (keys, first.clone());
                let changes = watch.scan(state, |(keys, shown), message| {
                    let next = match message {
                        Err(error) => Some(Some(Err(error))),
                        Ok(WatchMessage::Progress { .. }) => Some(None),
                        Ok(WatchMessage::Event(event)) => {
                            for change in event.changes.iter() {
                                match (&change.kind, &change.value) {
                                    (ChangeKind::Put, Some(v)) => {
                                        let meta = v.meta;
                                        let entry =
                                            (meta.create_index, meta.mod_index, v.value.clone());
                                        keys.insert(change.key.clone(), entry);
                                    }
                                    _ => {
                                        keys.remove(&change.key);
                                    }
                                }
                            }
                            let now = first_of(keys);
                            let who = |l: &Option<Leader>| {
                                l.as_ref().map(|l| (l.key.clone(), l.value.clone()))
                            };
                            // A new leader, or a new value (not its key written again).
                            if who(&now) != who(shown) {
                                *shown = now.clone();
                                Some(Some(Ok(now)))
                            } else {
                                Some(None)
                            }
                        }
                    };
                    futures_util::future::ready(next)
                });
                futures_util::stream::once(async move { Ok(first) })
                    .chain(changes.filter_map(futures_util::future::ready))
                    .boxed()
            }
        })
    }
}

/// Each candidate's key: its create index, mod index and value.
type Candidates = BTreeMap<Vec<u8>, (u64, u64, Vec<u8>)>;

/// The key with the smallest create index (then the smallest key), as a leader.
fn first_of(keys: &Candidates) -> Option<Leader> {
    keys.iter().min_by_key(|(key, (index, _, _))| (*index, *key)).map(
        |(key, (index, revision, value))| Leader {
            key: key.clone(),
            value: value.clone(),
            create_index: *index,
            revision: *revision,
        },
    )
}

async fn leader_of(client: &Client, prefix: &[u8]) -> Result<Option<Leader>> {
    let mut stream =
        std::pin::pin!(client.scan_stream(ScanRange::prefix(prefix), ScanOptions::default()));
    let mut keys = BTreeMap::new();
    while let Some(entry) = stream.next().await {
        let entry = entry?;
        keys.insert(entry.key, (entry.meta.create_index, entry.meta.mod_index, entry.value));
    }
    Ok(first_of(&keys))
}
