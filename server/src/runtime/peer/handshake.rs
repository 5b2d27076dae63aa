//! The peer handshake, both ends: the dialer's hello and the acceptor's checks of it.

use corekv_proto::constants::{PEER_PROTOCOL_OLDEST, PEER_PROTOCOL_VERSION};
use corekv_proto::encode::{PeerEncoder, PeerHello};
use corekv_proto::frame::{verify_peer, FrameBuffer};
use corekv_types::ids::NodeId;
use futures_lite::io::AsyncWriteExt;

use super::{read_frame, within, HANDSHAKE_TIMEOUT};
use crate::runtime::net::{self, Stream};
use crate::runtime::state::{PeerLink, Shard};

pub(super) async fn connect(shard: &Shard, link: &PeerLink) -> std::io::Result<Stream> {
    let attempt = async {
        // With TLS, the peer's certificate must name the node this link is for.
        let tls = match &shard.tls {
            Some(tls) => {
                let name = corekv_types::tls::node_name(NodeId(link.node_id));
                let name = corekv_types::tls::host_name(&name)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Some((tls.configs().peers_out.clone(), name))
            }
            None => None,
        };
        let mut stream = net::connect(link.addr.as_str(), tls).await?;
        let registry = &shard.registry;
        let me = registry.node(shard.node_id);
        let host = me.map_or("", |n| n.host.as_str());
        let port = me.map_or(0, |n| n.peer_port.saturating_add(shard.shard.get() as u16));
        let hello = PeerHello::new(
            &registry.cluster,
            shard.node_id.get(),
            shard.shard.get(),
            registry.shards,
        )
        .from_addr(host, port);
        let hello = PeerEncoder::new().hello(&hello).to_vec();
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut buffer = FrameBuffer::new(4096);
        let frame = read_frame(&mut stream, &mut buffer).await?;
        let ack =
            verify_peer(&frame).ok().and_then(|f| f.message_as_hello_ack()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "expected a HelloAck")
            })?;
        if !ack.accepted() {
            let reason = ack.reason().unwrap_or("no reason given").to_string();
            tracing::error!(shard = %shard.shard, peer = link.node_id, %reason, "peer refused our handshake");
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason));
        }
        if ack.node_id() != link.node_id {
            let reason = format!(
                "{} answered as node {}, expected node {}",
                link.addr,
                ack.node_id(),
                link.node_id
            );
            tracing::error!(shard = %shard.shard, %reason, "peer handshake mismatch");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason));
        }
        Ok(stream)
    };
    within(HANDSHAKE_TIMEOUT, attempt).await.unwrap_or_else(|| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))
    })
}

/// Checks a peer's hello (and, with TLS, that the certificate it showed names the node the
/// hello says it is); the refusal reason when it does not belong.
pub(super) fn check_hello(shard: &Shard, stream: &Stream, frame: &[u8]) -> Result<u64, String> {
    let frame = verify_peer(frame).map_err(|e| format!("bad hello frame: {e}"))?;
    let hello = frame.message_as_hello().ok_or("the first frame must be a Hello")?;
    if hello.cluster() != shard.registry.cluster {
        return Err(format!(
            "cluster mismatch: this node is in {:?}, the peer in {:?}",
            shard.registry.cluster,
            hello.cluster()
        ));
    }
    let version = hello.protocol_version();
    if !(PEER_PROTOCOL_OLDEST..=PEER_PROTOCOL_VERSION).contains(&version) {
        return Err(format!(
            "peer protocol {version} not supported (this node speaks {PEER_PROTOCOL_OLDEST} to \
             {PEER_PROTOCOL_VERSION}{})",
            if version > PEER_PROTOCOL_VERSION { "; upgrade this node" } else { "" }
        ));
    }
    if hello.shard() != shard.shard.get() {
        return Err(format!(
            "shard mismatch: this port serves shard {}, the peer is shard {}",
            shard.shard,
            hello.shard()
        ));
    }
    if hello.shards() != 0 && hello.shards() != shard.registry.shards {
        return Err(format!(
            "shard count mismatch: this node runs {} shards, node {} runs {} (their registry \
             files differ)",
            shard.registry.shards,
            hello.node_id(),
            hello.shards()
        ));
    }
    // Any other node of the cluster: the membership changes (a new member is in no registry
    // this node read), and raft-rs ignores what non-members send but vote requests, which
    // the core ignores.
    let node = hello.node_id();
    if node == shard.node_id.get() || node == 0 {
        return Err(format!("node id {node} cannot be a peer of node {}", shard.node_id));
    }
    if shard.tls.is_some() {
        let cert = stream.peer_cert().ok_or("no peer certificate")?;
        let name = corekv_types::tls::node_name(NodeId(node));
        corekv_types::tls::cert_names(cert, &name)
            .map_err(|e| format!("the peer says it is node {node}, but {e}"))?;
    }
    if let (Some(host), port) = (hello.peer_host(), hello.peer_port()) {
        if !host.is_empty() && port != 0 {
            shard.hello_addrs.borrow_mut().insert(node, format!("{host}:{port}"));
        }
    }
    shard.core.borrow_mut().note_peer_protocol(node, version);
    Ok(node)
}
