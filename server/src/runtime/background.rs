//! Work that must not compete with the shard executors: building snapshots and removing old
//! files on threads of their own, at the lowest normal CPU priority (nice 19) and free to run
//! on any of the node's CPUs, so they mostly get the time the executors leave (building a
//! million-key snapshot costs seconds of CPU; done at normal priority it would preempt the
//! executor sharing its core for that long); and freeing replaced state, which must stay on
//! the executor that owns it, in slices ([`free_replaced`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corekv_storage::pacing::spawn_background;
use corekv_storage::snapshot::Archive;
use corekv_storage::state_machine::Replaced;
use futures_channel::oneshot;

/// Runs `work` on a background thread named `name` (lowest priority, any of the node's CPUs);
/// the receiver yields its result (or is cancelled when the thread panicked).
pub(crate) fn run<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<oneshot::Receiver<T>> {
    spawn_background(name.clone(), work)
        .with_context(|| format!("starting the background thread {name}"))
}

/// Keys of an overlay freed in one go (a fraction of a millisecond; 4,096 took 4–8 ms of
/// CPU on a loaded 2-vCPU machine, the keys' memory being long out of cache)...
const FREE_SLICE_KEYS: usize = 1024;

/// ...and the pause after each slice, in which the executor serves requests and I/O.
const FREE_SLICE_PAUSE: Duration = Duration::from_millis(1);

/// Bytes of an archive handed back to the kernel in one go (a quarter of a millisecond or
/// less of unmapping)...
const RELEASE_SLICE_BYTES: usize = 1 << 20;

/// ...and how often to look again whether an archive still shared (a snapshot being sent
/// holds it) has been let go.
const RELEASE_RECHECK: Duration = Duration::from_millis(100);

/// Frees state the core replaced, without stalling requests, on this executor a slice at a
/// time between other tasks, never on another thread: whatever frees it holds a lock the
/// executor needs meanwhile, and a thread that is preempted while holding it leaves the
/// executor waiting for as long as the scheduler keeps it off the CPU. Overlays (two small
/// allocations per key, made by this executor thread) would take this thread's allocator
/// arena lock (a 480 ms stall was measured that way after a one-million-key snapshot);
/// archives (one large buffer) the process's memory-map lock (20–55 ms stalls from a
/// low-priority thread; see [`corekv_storage::snapshot::Release`]).
pub(crate) fn free_replaced(replaced: Vec<Replaced>) {
    let mut overlays = Vec::new();
    let mut archives = Vec::new();
    for r in replaced {
        archives.extend(r.base);
        overlays.extend(r.overlay);
        if let Some(frozen) = r.frozen {
            match Arc::try_unwrap(frozen) {
                Ok(overlay) => overlays.push(overlay),
                // Still shared: whoever holds the last reference frees it.
                Err(shared) => drop(shared),
            }
        }
    }
    for archive in archives {
        glommio::spawn_local(release_archive(archive)).detach();
    }
    overlays.retain(|o| !o.is_empty());
    if overlays.is_empty() {
        return;
    }
    glommio::spawn_local(async move {
        for overlay in overlays {
            let mut freed = 0;
            for entry in overlay {
                drop(entry);
                freed += 1;
                if freed % FREE_SLICE_KEYS == 0 {
                    // A timer, not a yield: the executor polls for I/O before coming back.
                    glommio::timer::sleep(FREE_SLICE_PAUSE).await;
                }
            }
        }
    })
    .detach();
}

/// Hands an archive's memory back a slice at a time once nothing else holds it. Whoever else
/// holds it (a snapshot being sent, or built on top of it) lets go with a decrement; the last
/// reference, and the freeing, stay here.
async fn release_archive(mut archive: Arc<Archive>) {
    let mut release = loop {
        match Arc::try_unwrap(archive) {
            Ok(owned) => break owned.release(),
            Err(shared) => {
                archive = shared;
                glommio::timer::sleep(RELEASE_RECHECK).await;
            }
        }
    };
    while release.step(RELEASE_SLICE_BYTES) {
        // A timer, not a yield: the executor polls for I/O before coming back.
        glommio::timer::sleep(FREE_SLICE_PAUSE).await;
    }
}
