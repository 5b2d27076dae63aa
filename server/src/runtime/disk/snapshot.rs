//! Snapshot file I/O on glommio: writing a snapshot with direct I/O, and receiving one from a
//! leader chunk by chunk.
//!
//! Every file is first created with a plain write of its header block and synced, and only then
//! opened for DMA: glommio probes polled I/O by reading the first block of the first DMA file it
//! opens on a device, and that block must hold real data (DESIGN.md §9).

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use corekv_storage::constants::{
    BACKGROUND_SYNC_EVERY_BYTES, BACKGROUND_WRITE_CHUNK_BYTES, BLOCK_BYTES,
};
use corekv_storage::error::{Result, StorageError};
use corekv_storage::pacing::Pacer;
use corekv_storage::snapshot::{file_name, Archive, SNAPSHOT_HEADER_BYTES};

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Creates `tmp` holding `header` (one block), synced, so it can be opened with DMA.
fn create_with_header(tmp: &Path, header: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(tmp).map_err(|e| StorageError::io("create", tmp, e))?;
    file.write_all(header).map_err(|e| StorageError::io("write", tmp, e))?;
    file.sync_all().map_err(|e| StorageError::io("fsync", tmp, e))
}

async fn open_dma(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::io("open (O_DIRECT)", path, e.into()))
}

async fn write_at(file: &DmaFile, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut buffer = file.alloc_dma_buffer(bytes.len());
    buffer.as_bytes_mut().copy_from_slice(bytes);
    let written = file
        .write_at(buffer, offset)
        .await
        .map_err(|e| StorageError::io("write (O_DIRECT)", path, e.into()))?;
    if written != bytes.len() {
        let error = std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {}", bytes.len()),
        );
        return Err(StorageError::io("write (O_DIRECT)", path, error));
    }
    Ok(())
}

/// Writes `archive` as `dir/{index}-{term}.snap`: a temporary file written with direct I/O in
/// chunks paced to `bytes_per_sec` (yielding between them), synced every [`BACKGROUND_SYNC_EVERY_BYTES`],
/// renamed into place, and the directory synced.
/// Returns the final path.
pub async fn write_snapshot_file(
    dir: &Path,
    archive: &Archive,
    bytes_per_sec: u64,
) -> Result<PathBuf> {
    let meta = archive.meta();
    let path = dir.join(file_name(meta.index, meta.term));
    let tmp = dir.join(format!("{}.tmp", file_name(meta.index, meta.term)));
    let image = archive.file_bytes();
    let header = image[..SNAPSHOT_HEADER_BYTES].to_vec();
    let tmp_for_create = tmp.clone();
    glommio::executor()
        .spawn_blocking(move || create_with_header(&tmp_for_create, &header))
        .await?;
    let file = open_dma(&tmp).await?;
    let mut offset = SNAPSHOT_HEADER_BYTES;
    // Paced, in small chunks: a WAL flush never waits behind more than one chunk.
    let mut pacer = Pacer::new(bytes_per_sec);
    while offset < image.len() {
        let end = (offset + BACKGROUND_WRITE_CHUNK_BYTES).min(image.len());
        write_at(&file, &tmp, offset as u64, &image[offset..end]).await?;
        let wait = pacer.wrote((end - offset) as u64);
        // Synced as it goes: one sync of the whole file at the end makes the device flush
        // every block at once, and each WAL fdatasync issued meanwhile waits for all of it.
        if end / BACKGROUND_SYNC_EVERY_BYTES as usize
            != offset / BACKGROUND_SYNC_EVERY_BYTES as usize
        {
            file.fdatasync().await.map_err(|e| StorageError::io("fdatasync", &tmp, e.into()))?;
        }
        offset = end;
        if wait.is_zero() {
            glommio::executor().yield_if_needed().await;
        } else {
            glommio::timer::sleep(wait).await;
        }
    }
    file.fdatasync().await.map_err(|e| StorageError::io("fdatasync", &tmp, e.into()))?;
    let _ = file.close().await;
    let (from, to, dir) = (tmp.clone(), path.clone(), dir.to_path_buf());
    glommio::executor()
        .spawn_blocking(move || {
            std::fs::rename(&from, &to).map_err(|e| StorageError::io("rename", &from, e))?;
            sync_dir(&dir)
        })
        .await?;
    Ok(path)
}

