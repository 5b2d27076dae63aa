//! Snapshot files: a shard's whole state — every key with its value and metadata, the applied
//! index and term, the shard's membership (raft configuration and member addresses) —
//! archived with rkyv and read in place.
//!
//! ```text
//! DATA_DIR/shard-S/snap/{index:020}-{term:020}.snap
//!
//!  0          8        12       16           24          32            40        44
//!  +----------+--------+--------+------------+-----------+-------------+---------+--------+-
//!  | magic    |version | shard  | index u64  | term u64  | payload len | payload | name   |
//!  | 8 bytes  | u32    | u32    |            |           | u64         | crc32c  | len u16|
//!  +----------+--------+--------+------------+-----------+-------------+---------+--------+-
//!   46                      302        306                    4096            4096 + payload len
//!  -+-----------------------+----------+--- zero ---+ ... rkyv archive ... + zero padding to
//!   | cluster name (<= 256) |header crc|            |   (root at the end)  | a 4096 multiple
//!  -+-----------------------+----------+------------+----------------------+
//! ```
//!
//! The payload is an rkyv archive of [`SnapshotData`]; its entries are sorted by key, so reads
//! binary-search the archive where it lies in memory — loading a snapshot is one read of the
//! file, a crc32c over it and rkyv's validation (`bytecheck`), never a deserialization pass.
//! The header block keeps the payload 4096-aligned for direct I/O and rkyv alike.
//!
//! Format versions: 4 adds the leases (each lease's id, time to live and deadline; the keys
//! attached to one as `(position, lease)` beside the entries, like the deadlines) and the
//! counter of the last lease granted; 3 adds the keys' deadlines (a list of `(position, expires_ms)` beside the
//! entries, sorted by position: keys without one cost nothing) and the state machine's clock
//! (the largest batch stamp applied); 2 recorded the membership ([`Membership::encode`]); 1
//! the voters only (a cluster of fixed shape). Versions 1 to 3 are still read (no leases; 1
//! and 2 without deadlines, with a clock of 0), version 1's member addresses left for the caller to take from the registry.
//! A file of a newer version is refused by name.
//!
//! Files are written whole under a temporary name, synced, and renamed into place (by the
//! server's `runtime::disk::write_snapshot_file`, with direct I/O), so a file with the final
//! name is always complete; a damaged one is refused on load with its path and the reason.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::with::InlineAsBox;
use rkyv::{Archive as RkyvArchive, Serialize};

use crate::constants::BLOCK_BYTES;
use crate::error::{Result, StorageError};
use crate::key::Key;
use crate::lease::LeaseTable;
use crate::value::{Record, ValueRef};
use corekv_types::ids::NodeId;
use corekv_types::membership::Membership;
use corekv_types::meta::KeyMeta;

mod files;
mod release;

pub use files::{file_name, list, parse_file_name, prune, remove_temp_files};
use files::{read_header, write_header};
use release::free_entries_gradually;
#[cfg(test)]
use release::page_bytes;
pub use release::Release;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CKVSNAP\x01";

/// Version of the layout this build writes.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 4;

/// Oldest version this build reads.
pub const SNAPSHOT_FORMAT_OLDEST: u32 = 1;

/// Bytes before the payload.
pub const SNAPSHOT_HEADER_BYTES: usize = BLOCK_BYTES;

/// Changes layered over a snapshot: a value, or `None` for a deleted key.
pub type Overlay = BTreeMap<Key, Option<Record>>;

/// One key of a snapshot, borrowed from wherever the state lives while it is written.
#[derive(RkyvArchive, Serialize)]
#[rkyv(bytecheck())]
pub struct SnapshotEntry<'a> {
    /// The key.
    #[rkyv(with = InlineAsBox)]
    pub key: &'a [u8],
    /// The value.
    #[rkyv(with = InlineAsBox)]
    pub value: &'a [u8],
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the write that last changed it.
    pub mod_index: u64,
    /// Writes since it was created.
    pub version: u64,
}

