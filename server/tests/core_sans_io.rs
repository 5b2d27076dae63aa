//! The shard core without glommio: three cores in one thread, in-memory disks, messages passed
//! by hand. Shows that the core is sans-IO — it elects a leader, batches writes into raft
//! entries, replicates them, answers clients, and redirects clients of followers — driven only
//! by its inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use corekv_proto::client::{Consistency, ErrorKind, Reply};
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::verify_reply;
use corekv_server::core::{
    ChangeRefused, CoreConfig, MembershipChange, Outputs, Recovery, ShardCore, SnapshotJob,
};
use corekv_server::metrics::ShardMetrics;
use corekv_storage::history::Retention;
use corekv_storage::snapshot::Archive;
use corekv_storage::wal::{MemSegments, RecoveryMode, SegmentSource};
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::membership::MemberAddr;
use corekv_types::registry::Node as RegistryNode;

const SEGMENT_BYTES: u64 = 1 << 20;

struct Node {
    core: ShardCore,
    disk: MemSegments,
    /// The watch history's disk.
    history: MemSegments,
    /// Connections whose client reads nothing (a paused watcher): the core hears of no drain.
    paused: BTreeSet<u64>,
    /// Paused connections the core asked to hear about.
    drains_owed: BTreeSet<u64>,
    metrics: Arc<ShardMetrics>,
    /// Reply frames received per connection.
    replies: BTreeMap<u64, Vec<Vec<u8>>>,
    /// The index of every snapshot the core asked for, in order (each is made at once).
    snapshots_taken: Vec<u64>,
    /// The newest snapshot made, which a `MsgSnapshot` from this node carries.
    newest_snapshot: Option<Arc<Archive>>,
}

fn node(id: u64, snapshot_entries: u64) -> Node {
    node_on(id, new_disks(id), None, snapshot_entries)
}

/// A node's disks: the WAL's and the watch history's.
fn new_disks(id: u64) -> (MemSegments, MemSegments) {
    let disk = MemSegments::new(format!("node-{id}"), SEGMENT_BYTES);
    (disk, MemSegments::new(format!("node-{id}-history"), SEGMENT_BYTES))
}

/// A node started on `disks` and its newest snapshot file (a restart when the disks hold a
/// log).
fn node_on(
    id: u64,
    disks: (MemSegments, MemSegments),
    snapshot: Option<Arc<Archive>>,
    snapshot_entries: u64,
) -> Node {
    start_node(id, disks, snapshot, snapshot_entries, false)
}

/// A new node, not in the registry, started with `--join` and no data.
fn joiner(id: u64) -> Node {
    start_node(id, new_disks(id), None, 1_000_000, true)
}

fn start_node(
    id: u64,
    (disk, history): (MemSegments, MemSegments),
    snapshot: Option<Arc<Archive>>,
    snapshot_entries: u64,
    join: bool,
) -> Node {
    let cfg = CoreConfig {
        node_id: NodeId(id),
        shard: ShardId(0),
        shards: 1,
        cluster: "sans-io".to_string(),
        registry: (1..=3)
            .map(|n| RegistryNode {
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
        tick_ms: 50,
        snapshots: corekv_server::core::SnapshotPolicy {
            entries: snapshot_entries,
            log_bytes: 1 << 30,
            write_bytes_per_sec: 1 << 30,
        },
        wall_epoch_ms: 0,
        join,
    };
    let metrics = Arc::new(ShardMetrics::default());
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let recovery = Recovery {
        segments: Box::new(disk.clone()),
        segment_bytes: SEGMENT_BYTES,
        mode: RecoveryMode::Strict,
        snapshot: snapshot.clone(),
        entry_cache_bytes: None,
        history: Box::new(history.clone()),
        history_segment_bytes: SEGMENT_BYTES,
        history_retention: corekv_server::core::history_retention(&Default::default()),
        history_cache_bytes: None,
    };
    let core = ShardCore::recover(cfg, recovery, metrics.clone(), &logger).unwrap();
    Node {
        core,
        disk,
        history,
        paused: BTreeSet::new(),
        drains_owed: BTreeSet::new(),
        metrics,
        replies: BTreeMap::new(),
        snapshots_taken: Vec::new(),
        newest_snapshot: snapshot,
    }
}

impl Node {
    /// What a turn left for the watch history, done at once, as the runtime does it: the
    /// flush jobs that are due, reads, retired segments; and drain notices for connections
    /// whose client reads (every reply is delivered at once). True when the core was called
    /// (a turn must follow).
    fn run_history(&mut self, out: &mut Outputs) -> bool {
        let mut called = false;
        for seq in out.history_retire.drain(..) {
            self.history.remove(seq);
        }
        for job in std::mem::take(&mut out.history_reads) {
            let data = self.history.read_at(job.read.seq, job.read.offset, job.read.len);
            self.core.on_history_read(job, data);
            called = true;
        }
        for conn in std::mem::take(&mut out.drain_notify) {
            if self.paused.contains(&conn) {
                self.drains_owed.insert(conn);
            } else {
                self.core.on_client_drained(conn);
                called = true;
            }
        }
        while let Some(job) = self.core.take_history_flush_job() {
            self.history.run(&job);
            self.core.on_history_flush_complete(job);
            called = true;
        }
        called
    }
}

/// Builds the snapshot a core asked for and hands it back, as the runtime's snapshot task
/// does (at once here).
fn make_snapshot(node: &mut Node, job: SnapshotJob) {
    let archive = Arc::new(job.build().unwrap());
    node.snapshots_taken.push(archive.meta().index);
    node.newest_snapshot = Some(archive.clone());
    node.core.on_snapshot_written(archive);
}

/// Turns of `node` (the first with `ticks` ticks) until its flushes are done (or, with
/// `hold`, held back: their count is returned), its messages appended to `messages`.
fn turns(
    node: &mut Node,
    now_us: u64,
    mut ticks: u64,
    hold: bool,
    out: &mut Outputs,
    messages: &mut Vec<raft::eraftpb::Message>,
) -> usize {
    let (mut held_jobs, mut flushed) = (0, true);
    while flushed {
        let turn = node.core.turn(now_us, ticks, out);
        ticks = 0;
        if let Some(job) = turn.snapshot {
            make_snapshot(node, job);
        }
        messages.append(&mut out.messages);
        for (conn, range) in out.replies.drain(..) {
            let frame = out.reply_bytes[range].to_vec();
            node.replies.entry(conn).or_default().push(frame);
        }
        flushed = node.run_history(out);
        while let Some(job) = node.core.take_flush_job() {
            if hold {
                held_jobs += 1;
                continue;
            }
            node.disk.run(&job);
            node.core.on_flush_complete(job);
            flushed = true;
        }
    }
    held_jobs
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    now_us: u64,
    out: Outputs,
    /// Nodes cut off from the others: their messages, both ways, are lost.
    cut: BTreeSet<u64>,
    /// Bytes of entry data in the largest AppendEntries message any core sent.
    largest_append: usize,
}

impl Cluster {
    fn new() -> Self {
        Self::with_snapshot_entries(1_000_000)
    }

    /// Three nodes that snapshot every `snapshot_entries` entries.
    fn with_snapshot_entries(snapshot_entries: u64) -> Self {
        Cluster {
            nodes: (1..=3).map(|id| (id, node(id, snapshot_entries))).collect(),
            now_us: 0,
            out: Outputs::default(),
            cut: BTreeSet::new(),
            largest_append: 0,
        }
    }

    /// Runs every core until no message is in flight: a turn, flushes (the in-memory disk
    /// completes at once, and a turn follows each), deliver.
    fn settle(&mut self) {
        let held = self.run(&[], 0);
        assert_eq!(held, 0);
    }

    /// [`Cluster::settle`], except that the flushes of the nodes in `held` never complete.
    /// Returns how many flush jobs were held back.
    fn settle_holding(&mut self, held: &[u64]) -> usize {
        self.run(held, 0)
    }

    /// [`Cluster::settle_holding`], the first turn of each core with `ticks` ticks.
    fn run(&mut self, held: &[u64], mut ticks: u64) -> usize {
        let mut held_jobs = 0;
        for _ in 0..10_000 {
            let mut messages = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                let hold = held.contains(id);
                held_jobs += turns(node, self.now_us, ticks, hold, &mut self.out, &mut messages);
            }
            ticks = 0;
            if messages.is_empty() {
                return held_jobs;
            }
            for message in messages {
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgAppend {
                    let bytes = message.entries.iter().map(|e| e.data.len()).sum::<usize>();
                    self.largest_append = self.largest_append.max(bytes);
                }
                let (to, from) = (message.to, message.from);
                if self.cut.contains(&to) || self.cut.contains(&from) {
                    continue;
                }
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                    // The file goes with the message, verified, as the runtime's transfer does.
                    let archive = self.nodes[&from].newest_snapshot.clone().expect("a snapshot");
                    let receiver = self.nodes.get_mut(&to).expect("known node");
                    receiver.newest_snapshot = Some(archive.clone());
                    receiver.core.offer_snapshot(archive);
                    self.nodes.get_mut(&from).expect("known node").core.report_snapshot(to, true);
                }
                self.nodes.get_mut(&to).expect("known node").core.step(message);
            }
        }
        panic!("messages kept flowing");
    }

    fn tick(&mut self) {
        self.now_us += 50_000;
        self.run(&[], 1);
    }

    /// Has node 1 (the preferred leader) campaign and ticks until some node leads; returns it.
    fn elect(&mut self) -> u64 {
        let now = self.now_us;
        self.nodes.get_mut(&1).unwrap().core.start(now);
        self.settle();
        let mut ticks = 0;
        while self.leader().is_none() {
            self.tick();
            ticks += 1;
            assert!(ticks < 100, "no leader after {ticks} ticks");
        }
        self.leader().unwrap()
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find(|(_, n)| n.core.is_leader()).map(|(&id, _)| id)
    }

    /// Sends a hello and then `frames` on connection `conn` of node `id`.
    fn send(&mut self, id: u64, conn: u64, frames: &[Vec<u8>]) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.core.set_now(self.now_us);
        let mut greeted = false;
        node.core.on_client_frame(conn, &mut greeted, RequestEncoder::new().hello(0, "sans-io", 1));
        assert!(greeted);
        for frame in frames {
            node.core.on_client_frame(conn, &mut greeted, frame);
        }
    }
}

