//! A WAL directory on a real file system: segment files, spares, and the blocking operations
//! around them (prepare, activate, retire, read). The hot-path writes go through the server's
//! O_DIRECT flusher (`corekv_server::runtime::disk`); this module does what happens once per segment, at start-up, or in
//! tools and tests, where blocking `std::fs` calls are fine.
//!
//! Segment preparation writes the whole file (header block with sequence number 0, then zeros)
//! and syncs it before it is renamed into place, so that:
//! - later WAL writes only ever overwrite blocks that were written before (DESIGN.md §9: writes
//!   into never-written blocks cost several ms per fdatasync on some disks);
//! - the first block of every file glommio opens with DMA holds real, synced data, which keeps
//!   glommio's polled-I/O probe honest (DESIGN.md §9).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::constants::{
    BACKGROUND_SYNC_EVERY_BYTES, BACKGROUND_WRITE_BYTES_PER_SEC, BACKGROUND_WRITE_CHUNK_BYTES,
    BLOCK_BYTES, RECYCLED_SEGMENTS_MAX, SPARE_SEGMENTS,
};
use crate::error::{Result, StorageError};
use crate::pacing::Pacer;
use crate::wal::format::{
    encode_segment_header, parse_segment_file_name, segment_file_name, SegmentHeader,
    SegmentIdentity, SPARE_PREFIX,
};
use crate::wal::recovery::{Recovered, SegmentSource};
use crate::wal::writer::FlushJob;

/// Name suffix of a retired segment being removed in the background.
const TRASH_SUFFIX: &str = ".wal.removing";

/// Distinguishes spare file names made by one process.
static SPARE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One shard's WAL directory.
#[derive(Debug, Clone)]
pub struct SegmentDir {
    dir: PathBuf,
    identity: SegmentIdentity,
    segment_bytes: u64,
    /// Whether spares are written whole (see [`SegmentDir::sparse`]).
    preallocate: bool,
}

