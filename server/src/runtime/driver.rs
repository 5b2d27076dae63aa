//! The driver of one shard on its glommio executor: the shell's side of the core's driver
//! contract (`core/driver.rs`).
//!
//! Tasks on the executor, all sharing one `Shard` (`state.rs`; `Rc`, never locked — one
//! thread):
//!
//! ```text
//!   client conns ──on_client_frame──►┐                      ┌──► peer senders (one per peer)
//!   peer inbound ──step─────────────►├─► core ──► driver ───┤
//!   tick task ──pending_ticks───────►┤     ▲     (turn,     └──► client conns (replies)
//!   deadline task (a key's deadline)►┘     │
//!                                          │      outputs)
//!   flush task ◄──take_flush_job───────────┤
//!        └── DMA write + fdatasync ──► on_flush_complete ──► driver
//!   history flush task ◄──take_history_flush_job (when due)
//!        └── DMA write + fdatasync ──► on_history_flush_complete ──► driver
//! ```
//!
//! Start-up (`startup.rs`) recovers through `ShardCore::recover`; inputs go straight into the
//! core and wake the driver, which runs one `turn` for everything that arrived meanwhile (so a
//! burst of requests becomes one raft entry) and hands on the outputs (`outputs.rs`). The
//! flush task (`flush.rs`) runs one WAL flush at a time; while it waits on the disk, new writes
//! gather for the next one (group commit). No borrow of the core is ever held across an
//! `.await`.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corekv_proto::encode::PeerEncoder;

use super::client::accept_clients;
use super::flush::{flush_loop, history_flush_loop};
use super::outputs::dispatch;
use super::peer::{accept_peers, sync_links};
use super::shutdown::shut_down;
use super::snapshot_task::{make_snapshot, prune_snapshot_files};
use super::startup::{start, Listeners, ShardContext};
use super::state::Shard;
use crate::core::Outputs;
use crate::http::{Published, StatusSlot};

/// Opens the shard's storage, binds its ports, and serves until shutdown.
pub async fn run(ctx: ShardContext) {
    let shard_index = ctx.shard.get();
    let started = ctx.started.clone();
    match start(ctx).await {
        Ok((shard, listeners)) => {
            let _ = started.send((shard_index, Ok(())));
            serve(shard, listeners).await;
        }
        Err(error) => {
            let _ = started.send((shard_index, Err(format!("{error:#}"))));
        }
    }
}

async fn serve(shard: Rc<Shard>, listeners: Listeners) {
    let Listeners { client, peer, resp, shutdown, status, flusher, history_flusher, timing } =
        listeners;
    glommio::spawn_local(accept_clients(shard.clone(), client)).detach();
    if let Some(resp) = resp {
        glommio::spawn_local(super::resp::accept_resp(shard.clone(), resp)).detach();
    }
    glommio::spawn_local(accept_peers(shard.clone(), peer)).detach();
    sync_links(&shard);
    let flush_task = glommio::spawn_local(flush_loop(shard.clone(), flusher));
    let history_task = glommio::spawn_local(history_flush_loop(shard.clone(), history_flusher));
    glommio::spawn_local(tick_loop(shard.clone(), timing.tick_ms)).detach();
    glommio::spawn_local(deadline_loop(shard.clone())).detach();
    shard.core.borrow_mut().start(shard.now_us());
    shard.wake.notify();
    drive(&shard, &shutdown, &status).await;
    shut_down(&shard).await;
    shard.stopping.set(true);
    shard.deadline_wake.notify();
    shard.flush_wake.notify();
    shard.history_flush_wake.notify();
    for link in shard.peers.borrow().values() {
        link.wake();
    }
    flush_task.await;
    history_task.await;
    *status.lock().unwrap_or_else(|p| p.into_inner()) = None;
    tracing::info!(shard = %shard.shard, "shard stopped");
}

/// The driver: runs the core's loop whenever something happened, until shutdown is asked for.
async fn drive(shard: &Rc<Shard>, shutdown: &AtomicBool, status: &StatusSlot) {
    let mut out = Outputs::default();
    let mut encoder = PeerEncoder::new();
    loop {
        shard.wake.wait().await;
        let ticks = shard.pending_ticks.replace(0);
        let turn = {
            let mut core = shard.core.borrow_mut();
            let turn = core.turn(shard.now_us(), ticks, &mut out);
            let next = core.next_deadline_us();
            if next.is_some_and(|at| shard.armed_deadline.get().is_none_or(|armed| at < armed)) {
                shard.deadline_wake.notify();
            }
            if ticks > 0 {
                let current = core.status();
                shard.metrics.set_raft_position(&current);
                *status.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Published { at: Instant::now(), status: current });
            }
            turn
        };
        sync_links(shard);
        dispatch(shard, &mut out, &mut encoder);
        if let Some(job) = turn.snapshot {
            glommio::spawn_local(make_snapshot(shard.clone(), job)).detach();
        }
        if turn.prune {
            prune_snapshot_files(shard);
        }
        if ticks > 0 && shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Wakes the driver when a key's deadline passes on a leader, so that its expiry is proposed
/// then rather than at the next tick (with no requests coming in, up to a tick later).
async fn deadline_loop(shard: Rc<Shard>) {
    while !shard.stopping.get() {
        let next = shard.core.borrow().next_deadline_us();
        shard.armed_deadline.set(next);
        let Some(at) = next else {
            shard.deadline_wake.wait().await;
            continue;
        };
        let now = shard.now_us();
        if at > now {
            let sleep = glommio::timer::sleep(Duration::from_micros(at - now));
            futures_lite::future::or(sleep, shard.deadline_wake.wait()).await;
        }
        if shard.now_us() >= at {
            shard.wake.notify();
            // At most one wake-up a millisecond, should the expiry not go out at once.
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Counts ticks for the driver.
async fn tick_loop(shard: Rc<Shard>, tick_ms: u64) {
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        shard.pending_ticks.set(shard.pending_ticks.get() + 1);
        shard.wake.notify();
    }
}