// Shows: a 3-node group of cores elects the preferred leader, a hundred puts sent in one
// iteration become one raft entry, every replica applies them, the client gets a reply per
// put, and a follower sends clients to the leader.
#[test]
fn three_cores_elect_batch_replicate_and_redirect() {
    let mut cluster = Cluster::new();
    let leader = cluster.elect();
    assert_eq!(leader, 1, "the preferred node campaigned first and won");

    let mut encoder = RequestEncoder::new();
    let puts: Vec<Vec<u8>> = (0..100u64)
        .map(|i| encoder.put(i + 1, format!("key-{i}").as_bytes(), b"value").to_vec())
        .collect();
    let proposals_before =
        cluster.nodes[&leader].metrics.proposals.load(std::sync::atomic::Ordering::Relaxed);
    cluster.send(leader, 7, &puts);
    cluster.settle();
    let proposals =
        cluster.nodes[&leader].metrics.proposals.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(proposals - proposals_before, 1, "one raft entry carried all 100 puts");

    let replies = &cluster.nodes[&leader].replies[&7];
    let mut put_ids: Vec<u64> = replies
        .iter()
        .map(|f| verify_reply(f).unwrap())
        .filter(|r| r.reply_type() == Reply::PutReply)
        .map(|r| r.id())
        .collect();
    put_ids.sort_unstable();
    assert_eq!(put_ids, (1..=100).collect::<Vec<_>>(), "one reply per put");

    // Heartbeats carry the commit index to the followers, which then apply.
    cluster.tick();
    cluster.tick();
    for (id, node) in &cluster.nodes {
        let sm = node.core.state_machine();
        assert_eq!(sm.len(), 100, "node {id} applied every put");
        assert_eq!(sm.get(b"key-42").unwrap().value, b"value");
    }

    // A follower refuses a linearizable read and names the leader.
    let follower = if leader == 1 { 2 } else { 1 };
    let get = encoder.get(500, b"key-1", Consistency::Linearizable).to_vec();
    cluster.send(follower, 9, &[get]);
    cluster.settle();
    let frame = cluster.nodes[&follower].replies[&9].last().unwrap().clone();
    let reply = verify_reply(&frame).unwrap();
    let error = reply.reply_as_error_reply().expect("an error");
    assert_eq!(error.kind_type(), ErrorKind::NotLeader);
    let hint = error.kind_as_not_leader().unwrap();
    assert_eq!(hint.leader_id(), leader);
    assert_eq!(hint.leader_addr(), Some(format!("10.0.0.{leader}:7100").as_str()));

    // A stale read on the follower is served from its applied state and says so.
    let stale = encoder.get(501, b"key-1", Consistency::Stale).to_vec();
    cluster.send(follower, 10, &[stale]);
    let frame = cluster.nodes[&follower].core.state_machine().len();
    assert_eq!(frame, 100);
    cluster.settle();
    let frame = cluster.nodes[&follower].replies[&10].last().unwrap().clone();
    let get = verify_reply(&frame).unwrap().reply_as_get_reply().expect("a get reply");
    assert!(get.stale());
    assert_eq!(get.entry().unwrap().value().unwrap().bytes(), b"value");

    // A linearizable read on the leader goes through a ReadIndex round and sees the puts.
    let get = encoder.get(502, b"key-99", Consistency::Linearizable).to_vec();
    cluster.send(leader, 11, &[get]);
    cluster.settle();
    let frame = cluster.nodes[&leader].replies[&11].last().unwrap().clone();
    let get = verify_reply(&frame).unwrap().reply_as_get_reply().expect("a get reply");
    assert!(!get.stale());
    assert_eq!(get.entry().unwrap().meta().version(), 1);
}

