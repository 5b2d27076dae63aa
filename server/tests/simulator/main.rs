//! The deterministic simulator: the real shard core ([`ShardCore`], unchanged) on 3 or 5
//! simulated nodes with 1–3 shards each, in one thread, driven by one seeded PRNG.
//!
//! The seed picks every option (swarm testing: some runs lose a fifth of all messages, some
//! crash nodes and tear their last write, some only partition) and every event: message delays
//! (hence reordering), losses, duplicates, partitions and heals, crashes and restarts, disk
//! latencies, tick skew, election timeouts (re-drawn from the seed, DESIGN.md §9), and what the
//! simulated clients do. Some runs also wipe a crashed node's disks (one node at a time); it
//! restarts with or without `--join`. Membership runs (half the seeds, drawn from a PRNG of
//! their own) add one or two spare nodes, started with `--join`, and an operator that changes
//! each shard's members while the faults go on: adds learners, promotes them, removes members,
//! replaces a voter with a learner (one joint change), moves leadership. Clients issue puts,
//! gets, deletes and compare-and-sets on a few keys per shard — in half the runs (a PRNG of
//! their own) also appends and increments, read-modify-writes the state machine computes —
//! and record every operation's invocation and answer.
//!
//! Checked during and after each run:
//! - replicas that applied the same index hold identical state (keys, values, metadata) and
//!   the same membership;
//! - every acknowledged write's log entry stays in every replica's log with the same term
//!   (nothing acknowledged is lost or overwritten), and the leader's commit index covers it;
//! - after the faults stop, every shard elects a leader and serves writes within
//!   [`LIVENESS_US`], and all replicas converge;
//! - each key's history is linearizable (`common/linearizability.rs`);
//! - in runs whose nodes' clocks are apart (by up to 25 ms each way), keys put with a time
//!   to live are never read past their deadline plus the clocks' spread, nor missed before
//!   it (`ttl`), and replicas agree on deadlines and on the state machine's clock; in the same
//!   runs clients hold leases, and a lease's key is never read after the lease ended nor
//!   missed while it surely lived (`leases`), and replicas agree on the leases;
//! - replicas record the same watch history for an index, and every watcher's events (runs
//!   drawn in half the seeds, following leaders through everything above) are exactly that
//!   history's changes in its scope, from where it started to where it got (`watchers`).
//!
//! The replicas are driven through the core's driver contract (`core/driver.rs`), as the
//! runtime drives them. One module per thing simulated: `network`, `replicas` (cores on
//! simulated disks), `clients`, `nemesis`, `operator`, `checker`; `world` is the event loop, `options`
//! what a seed picks, `seeds` the tests.
//!
//! A failing seed panics with the line that replays it. See docs/TESTING.md.

#[path = "../common/linearizability.rs"]
mod linearizability;

mod checker;
mod clients;
mod leases;
mod nemesis;
mod network;
mod operator;
mod options;
mod replicas;
mod seeds;
mod ttl;
mod watchers;
mod world;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use corekv_client::placement::shard_for_key;
use corekv_proto::client::{CompareOp, CompareTarget, Consistency, ErrorKind, Reply, TxnOpKind};
use corekv_proto::encode::{CompareSpec, RequestEncoder, TxnOpSpec};
use corekv_proto::frame::verify_reply;
use corekv_server::core::{
    ConnId, CoreConfig, HistoryReadJob, InjectedBug, Outputs, Recovery, ShardCore, SnapshotPolicy,
};
use corekv_server::metrics::ShardMetrics;
use corekv_storage::history::Retention;
use corekv_storage::raft_log::ColdFetch;
use corekv_storage::snapshot::Archive;
use corekv_storage::wal::{FlushJob, MemSegments, RecoveryMode, SegmentSource};
use linearizability::{History, KvOp, KvRet, OpId};
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

/// WAL segment size of the simulated disks: small, so segments roll over and retire often.
const SEGMENT_BYTES: u64 = 64 << 10;
/// One raft tick of simulated time.
const TICK_US: u64 = 10_000;
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// A client gives up on an answer after this long; the operation's outcome is then unknown.
const CLIENT_TIMEOUT_US: u64 = 1_000_000;
/// After the faults stop, every shard must have served a write within this long.
const LIVENESS_US: u64 = 8_000_000;
/// After the clients stop, replicas must converge within this long.
const CONVERGE_US: u64 = 3_000_000;
/// Snapshot files a replica keeps (as the real node does).
const SNAPSHOTS_KEPT: usize = 2;
/// Seeds CI runs, split over several tests so that they run in parallel (about half of
/// them membership runs).
const CI_SEEDS: u64 = 2_000;
const CI_SEED_PARTS: u64 = 4;

/// SplitMix64: small, fast, and the same sequence everywhere.
#[derive(Clone, Debug)]
struct Rng(u64);