/// A key's deadline in a snapshot.
#[derive(RkyvArchive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(bytecheck())]
pub struct SnapshotTimer {
    /// The key's position among the entries.
    pub position: u64,
    /// Its deadline (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// A lease in a snapshot.
#[derive(RkyvArchive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(bytecheck())]
pub struct SnapshotLease {
    /// Its id.
    pub id: u64,
    /// The time to live it was granted, ms.
    pub ttl_ms: u64,
    /// Its deadline (ms since the Unix epoch).
    pub deadline_ms: u64,
}

/// A key attached to a lease, in a snapshot.
#[derive(RkyvArchive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(bytecheck())]
pub struct SnapshotLeaseKey {
    /// The key's position among the entries.
    pub position: u64,
    /// The lease's id.
    pub lease: u64,
}

/// A whole shard state, as archived (format version 4).
#[derive(RkyvArchive, Serialize)]
#[rkyv(bytecheck())]
pub struct SnapshotData<'a> {
    /// Last log index the state includes.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// The membership as of `applied_index` ([`Membership::encode`]).
    pub membership: Vec<u8>,
    /// Every key, sorted.
    pub entries: Vec<SnapshotEntry<'a>>,
    /// The state machine's clock: the largest batch stamp applied (ms since the Unix epoch).
    pub clock_ms: u64,
    /// The deadlines of the keys that have one, by ascending position.
    pub timers: Vec<SnapshotTimer>,
    /// The counter of the last lease granted.
    pub last_lease: u64,
    /// Every lease, by id.
    pub leases: Vec<SnapshotLease>,
    /// The keys attached to a lease, by ascending position.
    pub lease_keys: Vec<SnapshotLeaseKey>,
}

/// A whole shard state in format version 3: no leases.
#[derive(RkyvArchive, Serialize)]
#[rkyv(bytecheck())]
pub struct SnapshotDataV3<'a> {
    /// Last log index the state includes.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// The membership as of `applied_index` ([`Membership::encode`]).
    pub membership: Vec<u8>,
    /// Every key, sorted.
    pub entries: Vec<SnapshotEntry<'a>>,
    /// The state machine's clock: the largest batch stamp applied (ms since the Unix epoch).
    pub clock_ms: u64,
    /// The deadlines of the keys that have one, by ascending position.
    pub timers: Vec<SnapshotTimer>,
}

/// A whole shard state in format version 2: no deadlines, no clock.
#[derive(RkyvArchive, Serialize)]
#[rkyv(bytecheck())]
pub struct SnapshotDataV2<'a> {
    /// Last log index the state includes.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// The membership as of `applied_index` ([`Membership::encode`]).
    pub membership: Vec<u8>,
    /// Every key, sorted.
    pub entries: Vec<SnapshotEntry<'a>>,
}

/// A whole shard state in format version 1: the voters instead of the membership.
#[derive(RkyvArchive, Serialize)]
#[rkyv(bytecheck())]
pub struct SnapshotDataV1<'a> {
    /// Last log index the state includes.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// Raft voters.
    pub voters: Vec<u64>,
    /// Every key, sorted.
    pub entries: Vec<SnapshotEntry<'a>>,
}

type ArchivedEntries = rkyv::vec::ArchivedVec<ArchivedSnapshotEntry<'static>>;

type ArchivedTimers = [ArchivedSnapshotTimer];

/// Who a snapshot belongs to and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Cluster name.
    pub cluster: String,
    /// Shard index.
    pub shard: u32,
    /// Last log index included.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// A validated snapshot in memory: the whole file, read in place.
pub struct Archive {
    bytes: AlignedVec,
    payload_len: usize,
    meta: SnapshotMeta,
    /// The format version of the file.
    version: u32,
    /// The membership it records, decoded when the file was validated.
    membership: Membership,
    /// The state machine's clock it records (0 before version 3).
    clock_ms: u64,
    /// The leases it records (none before version 4).
    leases: LeaseTable,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("meta", &self.meta).field("keys", &self.len()).finish()
    }
}

fn meta_of(entry: &ArchivedSnapshotEntry<'_>) -> KeyMeta {
    KeyMeta {
        create_index: entry.create_index.to_native(),
        mod_index: entry.mod_index.to_native(),
        version: entry.version.to_native(),
    }
}

impl Archive {
    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The whole file image (header, payload, padding).
    pub fn file_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn entries(&self) -> &ArchivedEntries {
        let payload = &self.bytes[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + self.payload_len];
        // SAFETY: the payload was validated by `rkyv::access`, as the type of its format
        // version, when this Archive was made (`from_file_image`), and the bytes are never
        // changed afterwards.
        unsafe {
            match self.version {
                1 => &rkyv::access_unchecked::<ArchivedSnapshotDataV1<'static>>(payload).entries,
                2 => &rkyv::access_unchecked::<ArchivedSnapshotDataV2<'static>>(payload).entries,
                3 => &rkyv::access_unchecked::<ArchivedSnapshotDataV3<'static>>(payload).entries,
                _ => &rkyv::access_unchecked::<ArchivedSnapshotData<'static>>(payload).entries,
            }
        }
    }

