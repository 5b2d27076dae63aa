//! The flush tasks: one WAL flush at a time (group commit: while it waits on the disk, new
//! writes gather for the next), segments retired between flushes, spares kept ready; and the
//! same for the watch history, on the core's schedule (every few milliseconds, or at once
//! when a snapshot waits for it), off the commit path.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::disk::DmaFlusher;
use super::state::Shard;

/// Runs WAL flush jobs one at a time, retires segments between them, keeps spares ready.
pub(super) async fn flush_loop(shard: Rc<Shard>, mut flusher: DmaFlusher) {
    loop {
        let retire = std::mem::take(&mut *shard.retire.borrow_mut());
        for seq in retire {
            if let Err(error) = flusher.retire(seq).await {
                tracing::warn!(shard = %shard.shard, seq, %error, "retiring a WAL segment failed");
            }
        }
        let job = shard.core.borrow_mut().take_flush_job();
        let Some(job) = job else {
            if shard.stopping.get() {
                break;
            }
            shard.flush_wake.wait().await;
            continue;
        };
        let began = Instant::now();
        let bytes = job.bytes() as u64;
        let rolled_over = job.writes.iter().any(|w| w.activate);
        let result = flusher.run(&job).await;
        let metrics = &shard.metrics;
        match result {
            Ok(()) => {
                metrics.wal_flush_latency_us.record(began.elapsed().as_micros() as u64);
                metrics.wal_flushes.fetch_add(1, Ordering::Relaxed);
                metrics.wal_bytes_written.fetch_add(bytes, Ordering::Relaxed);
                let mut core = shard.core.borrow_mut();
                core.set_now(shard.now_us());
                core.on_flush_complete(job);
            }
            Err(error) => {
                metrics.wal_flush_errors.fetch_add(1, Ordering::Relaxed);
                shard.core.borrow_mut().on_flush_failed(error.to_string());
            }
        }
        shard.wake.notify();
        if rolled_over {
            let spares = DmaFlusher::new(flusher.dir().clone());
            let shard_index = shard.shard;
            glommio::spawn_local(async move {
                if let Err(error) = spares.ensure_spares().await {
                    tracing::warn!(shard = %shard_index, %error, "preparing a spare WAL segment failed");
                }
            })
            .detach();
        }
    }
    flusher.close().await;
}

/// Runs watch history flush jobs one at a time when the core says they are due, retires the
/// history segments the core let go, keeps a spare ready.
pub(super) async fn history_flush_loop(shard: Rc<Shard>, mut flusher: DmaFlusher) {
    loop {
        let retire = std::mem::take(&mut *shard.history_retire.borrow_mut());
        for seq in retire {
            if let Err(error) = flusher.retire(seq).await {
                tracing::warn!(shard = %shard.shard, seq, %error, "retiring a history segment failed");
            }
        }
        let (job, due) = {
            let mut core = shard.core.borrow_mut();
            core.set_now(shard.now_us());
            (core.take_history_flush_job(), core.history_flush_due_us())
        };
        let Some(job) = job else {
            if shard.stopping.get() {
                break;
            }
            // Until the next job is due, or the driver has news (a record, a retirement).
            let wait = due.map_or(Duration::from_secs(1), |at| {
                Duration::from_micros(at.saturating_sub(shard.now_us()).max(500))
            });
            futures_lite::future::or(shard.history_flush_wake.wait(), glommio::timer::sleep(wait))
                .await;
            continue;
        };
        let rolled_over = job.writes.iter().any(|w| w.activate);
        let bytes = job.bytes() as u64;
        let result = flusher.run(&job).await;
        if result.is_ok() {
            shard
                .metrics
                .history_bytes_written
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut core = shard.core.borrow_mut();
            core.set_now(shard.now_us());
            match result {
                Ok(()) => core.on_history_flush_complete(job),
                Err(error) => core.on_history_flush_failed(error.to_string()),
            }
        }
        shard.wake.notify();
        if rolled_over {
            let spares = DmaFlusher::new(flusher.dir().clone());
            let shard_index = shard.shard;
            glommio::spawn_local(async move {
                if let Err(error) = spares.ensure_spares().await {
                    tracing::warn!(shard = %shard_index, %error, "preparing a spare history segment failed");
                }
            })
            .detach();
        }
    }
    flusher.close().await;
}