// Shows: a linearizable read is answered while the followers' WAL flushes are still in
// flight. A follower's heartbeat response (the ReadIndex round's acknowledgement) promises
// nothing about its log, so it is not held behind an unrelated flush.
#[test]
fn reads_do_not_wait_for_follower_flushes() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1, "the preferred node campaigned first and won");
    let mut encoder = RequestEncoder::new();
    cluster.send(1, 7, &[encoder.put(1, b"k", b"v1").to_vec()]);
    cluster.settle();
    cluster.tick();

    // A second put reaches the followers, whose flushes of it are held back.
    cluster.send(1, 7, &[encoder.put(2, b"k", b"v2").to_vec()]);
    let mut held_jobs = cluster.settle_holding(&[2, 3]);
    let put_replies = |cluster: &Cluster| {
        cluster.nodes[&1].replies[&7].iter().filter(|f| verify_reply(f).unwrap().id() == 2).count()
    };
    assert_eq!(
        put_replies(&cluster),
        0,
        "the second put cannot commit while both followers' flushes are held"
    );

    cluster.send(1, 9, &[encoder.get(3, b"k", Consistency::Linearizable).to_vec()]);
    held_jobs += cluster.settle_holding(&[2, 3]);
    let replies = cluster.nodes[&1].replies.get(&9).cloned().unwrap_or_default();
    let read = replies
        .iter()
        .map(|f| verify_reply(f).unwrap())
        .find(|r| r.id() == 3)
        .expect("the read is answered while the followers' flushes are still in flight");
    let get = read.reply_as_get_reply().expect("a get reply");
    assert_eq!(get.entry().unwrap().value().unwrap().bytes(), b"v1", "it sees the committed value");
    assert!(held_jobs > 0, "the followers had flushes in flight");
}

// Shows: a group's replicas do not snapshot at the same index. Each one's first snapshot
// waits its stagger (its rank among the voters / 3 of a period), later ones a whole period,
// so the three stay a third of a period apart instead of building and writing at once.
#[test]
fn replicas_snapshot_out_of_step() {
    let mut cluster = Cluster::with_snapshot_entries(30);
    let leader = cluster.elect();
    let mut encoder = RequestEncoder::new();
    for i in 0..130u64 {
        // One put per round: one raft entry each.
        let put = encoder.put(i + 1, format!("key-{i}").as_bytes(), b"value").to_vec();
        cluster.send(leader, 100 + i, &[put]);
        cluster.settle();
    }
    let taken: BTreeMap<u64, Vec<u64>> =
        cluster.nodes.iter().map(|(&id, n)| (id, n.snapshots_taken.clone())).collect();
    // Index 1 is the new leader's empty entry; the puts follow.
    assert_eq!(taken[&1], vec![30, 60, 90, 120], "rank 0: every 30 entries");
    assert_eq!(taken[&2], vec![40, 70, 100, 130], "rank 1: 10 entries later");
    assert_eq!(taken[&3], vec![50, 80, 110], "rank 2: 20 entries later");
    for (id, node) in &cluster.nodes {
        assert_eq!(node.core.state_machine().len(), 130, "node {id} holds every key");
    }
}

// Shows: a replica whose data was wiped, restarted without --join, cannot help elect a leader
// that lacks writes it had acknowledged. Node 2 misses writes that nodes 1 and 3 commit; node
// 3 is wiped and node 1 cut off, so no leader remembers what node 3 acknowledged and nothing
// tells node 3 it lost data. Node 3's vote would make node 2 leader, without those writes;
// node 3 withholds it, because its log is empty and node 2's is not. Once node 1 is back it
// leads, node 3 catches up from it, and then votes like any replica.
#[test]
fn an_empty_replica_does_not_elect_a_candidate_with_entries() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let mut encoder = RequestEncoder::new();

    cluster.cut.insert(2);
    let puts: Vec<Vec<u8>> = (0..10u64)
        .map(|i| encoder.put(i + 1, format!("key-{i}").as_bytes(), b"acknowledged").to_vec())
        .collect();
    cluster.send(1, 7, &puts);
    cluster.settle();
    let acknowledged = cluster.nodes[&1].replies[&7]
        .iter()
        .filter(|f| verify_reply(f).unwrap().reply_type() == Reply::PutReply)
        .count();
    assert_eq!(acknowledged, 10, "nodes 1 and 3 committed the puts");
    assert_eq!(cluster.nodes[&2].core.state_machine().len(), 0, "node 2 missed them");

    // Node 3 loses its data and restarts empty; node 1 is cut off, node 2 is back.
    cluster.nodes.insert(3, node(3, 1_000_000));
    cluster.cut.clear();
    cluster.cut.insert(1);
    for _ in 0..100 {
        cluster.tick();
        assert!(
            !cluster.nodes[&2].core.is_leader(),
            "node 2 was elected with the empty node's vote, without the acknowledged puts"
        );
    }
    let withheld =
        cluster.nodes[&3].metrics.votes_withheld.load(std::sync::atomic::Ordering::Relaxed);
    assert!(withheld > 0, "node 3 was asked for its vote and withheld it");

    // Node 1 comes back, leads (node 2 votes for its longer log), and node 3 catches up.
    cluster.cut.clear();
    let mut ticks = 0;
    while cluster.leader().is_none() || cluster.nodes[&3].core.state_machine().len() < 10 {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 200, "no leader with node 3 caught up after {ticks} ticks");
    }
    assert_eq!(cluster.leader(), Some(1));
    for (id, node) in &cluster.nodes {
        let sm = node.core.state_machine();
        assert_eq!(sm.get(b"key-9").unwrap().value, b"acknowledged", "node {id} holds the puts");
    }

    // Caught up, node 3 votes again: with node 1 cut off, nodes 2 and 3 elect one of them.
    cluster.tick();
    cluster.cut.insert(1);
    let mut ticks = 0;
    while !(cluster.nodes[&2].core.is_leader() || cluster.nodes[&3].core.is_leader()) {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 200, "nodes 2 and 3 elected no leader after {ticks} ticks");
    }
}

