//! A node's data directory: its lock, and the identity file that records the cluster shape the
//! data was written under.
//!
//! ```text
//!   DATA_DIR/
//!     LOCK              flock'ed for the life of the process: one node per directory
//!     IDENTITY          cluster name and shard count (written once, before any shard)
//!     RESTORING         only while `corekv restore` writes the directory
//!     shard-S/wal/      the shard's WAL segments
//!     shard-S/snap/     the shard's snapshot files
//! ```
//!
//! Why the identity is checked before anything else: a key's shard is its slot's place among
//! the registry's shards, so data written under 4 shards and served under 2 is still on disk
//! but behind the wrong shard — reads answer "not found" for keys that exist; another
//! cluster's data is no better. So a node refuses a registry that disagrees with its data,
//! before it opens a shard. (The node id is not part of it: the runbook restores a cluster by
//! giving every node a copy of one replica's data directory.)
//!
//! Data directories from before the identity file (no `IDENTITY`, `shard-S` folders present)
//! are checked against what they hold — the `shard-S` folders and the cluster name in the WAL
//! segment headers — and then get the file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use corekv_storage::wal::format::{decode_segment_header, parse_segment_file_name};

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";

/// Present while `corekv restore` writes a data directory (removed when it is done): a
/// directory holding it is refused, since some of its shards may be missing.
pub const RESTORING_FILE: &str = "RESTORING";

/// Version of the identity file's format; a file with another is refused, never guessed at.
const IDENTITY_FORMAT: u32 = 1;

/// Bytes read from a WAL segment to find its header.
const SEGMENT_HEADER_READ_BYTES: u64 = 4096;

/// What a data directory holds: the cluster and shard count it was written under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Format version of the file.
    pub format: u32,
    /// The cluster name of the registry the data was written under.
    pub cluster: String,
    /// Shards per node.
    pub shards: u32,
}

impl Identity {
    /// The identity a node of `cluster` with `shards` shards writes.
    pub fn new(cluster: &str, shards: u32) -> Identity {
        Identity { format: IDENTITY_FORMAT, cluster: cluster.to_string(), shards }
    }

    fn to_toml(&self) -> String {
        // A JSON string is a valid TOML basic string (same escapes; serde_json never writes
        // `\/`), so the name needs no TOML serializer.
        let cluster = serde_json::to_string(&self.cluster).unwrap_or_default();
        format!(
            "# Written by corekv when this data directory was first used; do not edit.\n\
             # The cluster shape its data was written under: corekv refuses to start on this\n\
             # directory with a registry file that says otherwise.\n\
             format = {}\ncluster = {cluster}\nshards = {}\n",
            self.format, self.shards
        )
    }
}

/// The data was written under another cluster shape than the registry describes. `corekv
/// serve` exits with status 2 on it, printing the one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data directory {dir} {what}")]
pub struct ShapeMismatch {
    /// The data directory.
    pub dir: String,
    /// What it holds against what the registry says.
    pub what: String,
}

/// Holds an exclusive lock on the data directory for the life of the process, so two nodes
/// can never write the same WAL.
pub struct DirLock(#[allow(dead_code)] File);

/// Takes the lock of `dir` (created if missing); fails when another process holds it.
pub fn lock(dir: &Path) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    match try_lock(&dir.join("LOCK"))? {
        Some(file) => Ok(DirLock(file)),
        None => bail!("data directory {} is in use by another corekv process", dir.display()),
    }
}

/// Takes an exclusive `flock` on `path` (created if missing): `None` when another process
/// holds it.
pub fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(flock_exclusive(&file).then_some(file))
}

/// Whether another process holds the lock of the data directory `dir` (false when there is
/// no lock file). The lock this takes to find out goes when the file closes, at once.
pub fn is_locked(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join("LOCK")) else { return false };
    !flock_exclusive(&file)
}

