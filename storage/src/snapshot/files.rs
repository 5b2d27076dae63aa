//! A snapshot file's outside: the header block (layout in the module above), the file names
//! `{index:020}-{term:020}.snap`, listing a directory of them newest first, and pruning.

use std::path::{Path, PathBuf};

use super::{
    SnapshotMeta, SNAPSHOT_FORMAT_OLDEST, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_HEADER_BYTES,
    SNAPSHOT_MAGIC,
};
use crate::error::{Result, StorageError};

/// Where the header's own crc32c sits: after the fixed fields and the longest cluster name.
pub(super) const HEADER_CRC_OFFSET: usize = 46 + 256;

pub(super) fn write_header(block: &mut [u8], meta: &SnapshotMeta, payload_len: u64, crc: u32) {
    let name = meta.cluster.as_bytes();
    assert!(name.len() <= 256, "cluster names are at most 256 bytes (the registry checks)");
    block.fill(0);
    block[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    block[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    block[12..16].copy_from_slice(&meta.shard.to_le_bytes());
    block[16..24].copy_from_slice(&meta.index.to_le_bytes());
    block[24..32].copy_from_slice(&meta.term.to_le_bytes());
    block[32..40].copy_from_slice(&payload_len.to_le_bytes());
    block[40..44].copy_from_slice(&crc.to_le_bytes());
    block[44..46].copy_from_slice(&(name.len() as u16).to_le_bytes());
    block[46..46 + name.len()].copy_from_slice(name);
    let header_crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
    block[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&header_crc.to_le_bytes());
}

/// The header's meta, format version, payload length and payload checksum.
pub(super) fn read_header(
    bytes: &[u8],
) -> std::result::Result<(SnapshotMeta, u32, u64, u32), String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!("file of {} bytes is shorter than a snapshot header", bytes.len()));
    }
    if bytes[0..8] != SNAPSHOT_MAGIC {
        return Err("not a corekv snapshot (bad magic)".to_string());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let stored = u32_at(HEADER_CRC_OFFSET);
    let computed = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch (stored {stored:#x}, computed {computed:#x})"
        ));
    }
    let version = u32_at(8);
    if !(SNAPSHOT_FORMAT_OLDEST..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "snapshot format version {version}, this build reads {SNAPSHOT_FORMAT_OLDEST} to \
             {SNAPSHOT_FORMAT_VERSION}{}",
            if version > SNAPSHOT_FORMAT_VERSION { " (written by a newer corekv)" } else { "" }
        ));
    }
    let name_len = u16::from_le_bytes([bytes[44], bytes[45]]) as usize;
    if name_len > 256 {
        return Err("cluster name too long".to_string());
    }
    let cluster =
        std::str::from_utf8(&bytes[46..46 + name_len]).map_err(|_| "cluster name is not UTF-8")?;
    let meta = SnapshotMeta {
        cluster: cluster.to_string(),
        shard: u32_at(12),
        index: u64_at(16),
        term: u64_at(24),
    };
    Ok((meta, version, u64_at(32), u32_at(40)))
}

/// The file name of the snapshot at `(index, term)`.
pub fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

/// `(index, term)` from a snapshot file name.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// Snapshot files in `dir`, newest (highest index) first. Files being written (`*.tmp`)
/// are left alone: a snapshot job or an incoming transfer may be writing one right now.
pub fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("read directory", dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some((index, term)) = parse_file_name(name) {
            found.push((index, term, path));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    Ok(found)
}

/// Removes the temporary files (`*.tmp`) a previous run left in `dir`: snapshots it was
/// writing or receiving when it stopped. Only at startup, before anything writes one.
pub fn remove_temp_files(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("read directory", dir, e))?;
        let path = entry.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".tmp")) {
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Removes every snapshot file in `dir` but the newest `keep`, each a slice at a time
/// ([`crate::pacing::remove_file_paced`]), and the temporary files of snapshots older than
/// the newest (a transfer that was cut off): a temporary file of a newer one may be being
/// written right now. Blocking.
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let files = list(dir)?;
    let newest = files.first().map(|(index, _, _)| *index);
    for (_, _, path) in files.into_iter().skip(keep) {
        crate::pacing::remove_file_paced(&path)?;
    }
    let Some(newest) = newest else { return Ok(()) };
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("read directory", dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".tmp") else { continue };
        let stem = stem.strip_suffix(".incoming").unwrap_or(stem);
        if parse_file_name(stem).is_some_and(|(index, _)| index < newest) {
            crate::pacing::remove_file_paced(&path)?;
        }
    }
    Ok(())
}