/// A snapshot arriving from a leader, written chunk by chunk into a temporary file.
pub struct IncomingSnapshot {
    dir: PathBuf,
    tmp: PathBuf,
    file: Rc<DmaFile>,
    index: u64,
    term: u64,
    total: u64,
    received: u64,
}

impl IncomingSnapshot {
    /// Starts receiving the snapshot `(index, term)` of `total` bytes whose first chunk (at
    /// least the header block) is `first`.
    pub async fn start(
        dir: &Path,
        index: u64,
        term: u64,
        total: u64,
        first: &[u8],
    ) -> Result<IncomingSnapshot> {
        let tmp = dir.join(format!("{}.incoming.tmp", file_name(index, term)));
        let bad = |reason: &str| StorageError::BadSnapshot {
            path: tmp.clone(),
            reason: reason.to_string(),
        };
        if first.len() < SNAPSHOT_HEADER_BYTES
            || total % BLOCK_BYTES as u64 != 0
            || total < first.len() as u64
        {
            return Err(bad("the first chunk must hold the header block of a block-aligned file"));
        }
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        let header = first[..SNAPSHOT_HEADER_BYTES].to_vec();
        let tmp_for_create = tmp.clone();
        glommio::executor()
            .spawn_blocking(move || create_with_header(&tmp_for_create, &header))
            .await?;
        let file = Rc::new(open_dma(&tmp).await?);
        let mut incoming = IncomingSnapshot {
            dir: dir.to_path_buf(),
            tmp,
            file,
            index,
            term,
            total,
            received: SNAPSHOT_HEADER_BYTES as u64,
        };
        incoming.append(SNAPSHOT_HEADER_BYTES as u64, &first[SNAPSHOT_HEADER_BYTES..]).await?;
        Ok(incoming)
    }

    /// The snapshot being received.
    pub fn id(&self) -> (u64, u64) {
        (self.index, self.term)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Writes the chunk at `offset`; chunks must arrive in order, block-aligned (the last one
    /// ends the file).
    pub async fn append(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let bad = |reason: String| StorageError::BadSnapshot { path: self.tmp.clone(), reason };
        if offset != self.received {
            return Err(bad(format!("chunk at offset {offset}, expected {}", self.received)));
        }
        if offset + data.len() as u64 > self.total || (data.len() % BLOCK_BYTES != 0) {
            return Err(bad(format!(
                "chunk of {} bytes at {offset} does not fit the file",
                data.len()
            )));
        }
        if !data.is_empty() {
            write_at(&self.file, &self.tmp, offset, data).await?;
        }
        self.received += data.len() as u64;
        Ok(())
    }

    /// After the last chunk: syncs, validates the whole file (off the executor), renames it
    /// into place, and returns it loaded.
    pub async fn finish(self, cluster: &str, shard: u32) -> Result<Archive> {
        if self.received != self.total {
            return Err(StorageError::BadSnapshot {
                path: self.tmp.clone(),
                reason: format!("ended after {} of {} bytes", self.received, self.total),
            });
        }
        self.file
            .fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync", &self.tmp, e.into()))?;
        if let Ok(file) = Rc::try_unwrap(self.file) {
            let _ = file.close().await;
        }
        let (tmp, dir, cluster) = (self.tmp.clone(), self.dir.clone(), cluster.to_string());
        let (index, term) = (self.index, self.term);
        glommio::executor()
            .spawn_blocking(move || {
                let archive = match Archive::load(&tmp, &cluster, shard) {
                    Ok(archive) => archive,
                    Err(error) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(error);
                    }
                };
                if (archive.meta().index, archive.meta().term) != (index, term) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(StorageError::BadSnapshot {
                        path: tmp,
                        reason: format!(
                            "announced as {index}/{term}, holds {}/{}",
                            archive.meta().index,
                            archive.meta().term
                        ),
                    });
                }
                let path = dir.join(file_name(index, term));
                std::fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
                sync_dir(&dir)?;
                Ok(archive)
            })
            .await
    }

    /// Gives up on the transfer and removes the temporary file.
    pub async fn abort(self) {
        if let Ok(file) = Rc::try_unwrap(self.file) {
            let _ = file.close().await;
        }
        let _ = std::fs::remove_file(&self.tmp);
    }
}