    /// The deadlines of the keys that have one, by ascending position.
    fn timers(&self) -> &ArchivedTimers {
        if self.version < 3 {
            return &[];
        }
        let payload = &self.bytes[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + self.payload_len];
        // SAFETY: as in `entries`: validated as this version's type, never changed since.
        unsafe {
            match self.version {
                3 => &rkyv::access_unchecked::<ArchivedSnapshotDataV3<'static>>(payload).timers,
                _ => &rkyv::access_unchecked::<ArchivedSnapshotData<'static>>(payload).timers,
            }
        }
    }

    /// The deadline of the key at position `i`; 0: none.
    fn expires_at(&self, i: usize) -> u64 {
        let timers = self.timers();
        if timers.is_empty() {
            return 0;
        }
        match timers.binary_search_by(|t| t.position.to_native().cmp(&(i as u64))) {
            Ok(t) => timers[t].expires_ms.to_native(),
            Err(_) => 0,
        }
    }

    /// The keys that have a deadline, with it, in key order.
    pub fn deadlines(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        let entries = self.entries();
        self.timers().iter().map(move |t| {
            let position = t.position.to_native() as usize;
            (entries[position].key.get(), t.expires_ms.to_native())
        })
    }

    /// The state machine's clock the snapshot records (ms since the Unix epoch; 0 from a file
    /// older than format version 3).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The leases the snapshot records (none from a file older than format version 4).
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The membership the snapshot records, as of its index. From a version 1 file, the
    /// voters only: their addresses are the registry's.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The file's format version.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether the snapshot holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives the archive up for freeing a slice at a time; see [`Release`].
    pub fn release(self) -> Release {
        Release::new(self.bytes)
    }

    /// Bytes of keys and values.
    pub fn data_bytes(&self) -> usize {
        self.entries().iter().map(|e| e.key.len() + e.value.len()).sum()
    }

    /// The entry at position `i` (in key order).
    pub fn entry(&self, i: usize) -> (&[u8], ValueRef<'_>) {
        let e = &self.entries()[i];
        let value =
            ValueRef { value: e.value.get(), meta: meta_of(e), expires_ms: self.expires_at(i) };
        (e.key.get(), value)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Option<ValueRef<'_>> {
        let entries = &self.entries();
        let i = entries.binary_search_by(|e| e.key.get().cmp(key)).ok()?;
        Some(self.entry(i).1)
    }

    /// Position of the first key not below `bound`.
    pub fn lower_bound(&self, bound: Bound<&[u8]>) -> usize {
        let entries = &self.entries();
        match bound {
            Bound::Unbounded => 0,
            Bound::Included(k) => entries.partition_point(|e| e.key.get() < k),
            Bound::Excluded(k) => entries.partition_point(|e| e.key.get() <= k),
        }
    }

