//! Handing a snapshot's memory back to the kernel a slice at a time, so that freeing a large
//! archive never holds the process's memory-map lock for long.

use rkyv::util::AlignedVec;

use super::SnapshotEntry;

/// An archive's memory on its way back to the kernel. Freeing a 150 MB buffer in one go
/// (`munmap`) takes the process's memory-map lock for the tens of milliseconds the kernel
/// spends unmapping its pages, and every thread of the process that maps, unmaps or faults in
/// memory meanwhile waits: done on a background thread, that stalled the shard executors for
/// 20–55 ms after each million-key snapshot (measured with the data directories on tmpfs, so
/// no disk in between). [`Release::step`] hands the pages back a slice at a time
/// (`madvise(MADV_DONTNEED)`) for the caller to interleave with other work; freeing the
/// emptied buffer at the end unmaps nothing that is still populated.
pub struct Release {
    pub(super) bytes: AlignedVec,
    released: usize,
}

impl Release {
    /// The release of `bytes`, none handed back yet.
    pub(super) fn new(bytes: AlignedVec) -> Release {
        Release { bytes, released: 0 }
    }

    /// Hands up to `max_bytes` more of the buffer back to the kernel (whole pages inside it
    /// only). Returns whether any is left.
    pub fn step(&mut self, max_bytes: usize) -> bool {
        let (start, capacity) = (self.bytes.as_ptr() as usize, self.bytes.capacity());
        // SAFETY: the buffer is this struct's alone (the archive was consumed), and nothing
        // reads it again.
        unsafe { discard_pages(start, capacity, &mut self.released, max_bytes) }
    }

    /// Bytes handed back so far.
    pub fn released(&self) -> usize {
        self.released
    }
}

/// Hands back to the kernel (`madvise(MADV_DONTNEED)`) up to `max_bytes` more of the whole
/// pages inside the allocation `[start, start + capacity)`, `released` bytes of which were
/// handed back before (it is advanced). Returns whether any is left.
///
/// # Safety
/// The caller owns the allocation and never reads its contents again: the pages read back
/// as zeros. Freeing it afterwards is fine (the allocator writes only its own bookkeeping
/// into a freed buffer, which faults fresh pages in).
unsafe fn discard_pages(
    start: usize,
    capacity: usize,
    released: &mut usize,
    max_bytes: usize,
) -> bool {
    let page = page_bytes();
    // Whole pages only: the ends of the buffer may share a page with other allocations.
    let first = start.next_multiple_of(page);
    let end = (start + capacity) / page * page;
    let from = first + *released;
    if from >= end {
        return false;
    }
    let len = (max_bytes.max(page) / page * page).min(end - from);
    // SAFETY: [from, from + len) is made of whole pages inside the allocation, which the
    // caller owns and never reads again.
    let result = unsafe { libc::madvise(from as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if result != 0 {
        // Nothing lost but the early return of memory: the final free returns it all.
        *released = end - first;
        return false;
    }
    *released += len;
    first + *released < end
}

/// Frees `entries` (tens of megabytes for a million keys) from a background thread without
/// holding the memory-map lock for long: cleared, its pages handed back 1 MiB at a time,
/// yielding between steps, then the emptied buffer freed (see [`Release`] for why).
pub(super) fn free_entries_gradually(mut entries: Vec<SnapshotEntry<'_>>) {
    entries.clear();
    let (start, capacity) =
        (entries.as_ptr() as usize, entries.capacity() * std::mem::size_of::<SnapshotEntry<'_>>());
    let mut released = 0;
    // SAFETY: the vector is ours and empty: nothing reads its buffer before it is freed.
    while unsafe { discard_pages(start, capacity, &mut released, 1 << 20) } {
        std::thread::yield_now();
    }
}

/// The system's page size.
pub(super) fn page_bytes() -> usize {
    // SAFETY: a query without side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096)
}
