//! Work that must not compete with the shard executors: building snapshots, freeing replaced
//! state, removing old files. Threads of their own run at the lowest normal CPU priority
//! (nice 19), so on a machine where every core runs an executor they mostly get the time the
//! executors leave. Building a million-key snapshot or freeing a 150 MB archive costs from
//! tens of milliseconds to seconds of CPU; done at normal priority it preempts the executor
//! sharing its core for that long.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corekv_storage::pacing::lower_thread_priority;
use corekv_storage::state_machine::Replaced;
use futures_channel::oneshot;

/// Runs `work` on a low-priority thread named `name`; the receiver yields its result (or is
/// cancelled when the thread panicked).
pub(crate) fn run<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<oneshot::Receiver<T>> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            lower_thread_priority();
            let _ = done.send(work());
        })
        .with_context(|| format!("starting the background thread {name}"))?;
    Ok(result)
}

/// Keys of an overlay freed in one go (under a millisecond of work)...
const FREE_SLICE_KEYS: usize = 4096;

/// ...and the pause after each slice, in which the executor serves requests and I/O.
const FREE_SLICE_PAUSE: Duration = Duration::from_millis(1);

/// Frees state the core replaced, without stalling requests. Archives (one large buffer
/// each, returned to the kernel whole) go to a low-priority thread. Overlays (two small
/// allocations per key, made by this executor thread) are freed here, a slice at a time
/// between other tasks: freed from another thread, every `free` would take the lock of this
/// thread's allocator arena, and a low-priority thread preempted while holding it leaves the
/// executor waiting for as long as the scheduler keeps it off the CPU (a 480 ms stall was
/// measured that way after a one-million-key snapshot).
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
    if !archives.is_empty() {
        drop_later(archives);
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

/// Drops `value` on a low-priority thread (on this one when no thread can be started).
pub(crate) fn drop_later<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new().name("drop".to_string()).spawn(move || {
        lower_thread_priority();
        drop(value);
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no thread to free replaced state on; freeing it inline");
    }
}