impl SegmentDir {
    /// Opens (creating if needed) the WAL directory `dir`, and removes files a crash left
    /// half-made (`*.tmp`).
    pub fn open(
        dir: impl Into<PathBuf>,
        identity: SegmentIdentity,
        segment_bytes: u64,
    ) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        let this = SegmentDir { dir, identity, segment_bytes, preallocate: true };
        for entry in this.read_dir()? {
            if entry.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&entry).map_err(|e| StorageError::io("remove", &entry, e))?;
            }
        }
        // Spares of another size (prepared before a size change) cannot be activated.
        crate::pacing::remove_files_in_background(this.trash()?);
        for spare in this.spares()? {
            let len = fs::metadata(&spare).map_err(|e| StorageError::io("stat", &spare, e))?.len();
            if len != segment_bytes {
                fs::remove_file(&spare).map_err(|e| StorageError::io("remove", &spare, e))?;
            }
        }
        if let Some(&seq) = this.list()?.first() {
            let path = this.segment_path(seq);
            let len = fs::metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?.len();
            if len != segment_bytes {
                return Err(StorageError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "segment is {len} bytes but the WAL is configured for {segment_bytes}-byte \
                         segments; keep the segment size the WAL was created with"
                    ),
                });
            }
        }
        Ok(this)
    }

    /// Has spares made as sparse files (a real header block, the rest a hole) instead of
    /// written whole. For a log off the commit path (the watch history): its flushes may pay
    /// for writing into never-written blocks, and writing every segment twice would double
    /// the disk bandwidth it takes from the WAL while it grows.
    pub fn sparse(mut self) -> Self {
        self.preallocate = false;
        self
    }

    /// The directory.
    pub fn wal_dir(&self) -> &Path {
        &self.dir
    }

    /// Owner of the segments.
    pub fn identity(&self) -> &SegmentIdentity {
        &self.identity
    }

    /// Size of each segment file.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The path of segment `seq`.
    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_file_name(seq))
    }

    fn read_dir(&self) -> Result<Vec<PathBuf>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| StorageError::io("read directory", &self.dir, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read directory", &self.dir, e))?;
            paths.push(entry.path());
        }
        paths.sort();
        Ok(paths)
    }

    /// Prepared spare segments, ready to be activated.
    pub fn spares(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .read_dir()?
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SPARE_PREFIX) && n.ends_with(".wal"))
            })
            .collect())
    }

    /// Prepares spare segments ([`SegmentDir::prepare_spare`]) until [`SPARE_SEGMENTS`] are
    /// ready. Blocking.
    pub fn prepare_spares(&self) -> Result<()> {
        while self.spares()?.len() < SPARE_SEGMENTS {
            self.prepare_spare()?;
        }
        Ok(())
    }

    /// Writes a new spare segment in full, syncs it and renames it into place. Blocking; call it
    /// off the hot path. Paced to [`BACKGROUND_WRITE_BYTES_PER_SEC`] and synced every
    /// [`BACKGROUND_SYNC_EVERY_BYTES`], so preparing a segment does not stall WAL flushes.
    pub fn prepare_spare(&self) -> Result<PathBuf> {
        self.prepare_spare_at(Some(BACKGROUND_WRITE_BYTES_PER_SEC))
    }

    /// [`SegmentDir::prepare_spare`] at full speed or paced to `rate` bytes per second.
    fn prepare_spare_at(&self, rate: Option<u64>) -> Result<PathBuf> {
        let n = SPARE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{SPARE_PREFIX}{}-{n}.wal", std::process::id());
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(name);
        let mut file = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        let header = encode_segment_header(&SegmentHeader {
            identity: self.identity.clone(),
            seq: 0,
            segment_bytes: self.segment_bytes,
        });
        file.write_all(&header).map_err(|e| StorageError::io("write", &tmp, e))?;
        if !self.preallocate {
            file.set_len(self.segment_bytes).map_err(|e| StorageError::io("truncate", &tmp, e))?;
            file.sync_all().map_err(|e| StorageError::io("fsync", &tmp, e))?;
            drop(file);
            fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
            self.sync_dir()?;
            return Ok(path);
        }
        let zeros = vec![0u8; BACKGROUND_WRITE_CHUNK_BYTES];
        let mut written = header.len() as u64;
        let mut pacer = rate.map(Pacer::new);
        while written < self.segment_bytes {
            let n = (self.segment_bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n]).map_err(|e| StorageError::io("write", &tmp, e))?;
            written += n as u64;
            if written % BACKGROUND_SYNC_EVERY_BYTES < n as u64 {
                file.sync_data().map_err(|e| StorageError::io("fdatasync", &tmp, e))?;
            }
            if let Some(pacer) = &mut pacer {
                std::thread::sleep(pacer.wrote(n as u64));
            }
        }
        file.sync_all().map_err(|e| StorageError::io("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
        self.sync_dir()?;
        Ok(path)
    }

    /// Makes segment `seq` exist: a no-op when it does, else a spare is renamed to it (one is
    /// prepared on the spot when none is ready, which is slow and logged).
    pub fn activate(&self, seq: u64) -> Result<PathBuf> {
        let path = self.segment_path(seq);
        if path.exists() {
            return Ok(path);
        }
        let spare = match self.spares()?.into_iter().next() {
            Some(spare) => spare,
            None => {
                tracing::warn!(dir = %self.dir.display(), seq, "no spare WAL segment ready; preparing one on the write path");
                self.prepare_spare_at(None)?
            }
        };
        fs::rename(&spare, &path).map_err(|e| StorageError::io("rename", &spare, e))?;
        self.sync_dir()?;
        Ok(path)
    }

    /// Takes segment `seq` out of the log: keeps the file as a spare while fewer than
    /// [`RECYCLED_SEGMENTS_MAX`] spares exist (its old records fail their checksums under a new
    /// sequence number), else renames it aside and removes it a slice at a time in the
    /// background ([`crate::pacing::remove_file_paced`]).
    pub fn retire(&self, seq: u64) -> Result<()> {
        let path = self.segment_path(seq);
        let recycle = self.spares()?.len() < RECYCLED_SEGMENTS_MAX;
        let renamed = if recycle {
            self.dir.join(format!("{SPARE_PREFIX}recycled-{seq}.wal"))
        } else {
            self.dir.join(format!("{seq:020}{TRASH_SUFFIX}"))
        };
        fs::rename(&path, &renamed).map_err(|e| StorageError::io("rename", &path, e))?;
        self.sync_dir()?;
        if !recycle {
            crate::pacing::remove_files_in_background(vec![renamed]);
        }
        Ok(())
    }

    /// Segments retired but not yet removed when the process stopped.
    fn trash(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .read_dir()?
            .into_iter()
            .filter(|p| p.to_str().is_some_and(|n| n.ends_with(TRASH_SUFFIX)))
            .collect())
    }

    /// Makes the cut that a [`RecoveryMode::Repair`] recovery decided durable on disk: zeroes
    /// the damaged segment from the cut to its end and deletes the segments after it. Without
    /// this, the records left behind the cut would make the next strict recovery refuse again.
    ///
    /// [`RecoveryMode::Repair`]: crate::wal::RecoveryMode::Repair
    pub fn apply_repair(&self, recovered: &Recovered) -> Result<()> {
        if let Some(cut) = &recovered.truncated {
            let path = self.segment_path(cut.at.seq);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("open", &path, e))?;
            let zeros = vec![0u8; BACKGROUND_WRITE_CHUNK_BYTES];
            let mut offset = cut.at.offset;
            while offset < self.segment_bytes {
                let n = (self.segment_bytes - offset).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], offset)
                    .map_err(|e| StorageError::io("write", &path, e))?;
                offset += n as u64;
            }
            file.sync_data().map_err(|e| StorageError::io("fdatasync", &path, e))?;
        }
        for &seq in &recovered.discarded_segments {
            self.remove(seq)?;
        }
        Ok(())
    }

    /// Deletes segment `seq` outright (repair of a damaged log).
    pub fn remove(&self, seq: u64) -> Result<()> {
        let path = self.segment_path(seq);
        fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
        self.sync_dir()
    }

    /// Bytes of all segment and spare files in the directory.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for path in self.read_dir()? {
            let meta = fs::metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?;
            total += meta.len();
        }
        Ok(total)
    }

    /// Makes renames and removals in the directory durable.
    pub fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io("fsync directory", &self.dir, e))
    }
}

