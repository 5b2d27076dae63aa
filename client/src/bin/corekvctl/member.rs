//! `corekvctl member ...` and `corekvctl leader ...`: changing the cluster while it runs, one
//! change at a time per shard, each checked by the shard's leader (which says why it
//! refuses). Progress goes to stderr, the result to stdout.

use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, Subcommand};
use corekv_client::membership::{MemberAddr, MembershipChange, ShardMembers};
use corekv_client::registry::Registry;
use corekv_client::{Client, Error, NodeId, ShardId};
use serde_json::json;

use super::Failure;

/// How far behind the leader's log a learner may be and count as caught up (the leader
/// promotes within the same bound).
const CAUGHT_UP_ENTRIES: u64 = 1_000;

/// How often a waiting command asks for progress.
const POLL: Duration = Duration::from_millis(300);

#[derive(Subcommand)]
pub(crate) enum MemberCommand {
    /// Per shard: voters, learners, the leader, each replica's lag.
    List,
    /// Add a node to every shard: as a learner, promoted to voter once it has caught up.
    ///
    /// Start the node first with `corekv serve --registry FILE --node-id ID --join` (FILE
    /// lists the node itself and at least one current member). The command waits until the
    /// node votes in every shard (or, with --learner, has caught up), reporting progress;
    /// --no-wait returns once it is a learner everywhere, and the leaders promote it.
    Add {
        /// The new node's id (unused in the cluster).
        id: u64,
        #[command(flatten)]
        addr: AddrArgs,
        /// Keep it a learner (it replicates and serves stale reads, it does not vote).
        #[arg(long)]
        learner: bool,
        /// Return once it is a learner in every shard.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for it to catch up.
        #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
        wait_timeout: Duration,
    },
    /// Make a learner a voter in every shard where it is a learner (once caught up).
    Promote {
        /// The learner.
        id: u64,
        /// How long to wait for it to catch up.
        #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
        wait_timeout: Duration,
    },
    /// Remove a node from every shard (leadership moves away from it first).
    Remove {
        /// The node.
        id: u64,
    },
    /// Replace a voter with another node in every shard, in one joint change each.
    ///
    /// NEW is added as a learner first when it is not a member yet (give its addresses),
    /// and the change waits until it has caught up.
    Replace {
        /// The voter that leaves.
        old: u64,
        /// The node that takes its place.
        new: u64,
        #[command(flatten)]
        addr: AddrArgs,
        /// How long to wait for the new node to catch up.
        #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
        wait_timeout: Duration,
    },
}

#[derive(Subcommand)]
pub(crate) enum LeaderCommand {
    /// Hand a shard's leadership to a voter.
    Transfer {
        /// The shard.
        shard: u32,
        /// The voter to lead it.
        node: u64,
    },
    /// Hand every shard's leadership to its preferred voter, so leaders spread evenly.
    Balance,
}

/// Where a new node listens: flags, or its entry in a registry file.
#[derive(ClapArgs)]
pub(crate) struct AddrArgs {
    /// Host name or IP address.
    #[arg(long)]
    host: Option<String>,
    /// First client port (shard s listens on it + s).
    #[arg(long)]
    client_port: Option<u16>,
    /// First peer port.
    #[arg(long)]
    peer_port: Option<u16>,
    /// HTTP port.
    #[arg(long)]
    http_port: Option<u16>,
    /// First Redis port (optional: shard s speaks Redis on it + s).
    #[arg(long)]
    resp_port: Option<u16>,
    /// Take the addresses from the node's entry in this registry file.
    #[arg(long, conflicts_with_all = ["host", "client_port", "peer_port", "http_port", "resp_port"])]
    from_registry: Option<std::path::PathBuf>,
}

impl AddrArgs {
    fn given(&self) -> bool {
        self.host.is_some() || self.from_registry.is_some()
    }

    fn addr(&self, id: NodeId) -> Result<MemberAddr, Failure> {
        if let Some(path) = &self.from_registry {
            let registry = Registry::load(path)
                .map_err(|e| input(format!("{}: {}", path.display(), e.reason)))?;
            let node = registry
                .node(id)
                .ok_or_else(|| input(format!("node {id} is not in {}", path.display())))?;
            return Ok(MemberAddr::from(node));
        }
        match (&self.host, self.client_port, self.peer_port, self.http_port) {
            (Some(host), Some(client_port), Some(peer_port), Some(http_port))
                if !host.is_empty() =>
            {
                let resp_port = self.resp_port;
                Ok(MemberAddr { host: host.clone(), client_port, peer_port, http_port, resp_port })
            }
            _ => Err(input(
                "the new node's addresses: --host, --client-port, --peer-port and --http-port \
                 (or --from-registry FILE)",
            )),
        }
    }
}

