//! A shard's membership: who votes, who learns, and where each member listens. It is the
//! shard's raft configuration (raft-rs's `ConfState`) plus the addresses that travel in the
//! configuration changes, so every replica knows how to reach every member from its own
//! state. The registry file only bootstraps it ([`Membership::bootstrap`]): its nodes are the
//! first voters of every shard.
//!
//! Two byte encodings, each with a version byte first, so that an old node refuses a newer
//! encoding by name instead of misreading it:
//!
//! - [`MemberAddr::encode`]: the context of a configuration change that adds a member;
//! - [`Membership::encode`]: the membership recorded in a snapshot file.
//!
//! Version 2 of each adds a member's Redis port. Version 1 is still written whenever no
//! member has one, so a cluster that does not serve Redis stays readable by nodes from before
//! it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::registry::Node;

/// Version of [`MemberAddr::encode`]'s layout for an address with a Redis port (1: without).
pub const MEMBER_ADDR_ENCODING: u8 = 2;

/// Version of [`Membership::encode`]'s layout when a member has a Redis port (1: none has).
pub const MEMBERSHIP_ENCODING: u8 = 2;

/// Where a member listens: the fields of a registry node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// Host name or IP address.
    pub host: String,
    /// Shard `s` serves clients on `client_port + s`.
    pub client_port: u16,
    /// Shard `s` exchanges raft messages on `peer_port + s`.
    pub peer_port: u16,
    /// `/health`, `/status`, `/metrics`.
    pub http_port: u16,
    /// Shard `s` speaks Redis on `resp_port + s`, when set.
    #[serde(default)]
    pub resp_port: Option<u16>,
}

impl From<&Node> for MemberAddr {
    fn from(node: &Node) -> Self {
        MemberAddr {
            host: node.host.clone(),
            client_port: node.client_port,
            peer_port: node.peer_port,
            http_port: node.http_port,
            resp_port: node.resp_port,
        }
    }
}

impl MemberAddr {
    /// The registry node with this address and `id`.
    pub fn node(&self, id: NodeId) -> Node {
        Node {
            id,
            host: self.host.clone(),
            client_port: self.client_port,
            peer_port: self.peer_port,
            http_port: self.http_port,
            resp_port: self.resp_port,
        }
    }

    /// `[version][host length u16][host][client port u16][peer port u16][http port u16]`
    /// and, in version 2 (written when there is a Redis port), `[resp port u16]`;
    /// little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.host.len());
        let version = if self.resp_port.is_some() { MEMBER_ADDR_ENCODING } else { 1 };
        out.push(version);
        put_addr(&mut out, self, version);
        out
    }

    /// Reads what [`MemberAddr::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<MemberAddr, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.version(MEMBER_ADDR_ENCODING, "member address")?;
        let addr = reader.addr(version)?;
        reader.end("member address")?;
        Ok(addr)
    }
}

/// A shard's raft configuration and its members' addresses. The id lists are sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters (in a joint configuration: the incoming ones).
    pub voters: Vec<NodeId>,
    /// Learners: replicate, do not vote.
    pub learners: Vec<NodeId>,
    /// In a joint configuration, the outgoing voters; empty otherwise.
    pub voters_outgoing: Vec<NodeId>,
    /// In a joint configuration, outgoing voters that stay as learners once it is left.
    pub learners_next: Vec<NodeId>,
    /// Whether raft leaves the joint configuration by itself.
    pub auto_leave: bool,
    /// Learners the leader promotes once they have caught up (added without `--learner`).
    pub promote: Vec<NodeId>,
    /// Every member's address.
    pub addrs: BTreeMap<NodeId, MemberAddr>,
}

