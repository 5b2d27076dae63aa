//! Tests of snapshot files: older formats read, newer refused, building and merging, deadlines,
//! damage, memory released, names and pruning.

use super::files::HEADER_CRC_OFFSET;
use super::*;

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta { cluster: "c".to_string(), shard: 1, index, term: 2 }
}

fn members(ids: &[u64]) -> Membership {
    let nodes: Vec<corekv_types::registry::Node> = ids
        .iter()
        .map(|&id| corekv_types::registry::Node {
            id: NodeId(id),
            host: format!("10.0.0.{id}"),
            client_port: 7100,
            peer_port: 7200,
            http_port: 7300,
            resp_port: None,
        })
        .collect();
    Membership::bootstrap(&nodes)
}

/// Rewrites the format version in a file image's header (and the header's checksum).
fn set_version(image: &mut [u8], version: u32) {
    image[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&image[..HEADER_CRC_OFFSET]);
    image[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The file image of an older format's archive `data`, at index 9, as that version wrote it.
fn file_image<T>(data: &T, version: u32) -> AlignedVec
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let mut image = AlignedVec::<16>::new();
    image.resize(SNAPSHOT_HEADER_BYTES, 0);
    let mut image = rkyv::api::high::to_bytes_in::<_, rancor::Error>(data, image).unwrap();
    let payload_len = image.len() - SNAPSHOT_HEADER_BYTES;
    image.resize(image.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES, 0);
    let crc = crc32c::crc32c(&image[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + payload_len]);
    write_header(&mut image[..SNAPSHOT_HEADER_BYTES], &meta(9), payload_len as u64, crc);
    set_version(&mut image, version);
    image
}

// Shows: a file of format version 1 (voters, no addresses), 2 (no deadlines) or 3 (no
// leases), as an older corekv wrote it, is still read: its keys (none with a deadline), and its voters or
// membership; a file of a newer version than this build's is refused by name.
#[test]
fn files_of_versions_1_to_3_are_read_and_newer_ones_refused() {
    let entries =
        vec![SnapshotEntry { key: b"k", value: b"v", create_index: 3, mod_index: 4, version: 2 }];
    let data = SnapshotDataV1 { applied_index: 9, applied_term: 2, voters: vec![3, 1, 2], entries };
    let image = file_image(&data, 1);
    let old = Archive::from_file_image(image, Path::new("old.snap"), None).unwrap();
    assert_eq!(old.format_version(), 1);
    assert_eq!(old.get(b"k").unwrap().value, b"v");
    assert_eq!(old.membership().voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
    assert!(old.membership().addrs.is_empty(), "a version 1 file has no addresses");

    let entries =
        vec![SnapshotEntry { key: b"k", value: b"v2", create_index: 3, mod_index: 4, version: 2 }];
    let membership = members(&[1, 2]).encode();
    let data = SnapshotDataV2 { applied_index: 9, applied_term: 2, membership, entries };
    let image = file_image(&data, 2);
    let v2 = Archive::from_file_image(image, Path::new("v2.snap"), None).unwrap();
    assert_eq!(v2.format_version(), 2);
    let read = v2.get(b"k").unwrap();
    assert_eq!((read.value, read.expires_ms), (&b"v2"[..], 0));
    assert_eq!((v2.clock_ms(), v2.deadlines().count()), (0, 0));
    assert_eq!(v2.membership(), &members(&[1, 2]));

    let entries =
        vec![SnapshotEntry { key: b"k", value: b"v3", create_index: 3, mod_index: 4, version: 2 }];
    let membership = members(&[1, 2]).encode();
    let timers = vec![SnapshotTimer { position: 0, expires_ms: 70 }];
    let data = SnapshotDataV3 {
        applied_index: 9,
        applied_term: 2,
        membership,
        entries,
        clock_ms: 5,
        timers,
    };
    let v3 = Archive::from_file_image(file_image(&data, 3), Path::new("v3.snap"), None).unwrap();
    assert_eq!((v3.format_version(), v3.clock_ms()), (3, 5));
    assert_eq!(v3.get(b"k").unwrap().expires_ms, 70);
    assert!(v3.leases().is_empty(), "a version 3 file has no leases");

    let current =
        Archive::build(meta(3), &members(&[1]), None, &Overlay::new(), 0, &LeaseTable::default())
            .unwrap();
    let mut newer = AlignedVec::new();
    newer.extend_from_slice(current.file_bytes());
    set_version(&mut newer, SNAPSHOT_FORMAT_VERSION + 1);
    let error = Archive::from_file_image(newer, Path::new("new.snap"), None).unwrap_err();
    assert!(error.to_string().contains("written by a newer corekv"), "{error}");
}

fn record(value: &str, version: u64) -> Option<Record> {
    Some(Record {
        value: value.as_bytes().into(),
        meta: KeyMeta { create_index: 1, mod_index: 5, version },
        expires_ms: 0,
    })
}

/// Which of `pages` pages from `addr` are resident in memory.
fn resident(addr: usize, pages: usize) -> Vec<bool> {
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` is page-aligned and the range lies inside a live allocation.
    let rc =
        unsafe { libc::mincore(addr as *mut libc::c_void, pages * page_bytes(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().map(|v| v & 1 == 1).collect()
}

// Shows: releasing an archive hands its pages back to the kernel step by step, no more per
// step than asked, front to back, and all of them by the end.
#[test]
fn release_returns_pages_a_step_at_a_time() {
    let mut overlay = Overlay::new();
    for i in 0..20_000u32 {
        overlay.insert(format!("key-{i:08}").as_bytes().into(), record(&"v".repeat(100), 1));
    }
    let archive =
        Archive::build(meta(1), &members(&[1]), None, &overlay, 0, &LeaseTable::default()).unwrap();
    // The buffer was sized for the image up front, never grown (growing doubles it).
    let spare = archive.bytes.capacity() - archive.bytes.len();
    assert!(spare < 24 * 20_001 + 64 + 2 * BLOCK_BYTES, "{spare} bytes to spare");
    let page = page_bytes();
    let mut release = archive.release();
    let start = release.bytes.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let pages = ((start + release.bytes.capacity()) / page * page - first) / page;
    // The buffer's capacity can exceed what was written; untouched pages are not resident.
    let written = ((start + release.bytes.len()) / page * page - first) / page;
    assert!(written > 500, "{written} pages written");
    assert!(resident(first, written).iter().all(|&r| r), "written pages are resident");
    let step_pages = 64;
    let mut steps = 0;
    loop {
        let more = release.step(step_pages * page);
        steps += 1;
        let done = release.released() / page;
        assert_eq!(done, (steps * step_pages).min(pages));
        let now = resident(first, pages);
        assert!(now[..done].iter().all(|&r| !r), "released pages are gone");
        assert!(now[done.min(written)..written].iter().all(|&r| r), "the rest stays");
        if !more {
            break;
        }
    }
    assert_eq!(steps, pages.div_ceil(step_pages));
    assert!(!release.step(step_pages * page), "nothing left to release");
}

// Shows: a snapshot built from an overlay, then merged with a second overlay (updates,
// deletes, new keys), holds exactly the merged state, in order, with metadata.
#[test]
fn build_merge_and_read() {
    let mut first = Overlay::new();
    for k in ["a", "b", "c", "d"] {
        first.insert(k.as_bytes().into(), record(&format!("{k}1"), 1));
    }
    first.insert(b"gone".as_slice().into(), None);
    let timed = |value: &str, expires_ms| record(value, 1).map(|r| Record { expires_ms, ..r });
    first.insert(b"t1".as_slice().into(), timed("x", 500));
    let s1 =
        Archive::build(meta(10), &members(&[1, 2, 3]), None, &first, 77, &LeaseTable::default())
            .unwrap();
    assert_eq!(s1.get(b"t1").unwrap().expires_ms, 500);
    assert_eq!(s1.get(b"a").unwrap().expires_ms, 0);
    assert_eq!(s1.clock_ms(), 77);
    assert_eq!(s1.len(), 5);
    first.remove(b"t1".as_slice());
    assert_eq!(s1.get(b"c").unwrap().value, b"c1");
    assert!(s1.get(b"gone").is_none());
    assert_eq!(s1.membership(), &members(&[1, 2, 3]));
    assert_eq!(s1.format_version(), SNAPSHOT_FORMAT_VERSION);

    let mut second = Overlay::new();
    second.insert(b"b".as_slice().into(), None);
    second.insert(b"c".as_slice().into(), record("c2", 2));
    second.insert(b"bb".as_slice().into(), record("new", 1));
    second.insert(b"z".as_slice().into(), record("last", 1));
    second.insert(b"t2".as_slice().into(), timed("y", 900));
    let s2 = Archive::build(
        meta(20),
        &members(&[1, 2, 3]),
        Some(&s1),
        &second,
        88,
        &LeaseTable::default(),
    )
    .unwrap();
    let deadlines: Vec<(&[u8], u64)> = s2.deadlines().collect();
    assert_eq!(deadlines, vec![(&b"t1"[..], 500), (&b"t2"[..], 900)], "kept and added");
    assert_eq!(s2.get(b"t2").unwrap().expires_ms, 900);
    assert_eq!(s2.clock_ms(), 88);
    second.remove(b"t2".as_slice());
    let mut third = Overlay::new();
    third.insert(b"t1".as_slice().into(), None);
    third.insert(b"t2".as_slice().into(), None);
    let s2 = Archive::build(
        meta(20),
        &members(&[1, 2, 3]),
        Some(&s2),
        &third,
        88,
        &LeaseTable::default(),
    )
    .unwrap();
    assert_eq!(s2.deadlines().count(), 0, "deleted keys take their deadlines along");
    let keys: Vec<(String, String, u64)> = (0..s2.len())
        .map(|i| {
            let (k, v) = s2.entry(i);
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.value.to_vec()).unwrap(),
                v.meta.version,
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a".into(), "a1".into(), 1),
            ("bb".into(), "new".into(), 1),
            ("c".into(), "c2".into(), 2),
            ("d".into(), "d1".into(), 1),
            ("z".into(), "last".into(), 1),
        ]
    );
    assert_eq!(s2.lower_bound(Bound::Included(b"c")), 2);
    assert_eq!(s2.lower_bound(Bound::Excluded(b"c")), 3);
    assert_eq!(s2.meta().index, 20);
}

// Shows: any flipped bit in a file image, header or payload, is refused with a reason.
#[test]
fn damage_is_refused() {
    let mut overlay = Overlay::new();
    for i in 0..50 {
        overlay.insert(format!("key-{i}").into_bytes().into(), record("value", 1));
    }
    overlay.insert(
        b"timed".as_slice().into(),
        record("value", 1).map(|r| Record { expires_ms: 9, ..r }),
    );
    let good =
        Archive::build(meta(3), &members(&[1]), None, &overlay, 5, &LeaseTable::default()).unwrap();
    let image = good.file_bytes().to_vec();
    let payload_end = SNAPSHOT_HEADER_BYTES + good.payload_len;
    for at in (0..HEADER_CRC_OFFSET + 4).chain((SNAPSHOT_HEADER_BYTES..payload_end).step_by(97)) {
        let mut bad = AlignedVec::new();
        bad.extend_from_slice(&image);
        bad[at] ^= 0x20;
        assert!(Archive::from_file_image(bad, Path::new("x.snap"), None).is_err(), "flip at {at}");
    }
    let mut other_shard = AlignedVec::new();
    other_shard.extend_from_slice(&image);
    let err =
        Archive::from_file_image(other_shard, Path::new("x.snap"), Some(("c", 2))).unwrap_err();
    assert!(err.to_string().contains("expected cluster \"c\" shard 2"), "{err}");

    // Checksums right, contents inconsistent: a key attached to a lease the file lacks.
    let entries =
        vec![SnapshotEntry { key: b"k", value: b"v", create_index: 3, mod_index: 4, version: 2 }];
    let data = SnapshotData {
        applied_index: 9,
        applied_term: 2,
        membership: members(&[1]).encode(),
        entries,
        clock_ms: 5,
        timers: vec![],
        last_lease: 1,
        leases: vec![SnapshotLease { id: 1, ttl_ms: 5_000, deadline_ms: 6_000 }],
        lease_keys: vec![SnapshotLeaseKey { position: 0, lease: 2 }],
    };
    let image = file_image(&data, SNAPSHOT_FORMAT_VERSION);
    let err = Archive::from_file_image(image, Path::new("l.snap"), None).unwrap_err();
    assert!(err.to_string().contains("name a missing lease"), "{err}");
}

// Shows: file names round-trip and order newest first.
#[test]
fn names() {
    assert_eq!(parse_file_name(&file_name(42, 7)), Some((42, 7)));
    assert_eq!(parse_file_name("42-7.snap"), None);
}

// Shows: pruning keeps the newest snapshots and the file of a snapshot being written (a
// newer one: the next local snapshot or an incoming transfer) and removes older ones and
// the partial file of a transfer older than the newest snapshot; at startup every
// temporary file goes.
#[test]
fn pruning_leaves_a_snapshot_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
    for index in [10, 20, 30] {
        touch(&file_name(index, 2));
    }
    touch(&format!("{}.tmp", file_name(40, 2)));
    touch(&format!("{}.incoming.tmp", file_name(50, 3)));
    touch(&format!("{}.incoming.tmp", file_name(25, 2)));
    prune(dir.path(), 2).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let expected = [
        file_name(20, 2),
        file_name(30, 2),
        format!("{}.tmp", file_name(40, 2)),
        format!("{}.incoming.tmp", file_name(50, 3)),
    ];
    assert_eq!(left, expected);
    let listed: Vec<u64> = list(dir.path()).unwrap().iter().map(|f| f.0).collect();
    assert_eq!(listed, [30, 20]);
    remove_temp_files(dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
