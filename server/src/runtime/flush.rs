//! The flush task: one WAL flush at a time (group commit: while it waits on the disk, new
//! writes gather for the next), segments retired between flushes, spares kept ready.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

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