fn input(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

fn progress(message: String) {
    eprintln!("corekvctl: {message}");
}

fn shards(client: &Client) -> Vec<ShardId> {
    (0..client.registry().shards).map(ShardId).collect()
}

fn role(members: &ShardMembers, id: NodeId) -> &'static str {
    let m = &members.membership;
    if m.voters.contains(&id) {
        "voter"
    } else if m.voters_outgoing.contains(&id) {
        "outgoing voter"
    } else if m.is_learner(id) {
        "learner"
    } else {
        "not a member"
    }
}

/// How far `id` is behind the leader's log, when the leader said.
fn lag(members: &ShardMembers, id: NodeId) -> Option<u64> {
    let peer = members.peers.iter().find(|p| p.node_id == id)?;
    Some(members.last_index.get().saturating_sub(peer.match_index.get()))
}

pub(crate) async fn member(
    client: &Client,
    json: bool,
    command: MemberCommand,
) -> Result<(), Failure> {
    match command {
        MemberCommand::List => list(client, json).await,
        MemberCommand::Add { id, addr, learner, no_wait, wait_timeout } => {
            let addr = addr.addr(NodeId(id))?;
            add(client, json, NodeId(id), addr, learner, no_wait, wait_timeout).await
        }
        MemberCommand::Promote { id, wait_timeout } => {
            promote(client, json, NodeId(id), wait_timeout).await
        }
        MemberCommand::Remove { id } => remove(client, json, NodeId(id)).await,
        MemberCommand::Replace { old, new, addr, wait_timeout } => {
            replace(client, json, NodeId(old), NodeId(new), &addr, wait_timeout).await
        }
    }
}

async fn add(
    client: &Client,
    json: bool,
    id: NodeId,
    addr: MemberAddr,
    learner: bool,
    no_wait: bool,
    wait_timeout: Duration,
) -> Result<(), Failure> {
    for shard in shards(client) {
        let members = client.members(shard).await?;
        if members.membership.contains(id) {
            return Err(input(format!(
                "node {id} is a member of shard {shard} already ({}); `member promote` \
                 makes a learner a voter",
                role(&members, id)
            )));
        }
    }
    for shard in shards(client) {
        let change = MembershipChange::AddLearner { id, addr: addr.clone(), promote: !learner };
        let index = client.change_membership(shard, &change).await?;
        progress(format!("shard {shard}: node {id} added as a learner (index {index})"));
    }
    if no_wait {
        let then = if learner { "" } else { "; the leaders promote it once it has caught up" };
        return done(json, &format!("node {id} is a learner of every shard{then}"));
    }
    let deadline = Instant::now() + wait_timeout;
    if learner {
        wait_caught_up(client, id, deadline).await?;
        return done(json, &format!("node {id} is a learner of every shard, caught up"));
    }
    wait_voter(client, id, deadline).await?;
    done(json, &format!("node {id} is a voter of every shard"))
}

async fn promote(
    client: &Client,
    json: bool,
    id: NodeId,
    wait_timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + wait_timeout;
    for shard in shards(client) {
        let members = client.members(shard).await?;
        if !members.membership.is_learner(id) {
            progress(format!("shard {shard}: node {id} is {}; nothing to do", role(&members, id)));
            continue;
        }
        change_when_caught_up(client, shard, &MembershipChange::Promote { id }, deadline).await?;
        progress(format!("shard {shard}: node {id} is a voter"));
    }
    done(json, &format!("node {id} is a voter of every shard where it was a learner"))
}

async fn remove(client: &Client, json: bool, id: NodeId) -> Result<(), Failure> {
    for shard in shards(client) {
        let members = client.members(shard).await?;
        if !members.membership.contains(id) {
            progress(format!("shard {shard}: node {id} is not a member; nothing to do"));
            continue;
        }
        let change = MembershipChange::Remove { id };
        let deadline = Instant::now() + Duration::from_secs(10);
        change_away_from(client, shard, id, &change, deadline).await?;
        progress(format!("shard {shard}: node {id} removed"));
    }
    done(json, &format!("node {id} is a member of no shard; stop it, then its data can be deleted"))
}