    /// Builds the file image of a snapshot merging `base` (an older snapshot, if any) with
    /// `overlay` (newer changes win; `None` deletes), with the state machine's clock and
    /// leases, and validates it. Runs off the shard's thread: it touches every key.
    pub fn build(
        meta: SnapshotMeta,
        membership: &Membership,
        base: Option<&Archive>,
        overlay: &Overlay,
        clock_ms: u64,
        leases: &LeaseTable,
    ) -> Result<Archive> {
        let mut entries: Vec<SnapshotEntry<'_>> =
            Vec::with_capacity(base.map_or(0, Archive::len) + overlay.len());
        let mut timers = Vec::new();
        let mut lease_keys = Vec::new();
        let mut note_lease = |position: usize, key: &[u8]| {
            if let Some(lease) = leases.lease_of(key) {
                lease_keys.push(SnapshotLeaseKey { position: position as u64, lease });
            }
        };
        let mut from_base =
            (0..base.map_or(0, Archive::len)).map(|i| base.expect("len > 0").entry(i)).peekable();
        let mut from_overlay = overlay.iter().peekable();
        loop {
            let order = match (from_base.peek(), from_overlay.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((bk, _)), Some((ok, _))) => (*bk).cmp(ok.as_ref()),
            };
            if order == std::cmp::Ordering::Less {
                let (key, v) = from_base.next().expect("peeked");
                note_lease(entries.len(), key);
                if v.expires_ms != 0 {
                    let position = entries.len() as u64;
                    timers.push(SnapshotTimer { position, expires_ms: v.expires_ms });
                }
                entries.push(SnapshotEntry {
                    key,
                    value: v.value,
                    create_index: v.meta.create_index,
                    mod_index: v.meta.mod_index,
                    version: v.meta.version,
                });
                continue;
            }
            if order == std::cmp::Ordering::Equal {
                // The overlay's newer version (or deletion) replaces the base's.
                from_base.next();
            }
            let (key, record) = from_overlay.next().expect("peeked");
            if let Some(r) = record {
                note_lease(entries.len(), key);
                if r.expires_ms != 0 {
                    let position = entries.len() as u64;
                    timers.push(SnapshotTimer { position, expires_ms: r.expires_ms });
                }
                entries.push(SnapshotEntry {
                    key,
                    value: &r.value,
                    create_index: r.meta.create_index,
                    mod_index: r.meta.mod_index,
                    version: r.meta.version,
                });
            }
        }
        let data = SnapshotData {
            applied_index: meta.index,
            applied_term: meta.term,
            membership: membership.encode(),
            entries,
            clock_ms,
            timers,
            last_lease: leases.last_counter(),
            leases: leases
                .iter()
                .map(|(id, l)| SnapshotLease { id, ttl_ms: l.ttl_ms, deadline_ms: l.deadline_ms })
                .collect(),
            lease_keys,
        };
        // Sized for the whole image up front: growing a buffer of this size means `mremap`,
        // which holds the process's memory-map lock, and this runs on a low-priority thread
        // that can be preempted while holding it, with the executors waiting (see `Release`).
        let mut writer = AlignedVec::with_capacity(image_capacity(&data));
        writer.resize(SNAPSHOT_HEADER_BYTES, 0);
        let mut bytes =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&data, writer).map_err(|e| {
                StorageError::BadSnapshot {
                    path: PathBuf::from("(new snapshot)"),
                    reason: format!("serializing: {e}"),
                }
            })?;
        free_entries_gradually(data.entries);
        let payload_len = bytes.len() - SNAPSHOT_HEADER_BYTES;
        let padded = bytes.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        bytes.resize(padded, 0);
        let crc =
            crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + payload_len]);
        write_header(&mut bytes[..SNAPSHOT_HEADER_BYTES], &meta, payload_len as u64, crc);
        Archive::from_file_image(bytes, Path::new("(new snapshot)"), None)
    }

    /// Checks a whole file image — header, checksum, rkyv validation — and keeps it.
    /// `expect` names the cluster and shard it must belong to.
    pub fn from_file_image(
        bytes: AlignedVec,
        path: &Path,
        expect: Option<(&str, u32)>,
    ) -> Result<Archive> {
        let bad = |reason: String| StorageError::BadSnapshot { path: path.to_path_buf(), reason };
        let (meta, version, payload_len, crc) = read_header(&bytes).map_err(bad)?;
        if let Some((cluster, shard)) = expect {
            if meta.cluster != cluster || meta.shard != shard {
                return Err(bad(format!(
                    "belongs to cluster {:?} shard {}, expected cluster {cluster:?} shard {shard}",
                    meta.cluster, meta.shard
                )));
            }
        }
        let end = SNAPSHOT_HEADER_BYTES
            .checked_add(payload_len as usize)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                bad(format!("payload of {payload_len} bytes runs past the end of the file"))
            })?;
        let payload = &bytes[SNAPSHOT_HEADER_BYTES..end];
        let computed = crc32c::crc32c(payload);
        if computed != crc {
            return Err(bad(format!(
                "checksum mismatch (stored {crc:#x}, computed {computed:#x})"
            )));
        }
        let invalid = |e: rancor::Error| bad(format!("archive does not validate: {e}"));
        let mut leases = LeaseTable::default();
        let (applied, entries, membership, clock_ms) = if version == 1 {
            let data = rkyv::access::<ArchivedSnapshotDataV1<'static>, rancor::Error>(payload)
                .map_err(invalid)?;
            let mut voters: Vec<NodeId> =
                data.voters.iter().map(|v| NodeId(v.to_native())).collect();
            voters.sort_unstable();
            let membership = Membership { voters, ..Membership::default() };
            (
                (data.applied_index.to_native(), data.applied_term.to_native()),
                &data.entries,
                membership,
                0,
            )
        } else if version == 2 {
            let data = rkyv::access::<ArchivedSnapshotDataV2<'static>, rancor::Error>(payload)
                .map_err(invalid)?;
            let membership = Membership::decode(&data.membership)
                .map_err(|e| bad(format!("its membership does not decode: {e}")))?;
            (
                (data.applied_index.to_native(), data.applied_term.to_native()),
                &data.entries,
                membership,
                0,
            )
        } else if version == 3 {
            let data = rkyv::access::<ArchivedSnapshotDataV3<'static>, rancor::Error>(payload)
                .map_err(invalid)?;
            let membership = Membership::decode(&data.membership)
                .map_err(|e| bad(format!("its membership does not decode: {e}")))?;
            check_timers(&data.timers, data.entries.len()).map_err(bad)?;
            (
                (data.applied_index.to_native(), data.applied_term.to_native()),
                &data.entries,
                membership,
                data.clock_ms.to_native(),
            )
        } else {
            let data = rkyv::access::<ArchivedSnapshotData<'static>, rancor::Error>(payload)
                .map_err(invalid)?;
            let membership = Membership::decode(&data.membership)
                .map_err(|e| bad(format!("its membership does not decode: {e}")))?;
            check_timers(&data.timers, data.entries.len()).map_err(bad)?;
            let keys_ok = data.lease_keys.windows(2).all(|w| w[0].position < w[1].position)
                && data
                    .lease_keys
                    .iter()
                    .all(|k| k.position.to_native() < data.entries.len() as u64);
            let restored = keys_ok
                .then(|| {
                    LeaseTable::restore(
                        data.last_lease.to_native(),
                        data.leases.iter().map(|l| {
                            (l.id.to_native(), l.ttl_ms.to_native(), l.deadline_ms.to_native())
                        }),
                        data.lease_keys.iter().map(|k| {
                            (
                                data.entries[k.position.to_native() as usize].key.get(),
                                k.lease.to_native(),
                            )
                        }),
                    )
                })
                .flatten();
            leases = restored.ok_or_else(|| {
                bad("its lease keys are out of order, out of range or name a missing lease"
                    .to_string())
            })?;
            (
                (data.applied_index.to_native(), data.applied_term.to_native()),
                &data.entries,
                membership,
                data.clock_ms.to_native(),
            )
        };
        if applied != (meta.index, meta.term) {
            return Err(bad("header and archive disagree on the index".to_string()));
        }
        let sorted = entries.windows(2).all(|w| w[0].key.get() < w[1].key.get());
        if !sorted {
            return Err(bad("keys are not in strictly ascending order".to_string()));
        }
        Ok(Archive {
            payload_len: payload_len as usize,
            meta,
            bytes,
            version,
            membership,
            clock_ms,
            leases,
        })
    }

    /// Reads and validates the snapshot file at `path`.
    pub fn load(path: &Path, cluster: &str, shard: u32) -> Result<Archive> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
        let len = file.metadata().map_err(|e| StorageError::io("stat", path, e))?.len() as usize;
        let mut bytes = AlignedVec::with_capacity(len);
        bytes.resize(len, 0);
        file.read_exact(&mut bytes).map_err(|e| StorageError::io("read", path, e))?;
        Archive::from_file_image(bytes, path, Some((cluster, shard)))
    }
}

/// Checks that key deadlines are by ascending position, within the entries, never 0.
fn check_timers(timers: &ArchivedTimers, entries: usize) -> std::result::Result<(), String> {
    let ok = timers.windows(2).all(|w| w[0].position < w[1].position)
        && timers.iter().all(|t| t.position.to_native() < entries as u64 && t.expires_ms != 0);
    if ok {
        Ok(())
    } else {
        Err("its key deadlines are out of order or out of range".to_string())
    }
}

/// Bytes enough for the whole file image of `data`: the header, each entry's key and value
/// and its fixed part (40 bytes; 64 leaves room for alignment), the membership, the root, and
/// the padding to a whole block.
fn image_capacity(data: &SnapshotData<'_>) -> usize {
    let entries = &data.entries;
    let bytes: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
    SNAPSHOT_HEADER_BYTES
        + bytes
        + 64 * (entries.len() + 1)
        + 16 * data.timers.len()
        + 24 * data.leases.len()
        + 16 * data.lease_keys.len()
        + data.membership.len()
        + BLOCK_BYTES
}

#[cfg(test)]
mod tests;
