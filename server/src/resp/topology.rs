//! Redis Cluster's view of corekv: every shard is a Redis "shard" owning its contiguous slot
//! range; its raft leader is the master, reached at the leader node's `resp_port + s`, and
//! its other members are replicas. A Redis "node" is therefore one (node, shard) pair — one
//! RESP port — with the id [`endpoint_id`].
//!
//! The view is the one this node has (each shard's leader as its executor last published
//! it): a client that acts on a stale view is corrected by `MOVED`, as in Redis Cluster.

use corekv_types::ids::{NodeId, ShardId};
use corekv_types::placement::{slot, slot_range};

use super::reply::Reply;
use super::session::{is, Answer, Host, Session, ShardView};
use super::REDIS_VERSION;

/// The 40-hex-digit Redis node id of shard `shard`'s RESP port on node `node`.
pub fn endpoint_id(node: NodeId, shard: ShardId) -> String {
    format!("{:020x}{:020x}", node.get(), shard.get())
}

/// A Redis endpoint: the node, its host and the port.
type Endpoint = (NodeId, String, u16);

/// A shard's endpoints, master first: the leader, or with none known the first member (a
/// client sent there is redirected or told to retry).
fn endpoints(view: &ShardView, host: &dyn Host) -> Vec<Endpoint> {
    let mut order: Vec<NodeId> = view.members.clone();
    if let Some(at) = order.iter().position(|n| *n == view.leader) {
        order.swap(0, at);
    }
    order
        .into_iter()
        .filter_map(|node| {
            let addr = host.resp_addr(node, view.shard)?;
            let (ip, port) = addr.rsplit_once(':')?;
            Some((node, ip.to_string(), port.parse().ok()?))
        })
        .collect()
}