async fn replace(
    client: &Client,
    json: bool,
    old: NodeId,
    new: NodeId,
    addr: &AddrArgs,
    wait_timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + wait_timeout;
    for shard in shards(client) {
        let members = client.members(shard).await?;
        if !members.membership.voters.contains(&old) {
            let what = role(&members, old);
            progress(format!("shard {shard}: node {old} is {what}; nothing to replace"));
            continue;
        }
        if !members.membership.contains(new) {
            if !addr.given() {
                return Err(input(format!(
                    "node {new} is not a member of shard {shard}: give its addresses \
                     (--host, --client-port, --peer-port, --http-port or --from-registry)"
                )));
            }
            let change =
                MembershipChange::AddLearner { id: new, addr: addr.addr(new)?, promote: false };
            client.change_membership(shard, &change).await?;
            progress(format!("shard {shard}: node {new} added as a learner"));
        }
        wait_shard_caught_up(client, shard, new, deadline).await?;
        let change = MembershipChange::Replace { old, new };
        change_away_from(client, shard, old, &change, deadline).await?;
        let late = "the change did not complete in time";
        poll_shard(client, shard, None, deadline, late, |m| !m.membership.is_joint()).await?;
        progress(format!("shard {shard}: node {new} replaced node {old}"));
    }
    done(json, &format!("node {new} replaced node {old} in every shard"))
}

pub(crate) async fn leader(
    client: &Client,
    json: bool,
    command: LeaderCommand,
) -> Result<(), Failure> {
    match command {
        LeaderCommand::Transfer { shard, node } => {
            let leader = client.transfer_leader(ShardId(shard), NodeId(node)).await?;
            done(json, &format!("node {leader} leads shard {shard}"))
        }
        LeaderCommand::Balance => {
            let mut moved = 0;
            for shard in shards(client) {
                let members = client.members(shard).await?;
                let Some(preferred) = members.membership.preferred_leader(shard) else {
                    continue;
                };
                if members.leader_id != preferred {
                    client.transfer_leader(shard, preferred).await?;
                    progress(format!("shard {shard}: leadership moved to node {preferred}"));
                    moved += 1;
                }
            }
            done(json, &format!("leaders balanced ({moved} moved)"))
        }
    }
}

fn done(json: bool, message: &str) -> Result<(), Failure> {
    if json {
        println!("{}", json!({"ok": true, "message": message}));
    } else {
        println!("{message}");
    }
    Ok(())
}

async fn list(client: &Client, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    for shard in shards(client) {
        all.push(client.members(shard).await?);
    }
    if json {
        println!("{}", serde_json::to_string(&all).map_err(|e| input(e.to_string()))?);
        return Ok(());
    }
    println!("SHARD  NODE  ROLE            LEADER  LAG    ADDRESS");
    for members in &all {
        for id in members.membership.members() {
            let addr = members.membership.addrs.get(&id).map_or("?".to_string(), |a| {
                format!("{}:{}", a.host, a.client_port as u32 + members.shard.get())
            });
            let lag = lag(members, id).map_or("-".to_string(), |l| l.to_string());
            let leads = if members.leader_id == id { "*" } else { "" };
            println!(
                "{:<6} {:<5} {:<15} {:<7} {:<6} {addr}",
                members.shard.get(),
                id.get(),
                role(members, id),
                leads,
                lag
            );
        }
    }
    Ok(())
}

/// Whether a refusal is of a state that passes by itself: a learner (or the voters left after
/// a removal) still catching up, or a change under way (a new leader counts its whole log as
/// one until it has applied it).
fn passing(reason: &str) -> bool {
    reason.contains("not caught up") || reason.contains("another change is under way")
}

