//! A core for the unit tests of the read and write paths: one replica over an in-memory disk,
//! driven through the driver contract, its replies decoded.

use std::sync::Arc;

use corekv_proto::client::{ErrorKind as WireErrorKind, Reply};
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::verify_reply;
use corekv_storage::wal::{FlushJob, MemSegments, RecoveryMode};
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::registry::Node;

use super::counters::ShardMetrics;
use super::{ConnId, CoreConfig, Outputs, Recovery, ShardCore, SnapshotPolicy};

/// One replica of a group of `voters` (1: it elects itself at once), shard 0 of 1.
pub(super) struct Replica {
    pub(super) core: ShardCore,
    pub(super) disk: MemSegments,
    /// The watch history's disk.
    pub(super) history: MemSegments,
    pub(super) encoder: RequestEncoder,
    out: Outputs,
    now_us: u64,
    /// Flush jobs held back (the disk has not finished them).
    pub(super) held: Vec<FlushJob>,
    /// Whether flushes complete as soon as they are taken.
    pub(super) disk_works: bool,
    /// Reply frames, in order.
    pub(super) replies: Vec<(ConnId, Vec<u8>)>,
    /// Snapshots the core asked for, not made yet.
    pub(super) snapshot_jobs: Vec<super::SnapshotJob>,
    /// Backup streams the core handed out.
    pub(super) backups: Vec<super::BackupJob>,
}

impl Replica {
    pub(super) fn new(voters: u64) -> Replica {
        let disk = MemSegments::new("unit".to_string(), 1 << 20);
        let history = MemSegments::new("unit-history".to_string(), 1 << 20);
        let cfg = CoreConfig {
            node_id: NodeId(1),
            shard: ShardId(0),
            shards: 1,
            cluster: "unit".to_string(),
            registry: (1..=voters)
                .map(|n| Node {
                    id: NodeId(n),
                    host: format!("10.0.0.{n}"),
                    client_port: 7100,
                    peer_port: 7200,
                    http_port: 7300,
                    resp_port: None,
                })
                .collect(),
            election_ticks: 10,
            heartbeat_ticks: 2,
            tick_ms: 10,
            snapshots: SnapshotPolicy {
                entries: 1 << 40,
                log_bytes: 1 << 40,
                write_bytes_per_sec: 1 << 30,
            },
            wall_epoch_ms: 0,
            join: false,
        };
        let recovery = Recovery {
            segments: Box::new(disk.clone()),
            segment_bytes: 1 << 20,
            mode: RecoveryMode::Strict,
            snapshot: None,
            entry_cache_bytes: None,
            history: Box::new(history.clone()),
            history_segment_bytes: 1 << 20,
            history_retention: super::history_retention(&Default::default()),
            history_cache_bytes: None,
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let core = ShardCore::recover(cfg, recovery, Arc::new(ShardMetrics::default()), &logger)
            .expect("an empty disk recovers");
        let mut replica = Replica {
            core,
            disk,
            history,
            encoder: RequestEncoder::new(),
            out: Outputs::default(),
            now_us: 1,
            held: Vec::new(),
            disk_works: true,
            replies: Vec::new(),
            snapshot_jobs: Vec::new(),
            backups: Vec::new(),
        };
        replica.core.start(replica.now_us);
        replica.settle();
        replica
    }

    /// Turns until nothing changes: each flush taken completes at once unless the disk is
    /// held, and each completion is followed by a turn.
    pub(super) fn settle(&mut self) {
        loop {
            let turn = self.core.turn(self.now_us, 0, &mut self.out);
            self.snapshot_jobs.extend(turn.snapshot);
            for (conn, range) in self.out.replies.drain(..) {
                self.replies.push((conn, self.out.reply_bytes[range].to_vec()));
            }
            self.backups.append(&mut self.out.backups);
            while let Some(job) = self.core.take_history_flush_job() {
                self.history.run(&job);
                self.core.on_history_flush_complete(job);
            }
            let Some(job) = self.core.take_flush_job() else { return };
            if !self.disk_works {
                self.held.push(job);
                return;
            }
            self.disk.run(&job);
            self.core.on_flush_complete(job);
        }
    }

    /// Moves the clock on by `ms` and settles.
    pub(super) fn advance_ms(&mut self, ms: u64) {
        self.now_us += ms * 1000;
        self.settle();
    }

    /// The reply frame to request `id`.
    pub(super) fn reply_to(&self, id: u64) -> Option<&[u8]> {
        self.replies.iter().rev().find_map(|(_, frame)| {
            let reply = verify_reply(frame).expect("the core encodes valid replies");
            (reply.id() == id).then_some(&frame[..])
        })
    }

    /// Completes the held flushes, then settles.
    pub(super) fn release_disk(&mut self) {
        self.disk_works = true;
        for job in std::mem::take(&mut self.held) {
            self.disk.run(&job);
            self.core.on_flush_complete(job);
        }
        self.settle();
    }

    /// Sends one request frame on a greeted connection `conn`.
    pub(super) fn send(&mut self, conn: ConnId, frame: &[u8]) {
        let mut greeted = true;
        self.core.set_now(self.now_us);
        self.core.on_client_frame(conn, &mut greeted, frame);
    }

    /// The reply types of every reply so far, by request id.
    pub(super) fn reply_kinds(&self) -> Vec<(u64, ReplyKind)> {
        self.replies
            .iter()
            .map(|(_, frame)| {
                let reply = verify_reply(frame).expect("the core encodes valid replies");
                let kind = match reply.reply_as_error_reply() {
                    Some(error) => ReplyKind::Error(error.kind_type()),
                    None => ReplyKind::Ok(reply.reply_type()),
                };
                (reply.id(), kind)
            })
            .collect()
    }
}

/// What a reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyKind {
    Ok(Reply),
    Error(WireErrorKind),
}