// Shows: a wiped replica turns to joining when a leader's heartbeat shows it lost data (and
// has the leader probe it, so it catches up without waiting for a write): with an empty log it
// takes a snapshot, which the leader makes for it, then votes again.
// Restarted with the rebuilding mark and a target its log has not reached, it goes on joining
// and withholds its vote; once caught up it votes again, also after a restart.
#[test]
fn a_wiped_replica_joins_and_goes_on_joining_after_a_restart() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let mut encoder = RequestEncoder::new();
    cluster.send(1, 7, &[encoder.put(1, b"k", b"v").to_vec()]);
    cluster.settle();
    cluster.tick();

    cluster.nodes.insert(3, node(3, 1_000_000));
    assert!(!cluster.nodes[&3].core.joining(), "fresh: nothing has told it about the cluster");
    let mut ticks = 0;
    while !cluster.nodes[&3].core.joining() {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 10, "the leader's heartbeat did not show node 3 its loss");
    }
    // With an empty log it asks for a snapshot (never entries from index 1), which the
    // leader takes for it: it had none.
    let mut ticks = 0;
    while cluster.nodes[&3].core.state_machine().get(b"k").is_none() {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 10, "the leader sent no snapshot, with no write to trigger it");
    }
    assert_eq!(cluster.nodes[&1].snapshots_taken.len(), 1, "the leader took one for it");
    assert_eq!(
        cluster.nodes[&3].metrics.snapshots_installed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    cluster.tick();
    assert!(!cluster.nodes[&3].core.catching_up(), "caught up, it votes again");

    // A restart part way: the mark names a commit index its log has not reached.
    let disk = cluster.nodes[&3].disk.clone();
    let history = cluster.nodes[&3].history.clone();
    let snapshot = cluster.nodes[&3].newest_snapshot.clone();
    let target = cluster.nodes[&3].core.state_machine().applied_index() + 1;
    {
        let mut node = node_on(3, (disk.clone(), history.clone()), snapshot.clone(), 1_000_000);
        let store = node.core.raft_mut().mut_store();
        store.set_rebuilding(Some(target)).unwrap();
        while let Some(job) = store.take_flush_job() {
            disk.run(&job);
            store.on_flush_complete(job);
        }
    }
    cluster.nodes.insert(3, node_on(3, (disk, history), snapshot, 1_000_000));
    assert!(cluster.nodes[&3].core.joining(), "the mark survived the restart");
    cluster.cut.insert(1);
    for _ in 0..100 {
        cluster.tick();
        assert!(!cluster.nodes[&2].core.is_leader(), "node 3 voted while joining");
    }
    cluster.cut.clear();
    let mut ticks = 0;
    while cluster.leader().is_none() {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 200, "no leader after {ticks} ticks");
    }
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 8, &[encoder.put(2, b"k2", b"v2").to_vec()]);
    cluster.settle();
    let mut ticks = 0;
    while cluster.nodes[&3].core.catching_up() {
        cluster.tick();
        ticks += 1;
        assert!(ticks < 200, "node 3 did not reach its target after {ticks} ticks");
    }
    // The cleared mark is durable with the next flush, here the next write's.
    cluster.send(leader, 8, &[encoder.put(3, b"k3", b"v3").to_vec()]);
    cluster.settle();
    cluster.tick();
    let disks = (cluster.nodes[&3].disk.clone(), cluster.nodes[&3].history.clone());
    let snapshot = cluster.nodes[&3].newest_snapshot.clone();
    cluster.nodes.insert(3, node_on(3, disks, snapshot, 1_000_000));
    assert!(!cluster.nodes[&3].core.joining(), "caught up, the mark was cleared");
}

// Shows a node serves clients of every protocol version from the oldest it supports to its
// own (an older client skips the fields it does not know), and refuses others naming the range.
#[test]
fn hello_accepts_the_supported_protocol_versions_only() {
    use corekv_proto::constants::{CLIENT_PROTOCOL_OLDEST, CLIENT_PROTOCOL_VERSION};
    let mut cluster = Cluster::new();
    let mut encoder = RequestEncoder::new();
    for version in [CLIENT_PROTOCOL_OLDEST - 1, CLIENT_PROTOCOL_VERSION + 1] {
        let mut greeted = false;
        let conn = 100 + u64::from(version);
        let hello = encoder.hello_speaking(0, "sans-io", 1, version);
        cluster.nodes.get_mut(&1).unwrap().core.on_client_frame(conn, &mut greeted, hello);
        assert!(!greeted, "version {version} was accepted");
        cluster.settle();
        let frame = cluster.nodes[&1].replies[&conn].last().expect("a refusal").clone();
        let reply = verify_reply(&frame).unwrap();
        let reason = reply
            .reply_as_error_reply()
            .and_then(|e| e.kind_as_invalid_request())
            .and_then(|e| e.reason())
            .unwrap_or_default()
            .to_string();
        let range = format!("{CLIENT_PROTOCOL_OLDEST} to {CLIENT_PROTOCOL_VERSION}");
        assert!(reason.contains(&range), "{reason}");
    }
    for version in CLIENT_PROTOCOL_OLDEST..=CLIENT_PROTOCOL_VERSION {
        let mut greeted = false;
        let hello = encoder.hello_speaking(0, "sans-io", 1, version);
        cluster.nodes.get_mut(&1).unwrap().core.on_client_frame(200, &mut greeted, hello);
        assert!(greeted, "version {version} was refused");
    }
}

// Shows a follower far behind gets appends no larger than raft-rs's per-message bound, even
// though raft-rs merges every append to one peer in a Ready into one message: unmerged, the
// appends of one Ready to a follower returning with megabytes to catch up exceeded the peer
// frame limit and the follower refused them (catching up stalled). It still catches up.
#[test]
fn appends_to_a_lagging_follower_stay_within_the_message_bound() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let mut encoder = RequestEncoder::new();
    cluster.cut.insert(3);
    let value = vec![b'v'; 64 * 1024];
    // One put per turn: each its own raft entry, 64 entries of 64 KiB (4 MiB) to catch up.
    for i in 0..64u64 {
        let put = encoder.put(i + 1, format!("big-{i}").as_bytes(), &value).to_vec();
        cluster.send(1, 7, &[put]);
        cluster.settle();
    }
    cluster.largest_append = 0;
    cluster.cut.clear();
    for _ in 0..40 {
        cluster.tick();
        if cluster.nodes[&3].core.state_machine().len() == 64 {
            break;
        }
    }
    assert_eq!(cluster.nodes[&3].core.state_machine().len(), 64, "node 3 caught up");
    let bound = corekv_server::constants::RAFT_MESSAGE_BYTES_MAX as usize;
    assert!(
        cluster.largest_append <= bound,
        "an append of {} bytes of entries, over the bound of {bound}",
        cluster.largest_append
    );
    assert!(cluster.largest_append > bound / 2, "appends were batched up to near the bound");
}

fn addr(id: u64) -> MemberAddr {
    MemberAddr {
        host: format!("10.0.0.{id}"),
        client_port: 7100,
        peer_port: 7200,
        http_port: 7300,
        resp_port: None,
    }
}

fn ids(list: &[u64]) -> Vec<NodeId> {
    list.iter().map(|&id| NodeId(id)).collect()
}

impl Cluster {
    fn propose(&mut self, id: u64, change: MembershipChange) -> Result<u64, ChangeRefused> {
        let now = self.now_us;
        let node = self.nodes.get_mut(&id).unwrap();
        node.core.set_now(now);
        node.core.propose_membership_change(change)
    }

