//! Tests of backups in the core: a request waits for a snapshot that holds every write before
//! it, later ones are served from it, the number under way is bounded, a failed snapshot is
//! reported, and a follower sends the client to the leader.

use std::sync::Arc;

use corekv_proto::client::{ErrorKind as WireErrorKind, Reply};

use super::super::test_support::{Replica, ReplyKind};
use crate::constants::BACKUP_STREAMS_MAX;

/// Makes the snapshot the replica's core asked for, as the shell's snapshot task does.
fn make_snapshot(r: &mut Replica) -> u64 {
    // The job is asked for by a turn after the one whose read round admitted the backup (a
    // tick's, in a node), and handed out once the watch history is durable through its index
    // (the turn after).
    r.advance_ms(10);
    r.advance_ms(10);
    let job = r.snapshot_jobs.pop().expect("a snapshot was asked for");
    let archive = job.build().expect("the archive builds");
    let index = archive.meta().index;
    r.core.on_snapshot_written(Arc::new(archive));
    r.settle();
    index
}

fn put(r: &mut Replica, id: u64, key: &[u8]) -> u64 {
    let put = r.encoder.put(id, key, b"v").to_vec();
    r.send(7, &put);
    r.settle();
    r.core.sm.applied_index()
}

// Shows: a backup asked after a write waits for a snapshot taken for it (none was due), is
// then handed to the shell with that snapshot, which holds the write; a second backup with
// no write since is served from the same snapshot at once, with no new one taken.
#[test]
fn a_backup_streams_a_snapshot_holding_every_write_before_it() {
    let mut r = Replica::new(1);
    let applied = put(&mut r, 1, b"k");
    let backup = r.encoder.backup(2, 0).to_vec();
    r.send(7, &backup);
    r.settle();
    assert!(r.backups.is_empty(), "no snapshot reaches the request yet");
    let index = make_snapshot(&mut r);
    assert!(index >= applied);
    let job = r.backups.pop().expect("the backup is handed out once the snapshot is durable");
    assert_eq!((job.conn, job.id, job.archive.meta().index), (7, 2, index));
    assert!(job.archive.get(b"k").is_some(), "the write before the backup is in it");
    assert_eq!(job.bytes_per_sec, 1 << 30, "the snapshot write rate when none is asked");
    r.core.on_backup_streamed(true);

    let again = r.encoder.backup(3, 5_000_000).to_vec();
    r.send(7, &again);
    r.settle();
    assert!(r.snapshot_jobs.is_empty(), "no new snapshot: the newest holds everything");
    let job = r.backups.pop().expect("served from the newest snapshot at once");
    assert_eq!((job.id, job.archive.meta().index, job.bytes_per_sec), (3, index, 5_000_000));
}

// Shows: with BACKUP_STREAMS_MAX backups under way, the next is answered Busy; once one
// stream ends, a new one is taken.
#[test]
fn backups_past_the_limit_are_busy() {
    let mut r = Replica::new(1);
    put(&mut r, 1, b"k");
    let count = BACKUP_STREAMS_MAX as u64 + 1;
    for id in 10..10 + count {
        let backup = r.encoder.backup(id, 0).to_vec();
        r.send(7, &backup);
    }
    r.settle();
    let busy = 10 + count - 1;
    assert_eq!(
        r.reply_kinds(),
        vec![(1, ReplyKind::Ok(Reply::PutReply)), (busy, ReplyKind::Error(WireErrorKind::Busy))]
    );
    make_snapshot(&mut r);
    assert_eq!(r.backups.len(), BACKUP_STREAMS_MAX);
    r.core.on_backup_streamed(false);
    let backup = r.encoder.backup(99, 0).to_vec();
    r.send(7, &backup);
    r.settle();
    assert_eq!(r.backups.last().map(|j| j.id), Some(99));
}

// Shows: when the snapshot a backup waits for fails, the backup is answered Unavailable with
// the reason; a follower answers a backup NotLeader; a rate under the minimum is refused.
#[test]
fn a_failed_snapshot_or_a_follower_refuses_the_backup() {
    let mut r = Replica::new(1);
    put(&mut r, 1, b"k");
    let backup = r.encoder.backup(2, 0).to_vec();
    r.send(7, &backup);
    r.settle();
    r.snapshot_jobs.clear();
    r.core.on_snapshot_failed("disk full");
    r.settle();
    let frame = r.reply_to(2).expect("an answer");
    let reply = corekv_proto::frame::verify_reply(frame).unwrap();
    let reason =
        reply.reply_as_error_reply().and_then(|e| e.kind_as_unavailable()).and_then(|u| u.reason());
    assert_eq!(reason, Some("no snapshot for the backup: taking it failed: disk full"));

    let mut follower = Replica::new(3);
    let backup = follower.encoder.backup(5, 0).to_vec();
    follower.send(7, &backup);
    follower.settle();
    assert_eq!(follower.reply_kinds(), vec![(5, ReplyKind::Error(WireErrorKind::NotLeader))]);

    let slow = r.encoder.backup(6, crate::constants::BACKUP_BYTES_PER_SEC_MIN - 1).to_vec();
    r.send(7, &slow);
    r.settle();
    let frame = r.reply_to(6).expect("an answer");
    let reply = corekv_proto::frame::verify_reply(frame).unwrap();
    let invalid = reply.reply_as_error_reply().and_then(|e| e.kind_as_invalid_request());
    assert!(invalid.and_then(|i| i.reason()).is_some_and(|r| r.contains("at least")));
}

// Shows: a backup whose connection closes before its ReadIndex round is over is dropped: no
// snapshot is taken for it and it holds no place.
#[test]
fn a_backup_of_a_closed_connection_is_dropped() {
    let mut r = Replica::new(1);
    put(&mut r, 1, b"k");
    let backup = r.encoder.backup(2, 0).to_vec();
    r.send(7, &backup);
    r.core.on_client_closed(7);
    r.advance_ms(10);
    r.advance_ms(10);
    assert!(r.snapshot_jobs.is_empty(), "no snapshot for a backup no one waits for");
    assert!(r.backups.is_empty());
    assert!(r.core.backups.waiting.is_empty());
    for id in 10..10 + BACKUP_STREAMS_MAX as u64 {
        let backup = r.encoder.backup(id, 0).to_vec();
        r.send(8, &backup);
    }
    make_snapshot(&mut r);
    assert_eq!(r.backups.len(), BACKUP_STREAMS_MAX, "every place is free for others");
}
