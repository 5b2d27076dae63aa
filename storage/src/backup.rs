//! Backup directories: a consistent copy of a whole cluster, one snapshot file per shard,
//! each the shard leader's snapshot file byte for byte, and a manifest that names them.
//!
//! ```text
//! DIR/manifest.json      format, cluster, shard count, when, and per shard: its file, the
//!                        log index and term it covers, its size, a crc32c of the whole file,
//!                        its key count and the node that sent it
//! DIR/shard-S.snap       shard S's snapshot (the format of `snapshot`, with its own header
//!                        crc and payload crc)
//! ```
//!
//! Every file is written under a temporary name (`*.partial`), synced, and renamed into
//! place (`corekvctl` renames the shard files once every shard is in); the manifest last. A directory without a manifest is a backup that did not finish
//! and is refused as such; a shard file whose size or crc32c differs from the manifest's, or
//! that does not load as a snapshot of the manifest's cluster, shard, index and term, is
//! refused with its path and the reason.
//!
//! The per-shard indexes are the backup's cursor: a watch from `index + 1` of each shard on
//! the cluster it was taken from continues exactly where the backup stands.

use std::io::Write;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::snapshot::{Archive, Overlay, SnapshotMeta};
use corekv_types::membership::Membership;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the backup layout this build writes; a manifest of another is refused by name.
pub const BACKUP_FORMAT_VERSION: u32 = 1;

/// Suffix of a file being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BACKUP_FORMAT_VERSION`] when written.
    pub format: u32,
    /// The cluster it was taken from.
    pub cluster: String,
    /// Its shard count: a restored cluster has the same.
    pub shards: u32,
    /// When the backup finished, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// One per shard, by shard.
    pub files: Vec<ShardFile>,
}

/// One shard's file in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    /// The shard.
    pub shard: u32,
    /// The file's name in the backup directory.
    pub file: String,
    /// The last log index the snapshot covers (the shard's place in the backup's cursor).
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The file's size.
    pub bytes: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
    /// Keys in the snapshot.
    pub keys: u64,
    /// The node that sent it (the shard's leader then).
    pub node: u64,
}

impl Manifest {
    /// The backup's cursor: per shard, the last log index it covers.
    pub fn cursor(&self) -> Vec<u64> {
        self.files.iter().map(|f| f.index).collect()
    }
}

/// The name of shard `shard`'s file in a backup.
pub fn shard_file_name(shard: u32) -> String {
    format!("shard-{shard}.snap")
}

fn bad(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::BadBackup { path: path.to_path_buf(), reason: reason.into() }
}

/// Writes `bytes` to `dir/name` under a temporary name, syncs it, renames it into place and
/// syncs the directory: a file with the final name is always whole.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
    write_synced(&dir.join(name), &partial, bytes)
}

/// Writes `bytes` to `temp`, syncs it, and renames it to `path` (see [`finish_file`]).
pub fn write_synced(path: &Path, temp: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(temp).map_err(|e| StorageError::io("create", temp, e))?;
    file.write_all(bytes).map_err(|e| StorageError::io("write", temp, e))?;
    file.sync_all().map_err(|e| StorageError::io("fsync", temp, e))?;
    drop(file);
    finish_file(temp, path)
}

/// Renames a synced temporary file into place and syncs its directory.
pub fn finish_file(partial: &Path, path: &Path) -> Result<()> {
    std::fs::rename(partial, path).map_err(|e| StorageError::io("rename", partial, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Writes the manifest, last: its presence says the backup is complete.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    json.push(b'\n');
    write_file(dir, MANIFEST_FILE, &json)
}

/// Reads and checks the manifest of the backup in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(
                &path,
                "missing: not a backup, or one that did not finish (a backup writes its \
                 manifest last)",
            ))
        }
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| bad(&path, format!("does not parse: {e}")))?;
    if manifest.format != BACKUP_FORMAT_VERSION {
        return Err(bad(
            &path,
            format!(
                "backup format {} (this build reads format {BACKUP_FORMAT_VERSION})",
                manifest.format
            ),
        ));
    }
    let by_shard = manifest.files.iter().enumerate().all(|(i, f)| f.shard == i as u32);
    if manifest.shards == 0 || manifest.files.len() != manifest.shards as usize || !by_shard {
        return Err(bad(
            &path,
            format!(
                "names {} files for {} shards: one per shard, in shard order, is expected",
                manifest.files.len(),
                manifest.shards
            ),
        ));
    }
    if let Some(f) = manifest.files.iter().find(|f| f.file != shard_file_name(f.shard)) {
        return Err(bad(&path, format!("shard {} has file {:?}", f.shard, f.file)));
    }
    Ok(manifest)
}

/// Reads shard `entry`'s file from the backup of cluster `cluster` in `dir` and checks it
/// against its manifest entry: its size, its crc32c, and that it loads as a snapshot of that
/// cluster, shard, index and term (the snapshot's own checks: header crc, payload crc,
/// archive validation).
pub fn load_shard(dir: &Path, cluster: &str, entry: &ShardFile) -> Result<Archive> {
    use std::io::Read;
    let path = dir.join(&entry.file);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(&path, "missing (the manifest names it)"))
        }
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let len = file.metadata().map_err(|e| StorageError::io("stat", &path, e))?.len();
    if len != entry.bytes {
        return Err(bad(
            &path,
            format!("{len} bytes, the manifest says {} (truncated or overwritten)", entry.bytes),
        ));
    }
    let mut bytes = AlignedVec::with_capacity(len as usize);
    bytes.resize(len as usize, 0);
    file.read_exact(&mut bytes).map_err(|e| StorageError::io("read", &path, e))?;
    let crc = crc32c::crc32c(&bytes);
    if crc != entry.crc32c {
        return Err(bad(
            &path,
            format!("checksum mismatch (manifest {:#010x}, file {crc:#010x})", entry.crc32c),
        ));
    }
    let archive = Archive::from_file_image(bytes, &path, Some((cluster, entry.shard)))
        .map_err(|e| bad(&path, e.to_string()))?;
    let meta = archive.meta();
    if (meta.index, meta.term) != (entry.index, entry.term) {
        return Err(bad(
            &path,
            format!(
                "covers index {} term {}, the manifest says index {} term {}",
                meta.index, meta.term, entry.index, entry.term
            ),
        ));
    }
    Ok(archive)
}

/// A shard's snapshot from a backup, made over for a new cluster: the same keys, values,
/// metadata, deadlines, leases, index and term, under the new cluster's name and with
/// `membership` (the new cluster's first voters).
pub fn rebuild_for_cluster(
    archive: &Archive,
    cluster: &str,
    membership: &Membership,
) -> Result<Archive> {
    let old = archive.meta();
    let meta = SnapshotMeta {
        cluster: cluster.to_string(),
        shard: old.shard,
        index: old.index,
        term: old.term,
    };
    let empty = Overlay::new();
    Archive::build(meta, membership, Some(archive), &empty, archive.clock_ms(), archive.leases())
}

/// Files in `dir` that a backup did not finish writing.
pub fn partial_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("read directory", dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