    /// Ticks until `done` holds, at most `ticks` times.
    /// Turns of node `id` alone (no message delivered): the messages it sends.
    fn turn_of(&mut self, id: u64) -> Vec<raft::eraftpb::Message> {
        let mut messages = Vec::new();
        let node = self.nodes.get_mut(&id).expect("known node");
        turns(node, self.now_us, 0, false, &mut self.out, &mut messages);
        messages
    }

    /// Steps each of `messages` into the node it is for.
    fn deliver(&mut self, messages: Vec<raft::eraftpb::Message>) {
        for message in messages {
            self.nodes.get_mut(&message.to).expect("known node").core.step(message);
        }
    }

    fn tick_until(&mut self, ticks: u64, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..ticks {
            if done(self) {
                return;
            }
            self.tick();
        }
        assert!(done(self), "{what} after {ticks} ticks");
    }
}

// Shows: membership changes go through raft, one at a time, checked before they are
// proposed. A new node (started with --join, no data, not in the registry) is added as a
// learner and catches up by snapshot — it takes its membership, with every member's address,
// from it; it is promoted once caught up; a voter is replaced in one joint change (left by
// raft-rs by itself) and another removed; a learner added to be promoted is promoted by the
// leader once caught up. Refused, with nothing proposed: removing the
// leader, a non-member, or a voter whose removal leaves no healthy majority; promoting a
// voter or a learner far behind; adding a member twice; a second change while one is pending;
// any change while a member runs an older corekv.
#[test]
fn members_are_added_promoted_replaced_and_removed_through_raft() {
    use MembershipChange::{AddLearner, Promote, Remove, Replace};
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let mut encoder = RequestEncoder::new();
    cluster.send(1, 7, &[encoder.put(1, b"k", b"v").to_vec()]);
    cluster.settle();
    for id in 1..=3 {
        assert_eq!(cluster.nodes[&id].core.membership().voters, ids(&[1, 2, 3]));
    }

    assert_eq!(
        cluster.propose(1, Remove { id: NodeId(1) }),
        Err(ChangeRefused::IsLeader { id: NodeId(1) })
    );
    assert_eq!(
        cluster.propose(1, Remove { id: NodeId(9) }),
        Err(ChangeRefused::NotMember { id: NodeId(9) })
    );
    assert_eq!(
        cluster.propose(1, Promote { id: NodeId(2) }),
        Err(ChangeRefused::NotLearner { id: NodeId(2) })
    );
    assert!(matches!(
        cluster.propose(2, Promote { id: NodeId(2) }),
        Err(ChangeRefused::NotLeader { .. })
    ));
    // Node 3 down for more than an election timeout: removing node 2 would leave one healthy
    // voter of two.
    cluster.cut.insert(3);
    for _ in 0..12 {
        cluster.tick();
    }
    let refused = cluster.propose(1, Remove { id: NodeId(2) });
    assert_eq!(refused, Err(ChangeRefused::BelowMajority { id: NodeId(2), healthy: 1, voters: 2 }));
    assert!(refused.unwrap_err().to_string().contains("fewer than a majority (2)"));
    cluster.cut.clear();
    cluster.tick();

    // A member that said (in its peer hello) it speaks peer protocol 1 cannot apply changes.
    cluster.nodes.get_mut(&1).unwrap().core.note_peer_protocol(3, 1);
    let old = cluster.propose(1, AddLearner { id: NodeId(4), addr: addr(4), promote: false });
    assert_eq!(old, Err(ChangeRefused::OldPeer { id: NodeId(3), protocol: 1 }));
    assert!(old.unwrap_err().to_string().contains("upgrade it first"));
    cluster.nodes.get_mut(&1).unwrap().core.note_peer_protocol(3, 2);

    cluster.nodes.insert(4, joiner(4));
    assert!(cluster.nodes[&4].core.membership().voters.is_empty(), "a joiner knows no member");
    cluster.propose(1, AddLearner { id: NodeId(4), addr: addr(4), promote: false }).unwrap();
    let pending = cluster.propose(1, Promote { id: NodeId(4) });
    assert!(matches!(pending, Err(ChangeRefused::ChangePending { .. })), "{pending:?}");
    cluster.settle();
    cluster.tick_until(20, "node 4 caught up by snapshot", |c| {
        c.nodes[&4].core.state_machine().get(b"k").is_some()
    });
    for id in 1..=4 {
        let membership = cluster.nodes[&id].core.membership();
        assert_eq!(membership.voters, ids(&[1, 2, 3]), "node {id}");
        assert_eq!(membership.learners, ids(&[4]), "node {id}");
        assert_eq!(membership.addrs.get(&NodeId(4)), Some(&addr(4)), "node {id}");
        assert_eq!(membership.addrs.get(&NodeId(2)), Some(&addr(2)), "node {id}");
    }
    assert_eq!(
        cluster.nodes[&4].metrics.snapshots_installed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let again = cluster.propose(1, AddLearner { id: NodeId(2), addr: addr(2), promote: false });
    assert_eq!(again, Err(ChangeRefused::AlreadyMember { id: NodeId(2) }));

    // A learner far behind is not promoted.
    cluster.cut.insert(4);
    for i in 0..1_050u64 {
        cluster.send(1, 8, &[encoder.put(10 + i, format!("k{i}").as_bytes(), b"v").to_vec()]);
        cluster.settle();
    }
    let behind = cluster.propose(1, Promote { id: NodeId(4) });
    assert!(
        matches!(behind, Err(ChangeRefused::LearnerBehind { id: NodeId(4), .. })),
        "{behind:?}"
    );
    cluster.cut.clear();
    let last = cluster.nodes[&1].core.raft().raft.raft_log.last_index();
    cluster.tick_until(50, "node 4 caught up by log", |c| {
        c.nodes[&4].core.state_machine().applied_index() >= last
    });
    cluster.propose(1, Promote { id: NodeId(4) }).unwrap();
    cluster.settle();
    cluster.tick();
    for id in 1..=4 {
        let membership = cluster.nodes[&id].core.membership();
        assert_eq!(membership.voters, ids(&[1, 2, 3, 4]), "node {id}");
        assert!(membership.learners.is_empty(), "node {id}");
    }

    // Node 5 replaces node 3 in one joint change.
    cluster.nodes.insert(5, joiner(5));
    cluster.propose(1, AddLearner { id: NodeId(5), addr: addr(5), promote: true }).unwrap();
    cluster.settle();
    let last = cluster.nodes[&1].core.raft().raft.raft_log.last_index();
    cluster.tick_until(50, "node 5 caught up", |c| {
        c.nodes[&5].core.state_machine().applied_index() >= last
    });
    cluster.propose(1, Replace { old: NodeId(3), new: NodeId(5) }).unwrap();
    cluster.settle();
    cluster.tick_until(20, "the joint configuration left", |c| {
        [1, 2, 4, 5].iter().all(|id| !c.nodes[id].core.membership().is_joint())
    });
    for id in [1, 2, 4, 5] {
        let membership = cluster.nodes[&id].core.membership();
        assert_eq!(membership.voters, ids(&[1, 2, 4, 5]), "node {id}");
        assert!(!membership.addrs.contains_key(&NodeId(3)), "node {id}");
    }
    cluster.propose(1, Remove { id: NodeId(4) }).unwrap();
    cluster.settle();
    cluster.tick();
    assert_eq!(cluster.nodes[&1].core.membership().voters, ids(&[1, 2, 5]));

    // Added to be promoted once caught up: the leader promotes it by itself.
    cluster.nodes.insert(6, joiner(6));
    cluster.propose(1, AddLearner { id: NodeId(6), addr: addr(6), promote: true }).unwrap();
    cluster.settle();
    cluster.tick_until(50, "node 6 promoted", |c| {
        c.nodes[&1].core.membership().voters == ids(&[1, 2, 5, 6])
    });
    assert!(cluster.nodes[&1].core.membership().promote.is_empty());
    let changes = &cluster.nodes[&1].metrics.conf_changes;
    assert_eq!(changes.load(std::sync::atomic::Ordering::Relaxed), 8);

    // The group goes on with its new voters: node 1 cut off, nodes 2, 5 and 6 elect a leader.
    cluster.cut.insert(1);
    cluster.tick_until(100, "a leader among nodes 2, 5 and 6", |c| {
        [2, 5, 6].iter().any(|id| c.nodes[id].core.is_leader())
    });
    cluster.cut.clear();
}

// Shows: leadership handed to a node other than the shard's preferred one (an operator's
// `leader transfer`) stays there — the automatic balancing leaves it alone well past its
// 5 s wait — while leadership won by an election goes back to the preferred node once it is
// caught up.
#[test]
fn a_transfer_sticks_and_an_election_winner_hands_back_to_the_preferred_node() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1, "node 1 is shard 0's preferred leader");
    let mut encoder = RequestEncoder::new();
    cluster.send(1, 7, &[encoder.transfer_leader(1, NodeId(2)).to_vec()]);
    cluster.tick_until(20, "node 2 leads", |c| c.leader() == Some(2));
    // 10 s of ticks: twice the balancing's wait, many balancing rounds.
    for _ in 0..200 {
        cluster.tick();
    }
    assert_eq!(cluster.leader(), Some(2), "the transfer stuck");

    // Node 1 misses a write, then node 2 goes away: node 3 wins the election (node 1's log
    // is behind), and hands leadership back to node 1 once node 1 has caught up.
    cluster.cut.insert(1);
    cluster.send(2, 8, &[encoder.put(2, b"k", b"v").to_vec()]);
    cluster.settle();
    cluster.cut = BTreeSet::from([2]);
    cluster.tick_until(100, "node 3 is elected", |c| c.leader() == Some(3));
    cluster.cut.clear();
    cluster.tick_until(300, "node 1 leads again", |c| c.leader() == Some(1));
    assert!(cluster.nodes[&1].core.state_machine().get(b"k").is_some());
}

