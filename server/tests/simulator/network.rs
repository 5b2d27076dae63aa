//! The simulated network: delays, losses, duplicates, cut links, snapshot transfers.

use super::*;
use crate::replicas::insert_snapshot;

impl Sim {
    pub(crate) fn net_delay(&mut self) -> u64 {
        self.rng.range(self.opts.delay_us.0, self.opts.delay_us.1)
    }

    pub(crate) fn send(&mut self, from: u64, shard: u32, message: Message) {
        self.stats.messages += 1;
        let to = message.to;
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let archive = if snapshot {
            let meta = message.get_snapshot().get_metadata();
            let found = self.nodes[from as usize - 1].replicas[shard as usize]
                .snapshots
                .iter()
                .find(|a| a.meta().index == meta.index && a.meta().term == meta.term)
                .cloned();
            if found.is_none() {
                self.report_snapshot(from, shard, to, false);
                return;
            }
            found
        } else {
            None
        };
        if self.faults && self.rng.chance(self.opts.loss) {
            self.stats.dropped += 1;
            if snapshot {
                self.report_snapshot(from, shard, to, false);
            }
            return;
        }
        let delay = self.net_delay();
        let copy = (!snapshot && self.faults && self.rng.chance(self.opts.duplicate))
            .then(|| message.clone());
        self.schedule(
            delay,
            Event::Deliver { from, to, shard, message: Box::new(message), archive },
        );
        if let Some(copy) = copy {
            let delay = self.net_delay();
            self.schedule(
                delay,
                Event::Deliver { from, to, shard, message: Box::new(copy), archive: None },
            );
        }
    }

    pub(crate) fn report_snapshot(&mut self, node: u64, shard: u32, peer: u64, delivered: bool) {
        let incarnation = self.nodes[node as usize - 1].incarnation;
        let delay = self.net_delay();
        self.schedule(delay, Event::SnapshotReport { node, shard, incarnation, peer, delivered });
    }

    pub(crate) fn deliver(
        &mut self,
        from: u64,
        to: u64,
        shard: u32,
        message: Message,
        archive: Option<Arc<Archive>>,
    ) -> SimResult<()> {
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        if self.cut.contains(&(from, to)) || !self.nodes[to as usize - 1].up {
            self.stats.dropped += 1;
            if snapshot {
                self.report_snapshot(from, shard, to, false);
            }
            return Ok(());
        }
        if snapshot && archive.is_none() {
            // A duplicate of a snapshot message without its file: the real receiver drops it.
            return Ok(());
        }
        let now = self.now;
        let replica = &mut self.nodes[to as usize - 1].replicas[shard as usize];
        let core = replica.core.as_mut().expect("an up node has cores");
        core.set_now(now);
        if let Some(archive) = archive {
            // The receiver writes and syncs the file, then offers it to the core.
            insert_snapshot(&mut replica.snapshots, archive.clone());
            core.offer_snapshot(archive);
            self.stats.snapshots_sent += 1;
        }
        core.step(message);
        self.drive(to, shard, 0)?;
        if snapshot {
            self.report_snapshot(from, shard, to, true);
        }
        Ok(())
    }
}
