//! Background disk work that shares the device with the WAL: bulk writes (snapshot files,
//! spare segments) paced to a byte budget per second, and large files removed a slice at a
//! time, on threads of the lowest normal CPU priority.
//!
//! Removing a 150 MB snapshot file in one `unlink` frees all of its blocks in one journal
//! commit; on a file system mounted with `discard` that commit also trims every block, and
//! each WAL fdatasync issued meanwhile waits behind it (tens of milliseconds on the
//! development machine). Truncating [`BACKGROUND_DELETE_STEP_BYTES`] at a time, synced, spreads
//! that work into slices a WAL flush can slip between.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::constants::{BACKGROUND_DELETE_STEP_BYTES, BACKGROUND_WRITE_BYTES_PER_SEC};
use crate::error::{Result, StorageError};

/// Tracks bytes written against a rate; says how long to wait to stay under it.
#[derive(Debug)]
pub struct Pacer {
    started: Instant,
    bytes: u64,
    bytes_per_sec: u64,
}

impl Pacer {
    /// A pacer for `bytes_per_sec`, starting now.
    pub fn new(bytes_per_sec: u64) -> Self {
        Pacer { started: Instant::now(), bytes: 0, bytes_per_sec: bytes_per_sec.max(1) }
    }

    /// Records `bytes` written; returns how long to wait before writing more.
    pub fn wrote(&mut self, bytes: u64) -> Duration {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(self.started.elapsed())
    }
}

/// Gives the calling thread the lowest normal CPU priority (nice 19): when its core is busy it
/// gets a small share of it, but is still scheduled within milliseconds. Not `SCHED_IDLE`:
/// such a thread can wait off the CPU for hundreds of milliseconds while holding a lock the
/// executors need (the allocator's arena lock, the process's memory map lock during `munmap`),
/// and the executors wait with it; that priority inversion was measured as 0.5–1 s stalls.
pub fn lower_thread_priority() {
    // SAFETY: a plain system call on the calling thread; a failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Removes `path` a slice at a time: truncated by [`BACKGROUND_DELETE_STEP_BYTES`], synced,
/// paced to [`BACKGROUND_WRITE_BYTES_PER_SEC`], then unlinked. Blocking. A file already gone
/// is not an error.
pub fn remove_file_paced(path: &Path) -> Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("open", path, e)),
    };
    let mut len = file.metadata().map_err(|e| StorageError::io("stat", path, e))?.len();
    let mut pacer = Pacer::new(BACKGROUND_WRITE_BYTES_PER_SEC);
    while len > BACKGROUND_DELETE_STEP_BYTES {
        len -= BACKGROUND_DELETE_STEP_BYTES;
        file.set_len(len).map_err(|e| StorageError::io("truncate", path, e))?;
        file.sync_all().map_err(|e| StorageError::io("fsync", path, e))?;
        std::thread::sleep(pacer.wrote(BACKGROUND_DELETE_STEP_BYTES));
    }
    drop(file);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StorageError::io("remove", path, e))
        }
        _ => Ok(()),
    }
}

/// Removes `paths` with [`remove_file_paced`] on a low-priority thread of its own; failures
/// are logged (the files are no longer referenced, so nothing depends on them going).
pub fn remove_files_in_background(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new().name("remove-files".to_string()).spawn(move || {
        lower_thread_priority();
        for path in paths {
            if let Err(error) = remove_file_paced(&path) {
                tracing::warn!(%error, "removing an unused file failed");
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no thread to remove unused files on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: a paced removal leaves no file behind, and removing a missing file is no error.
    #[test]
    fn removes_in_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![7u8; 3 * BACKGROUND_DELETE_STEP_BYTES as usize + 5]).unwrap();
        remove_file_paced(&path).unwrap();
        assert!(!path.exists());
        remove_file_paced(&path).unwrap();
    }

    // Shows: writing faster than the rate asks for a wait of the difference.
    #[test]
    fn asks_to_wait_when_ahead() {
        let mut pacer = Pacer::new(1000);
        let wait = pacer.wrote(500);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