// Shows: in a cluster started at once, the preferred leader wins the first election even
// when its campaign at start was lost (its peers were not listening yet): the other replicas'
// election timers wait out their first timeout, so its second campaign comes first. Without
// that wait, the race of timers picked the leader and the leadership moved five seconds later,
// under the first load. Twenty fresh clusters, each with its own random timeouts.
#[test]
fn the_preferred_node_wins_a_new_clusters_first_election_after_its_campaign_was_lost() {
    for round in 0..20 {
        let mut cluster = Cluster::new();
        cluster.cut.insert(1);
        let now = cluster.now_us;
        cluster.nodes.get_mut(&1).unwrap().core.start(now);
        cluster.settle();
        cluster.cut.clear();
        cluster.tick_until(60, "a leader", |c| c.leader().is_some());
        assert_eq!(cluster.leader(), Some(1), "round {round}: the preferred node leads");
    }
}

// Shows: a write admitted by a leader that steps down before proposing it (the new leader's
// vote request and first append arrive in between) is answered `NotLeader` at once and never
// applies. raft-rs would forward the proposal of a replica that has just become a follower to
// the new leader and report it taken: the write then applied with its writer never answered
// (the new leader's empty entry took the index the writer waited on), which a client saw as
// "did not answer" at every leadership transfer under load.
#[test]
fn a_write_admitted_by_a_leader_that_steps_down_before_proposing_it_is_refused() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    // Heartbeats carry the commit index: every replica has caught up with the leader.
    cluster.tick();
    cluster.tick();
    let mut encoder = RequestEncoder::new();
    // Node 1 hands leadership to node 2, which wins with node 3's vote; what node 2 sends
    // node 1 waits.
    cluster.send(1, 7, &[encoder.transfer_leader(1, NodeId(2)).to_vec()]);
    let from_1 = cluster.turn_of(1);
    cluster.deliver(from_1);
    let (to_1, to_3): (Vec<_>, Vec<_>) = cluster.turn_of(2).into_iter().partition(|m| m.to == 1);
    cluster.deliver(to_3);
    let from_3 = cluster.turn_of(3);
    cluster.deliver(from_3);
    let (appends_to_1, to_3): (Vec<_>, Vec<_>) =
        cluster.turn_of(2).into_iter().partition(|m| m.to == 1);
    assert!(cluster.nodes[&2].core.raft().raft.state == raft::StateRole::Leader);
    // A put reaches node 1 while it still leads; then node 2's vote request and append.
    cluster.send(1, 8, &[encoder.put(9, b"k", b"v").to_vec()]);
    cluster.deliver(to_1);
    cluster.deliver(appends_to_1);
    cluster.deliver(to_3);
    cluster.settle();
    cluster.tick();
    cluster.tick();

    let frames = cluster.nodes[&1].replies.get(&8).cloned().unwrap_or_default();
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| {
            let reply = verify_reply(f).unwrap();
            match reply.reply_as_error_reply() {
                Some(error) => format!("{:?}", error.kind_type()),
                None => format!("{:?}", reply.reply_type()),
            }
        })
        .filter(|kind| kind != "HelloReply")
        .collect();
    assert_eq!(kinds, ["NotLeader"], "the put is answered, once");
    for (id, node) in &cluster.nodes {
        assert!(node.core.state_machine().get(b"k").is_none(), "node {id} applied the put");
    }
}