impl Membership {
    /// The membership a new cluster starts with: every registry node a voter.
    pub fn bootstrap(nodes: &[Node]) -> Membership {
        let mut voters: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        voters.sort_unstable();
        Membership {
            voters,
            addrs: nodes.iter().map(|n| (n.id, MemberAddr::from(n))).collect(),
            ..Membership::default()
        }
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner (now or once the joint configuration is left).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// The voter shard `shard` prefers as its leader: the `(shard mod n)`-th voter by id, so
    /// that leaders spread over the members (DESIGN.md §4); `None` without voters.
    pub fn preferred_leader(&self, shard: crate::ids::ShardId) -> Option<NodeId> {
        let voters = &self.voters;
        (!voters.is_empty()).then(|| voters[shard.get() as usize % voters.len()])
    }

    /// Whether this is a joint configuration (a change under way).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every member, sorted, each once.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.learners)
            .chain(&self.voters_outgoing)
            .chain(&self.learners_next)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The members as registry nodes (those whose address is known).
    pub fn nodes(&self) -> Vec<Node> {
        self.members()
            .into_iter()
            .filter_map(|id| self.addrs.get(&id).map(|addr| addr.node(id)))
            .collect()
    }

    /// `[version 1][auto_leave u8]`, then the five id lists (voters, learners, outgoing
    /// voters, next learners, learners to promote; each a u32 count and u64 ids),
    /// then the addresses (a u32 count, each a u64 id and an address as in
    /// [`MemberAddr::encode`] of the same version, without its version byte), little-endian.
    /// Version 2 when a member has a Redis port, else 1.
    pub fn encode(&self) -> Vec<u8> {
        let any_resp = self.addrs.values().any(|addr| addr.resp_port.is_some());
        let version = if any_resp { MEMBERSHIP_ENCODING } else { 1 };
        let mut out = vec![version, u8::from(self.auto_leave)];
        let lists = [
            &self.voters,
            &self.learners,
            &self.voters_outgoing,
            &self.learners_next,
            &self.promote,
        ];
        for list in lists {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for id in list {
                out.extend_from_slice(&id.get().to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.addrs.len() as u32).to_le_bytes());
        for (id, addr) in &self.addrs {
            out.extend_from_slice(&id.get().to_le_bytes());
            put_addr(&mut out, addr, version);
        }
        out
    }

    /// Reads what [`Membership::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Membership, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.version(MEMBERSHIP_ENCODING, "membership")?;
        let auto_leave = match reader.take(1)?[0] {
            0 => false,
            1 => true,
            other => return Err(format!("membership: auto_leave is {other}, not 0 or 1")),
        };
        let mut lists: [Vec<NodeId>; 5] = Default::default();
        for list in &mut lists {
            let count = reader.u32()?;
            for _ in 0..count {
                list.push(NodeId(reader.u64()?));
            }
            list.sort_unstable();
        }
        let [voters, learners, voters_outgoing, learners_next, promote] = lists;
        let mut addrs = BTreeMap::new();
        for _ in 0..reader.u32()? {
            let id = NodeId(reader.u64()?);
            addrs.insert(id, reader.addr(version)?);
        }
        reader.end("membership")?;
        Ok(Membership {
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
            promote,
            addrs,
        })
    }
}

/// A change to a shard's membership, as an operator asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum MembershipChange {
    /// Adds a node as a learner: it replicates, it does not vote.
    AddLearner {
        /// The new member.
        id: NodeId,
        /// Where it listens.
        addr: MemberAddr,
        /// Whether the leader promotes it to voter once it has caught up.
        promote: bool,
    },
    /// Makes a caught-up learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a member (voter or learner).
    Remove {
        /// The member.
        id: NodeId,
    },
    /// In one joint-consensus change: a caught-up learner becomes a voter and a voter leaves.
    Replace {
        /// The voter that leaves.
        old: NodeId,
        /// The learner that takes its place.
        new: NodeId,
    },
}

/// A shard's membership as one replica reports it: what `member list` shows and what
/// clients learn members' addresses and the leader from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMembers {
    /// The node that answered.
    pub node_id: NodeId,
    /// The shard.
    pub shard: crate::ids::ShardId,
    /// The leader it knows of, [`NodeId::NONE`] when none.
    pub leader_id: NodeId,
    /// Voters, learners and addresses, as of its applied index.
    pub membership: Membership,
    /// On the leader: each member's replication progress (empty elsewhere).
    pub peers: Vec<crate::status::PeerProgress>,
    /// The last index of its log.
    pub last_index: crate::ids::LogIndex,
    /// Its applied index.
    pub applied_index: crate::ids::LogIndex,
    /// The index of a change proposed and not applied yet, 0 when none (known on the
    /// leader).
    pub pending_change: crate::ids::LogIndex,
}

