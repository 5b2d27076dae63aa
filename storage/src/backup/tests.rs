//! Tests of backup directories: a backup written and read back, every way a file can be
//! damaged refused with its path and the reason, and a shard's snapshot made over for a new
//! cluster keeping everything but the name and the membership.

use super::*;
use crate::key::Key;
use crate::lease::{lease_id, LeaseTable};
use crate::value::Record;
use corekv_types::ids::NodeId;
use corekv_types::meta::KeyMeta;
use corekv_types::registry::Node;

fn members(ids: &[u64], host: &str) -> Membership {
    let nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node {
            id: NodeId(id),
            host: host.to_string(),
            client_port: 7100 + id as u16 * 10,
            peer_port: 7200,
            http_port: 7300,
            resp_port: None,
        })
        .collect();
    Membership::bootstrap(&nodes)
}

/// A snapshot of shard `shard` of cluster "old" at index 40 (term 3): a key with a deadline,
/// one attached to a lease, a plain one.
fn snapshot(shard: u32) -> Archive {
    let mut overlay = Overlay::new();
    let record = |value: &[u8], version, expires_ms| {
        Some(Record {
            value: value.into(),
            meta: KeyMeta { create_index: 5, mod_index: 30, version },
            expires_ms,
        })
    };
    overlay.insert(Key::from(&b"plain"[..]), record(b"v1", 3, 0));
    overlay.insert(Key::from(&b"ttl"[..]), record(b"v2", 1, 9_000_000));
    overlay.insert(Key::from(&b"leased"[..]), record(b"v3", 2, 0));
    let lease = lease_id(shard, 7);
    let leases = LeaseTable::restore(
        7,
        [(lease, 10_000, 8_000_000)].into_iter(),
        [(&b"leased"[..], lease)].into_iter(),
    )
    .expect("a consistent lease table");
    let meta = SnapshotMeta { cluster: "old".to_string(), shard, index: 40, term: 3 };
    Archive::build(meta, &members(&[1, 2, 3], "10.0.0.1"), None, &overlay, 1234, &leases).unwrap()
}

/// A backup of two shards in `dir`, as `corekvctl backup save` writes it.
fn write_backup(dir: &Path) -> Manifest {
    let mut files = Vec::new();
    for shard in 0..2 {
        let archive = snapshot(shard);
        let name = shard_file_name(shard);
        write_file(dir, &name, archive.file_bytes()).unwrap();
        files.push(ShardFile {
            shard,
            file: name,
            index: 40,
            term: 3,
            bytes: archive.file_bytes().len() as u64,
            crc32c: crc32c::crc32c(archive.file_bytes()),
            keys: archive.len() as u64,
            node: 1,
        });
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT_VERSION,
        cluster: "old".to_string(),
        shards: 2,
        created_unix_ms: 1,
        files,
    };
    write_manifest(dir, &manifest).unwrap();
    manifest
}

fn refusal(result: Result<impl std::fmt::Debug>) -> String {
    result.expect_err("refused").to_string()
}

// Shows: a backup reads back as written, every shard loads, and the cursor is the shards'
// indexes; nothing is left under a temporary name.
#[test]
fn a_backup_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_backup(dir.path());
    let manifest = read_manifest(dir.path()).unwrap();
    assert_eq!(manifest, written);
    assert_eq!(manifest.cursor(), vec![40, 40]);
    for entry in &manifest.files {
        let archive = load_shard(dir.path(), &manifest.cluster, entry).unwrap();
        assert_eq!(archive.len(), 3);
        assert_eq!(archive.meta().shard, entry.shard);
    }
    assert!(partial_files(dir.path()).unwrap().is_empty());
}

// Shows: a directory without a manifest is refused as unfinished, and a manifest of another
// format, or one that does not name one file per shard, is refused by name.
#[test]
fn unfinished_or_foreign_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_backup(dir.path());
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let error = refusal(read_manifest(dir.path()));
    assert!(error.contains("manifest.json") && error.contains("did not finish"), "{error}");

    let mut newer = manifest.clone();
    newer.format = BACKUP_FORMAT_VERSION + 1;
    write_manifest(dir.path(), &newer).unwrap();
    let error = refusal(read_manifest(dir.path()));
    assert!(error.contains(&format!("backup format {}", BACKUP_FORMAT_VERSION + 1)), "{error}");

    let mut short = manifest.clone();
    short.files.pop();
    write_manifest(dir.path(), &short).unwrap();
    let error = refusal(read_manifest(dir.path()));
    assert!(error.contains("1 files for 2 shards"), "{error}");

    std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"format\": 1, \"clus").unwrap();
    let error = refusal(read_manifest(dir.path()));
    assert!(error.contains("does not parse"), "{error}");
}

// Shows: a truncated file, a flipped byte, a missing file and a file of another shard are
// each refused with the file's path and what is wrong.
#[test]
fn damaged_shard_files_are_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_backup(dir.path());
    let path = dir.path().join("shard-1.snap");
    let good = std::fs::read(&path).unwrap();
    let load = |m: &Manifest| refusal(load_shard(dir.path(), &m.cluster, &m.files[1]));

    std::fs::write(&path, &good[..good.len() - 4096]).unwrap();
    let error = load(&manifest);
    assert!(error.contains("shard-1.snap") && error.contains("truncated"), "{error}");

    let mut flipped = good.clone();
    // In the payload (the padding after it is in no snapshot checksum, only in the manifest's).
    flipped[4096 + 16] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    let error = load(&manifest);
    assert!(error.contains("shard-1.snap") && error.contains("checksum mismatch"), "{error}");

    // A damaged file whose manifest entry was rewritten to match: the snapshot's own crc.
    let mut lying = manifest.clone();
    lying.files[1].crc32c = crc32c::crc32c(&flipped);
    let error = load(&lying);
    assert!(error.contains("shard-1.snap") && error.contains("checksum mismatch"), "{error}");

    std::fs::copy(dir.path().join("shard-0.snap"), &path).unwrap();
    let mut swapped = manifest.clone();
    swapped.files[1].crc32c = manifest.files[0].crc32c;
    let error = load(&swapped);
    assert!(error.contains("shard-1.snap") && error.contains("expected cluster"), "{error}");

    std::fs::remove_file(&path).unwrap();
    let error = load(&manifest);
    assert!(error.contains("shard-1.snap") && error.contains("missing"), "{error}");
}

// Shows: made over for a new cluster, a shard's snapshot keeps its index, term, keys, values,
// metadata, deadlines, leases and clock, and carries the new name and membership.
#[test]
fn a_snapshot_made_over_for_a_new_cluster_keeps_its_data() {
    let old = snapshot(1);
    let membership = members(&[4, 5, 6], "10.9.9.9");
    let new = rebuild_for_cluster(&old, "new", &membership).unwrap();
    assert_eq!(new.meta().cluster, "new");
    assert_eq!((new.meta().shard, new.meta().index, new.meta().term), (1, 40, 3));
    assert_eq!(new.membership(), &membership);
    assert_eq!(new.clock_ms(), 1234);
    assert_eq!(new.len(), old.len());
    for key in [&b"plain"[..], b"ttl", b"leased"] {
        assert_eq!(new.get(key), old.get(key), "{}", String::from_utf8_lossy(key));
    }
    let lease = lease_id(1, 7);
    assert_eq!(new.leases().lease_of(b"leased"), Some(lease));
    assert_eq!(new.leases().get(lease), old.leases().get(lease));
    assert_eq!(new.leases().last_counter(), 7);
}