/// The watch replies on connection `conn` of node `id`, one line each, and forgets them.
fn watch_lines(cluster: &mut Cluster, id: u64, conn: u64) -> Vec<String> {
    let frames = cluster.nodes.get_mut(&id).unwrap().replies.remove(&conn).unwrap_or_default();
    let text = |b: Option<flatbuffers::Vector<'_, u8>>| {
        String::from_utf8_lossy(b.map(|v| v.bytes()).unwrap_or_default()).into_owned()
    };
    frames
        .iter()
        .filter_map(|frame| {
            let reply = verify_reply(frame).unwrap();
            let id = reply.id();
            Some(match reply.reply_type() {
                Reply::HelloReply => return None,
                Reply::WatchEvents => {
                    let events = reply.reply_as_watch_events().unwrap();
                    let changes: Vec<String> = events
                        .changes()
                        .unwrap()
                        .iter()
                        .map(|c| {
                            let mut line = match c.kind() {
                                corekv_proto::client::ChangeKind::Put => format!(
                                    "put {}={} v{}",
                                    text(Some(c.key())),
                                    text(c.value()),
                                    c.meta().unwrap().version()
                                ),
                                _ => format!("delete {}", text(Some(c.key()))),
                            };
                            if let Some(prev) = c.prev_value() {
                                line += &format!(" (was {})", text(Some(prev)));
                            }
                            line
                        })
                        .collect();
                    format!("#{id} events {}: {}", events.index(), changes.join(", "))
                }
                Reply::WatchProgress => {
                    format!("#{id} progress {}", reply.reply_as_watch_progress().unwrap().index())
                }
                Reply::WatchEnded => {
                    let end = reply.reply_as_watch_ended().unwrap();
                    format!(
                        "#{id} ended {:?} next {} first {} leader {}",
                        end.reason(),
                        end.next_index(),
                        end.first_available(),
                        end.leader_id()
                    )
                }
                Reply::CancelWatchReply => {
                    format!(
                        "#{id} cancel found {}",
                        reply.reply_as_cancel_watch_reply().unwrap().found()
                    )
                }
                Reply::ErrorReply => {
                    format!("#{id} error {:?}", reply.reply_as_error_reply().unwrap().kind_type())
                }
                other => format!("#{id} {other:?}"),
            })
        })
        .collect()
}

