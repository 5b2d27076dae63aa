//! `corekvctl lock` and `corekvctl elect`: the client's Mutex and Election recipes from the
//! command line.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use corekv_client::recipes::{Election, Mutex, Session};
use corekv_client::Client;
use futures_util::StreamExt;
use serde_json::json;

use super::output::escape;
use super::{parse_duration, Failure};

/// `corekvctl lock`'s arguments.
#[derive(Args)]
pub(crate) struct LockArgs {
    /// The lock's name.
    name: String,
    /// The session lease's time to live: how long the lock outlives this process if it dies
    /// or hangs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// The command to run while holding the lock (after `--`); without one, hold it until
    /// Ctrl-C.
    #[arg(last = true)]
    command: Vec<String>,
}

/// `corekvctl elect`'s arguments.
#[derive(Args)]
pub(crate) struct ElectArgs {
    /// The election's name.
    name: String,
    /// Campaign with this value and lead until Ctrl-C; without one, print the leader's
    /// value each time it changes.
    proposal: Option<String>,
    /// The session lease's time to live.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
}

fn print(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure { code: 3, message: format!("writing output: {e}") })
}

fn lost(reason: &str) -> Failure {
    Failure { code: 3, message: format!("session lost: {reason}") }
}

/// Takes the lock, then runs the command (its exit status is ours) or waits for Ctrl-C;
/// releases the lock at the end. Exit status 3 when the session is lost while holding it
/// (the command is killed).
pub(crate) async fn lock(client: &Client, json: bool, args: LockArgs) -> Result<u8, Failure> {
    let session = Session::new(client, args.ttl);
    let guard = Mutex::new(&session, &args.name).lock().await?;
    let key = String::from_utf8_lossy(guard.key()).into_owned();
    print(&if json {
        json!({"key": key, "token": guard.token()}).to_string()
    } else {
        format!("{} token={}", escape(guard.key()), guard.token())
    })?;
    let outcome = if let Some((program, rest)) = args.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env("COREKV_LOCK_KEY", &key)
            .env("COREKV_LOCK_TOKEN", guard.token().to_string())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure { code: 2, message: format!("running {program}: {e}") })?;
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Failure { code: 3, message: format!("waiting for {program}: {e}") })?;
                Ok(status.code().map_or(3, |c| c.clamp(0, 255) as u8))
            }
            why = session.lost() => {
                let _ = child.kill().await;
                Err(lost(&why.reason))
            }
        }
    } else {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(0),
            why = session.lost() => Err(lost(&why.reason)),
        }
    };
    if outcome.is_ok() {
        guard.unlock().await?;
    }
    let _ = session.close().await;
    outcome
}

/// Campaigns and leads until Ctrl-C (then resigns), or observes.
pub(crate) async fn elect(client: &Client, json: bool, args: ElectArgs) -> Result<u8, Failure> {
    let session = Session::new(client, args.ttl);
    let election = Election::new(&session, &args.name);
    let show = |leader: &Option<corekv_client::recipes::Leader>| match leader {
        Some(l) if json => json!({"leader": String::from_utf8_lossy(&l.value),
                                  "key": String::from_utf8_lossy(&l.key),
                                  "create_index": l.create_index, "revision": l.revision})
        .to_string(),
        Some(l) => escape(&l.value),
        None if json => json!({"leader": null}).to_string(),
        None => "(no leader)".to_string(),
    };
    let Some(proposal) = args.proposal else {
        let mut leaders = std::pin::pin!(election.observe());
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(0),
                next = leaders.next() => match next {
                    Some(leader) => print(&show(&leader?))?,
                    None => return Err(Failure { code: 3, message: "the observation ended".into() }),
                },
            }
        }
    };
    let leader = election.campaign(proposal.as_bytes()).await?;
    print(&show(&Some(leader)))?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(0),
        why = session.lost() => Err(lost(&why.reason)),
    };
    if outcome.is_ok() {
        election.resign().await?;
    }
    let _ = session.close().await;
    outcome
}