fn put_addr(out: &mut Vec<u8>, addr: &MemberAddr, version: u8) {
    // Registry hosts are checked to be short; a longer one is cut at the u16 limit.
    let host = &addr.host.as_bytes()[..addr.host.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(host.len() as u16).to_le_bytes());
    out.extend_from_slice(host);
    for port in [addr.client_port, addr.peer_port, addr.http_port] {
        out.extend_from_slice(&port.to_le_bytes());
    }
    if version >= 2 {
        // 0: no Redis port.
        out.extend_from_slice(&addr.resp_port.unwrap_or(0).to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {} of {}", self.at, self.bytes.len()));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The version byte: 1 up to `newest`, else an error naming it.
    fn version(&mut self, newest: u8, what: &str) -> Result<u8, String> {
        let version = *self.take(1)?.first().ok_or("empty")?;
        if !(1..=newest).contains(&version) {
            return Err(format!(
                "{what} encoding version {version}, this build reads 1 to {newest} (a newer \
                 node wrote it: upgrade this one)"
            ));
        }
        Ok(version)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(b);
        Ok(u64::from_le_bytes(array))
    }

    fn addr(&mut self, version: u8) -> Result<MemberAddr, String> {
        let len = self.u16()? as usize;
        let host = std::str::from_utf8(self.take(len)?)
            .map_err(|_| "member host is not UTF-8".to_string())?
            .to_string();
        if host.is_empty() {
            return Err("member host is empty".to_string());
        }
        let (client_port, peer_port, http_port) = (self.u16()?, self.u16()?, self.u16()?);
        let resp_port = if version >= 2 { Some(self.u16()?).filter(|&p| p != 0) } else { None };
        Ok(MemberAddr { host, client_port, peer_port, http_port, resp_port })
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.at != self.bytes.len() {
            return Err(format!("{what}: {} bytes left over", self.bytes.len() - self.at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> MemberAddr {
        MemberAddr {
            host: format!("10.0.0.{n}"),
            client_port: 7100 + n,
            peer_port: 7200,
            http_port: 7300,
            resp_port: None,
        }
    }

    // Shows addresses and memberships round trip, with and without Redis ports; version 1 is
    // written when no member has one (older nodes read it), 2 when one does.
    #[test]
    fn addresses_and_memberships_round_trip() {
        let a = addr(4);
        assert_eq!(MemberAddr::decode(&a.encode()), Ok(a.clone()));
        let membership = Membership {
            voters: vec![NodeId(1), NodeId(4)],
            learners: vec![NodeId(5)],
            voters_outgoing: vec![NodeId(1), NodeId(2)],
            learners_next: vec![NodeId(2)],
            auto_leave: true,
            promote: vec![NodeId(5)],
            addrs: [1, 2, 4, 5].into_iter().map(|n| (NodeId(n), addr(n as u16))).collect(),
        };
        assert_eq!(Membership::decode(&membership.encode()), Ok(membership.clone()));
        assert!(membership.is_joint());
        assert_eq!(membership.members(), vec![NodeId(1), NodeId(2), NodeId(4), NodeId(5)]);
        assert!(membership.is_voter(NodeId(2)) && membership.is_learner(NodeId(2)));
        assert!(!membership.contains(NodeId(3)));
        assert_eq!(membership.encode()[0], 1);
        assert_eq!(a.encode()[0], 1);

        let redis = MemberAddr { resp_port: Some(7400), ..addr(5) };
        assert_eq!(redis.encode()[0], 2);
        assert_eq!(MemberAddr::decode(&redis.encode()), Ok(redis.clone()));
        let mut with_redis = membership.clone();
        with_redis.addrs.insert(NodeId(5), redis);
        assert_eq!(with_redis.encode()[0], 2);
        assert_eq!(Membership::decode(&with_redis.encode()), Ok(with_redis));
    }

    #[test]
    fn bad_bytes_are_refused_by_name() {
        let bytes = addr(1).encode();
        for cut in 0..bytes.len() {
            assert!(MemberAddr::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = bytes.clone();
        newer[0] = 3;
        let error = MemberAddr::decode(&newer).unwrap_err();
        assert!(error.contains("version 3") && error.contains("upgrade"), "{error}");
        let mut longer = bytes;
        longer.push(0);
        assert!(MemberAddr::decode(&longer).unwrap_err().contains("left over"));
        let encoded = Membership::bootstrap(&[addr(1).node(NodeId(1))]).encode();
        for cut in 0..encoded.len() {
            assert!(Membership::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }
}