// Shows: a watch streams, in log order and one frame per entry, every change to its prefix
// — a batch's changes together, each with the value before when asked — and nothing else; a
// watch from an older index first gets the recorded history from there, then goes live, with
// no gap and no duplicate; progress replies come while nothing changes; a cancel ends one
// watch; a follower refuses watches (NotLeader); when leadership moves, every watch ends
// saying where to resume, and a watch at the new leader from there continues exactly; a
// start older than the history kept is answered Compacted, with the oldest index kept.
#[test]
fn watches_stream_changes_resume_at_a_new_leader_and_report_compaction() {
    use corekv_proto::client::WatchScope;
    use corekv_proto::encode::WatchSpec;
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let mut encoder = RequestEncoder::new();
    let spec = |scope, key: &'static [u8], start_index, prev_value, progress_ms| WatchSpec {
        scope,
        key,
        range_end: b"",
        start_index,
        prev_value,
        progress_ms,
    };
    cluster.send(1, 7, &[encoder.put(1, b"k1", b"a").to_vec()]);
    cluster.settle();
    let first_put = cluster.nodes[&1].core.state_machine().get(b"k1").unwrap().meta.mod_index;

    let live = spec(WatchScope::Prefix, b"k", 0, true, 0);
    let started_after = cluster.nodes[&1].core.state_machine().applied_index();
    cluster.send(1, 20, &[encoder.watch(100, &live).to_vec()]);
    cluster.send(1, 7, &[encoder.batch_put(2, &[(&b"k1"[..], &b"b"[..]), (b"k2", b"c")]).to_vec()]);
    cluster.settle();
    cluster.send(1, 7, &[encoder.put(3, b"other", b"x").to_vec()]);
    cluster.settle();
    cluster.send(1, 7, &[encoder.delete(4, b"k1").to_vec()]);
    cluster.settle();
    let k2 = cluster.nodes[&1].core.state_machine().get(b"k2").unwrap().meta.mod_index;
    let deleted_at = cluster.nodes[&1].core.state_machine().applied_index();
    assert_eq!(
        watch_lines(&mut cluster, 1, 20),
        vec![
            format!("#100 progress {started_after}"),
            format!("#100 events {k2}: put k1=b v2 (was a), put k2=c v1"),
            format!("#100 events {deleted_at}: delete k1 (was b)"),
        ],
        "where it starts; the batch's changes together; the write to another prefix not sent"
    );

    // From the first put's index: the history, then live, without previous values.
    let replay = spec(WatchScope::Prefix, b"k", first_put, false, 100);
    cluster.send(1, 21, &[encoder.watch(101, &replay).to_vec()]);
    cluster.settle();
    assert_eq!(
        watch_lines(&mut cluster, 1, 21),
        vec![
            format!("#101 events {first_put}: put k1=a v1"),
            format!("#101 events {k2}: put k1=b v2, put k2=c v1"),
            format!("#101 events {deleted_at}: delete k1"),
            format!("#101 progress {deleted_at}"),
        ],
        "the history, then word that it caught up"
    );
    for _ in 0..3 {
        cluster.tick();
    }
    let progress = watch_lines(&mut cluster, 1, 21);
    assert!(!progress.is_empty(), "progress while nothing changes");
    let applied = cluster.nodes[&1].core.state_machine().applied_index();
    assert!(progress.iter().all(|l| *l == format!("#101 progress {applied}")), "{progress:?}");

    // A single key on a follower: refused with NotLeader.
    cluster.send(2, 22, &[encoder.watch(102, &spec(WatchScope::Key, b"k2", 0, false, 0)).to_vec()]);
    cluster.settle();
    assert_eq!(watch_lines(&mut cluster, 2, 22), vec!["#102 error NotLeader"]);

    // Cancel ends one watch; a second cancel finds nothing.
    cluster.send(
        1,
        21,
        &[encoder.cancel_watch(103, 101).to_vec(), encoder.cancel_watch(104, 101).to_vec()],
    );
    cluster.settle();
    let next = applied + 1;
    assert_eq!(
        watch_lines(&mut cluster, 1, 21),
        vec![
            format!("#101 ended Cancelled next {next} first 0 leader 0"),
            "#103 cancel found true".to_string(),
            "#104 cancel found false".to_string(),
        ]
    );

    // Leadership moves to node 2: the watch ends saying where to resume; resumed there, it
    // gets the next change once.
    cluster.send(1, 7, &[encoder.transfer_leader(5, NodeId(2)).to_vec()]);
    cluster.tick_until(20, "node 2 leads", |c| c.leader() == Some(2));
    let ended = watch_lines(&mut cluster, 1, 20);
    assert_eq!(ended.len(), 1, "{ended:?}");
    let prefix = "#100 ended NotLeader next ";
    assert!(ended[0].starts_with(prefix), "{ended:?}");
    let resume: u64 = ended[0][prefix.len()..].split(' ').next().unwrap().parse().unwrap();
    assert_eq!(resume, next, "everything before was delivered");
    cluster.send(
        2,
        23,
        &[encoder.watch(105, &spec(WatchScope::Prefix, b"k", resume, true, 0)).to_vec()],
    );
    cluster.send(2, 7, &[encoder.put(6, b"k3", b"d").to_vec()]);
    cluster.settle();
    let k3 = cluster.nodes[&2].core.state_machine().get(b"k3").unwrap().meta.mod_index;
    assert_eq!(
        watch_lines(&mut cluster, 2, 23),
        vec![format!("#105 progress {}", k3 - 1), format!("#105 events {k3}: put k3=d v1")]
    );

    // A small retention: the oldest segments go, and a start before what is kept is
    // Compacted.
    let small = Retention { min_entries: 0, min_bytes: 0, min_age_ms: 0, max_bytes: 1 << 20 };
    cluster.nodes.get_mut(&2).unwrap().core.set_history_limits(small, 0);
    for i in 0..40u64 {
        let value = vec![b'v'; 64 * 1024];
        cluster.send(2, 7, &[encoder.put(10 + i, format!("z{i}").as_bytes(), &value).to_vec()]);
        cluster.settle();
    }
    cluster.tick();
    assert!(cluster.nodes[&2].core.history_range().0 > first_put, "segments were retired");
    cluster.send(
        2,
        24,
        &[encoder.watch(106, &spec(WatchScope::Prefix, b"k", first_put, false, 0)).to_vec()],
    );
    cluster.settle();
    let compacted = watch_lines(&mut cluster, 2, 24);
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    assert!(
        compacted[0].starts_with(&format!("#106 ended Compacted next {first_put} first ")),
        "{compacted:?}"
    );
    let metrics = &cluster.nodes[&2].metrics;
    assert_eq!(metrics.watches_compacted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// The bytes of the watch replies on connection `conn` of node `id`, and the put keys their
/// events carry, in order (forgotten after).
fn watched_keys(cluster: &mut Cluster, id: u64, conn: u64) -> (usize, Vec<String>) {
    let frames = cluster.nodes.get_mut(&id).unwrap().replies.remove(&conn).unwrap_or_default();
    let mut keys = Vec::new();
    for frame in &frames {
        let reply = verify_reply(frame).unwrap();
        if let Some(events) = reply.reply_as_watch_events() {
            for change in events.changes().unwrap() {
                keys.push(String::from_utf8(change.key().bytes().to_vec()).unwrap());
            }
        }
    }
    (frames.iter().map(Vec::len).sum(), keys)
}

// Shows: a watch from an old index reads the history back from disk when memory holds none
// of it, every change in order; a live watcher whose client reads nothing stops being sent
// events once its connection holds its budget unsent (catching up instead), and after the
// drain gets every change, once, in order; a restarted replica keeps its history, and a
// watch there from the first index still gets everything.
#[test]
fn watchers_read_history_from_disk_survive_a_paused_client_and_a_restart() {
    use corekv_proto::client::WatchScope;
    use corekv_proto::encode::WatchSpec;
    use std::sync::atomic::Ordering::Relaxed;
    let mut cluster = Cluster::new();
    assert_eq!(cluster.elect(), 1);
    let keep =
        Retention { min_entries: 0, min_bytes: u64::MAX, min_age_ms: 0, max_bytes: u64::MAX };
    for node in cluster.nodes.values_mut() {
        node.core.set_history_limits(keep, 0);
    }
    let mut encoder = RequestEncoder::new();
    let spec = |key: &'static [u8], start_index| WatchSpec {
        scope: WatchScope::Prefix,
        key,
        range_end: b"",
        start_index,
        prev_value: false,
        progress_ms: 0,
    };
    let value = vec![b'v'; 1024];
    let want_k: Vec<String> = (0..50).map(|i| format!("k{i:03}")).collect();
    for key in &want_k {
        cluster.send(1, 7, &[encoder.put(1, key.as_bytes(), &value).to_vec()]);
        cluster.settle();
    }
    cluster.tick();
    cluster.send(1, 30, &[encoder.watch(100, &spec(b"k", 1)).to_vec()]);
    cluster.settle();
    assert_eq!(watched_keys(&mut cluster, 1, 30).1, want_k, "from disk, in order");
    assert!(cluster.nodes[&1].metrics.history_reads.load(Relaxed) > 0, "read from disk");

    // A paused client: past its budget, the watcher stops getting live events.
    cluster.nodes.get_mut(&1).unwrap().paused.insert(31);
    cluster.send(1, 31, &[encoder.watch(101, &spec(b"p", 0)).to_vec()]);
    cluster.settle();
    let mut want_p = Vec::new();
    for batch in 0..80 {
        let keys: Vec<String> = (0..30).map(|i| format!("p{batch:03}-{i:02}")).collect();
        let items: Vec<(&[u8], &[u8])> =
            keys.iter().map(|k| (k.as_bytes(), value.as_slice())).collect();
        cluster.send(1, 7, &[encoder.batch_put(2, &items).to_vec()]);
        cluster.settle();
        want_p.extend(keys);
    }
    let (queued, seen) = watched_keys(&mut cluster, 1, 31);
    assert!(queued <= (1 << 20) + 64 * 1024, "{queued} bytes queued for a paused client");
    assert!(seen.len() < want_p.len() / 2, "{} of {} sent while paused", seen.len(), want_p.len());
    assert!(cluster.nodes[&1].metrics.watch_catch_ups.load(Relaxed) >= 1);
    // The client reads again: everything after what it had, once, in order.
    let node = cluster.nodes.get_mut(&1).unwrap();
    node.paused.clear();
    for conn in std::mem::take(&mut node.drains_owed) {
        node.core.on_client_drained(conn);
    }
    for _ in 0..50 {
        cluster.settle();
        let node = cluster.nodes.get_mut(&1).unwrap();
        node.core.on_client_drained(31);
    }
    let mut all = seen;
    all.extend(watched_keys(&mut cluster, 1, 31).1);
    assert_eq!(all, want_p, "nothing missed, nothing repeated, in order");

    // A restart keeps the history: node 2, leading after it, serves a watch from index 1.
    let (first, _) = cluster.nodes[&2].core.history_range();
    let disks = (cluster.nodes[&2].disk.clone(), cluster.nodes[&2].history.clone());
    let snapshot = cluster.nodes[&2].newest_snapshot.clone();
    cluster.nodes.insert(2, node_on(2, disks, snapshot, 1_000_000));
    assert_eq!(cluster.nodes[&2].core.history_range().0, first);
    cluster.tick();
    cluster.send(1, 7, &[encoder.transfer_leader(5, NodeId(2)).to_vec()]);
    cluster.tick_until(40, "node 2 leads", |c| c.leader() == Some(2));
    cluster.send(2, 32, &[encoder.watch(102, &spec(b"", 1)).to_vec()]);
    cluster.settle();
    let mut want = want_k.clone();
    want.extend(want_p);
    assert_eq!(watched_keys(&mut cluster, 2, 32).1, want);
}