impl Session {
    pub(super) fn cluster(&self, args: &[Vec<u8>], host: &dyn Host) -> Answer {
        let sub = &args[1];
        let views = host.shard_views();
        let shards = self.place.shards;
        if is(sub, "SLOTS") {
            // A shard none of whose members has a Redis port is left out (its slots are not
            // served over Redis), never listed without a master.
            let served: Vec<(&ShardView, Vec<Endpoint>)> = views
                .iter()
                .map(|view| (view, endpoints(view, host)))
                .filter(|(_, ends)| !ends.is_empty())
                .collect();
            return Answer::Now(self.reply(|r| {
                r.array(served.len());
                for (view, ends) in &served {
                    let range = slot_range(view.shard, shards);
                    r.array(2 + ends.len());
                    r.int(range.start as i64);
                    r.int(range.end as i64 - 1);
                    for (node, ip, port) in ends.iter() {
                        r.array(3);
                        r.bulk(ip.as_bytes());
                        r.int(*port as i64);
                        r.bulk(endpoint_id(*node, view.shard).as_bytes());
                    }
                }
            }));
        }
        if is(sub, "SHARDS") {
            return Answer::Now(self.reply(|r| self.shards_reply(r, &views, host)));
        }
        if is(sub, "NODES") {
            let text = self.nodes_text(&views, host);
            return Answer::Now(self.reply(|r| r.verbatim(&text)));
        }
        if is(sub, "INFO") {
            let text = cluster_info(&views, shards);
            return Answer::Now(self.reply(|r| r.verbatim(&text)));
        }
        if is(sub, "MYID") {
            let id = endpoint_id(self.place.node, self.place.shard);
            return Answer::Now(self.reply(|r| r.bulk(id.as_bytes())));
        }
        if is(sub, "MYSHARDID") {
            let id = format!("{:040x}", self.place.shard.get());
            return Answer::Now(self.reply(|r| r.bulk(id.as_bytes())));
        }
        if is(sub, "KEYSLOT") && args.len() == 3 {
            let slot = slot(&args[2]);
            return Answer::Now(self.reply(|r| r.int(slot as i64)));
        }
        self.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. corekv's \
             topology is its raft membership: change it with `corekvctl member` and \
             `corekvctl leader`",
            String::from_utf8_lossy(sub)
        ))
    }

    fn shards_reply(&self, r: &mut Reply<'_>, views: &[ShardView], host: &dyn Host) {
        r.array(views.len());
        for view in views {
            let range = slot_range(view.shard, self.place.shards);
            let ends = endpoints(view, host);
            r.map(2);
            r.bulk(b"slots");
            r.array(2);
            r.int(range.start as i64);
            r.int(range.end as i64 - 1);
            r.bulk(b"nodes");
            r.array(ends.len());
            for (node, ip, port) in &ends {
                r.map(7);
                r.bulk(b"id");
                r.bulk(endpoint_id(*node, view.shard).as_bytes());
                r.bulk(b"port");
                r.int(*port as i64);
                r.bulk(b"ip");
                r.bulk(ip.as_bytes());
                r.bulk(b"endpoint");
                r.bulk(ip.as_bytes());
                r.bulk(b"role");
                r.bulk(if *node == view.leader { b"master" as &[u8] } else { b"replica" });
                r.bulk(b"replication-offset");
                r.int(0);
                r.bulk(b"health");
                r.bulk(b"online");
            }
        }
    }

    /// `CLUSTER NODES`: one line per endpoint, Redis's format.
    fn nodes_text(&self, views: &[ShardView], host: &dyn Host) -> String {
        let mut text = String::new();
        for view in views {
            let ends = endpoints(view, host);
            let master = ends.first().map(|(node, ..)| endpoint_id(*node, view.shard));
            let range = slot_range(view.shard, self.place.shards);
            for (i, (node, ip, port)) in ends.iter().enumerate() {
                let myself = *node == self.place.node && view.shard == self.place.shard;
                let role = if i == 0 { "master" } else { "slave" };
                let flags = if myself { format!("myself,{role}") } else { role.to_string() };
                let of = if i == 0 { "-".to_string() } else { master.clone().unwrap_or_default() };
                let slots = if i == 0 {
                    format!(" {}-{}", range.start, range.end - 1)
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "{} {ip}:{port}@0 {flags} {of} 0 0 0 connected{slots}\n",
                    endpoint_id(*node, view.shard)
                ));
            }
        }
        text
    }

    /// `INFO [section]`: server, clients, replication, cluster and keyspace.
    pub(super) fn info(&self, section: Option<&[u8]>, host: &dyn Host) -> String {
        let all = section.is_none_or(|s| is(s, "all") || is(s, "everything") || is(s, "default"));
        let want = |name: &str| all || section.is_some_and(|s| is(s, name));
        let views = host.shard_views();
        let mine = views.iter().find(|v| v.shard == self.place.shard);
        let leader = mine.is_some_and(|v| v.leader == self.place.node);
        let mut text = String::new();
        if want("server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:cluster\r\n\
                 corekv_version:{}\r\ncorekv_cluster:{}\r\ncorekv_node:{}\r\ncorekv_shard:{}\r\n\
                 tcp_port:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                self.place.cluster,
                self.place.node,
                self.place.shard,
                host.resp_addr(self.place.node, self.place.shard)
                    .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_string()))
                    .unwrap_or_default(),
            ));
        }
        if want("replication") {
            let role = if leader { "master" } else { "slave" };
            text.push_str(&format!("# Replication\r\nrole:{role}\r\n\r\n"));
        }
        if want("cluster") {
            text.push_str("# Cluster\r\ncluster_enabled:1\r\n\r\n");
        }
        if want("keyspace") {
            text.push_str(&format!(
                "# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n",
                host.key_count()
            ));
        }
        text
    }
}

/// `CLUSTER INFO`: the slots are served while their shard has a leader.
fn cluster_info(views: &[ShardView], shards: u32) -> String {
    let ok: u32 = views
        .iter()
        .filter(|v| v.leader != NodeId::NONE)
        .map(|v| slot_range(v.shard, shards).len() as u32)
        .sum();
    let endpoints: usize = views.iter().map(|v| v.members.len()).sum();
    let state = if ok == corekv_types::placement::SLOTS { "ok" } else { "fail" };
    format!(
        "cluster_state:{state}\r\ncluster_slots_assigned:{}\r\ncluster_slots_ok:{ok}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{endpoints}\r\n\
         cluster_size:{}\r\ncluster_current_epoch:0\r\ncluster_my_epoch:0\r\n",
        corekv_types::placement::SLOTS,
        corekv_types::placement::SLOTS - ok,
        views.len(),
    )
}
