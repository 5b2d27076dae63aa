//! What a shard's tasks share: one [`Shard`] per executor (`Rc`, never locked — one thread),
//! and the handles its tasks pass replies and frames through — a client connection's output
//! side ([`ClientConn`]), a peer link's queue ([`PeerLink`]). A leaf: it imports none of the
//! task modules, which all import it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use corekv_storage::wal::SegmentDir;
use corekv_types::ids::{NodeId, ShardId};
use corekv_types::registry::Registry;

use super::notify::Notify;
use crate::constants::PEER_QUEUE_BYTES_MAX;
use crate::core::{ConnId, ShardCore};
use crate::metrics::ShardMetrics;

/// State shared by a shard's tasks.
pub(crate) struct Shard {
    pub(crate) core: RefCell<ShardCore>,
    /// Wakes the driver.
    pub(crate) wake: Notify,
    /// Wakes the flush task.
    pub(crate) flush_wake: Notify,
    pub(crate) conns: RefCell<HashMap<ConnId, Rc<ClientConn>>>,
    /// The links to the shard's other members (and to nodes that sent this replica raft
    /// messages), by node id; kept in step with the membership by `peer::sync_links`.
    pub(crate) peers: RefCell<HashMap<u64, Rc<PeerLink>>>,
    /// Where nodes said, in their peer hello, their peer listener is: the address of last
    /// resort for a node this replica has no member address for.
    pub(crate) hello_addrs: RefCell<HashMap<u64, String>>,
    /// The membership epoch the links were last synced to.
    pub(crate) links_epoch: Cell<u64>,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) node_id: NodeId,
    pub(crate) shard: ShardId,
    /// `DATA_DIR/shard-S/snap`.
    pub(crate) snap_dir: PathBuf,
    /// The WAL's segment files, for reading old entries back off the executor.
    pub(crate) segments: SegmentDir,
    /// The watch history's segment files, for reading it back off the executor.
    pub(crate) history_segments: SegmentDir,
    /// History segments to retire, for the history flush task.
    pub(crate) history_retire: RefCell<Vec<u64>>,
    /// Wakes the history flush task.
    pub(crate) history_flush_wake: Notify,
    pub(crate) pending_ticks: Cell<u64>,
    /// Wakes the deadline task: the core's next deadline may have moved earlier.
    pub(crate) deadline_wake: Notify,
    /// The deadline the deadline task waits for (core clock, µs), if any.
    pub(crate) armed_deadline: Cell<Option<u64>>,
    pub(crate) retire: RefCell<Vec<u64>>,
    pub(crate) clock: Instant,
    /// Set once shutdown has answered everything: tasks exit.
    pub(crate) stopping: Cell<bool>,
    pub(crate) next_conn: Cell<ConnId>,
    /// The node's TLS (every executor shares it; SIGHUP reloads it); `None`: plaintext.
    pub(crate) tls: Option<Arc<crate::tls::NodeTls>>,
    /// Every shard's published status, by shard: where the RESP endpoint learns the other
    /// shards' leaders.
    pub(crate) statuses: Arc<Vec<crate::http::StatusSlot>>,
    /// The RESP endpoint's `SCAN` cursors.
    pub(crate) resp_cursors: RefCell<crate::resp::cursors::Cursors>,
}

impl Shard {
    pub(crate) fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }
}

/// A connection's output side, shared with the driver that hands it replies.
#[derive(Debug, Default)]
pub(crate) struct ClientConn {
    pub(crate) out: RefCell<Vec<u8>>,
    pub(crate) waker: RefCell<Option<Waker>>,
    pub(crate) in_flight: Cell<usize>,
    pub(crate) close_after_output: Cell<bool>,
    /// The core asked to hear when `out` is all written (its watchers wait for that).
    pub(crate) notify_drained: Cell<bool>,
}

impl ClientConn {
    /// Queues `frame`; `answers` when it answers a request (a watch's events and progress
    /// frames do not: the watch stays in flight until its end).
    pub(crate) fn push_reply(&self, frame: &[u8], answers: bool) {
        self.out.borrow_mut().extend_from_slice(frame);
        if answers {
            self.in_flight.set(self.in_flight.get().saturating_sub(1));
        }
        self.wake();
    }

    /// Has the connection's task tell the core once its output is all written.
    pub(crate) fn notify_when_drained(&self) {
        self.notify_drained.set(true);
        self.wake();
    }

    /// Closes the connection once its replies are written (a refused hello).
    pub(crate) fn close_after_output(&self) {
        self.close_after_output.set(true);
        self.wake();
    }

    /// Whether replies are waiting to be written.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    pub(crate) fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// What the receiver last said about the snapshot being sent to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SnapshotProgress {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) received: u64,
    pub(crate) done: bool,
    pub(crate) error: Option<String>,
}

/// The outgoing side of the link to one peer.
pub(crate) struct PeerLink {
    pub(crate) node_id: u64,
    pub(crate) addr: String,
    pub(crate) queue: RefCell<Vec<u8>>,
    pub(crate) connected: Cell<bool>,
    /// The connection task, waiting for something to send.
    pub(crate) waker: RefCell<Option<Waker>>,
    /// Acknowledgements of the snapshot being sent, and who waits for them.
    pub(crate) progress: RefCell<SnapshotProgress>,
    pub(crate) progress_changed: Notify,
    /// A snapshot transfer to this peer is under way.
    pub(crate) sending_snapshot: Cell<bool>,
    /// The node left the membership (or moved): the connection task ends.
    pub(crate) retired: Cell<bool>,
}

impl PeerLink {
    pub(crate) fn new(node_id: u64, addr: String) -> Self {
        PeerLink {
            node_id,
            addr,
            queue: RefCell::default(),
            connected: Cell::new(false),
            waker: RefCell::default(),
            progress: RefCell::default(),
            progress_changed: Notify::default(),
            sending_snapshot: Cell::new(false),
            retired: Cell::new(false),
        }
    }

    /// Queues one frame of `messages` raft messages; drops it (counted) when the peer is
    /// unreachable or the queue is full. Returns whether it was queued.
    pub(crate) fn send(&self, frame: &[u8], messages: usize, metrics: &ShardMetrics) -> bool {
        let mut queue = self.queue.borrow_mut();
        if !self.connected.get() || queue.len() + frame.len() > PEER_QUEUE_BYTES_MAX {
            metrics.dropped_messages.fetch_add(messages as u64, Relaxed);
            return false;
        }
        queue.extend_from_slice(frame);
        metrics.messages_sent.fetch_add(messages as u64, Relaxed);
        drop(queue);
        self.wake();
        true
    }

    /// Wakes the connection task (new frames, or shutdown).
    pub(crate) fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}
