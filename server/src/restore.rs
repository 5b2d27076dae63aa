//! `corekv restore`: a node's data directory made from a backup (`corekvctl backup save`),
//! for a new cluster. Run once per node of the new registry; starting the nodes then gives a
//! cluster holding exactly the backup's data.
//!
//! What each shard gets: the backup's snapshot of it, made over for the new cluster — the
//! registry's cluster name, and the registry's nodes as the first voters (with their
//! addresses) — keeping its keys, values, metadata (create and mod indexes, versions: the
//! restored cluster's log goes on from the backup's index), deadlines and leases. Deadlines
//! are wall-clock times: a key or lease whose deadline passed while the backup sat on disk
//! expires once the restored shard has a leader.
//!
//! Safety, step by step:
//! 1. The whole backup is verified first (manifest, sizes, checksums, snapshots): a damaged
//!    backup writes nothing.
//! 2. The registry must have the backup's shard count (a key's shard depends on it), and
//!    another cluster name unless told (`--reuse-cluster-name`: nodes of one name accept
//!    each other as peers, so a name is reused only once the old cluster is gone).
//! 3. The data directory must be new or empty; it is locked, marked `RESTORING` (a node
//!    refuses to start on it), given its identity, then each shard's snapshot is written
//!    and synced; the mark goes last.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use corekv_storage::backup::{self as files, Manifest};
use corekv_storage::snapshot;
use corekv_types::ids::NodeId;
use corekv_types::membership::Membership;
use corekv_types::registry::Registry;

use crate::data_dir::{self, Identity, RESTORING_FILE};

/// What to restore, where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup directory.
    pub backup: PathBuf,
    /// The new cluster.
    pub registry: Registry,
    /// The node whose data directory this is.
    pub node_id: NodeId,
    /// The data directory to make.
    pub data_dir: PathBuf,
    /// Allow the new cluster the backup's cluster name.
    pub reuse_cluster_name: bool,
}

/// A restore refused before anything was written: `corekv restore` exits 2 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RestoreRefusal(pub String);

/// What a restore wrote, per shard: `(shard, index, keys)`.
pub type Restored = Vec<(u32, u64, usize)>;

/// Makes the data directory; see the module docs.
pub fn run(options: &RestoreOptions) -> anyhow::Result<Restored> {
    let manifest = check(options)?;
    let dir = &options.data_dir;
    let _lock = data_dir::lock(dir).map_err(|e| RestoreRefusal(format!("{e:#}")))?;
    if holds_anything_but_the_lock(dir)? {
        bail!(RestoreRefusal(format!(
            "{} is not empty: a restore makes a new data directory",
            dir.display()
        )));
    }
    let mark = dir.join(RESTORING_FILE);
    let temp = dir.join(format!("{RESTORING_FILE}.tmp"));
    files::write_synced(&mark, &temp, b"corekv restore is writing this directory\n")?;
    let registry = &options.registry;
    let identity = Identity::new(&registry.cluster, registry.shards);
    // The mark makes `check` refuse; the identity is written directly.
    data_dir::write_identity(dir, &identity)?;
    let membership = Membership::bootstrap(&registry.nodes);
    let mut restored = Vec::new();
    for entry in &manifest.files {
        let archive = files::load_shard(&options.backup, &manifest.cluster, entry)?;
        let made = files::rebuild_for_cluster(&archive, &registry.cluster, &membership)?;
        drop(archive);
        let shard_dir = dir.join(format!("shard-{}", entry.shard));
        let snap_dir = shard_dir.join("snap");
        std::fs::create_dir_all(&snap_dir)
            .with_context(|| format!("creating {}", snap_dir.display()))?;
        let name = snapshot::file_name(entry.index, entry.term);
        let temp = snap_dir.join(format!("{name}.tmp"));
        // Syncs the file and `snap/`; the folders above it are synced below.
        files::write_synced(&snap_dir.join(&name), &temp, made.file_bytes())?;
        files::sync_dir(&shard_dir)?;
        restored.push((entry.shard, entry.index, made.len()));
    }
    // Every shard's file and folder is durable before the mark goes: a crash before leaves
    // the mark, never a directory that looks whole with a shard missing.
    files::sync_dir(dir)?;
    std::fs::remove_file(&mark).with_context(|| format!("removing {}", mark.display()))?;
    files::sync_dir(dir)?;
    Ok(restored)
}

/// Every check made before anything is written: the node, the backup whole, the shapes.
fn check(options: &RestoreOptions) -> anyhow::Result<Manifest> {
    let registry = &options.registry;
    let refuse = |why: String| anyhow::Error::new(RestoreRefusal(why));
    if registry.node(options.node_id).is_none() {
        return Err(refuse(format!("node {} is not in the registry", options.node_id)));
    }
    let manifest = files::read_manifest(&options.backup).map_err(|e| refuse(e.to_string()))?;
    if manifest.shards != registry.shards {
        return Err(refuse(format!(
            "the backup has {} shards, the registry says shards = {}: a restored cluster has \
             the backup's shard count (a key's shard depends on it)",
            manifest.shards, registry.shards
        )));
    }
    if manifest.cluster == registry.cluster && !options.reuse_cluster_name {
        return Err(refuse(format!(
            "the registry names cluster {:?}, the backup's own: give the new cluster a new name \
             (nodes of one name take each other as peers), or pass --reuse-cluster-name once \
             the old cluster is gone for good",
            registry.cluster
        )));
    }
    for entry in &manifest.files {
        files::load_shard(&options.backup, &manifest.cluster, entry)
            .map_err(|e| refuse(e.to_string()))?;
    }
    let dir = &options.data_dir;
    if dir.exists() && holds_anything_but_the_lock(dir)? {
        return Err(refuse(format!(
            "{} is not empty: a restore makes a new data directory",
            dir.display()
        )));
    }
    Ok(manifest)
}

/// Whether `dir` holds anything but a lock file (left by a node or a restore that stopped).
fn holds_anything_but_the_lock(dir: &Path) -> anyhow::Result<bool> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name() != "LOCK" {
            return Ok(true);
        }
    }
    Ok(false)
}
