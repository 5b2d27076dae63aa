//! Shutdown of one shard (the steps are in the runtime's module docs).

use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv_proto::encode::PeerEncoder;

use super::outputs::dispatch;
use super::state::Shard;
use crate::constants::SHUTDOWN_DRAIN_MS;
use crate::core::Outputs;

/// Shutdown: no new requests; writes in flight get up to [`SHUTDOWN_DRAIN_MS`] to apply;
/// what is left is answered; the WAL is flushed; replies get a moment to go out.
pub(super) async fn shut_down(shard: &Rc<Shard>) {
    tracing::info!(shard = %shard.shard, "shutting down");
    let mut out = Outputs::default();
    let mut encoder = PeerEncoder::new();
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
    loop {
        let give_up = Instant::now() >= deadline;
        let drained = shard.core.borrow_mut().shutdown_turn(shard.now_us(), give_up, &mut out);
        dispatch(shard, &mut out, &mut encoder);
        if drained {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Let the flush task write what is buffered, and the connections what they were given.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let flushing = shard.core.borrow().flush_pending();
        let writing = shard.conns.borrow().values().any(|c| c.has_output());
        if !flushing && !writing {
            break;
        }
        shard.flush_wake.notify();
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}