/// Proposes `change` on `shard`; while the leader says the learner is behind, waits.
async fn change_when_caught_up(
    client: &Client,
    shard: ShardId,
    change: &MembershipChange,
    deadline: Instant,
) -> Result<(), Failure> {
    loop {
        match client.change_membership(shard, change).await {
            Ok(_) => return Ok(()),
            Err(Error::ChangeRefused(reason)) if passing(&reason) && Instant::now() < deadline => {
                progress(format!("shard {shard}: {reason}; waiting"));
                tokio::time::sleep(POLL * 3).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Proposes `change`, which takes `id` out of `shard`'s voters: when `id` leads, leadership
/// moves to the most caught-up other voter first.
async fn change_away_from(
    client: &Client,
    shard: ShardId,
    id: NodeId,
    change: &MembershipChange,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut moves = 0;
    while moves < 3 {
        let members = client.members(shard).await?;
        if members.leader_id == id {
            let best = members
                .peers
                .iter()
                .filter(|p| p.node_id != id && p.recent_active)
                .filter(|p| members.membership.voters.contains(&p.node_id))
                .max_by_key(|p| p.match_index);
            let Some(to) = best.map(|p| p.node_id) else {
                return Err(input(format!(
                    "node {id} leads shard {shard} and no other voter can take over"
                )));
            };
            client.transfer_leader(shard, to).await?;
            progress(format!("shard {shard}: leadership moved from node {id} to node {to}"));
            moves += 1;
        }
        match client.change_membership(shard, change).await {
            // Leadership came back to it meanwhile (the automatic balancing): again.
            Err(Error::ChangeRefused(reason)) if reason.contains("leads the shard") => continue,
            Err(Error::ChangeRefused(reason)) if passing(&reason) && Instant::now() < deadline => {
                progress(format!("shard {shard}: {reason}; waiting"));
                tokio::time::sleep(POLL * 3).await;
            }
            Err(error) => return Err(error.into()),
            Ok(_) => return Ok(()),
        }
    }
    Err(input(format!("node {id} kept leading shard {shard}; try again")))
}

/// Asks for `shard`'s members until `done` holds (the members then), reporting how far
/// `watch` (when given) is behind whenever that changes; at the deadline, fails saying `late`.
async fn poll_shard(
    client: &Client,
    shard: ShardId,
    watch: Option<NodeId>,
    deadline: Instant,
    late: &str,
    done: impl Fn(&ShardMembers) -> bool,
) -> Result<ShardMembers, Failure> {
    let mut said = None;
    loop {
        let members = client.members(shard).await?;
        if done(&members) {
            return Ok(members);
        }
        let behind = watch.and_then(|id| lag(&members, id));
        if let Some(watch) = watch.filter(|_| behind != said) {
            let what = behind
                .map_or("no progress reported yet".to_string(), |l| format!("{l} entries behind"));
            progress(format!("shard {shard}: node {watch} catching up ({what})"));
            said = behind;
        }
        if Instant::now() >= deadline {
            return Err(Failure { code: 3, message: format!("shard {shard}: {late}") });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether learner `id` is within reach of the leader's log (it holds something, and lags
/// at most [`CAUGHT_UP_ENTRIES`]).
fn caught_up(members: &ShardMembers, id: NodeId) -> bool {
    let holds = members.peers.iter().any(|p| p.node_id == id && p.match_index.get() > 0);
    holds && lag(members, id).is_some_and(|l| l <= CAUGHT_UP_ENTRIES)
}

/// Waits until learner `id` is within reach of the leader's log in `shard`.
async fn wait_shard_caught_up(
    client: &Client,
    shard: ShardId,
    id: NodeId,
    deadline: Instant,
) -> Result<(), Failure> {
    let late = format!("node {id} did not catch up in time");
    poll_shard(client, shard, Some(id), deadline, &late, |m| caught_up(m, id)).await.map(|_| ())
}

async fn wait_caught_up(client: &Client, id: NodeId, deadline: Instant) -> Result<(), Failure> {
    for shard in shards(client) {
        wait_shard_caught_up(client, shard, id, deadline).await?;
    }
    Ok(())
}

/// Waits until `id` is a voter of every shard, reporting its progress.
async fn wait_voter(client: &Client, id: NodeId, deadline: Instant) -> Result<(), Failure> {
    let late = format!("timed out waiting for node {id} to become a voter");
    for shard in shards(client) {
        let voter = |m: &ShardMembers| m.membership.voters.contains(&id);
        let members = poll_shard(client, shard, Some(id), deadline, &late, voter).await?;
        progress(format!("shard {shard}: node {id} is a {}", role(&members, id)));
    }
    Ok(())
}