/// Takes an exclusive `flock` on `file` without waiting; false when another process holds one.
fn flock_exclusive(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// `(N, DIR/PREFIXN)` for every folder of `dir` named `prefix` and a number, by number; none
/// when `dir` does not exist.
pub fn numbered_folders(dir: &Path, prefix: &str) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        if let (Ok(number), true) = (number.parse::<u64>(), entry.path().is_dir()) {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Checks that the data in `dir` was written under `expected` and, when the directory has no
/// identity file yet, writes it (after checking what the directory holds). Call with the
/// directory locked, before any shard opens its files. A disagreement is a [`ShapeMismatch`]
/// inside the error.
pub fn check_and_record(dir: &Path, expected: &Identity) -> anyhow::Result<()> {
    check(dir, expected)?;
    if !dir.join(IDENTITY_FILE).exists() {
        write_identity(dir, expected)?;
    }
    Ok(())
}

/// Checks, without writing anything, that the data in `dir` (if any) was written under
/// `expected`; a disagreement is a [`ShapeMismatch`] inside the error.
pub fn check(dir: &Path, expected: &Identity) -> anyhow::Result<()> {
    if dir.join(RESTORING_FILE).exists() {
        bail!(
            "data directory {} holds a restore that did not finish (some shards may be \
             missing): remove the directory and run `corekv restore` again",
            dir.display()
        );
    }
    let held = match read_identity(dir)? {
        Some(identity) => identity,
        None => match infer_identity(dir)? {
            Some(inferred) => inferred,
            None => return Ok(()),
        },
    };
    compare(dir, &held, expected)?;
    Ok(())
}

/// The identity file of `dir`, if it has one; an unreadable or malformed one is an error.
pub fn read_identity(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let identity: Identity = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{} is damaged: {}", path.display(), e.message().replace('\n', " "))
    })?;
    if identity.format != IDENTITY_FORMAT {
        bail!(
            "{} has format {}; this corekv reads format {IDENTITY_FORMAT} (a newer corekv wrote \
             it)",
            path.display(),
            identity.format
        );
    }
    Ok(Some(identity))
}

/// What a data directory from before the identity file holds: its shard count from the
/// `shard-S` folders, its cluster name from a WAL segment header. `None` for a directory
/// without shard data (a new node).
fn infer_identity(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let mut shards = numbered_folders(dir, "shard-")?;
    // A shard index is a u32: a folder numbered past it is no shard's.
    shards.retain(|(shard, _)| u32::try_from(*shard).is_ok());
    let Some(&(highest, _)) = shards.last() else { return Ok(None) };
    let cluster = shards.iter().find_map(|(_, path)| wal_cluster_name(&path.join("wal")));
    Ok(Some(Identity {
        format: IDENTITY_FORMAT,
        // Unknown without a readable segment: leave that check to WAL recovery.
        cluster: cluster.unwrap_or_default(),
        shards: highest as u32 + 1,
    }))
}

/// The cluster name in the header of the first WAL segment of `wal_dir` that has a readable
/// one.
fn wal_cluster_name(wal_dir: &Path) -> Option<String> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((parse_segment_file_name(e.file_name().to_str()?)?, e.path())))
        .collect();
    segments.sort();
    segments.into_iter().find_map(|(_, path)| {
        let mut block = Vec::new();
        File::open(path).ok()?.take(SEGMENT_HEADER_READ_BYTES).read_to_end(&mut block).ok()?;
        decode_segment_header(&block).ok().map(|h| h.identity.cluster)
    })
}

/// The mismatch between what `dir` holds and what the registry says, if any. An empty
/// cluster name in `held` means "not recorded".
fn compare(dir: &Path, held: &Identity, expected: &Identity) -> Result<(), ShapeMismatch> {
    let mismatch = |what: String| ShapeMismatch { dir: dir.display().to_string(), what };
    if !held.cluster.is_empty() && held.cluster != expected.cluster {
        return Err(mismatch(format!(
            "holds data of cluster {:?}, but the registry names cluster {:?}",
            held.cluster, expected.cluster
        )));
    }
    if held.shards != expected.shards {
        return Err(mismatch(format!(
            "holds data written with {} shards, but the registry says shards = {} (a key's shard \
             depends on the count: serving it would hide keys; use the registry the data was \
             written with)",
            held.shards, expected.shards
        )));
    }
    Ok(())
}