/// Everything the seed decides about a run before it starts.
#[derive(Clone, Debug)]
struct Options {
    nodes: u64,
    shards: u32,
    clients: usize,
    keys_per_shard: usize,
    /// Network delay range, µs.
    delay_us: (u64, u64),
    loss: f64,
    duplicate: f64,
    /// Disk flush latency range, µs.
    disk_us: (u64, u64),
    crashes: bool,
    /// A crash may leave part of the flush in flight on disk.
    torn_writes: bool,
    partitions: bool,
    /// Partitions may cut one direction only.
    asymmetric: bool,
    /// Snapshot every this many applied entries.
    snapshot_entries: u64,
    /// How long faults go on, µs.
    fault_us: u64,
    /// Mean time between fault events, µs.
    nemesis_us: u64,
    /// Tick period skew between nodes, in percent.
    tick_skew_pct: u64,
    /// Crashes may wipe the node's disks (drawn from a PRNG of its own, so that the runs of
    /// seeds without wipes stayed what they were before wipes existed).
    wipes: bool,
    /// Bytes of entries each replica's log keeps in memory: in runs drawn with a small cache,
    /// lagging followers are sent entries read back from the WAL, asynchronously, as the shell
    /// does (drawn from a PRNG of its own too).
    entry_cache_bytes: usize,
    /// Nodes beyond the first voters, started with `--join`, for the operator to add (zero:
    /// no operator; drawn from a PRNG of its own, as wipes are).
    spares: u64,
    /// Mean time between the operator's requests, µs.
    operator_us: u64,
    /// The watch history each replica keeps: in runs drawn with a small one, segments retire
    /// while watchers follow (drawn from a PRNG of its own).
    history_retention: Retention,
    /// Bytes of watch history in memory: in runs drawn with a small cache, watchers read the
    /// history back from disk.
    history_cache_bytes: usize,
    /// Watchers: (the one key watched, or every key; with values before).
    watchers: Vec<(Option<usize>, bool)>,
    /// Slow watchers: each connection may queue this many watch bytes, and the simulated
    /// clients read them only after a while (their nodes hear of the drain late), so watchers
    /// stop getting live events and catch up from the history often.
    slow_watchers: Option<usize>,
    /// Each node's clock, ms from a common start (what its `wall_epoch_ms` is; 0 in runs
    /// without keys with a time to live). Keys with a time to live are used when set.
    clock_skews: Vec<i64>,
    /// Clients also append to values and increment them (transactions of one computed op,
    /// read-modify-writes in the state machine), checked with the rest of the history.
    computed: bool,
}

enum Event {
    Tick {
        node: u64,
        incarnation: u64,
    },
    Deliver {
        from: u64,
        to: u64,
        shard: u32,
        message: Box<Message>,
        archive: Option<Arc<Archive>>,
    },
    SnapshotReport {
        node: u64,
        shard: u32,
        incarnation: u64,
        peer: u64,
        delivered: bool,
    },
    FlushDone {
        node: u64,
        shard: u32,
        incarnation: u64,
    },
    HistoryFlushDone {
        node: u64,
        shard: u32,
        incarnation: u64,
    },
    /// A watch history read, done when it completes (the segment may be gone by then).
    HistoryRead {
        node: u64,
        shard: u32,
        incarnation: u64,
        job: HistoryReadJob,
    },
    /// The shell wrote everything queued on a client connection.
    Drained {
        node: u64,
        shard: u32,
        incarnation: u64,
        conn: ConnId,
    },
    SnapshotDone {
        node: u64,
        shard: u32,
        incarnation: u64,
        archive: Result<Arc<Archive>, String>,
    },
    /// Old WAL records read back for a lagging follower, as the shell reads them off the
    /// executor (read when asked; they arrive after a disk latency).
    ColdFetched {
        node: u64,
        shard: u32,
        incarnation: u64,
        fetch: Box<ColdFetch>,
        data: ColdData,
    },
    Request {
        conn: ConnId,
        frame: Vec<u8>,
    },
    Reply {
        conn: ConnId,
        frame: Vec<u8>,
    },
    ClientWake {
        client: usize,
        generation: u64,
    },
    Nemesis,
    /// The operator's next request (membership runs).
    Operator,
    Restart {
        node: u64,
    },
    EndFaults,
    /// A watcher's timer for one shard (see `watchers`).
    WatcherWake {
        watcher: usize,
        shard: u32,
        generation: u64,
    },
}

/// What the reads of a [`ColdFetch`] returned, one result per read.
type ColdData = Vec<corekv_storage::error::Result<Vec<u8>>>;

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Replica {
    disk: MemSegments,
    /// The watch history's disk.
    history: MemSegments,
    /// Durable snapshot files, oldest first.
    snapshots: Vec<Arc<Archive>>,
    core: Option<ShardCore>,
    flushing: Option<FlushJob>,
    /// The watch history's flush in flight.
    history_flushing: Option<FlushJob>,
    /// (term, role) when the election timeout was last drawn.
    drawn_for: (u64, StateRole),
    applied_seen: u64,
}

