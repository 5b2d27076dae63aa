//! The snapshot task: builds the archive of a frozen state off the executor, writes it with
//! direct I/O at the configured pace, and tells the core; old files are pruned.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use corekv_storage::snapshot::{self, Archive};

use super::background;
use super::disk;
use super::state::Shard;
use crate::constants::SNAPSHOT_FILES_KEPT;
use crate::core::SnapshotJob;

/// Builds the snapshot of a frozen state off the executor, writes it with direct I/O, and
/// reports the outcome to the core.
pub(super) async fn make_snapshot(shard: Rc<Shard>, job: SnapshotJob) {
    let began = Instant::now();
    let dir = shard.snap_dir.clone();
    let write_bytes_per_sec = shard.core.borrow().config().snapshots.write_bytes_per_sec;
    let result: anyhow::Result<Arc<Archive>> = async {
        // Merging and serializing touch every key: off the executor, at the lowest priority.
        let built = background::run(format!("snapshot-{}", job.meta.shard), move || job.build())?;
        let archive = built.await.context("the snapshot thread died")??;
        let archive = Arc::new(archive);
        disk::write_snapshot_file(&dir, &archive, write_bytes_per_sec).await?;
        Ok(archive)
    }
    .await;
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    match result {
        Ok(archive) => {
            shard.metrics.snapshot_duration_us.record(began.elapsed().as_micros() as u64);
            tracing::info!(
                shard = %shard.shard,
                index = archive.meta().index,
                keys = archive.len(),
                bytes = archive.file_bytes().len(),
                elapsed_ms = began.elapsed().as_millis() as u64,
                "snapshot written"
            );
            core.on_snapshot_written(archive);
        }
        Err(error) => core.on_snapshot_failed(&format!("{error:#}")),
    }
    drop(core);
    shard.wake.notify();
}

/// Removes all but the newest [`SNAPSHOT_FILES_KEPT`] snapshot files, off the executor.
pub(super) fn prune_snapshot_files(shard: &Shard) {
    let dir = shard.snap_dir.clone();
    let shard_index = shard.shard;
    let pruned = background::run("snapshot-prune".to_string(), move || {
        if let Err(error) = snapshot::prune(&dir, SNAPSHOT_FILES_KEPT) {
            tracing::warn!(shard = %shard_index, %error, "removing old snapshot files failed");
        }
    });
    if let Err(error) = pruned {
        tracing::warn!(shard = %shard_index, %error, "removing old snapshot files failed");
    }
}
