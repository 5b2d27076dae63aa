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
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

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

/// The CPUs background threads may run on: the node's, recorded at start-up by
/// [`set_background_cpus`]. Unset, they stay where they were started.
static BACKGROUND_CPUS: OnceLock<Vec<usize>> = OnceLock::new();

/// Records the CPUs the node may use (its affinity mask at start-up). Background threads run
/// on any of them instead of the one core of the executor that started them, so they take
/// whatever time any core leaves idle. The first call wins.
pub fn set_background_cpus(cpus: Vec<usize>) {
    let _ = BACKGROUND_CPUS.set(cpus);
}

/// Makes the calling thread a background thread: the lowest normal CPU priority (nice 19), on
/// any of the node's CPUs ([`set_background_cpus`]). When a core is busy such a thread gets a
/// small share of it, but is still scheduled within milliseconds. Not `SCHED_IDLE`: such a
/// thread can wait off the CPU for hundreds of milliseconds while holding a lock the executors
/// need (the allocator's arena lock, the process's memory map lock during `munmap`), and the
/// executors wait with it; that priority inversion was measured as 0.5–1 s stalls.
pub fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread, `set` a plain bit set; a failure
    // leaves the priority or the affinity as it was.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        if let Some(cpus) = BACKGROUND_CPUS.get().filter(|cpus| !cpus.is_empty()) {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Runs `work` on a new background thread ([`lower_thread_priority`]) named `name`; the
/// receiver yields its result, or is cancelled when the thread panicked.
pub fn spawn_background<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<oneshot::Receiver<T>> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        lower_thread_priority();
        let _ = done.send(work());
    })?;
    Ok(result)
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
    let spawned = spawn_background("remove-files".to_string(), move || {
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