struct Node {
    up: bool,
    incarnation: u64,
    /// Tick period, µs (skewed per node).
    tick_us: u64,
    replicas: Vec<Replica>,
    /// Its disks were wiped and it has not yet caught up in every shard.
    wiped: bool,
    /// Start it with `--join`.
    join: bool,
    /// Wipes so far (names the new disks).
    wipes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// A client's operation: recorded for the linearizability check, or one on a key with a
/// time to live, recorded for its own check (`ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpRef {
    Checked(OpId),
    Ttl(usize),
    Lease(usize),
}

struct Pending {
    op: OpRef,
    request: u64,
    kind: Kind,
    conn: ConnId,
    shard: u32,
}

struct Client {
    /// The checker's thread id; a new one after every operation left open.
    thread: u64,
    conns: HashMap<(u64, u32), ConnId>,
    leaders: HashMap<u32, u64>,
    pending: Option<Pending>,
    generation: u64,
    written: u64,
}

/// The `client` of the operator's connections.
const OPERATOR: usize = usize::MAX;

/// The simulated operator's request in flight.
struct OperatorPending {
    conn: ConnId,
    request: u64,
    sent_at: u64,
    action: operator::Action,
}

#[derive(Default)]
struct Operator {
    pending: Option<OperatorPending>,
}

struct Conn {
    /// The client's index, or [`OPERATOR`].
    client: usize,
    node: u64,
    shard: u32,
    incarnation: u64,
    greeted: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    messages: u64,
    dropped: u64,
    crashes: u64,
    wipes: u64,
    partitions: u64,
    snapshots_sent: u64,
    /// Reads of old WAL records for lagging followers.
    cold_fetches: u64,
    /// Reads of the watch history from disk.
    history_reads: u64,
    /// Watch events frames the watchers got, times they watched again elsewhere, and times
    /// they were told the history had moved past them.
    watch_events: u64,
    watch_resumes: u64,
    watch_compacted: u64,
    operations: u64,
    computed: u64,
    open: u64,
    leader_changes: u64,
    /// The operator's changes applied, leadership transfers made, requests refused, and
    /// requests left unanswered (a node down, a connection lost).
    conf_changes: u64,
    transfers: u64,
    operator_refused: u64,
    operator_unanswered: u64,
    /// Reads of keys with a time to live checked, those that found nothing, and the keys
    /// the replicas expired (summed over replicas).
    ttl_reads: u64,
    ttl_reads_empty: u64,
    expired: u64,
    /// Leases granted (acknowledged), and reads of their keys checked (those that found
    /// nothing).
    lease_grants: u64,
    lease_reads: u64,
    lease_reads_empty: u64,
}

struct Sim {
    opts: Options,
    rng: Rng,
    /// Decides the wipes (see [`Options::wipes`]).
    wipe_rng: Rng,
    /// Decides the operator's requests (see [`Options::spares`]).
    member_rng: Rng,
    operator: Operator,
    /// Prints the nemesis's and the operator's events (`SIM_TRACE=1`, when replaying).
    trace: bool,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    faults: bool,
    clients_active: bool,
    clients: Vec<Client>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    next_request: u64,
    next_thread: u64,
    keys: Vec<Vec<u8>>,
    /// Values written per key, for compare-and-set operands.
    values: Vec<Vec<Vec<u8>>>,
    history: History,
    /// (shard, applied index) → (node, state digest) first seen there.
    digests: HashMap<(u32, u64), (u64, u64)>,
    /// Acknowledged writes' entries: (shard, index) → (term, node that acknowledged).
    acked: BTreeMap<(u32, u64), (u64, u64)>,
    /// When the faults stopped; every shard must serve a write invoked after it.
    healed_at: Option<u64>,
    served_after_heal: BTreeSet<u32>,
    bug: Option<InjectedBug>,
    out: Outputs,
    encoder: RequestEncoder,
    stats: Stats,
    watchers: Vec<watchers::Watcher>,
    /// What the replicas' watch histories recorded: (shard, index) → (the first node that
    /// recorded it, the changes).
    truth: HashMap<(u32, u64), (u64, Vec<watchers::SimChange>)>,
    /// When the last reply on each connection is delivered: later ones come after it (a
    /// connection is a stream).
    conn_delivery: HashMap<ConnId, u64>,
    /// The keys with a time to live, and what was done to them (see `ttl`).
    ttl: ttl::TtlLog,
    leases: leases::LeaseLog,
}

type SimResult<T> = Result<T, String>;