/// Writes the identity file: a temporary file, synced, renamed into place, the directory
/// synced, so that a crash leaves either no file or the whole one.
pub fn write_identity(dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    let path = dir.join(IDENTITY_FILE);
    let temporary = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file =
        File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(identity.to_toml().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("renaming {} into place", temporary.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_storage::wal::format::{encode_segment_header, segment_file_name, SegmentHeader};
    use corekv_storage::wal::SegmentIdentity;

    fn mismatch(result: anyhow::Result<()>) -> String {
        let error = result.expect_err("a mismatch");
        let mismatch = error.downcast_ref::<ShapeMismatch>().expect("a ShapeMismatch");
        mismatch.to_string()
    }

    // Shows: a new directory gets the identity file; the same shape passes again; another
    // shard count or cluster is refused with one line naming the directory and both
    // values, and the file is left as it was.
    #[test]
    fn the_first_start_records_the_shape_and_later_ones_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let ours = Identity::new("prod", 4);
        check_and_record(dir.path(), &ours).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(ours.clone()));
        check_and_record(dir.path(), &ours).unwrap();

        let line = mismatch(check_and_record(dir.path(), &Identity::new("prod", 2)));
        assert!(line.contains(&dir.path().display().to_string()), "{line}");
        assert!(line.contains("written with 4 shards") && line.contains("shards = 2"), "{line}");
        assert_eq!(line.lines().count(), 1);
        let line = mismatch(check_and_record(dir.path(), &Identity::new("test", 4)));
        assert!(line.contains("\"prod\"") && line.contains("\"test\""), "{line}");
        assert_eq!(read_identity(dir.path()).unwrap(), Some(ours));
    }

    // Shows: a directory from before the identity file is judged by its shard folders and
    // the cluster name in its WAL segment headers, and gets the file once it passes.
    #[test]
    fn directories_without_the_file_are_judged_by_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        for shard in 0..4u32 {
            let wal = dir.path().join(format!("shard-{shard}")).join("wal");
            std::fs::create_dir_all(&wal).unwrap();
            let header = SegmentHeader {
                identity: SegmentIdentity { cluster: "old".to_string(), shard },
                seq: 1,
                segment_bytes: 1 << 24,
            };
            std::fs::write(wal.join(segment_file_name(1)), encode_segment_header(&header)).unwrap();
        }
        let line = mismatch(check_and_record(dir.path(), &Identity::new("old", 2)));
        assert!(line.contains("written with 4 shards"), "{line}");
        let line = mismatch(check_and_record(dir.path(), &Identity::new("new", 4)));
        assert!(line.contains("cluster \"old\""), "{line}");
        assert_eq!(read_identity(dir.path()).unwrap(), None, "nothing written on a mismatch");
        check_and_record(dir.path(), &Identity::new("old", 4)).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(Identity::new("old", 4)));
    }

    // Shows: a damaged identity file, or one of a newer format, is an error naming the file,
    // not a mismatch and not a guess.
    #[test]
    fn a_damaged_or_newer_identity_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::write(&path, "format = 1\ncluster = \"x\"\n").unwrap();
        let error = check_and_record(dir.path(), &Identity::new("x", 1)).unwrap_err();
        assert!(error.downcast_ref::<ShapeMismatch>().is_none());
        assert!(error.to_string().contains("is damaged"), "{error}");
        std::fs::write(&path, "format = 2\ncluster = \"x\"\nshards = 1\n").unwrap();
        let error = check_and_record(dir.path(), &Identity::new("x", 1)).unwrap_err();
        assert!(error.to_string().contains("format 2"), "{error}");
    }

    // Shows: a directory holding a restore's mark (`corekv restore` stopped part way) is
    // refused with what to do, whatever else it holds, and nothing is written to it.
    #[test]
    fn an_unfinished_restore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RESTORING_FILE), b"x").unwrap();
        let error = check_and_record(dir.path(), &Identity::new("x", 1)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("restore that did not finish") && text.contains("again"), "{text}");
        assert_eq!(read_identity(dir.path()).unwrap(), None);
    }

    // Shows: cluster names with quotes and backslashes survive the file.
    #[test]
    fn names_that_need_escaping_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let odd = Identity::new("a \"quoted\" \\ name", 1);
        check_and_record(dir.path(), &odd).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(odd));
    }
}
