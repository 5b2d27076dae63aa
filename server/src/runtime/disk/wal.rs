//! The WAL's I/O shell on glommio: runs [`FlushJob`]s with O_DIRECT writes through glommio's
//! DMA files (io_uring) and `fdatasync`, and keeps spare segments prepared. Everything it
//! runs was decided by the storage crate's sans-IO [`corekv_storage::wal::WalWriter`].
//!
//! Once-per-segment work runs off the executor so it keeps serving: renaming and syncing the
//! directory on glommio's blocking thread pool, preparing a spare (writing 64 MiB) on a
//! background thread of the lowest priority.

use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use corekv_storage::error::{Result, StorageError};
use corekv_storage::wal::{FlushJob, SegmentDir};

/// Runs flush jobs for one shard's WAL on the current glommio executor.
#[derive(Debug)]
pub struct DmaFlusher {
    dir: SegmentDir,
    /// The segment written last, kept open: almost every job writes to it again.
    open: Option<(u64, Rc<DmaFile>)>,
}

impl DmaFlusher {
    /// A flusher for the segments of `dir`.
    pub fn new(dir: SegmentDir) -> Self {
        DmaFlusher { dir, open: None }
    }

    /// The directory it writes to.
    pub fn dir(&self) -> &SegmentDir {
        &self.dir
    }

    async fn file(&mut self, seq: u64) -> Result<Rc<DmaFile>> {
        if let Some((open_seq, file)) = &self.open {
            if *open_seq == seq {
                return Ok(file.clone());
            }
        }
        if let Some((_, old)) = self.open.take() {
            // The old segment is sealed and synced; closing it cannot lose data.
            let _ = old.close_rc().await;
        }
        let path = self.dir.segment_path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .map_err(|e| StorageError::io("open (O_DIRECT)", &path, e.into()))?;
        let file = Rc::new(file);
        self.open = Some((seq, file.clone()));
        Ok(file)
    }

    /// Runs every write of `job` in order, each followed by an `fdatasync` of its segment.
    pub async fn run(&mut self, job: &FlushJob) -> Result<()> {
        for write in &job.writes {
            if write.activate {
                let dir = self.dir.clone();
                let seq = write.seq;
                glommio::executor().spawn_blocking(move || dir.activate(seq)).await?;
            }
            let file = self.file(write.seq).await?;
            let path = self.dir.segment_path(write.seq);
            let mut buffer = file.alloc_dma_buffer(write.bytes.len());
            buffer.as_bytes_mut().copy_from_slice(&write.bytes);
            let written = file
                .write_at(buffer, write.offset)
                .await
                .map_err(|e| StorageError::io("write (O_DIRECT)", &path, e.into()))?;
            if written != write.bytes.len() {
                return Err(StorageError::io(
                    "write (O_DIRECT)",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write: {written} of {} bytes", write.bytes.len()),
                    ),
                ));
            }
            file.fdatasync().await.map_err(|e| StorageError::io("fdatasync", &path, e.into()))?;
        }
        Ok(())
    }

    /// Closes the open segment file.
    pub async fn close(&mut self) {
        if let Some((_, file)) = self.open.take() {
            let _ = file.close_rc().await;
        }
    }

    /// [`SegmentDir::prepare_spares`] before the shard serves: on glommio's blocking pool at
    /// normal priority, since nothing waits behind it but the start itself (a restart must not
    /// wait for the time a busy machine leaves idle).
    pub async fn ensure_spares_before_serving(&self) -> Result<()> {
        let dir = self.dir.clone();
        glommio::executor().spawn_blocking(move || dir.prepare_spares()).await
    }

    /// [`SegmentDir::prepare_spares`] on a background thread
    /// ([`corekv_storage::pacing::spawn_background`]). Not on glommio's blocking pool: its thread has
    /// normal priority on the executor's core, and writing 64 MiB there (some 200 ms of CPU
    /// on a tmpfs, in 3–5 ms slices) kept the executor waiting for its core meanwhile.
    pub async fn ensure_spares(&self) -> Result<()> {
        let dir = self.dir.clone();
        let path = dir.wal_dir().to_path_buf();
        let prepared =
            corekv_storage::pacing::spawn_background("wal-spare".to_string(), move || {
                dir.prepare_spares()
            })
            .map_err(|e| {
                StorageError::io("start a thread to prepare a spare segment in", &path, e)
            })?;
        prepared.await.unwrap_or_else(|_| {
            let died = std::io::Error::other("the thread preparing a spare segment panicked");
            Err(StorageError::io("prepare a spare segment in", &path, died))
        })
    }

    /// Takes segment `seq` out of the log (recycled as a spare or deleted).
    pub async fn retire(&mut self, seq: u64) -> Result<()> {
        if self.open.as_ref().is_some_and(|(open_seq, _)| *open_seq == seq) {
            if let Some((_, file)) = self.open.take() {
                let _ = file.close_rc().await;
            }
        }
        let dir = self.dir.clone();
        glommio::executor().spawn_blocking(move || dir.retire(seq)).await
    }
}