impl SegmentSource for SegmentDir {
    fn list(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = self
            .read_dir()?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(parse_segment_file_name))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn read_segment(&self, seq: u64) -> Result<Vec<u8>> {
        let path = self.segment_path(seq);
        fs::read(&path).map_err(|e| StorageError::io("read", &path, e))
    }

    fn read_at(&self, seq: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.segment_path(seq);
        let file = File::open(&path).map_err(|e| StorageError::io("open", &path, e))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| StorageError::io("read", &path, e))?;
        Ok(buf)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.segment_path(seq)
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// Runs flush jobs with blocking `std::fs` calls: `pwrite` then `fdatasync` per segment. Used by
/// tools (repair, inspection) and tests; the server uses its O_DIRECT `DmaFlusher`.
#[derive(Debug)]
pub struct StdFlusher {
    dir: SegmentDir,
    /// The segment file written last, kept open.
    open: Option<(u64, File)>,
}

impl StdFlusher {
    /// A flusher for the segments of `dir`.
    pub fn new(dir: SegmentDir) -> Self {
        StdFlusher { dir, open: None }
    }

    /// The directory it writes to.
    pub fn dir(&self) -> &SegmentDir {
        &self.dir
    }

    /// Runs every write of `job` in order, syncing each segment after its write.
    pub fn run(&mut self, job: &FlushJob) -> Result<()> {
        for write in &job.writes {
            debug_assert_eq!(write.offset % BLOCK_BYTES as u64, 0);
            if write.activate {
                self.dir.activate(write.seq)?;
            }
            let path = self.dir.segment_path(write.seq);
            if self.open.as_ref().map(|(seq, _)| *seq) != Some(write.seq) {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StorageError::io("open", &path, e))?;
                self.open = Some((write.seq, file));
            }
            let (_, file) = self.open.as_ref().expect("opened above");
            file.write_all_at(&write.bytes, write.offset)
                .map_err(|e| StorageError::io("write", &path, e))?;
            file.sync_data().map_err(|e| StorageError::io("fdatasync", &path, e))?;
        }
        Ok(())
    }
}
