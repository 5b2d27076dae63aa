//! TLS with real processes: a 3-node cluster whose registry has `[tls]`, certificates made by
//! the dev CA code (rcgen). Clients that must be refused are (plaintext, another CA, an
//! expired or missing certificate), each with a clear error on the client and a line in the
//! node's log; a peer holding another node's certificate cannot pose as that node; garbage on
//! every port leaves the node serving; certificates and CAs rotate on SIGHUP under load with
//! no failed request.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{tls_cluster, tls_config, Pki};
use common::{block_on, TestCluster};
use corekv_client::registry::TlsVersion;
use corekv_client::{Client, ClientConfig, Error, TlsConfig};
use corekv_server::dev::certs::Authority;
use corekv_types::ids::NodeId;

/// A client with `tls` (the registry as the cluster's, or without `[tls]` when `plain`).
fn client_with(cluster: &TestCluster, tls: Option<TlsConfig>) -> Client {
    let mut config = ClientConfig::new(cluster.registry.clone());
    config.tls = tls;
    config.timeout = Duration::from_secs(3);
    Client::connect(config)
}

/// The error a put with `client` fails with.
fn put_error(client: &Client) -> Error {
    block_on(client.put("tls/refused", "x")).expect_err("the node must refuse this client")
}

/// A client showing `cert_and_key` is refused for its certificate, and a node logs the refusal
/// with `why`.
fn refused_certificate(
    cluster: &TestCluster,
    pki: &Pki,
    cert_and_key: (&PathBuf, &PathBuf),
    why: &str,
) {
    let tls = tls_config(&pki.path("ca.pem"), Some(cert_and_key));
    let error = put_error(&client_with(cluster, Some(tls)));
    assert!(
        matches!(&error, Error::Tls(m) if m.contains("refused this client's certificate")),
        "{error}"
    );
    cluster.wait_logged(&[1, 2, 3], &["refused a client connection", why]);
}

// Shows: with a good certificate, writes, reads, corekvctl and HTTPS work; a plaintext client,
// one without a certificate, one with another CA's, an expired one, and one that does not
// trust the nodes' CA are each refused with an error that says so, and the node logs each.
#[test]
fn clients_are_authenticated_and_bad_ones_refused() {
    let (cluster, pki) = tls_cluster();
    let client = cluster.client();
    block_on(client.put("tls/a", "1")).expect("put over TLS");
    let entry = block_on(client.get("tls/a")).expect("get over TLS").expect("present");
    assert_eq!(entry.value, b"1");
    let (code, body) = cluster.http(1, "/health").expect("HTTPS /health");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (cert, key) = (pki.path("app.pem"), pki.path("app-key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (code, out, err) = cluster.ctl(&["--cert", cert, "--cert-key", key, "get", "tls/a"]);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");

    // Plaintext: the client is told the node speaks TLS; the node logs a non-TLS client.
    let plain = client_with(&cluster, None);
    let mut registry = cluster.registry.clone();
    registry.tls = None;
    let plain_registry = cluster.dir.path().join("plain.toml");
    let text = std::fs::read_to_string(&cluster.registry_path).unwrap();
    std::fs::write(&plain_registry, &text[..text.find("[tls]").unwrap()]).unwrap();
    let error = put_error(&plain);
    assert!(matches!(&error, Error::Tls(m) if m.contains("TLS configuration")), "{error}");
    let mut config = ClientConfig::new(registry);
    config.timeout = Duration::from_secs(3);
    let error = put_error(&Client::connect(config));
    assert!(
        matches!(&error, Error::Tls(m) if m.contains("speaks TLS and this client plaintext")),
        "{error}"
    );
    cluster.wait_logged(&[1, 2, 3], &["refused a client connection", "does not speak TLS"]);
    let (code, _, err) = cluster.ctl_with(&plain_registry, &["get", "tls/a"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("speaks TLS and this client plaintext"), "{err}");

    // No certificate where the registry requires one.
    let error = put_error(&client_with(&cluster, Some(tls_config(&pki.path("ca.pem"), None))));
    assert!(
        matches!(&error, Error::Tls(m) if m.contains("requires a client certificate")),
        "{error}"
    );
    cluster.wait_logged(&[1, 2, 3], &["refused a client connection", "peer sent no certificates"]);

    // A certificate from another CA.
    let other = Authority::new("other CA").expect("CA");
    let (cert, key) = pki.client(&other, "stranger", "app", None);
    refused_certificate(&cluster, &pki, (&cert, &key), "UnknownIssuer");

    // An expired certificate from the right CA.
    let (cert, key) = pki.client(&pki.ca, "expired", "app", Some((2020, 2021)));
    refused_certificate(&cluster, &pki, (&cert, &key), "certificate expired");

    // A client that trusts another CA does not talk to these nodes.
    std::fs::write(pki.path("other-ca.pem"), other.cert_pem()).unwrap();
    let (cert, key) = (pki.path("app.pem"), pki.path("app-key.pem"));
    let error = put_error(&client_with(
        &cluster,
        Some(tls_config(&pki.path("other-ca.pem"), Some((&cert, &key)))),
    ));
    assert!(matches!(&error, Error::Tls(m) if m.contains("certificate is not trusted")), "{error}");

    assert!(cluster.metric(1, "corekv_tls_refused_total").unwrap_or(0.0) >= 1.0);
    block_on(client.put("tls/b", "2")).expect("the good client still writes");
}

// Shows: a peer with a valid certificate for node 3 that says it is node 2 is refused, and so
// is a peer without TLS; both are logged, and the cluster keeps replicating.
#[test]
fn a_peer_cannot_pose_as_another_node() {
    let (cluster, pki) = tls_cluster();
    let node1 = cluster.registry.node(NodeId(1)).unwrap().clone();
    let peer_addr = node1.peer_addr(corekv_types::ids::ShardId(0));
    let config = corekv_types::tls::client_config(
        &pki.path("ca.pem"),
        Some((&pki.path("node-3.pem"), &pki.path("node-3-key.pem"))),
        TlsVersion::Tls13,
    )
    .expect("peer TLS");
    let name = corekv_types::tls::host_name("node-1.corekv").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).expect("session");
    let socket = TcpStream::connect(&peer_addr).expect("connect to the peer port");
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(session, socket);
    let hello = corekv_proto::encode::PeerHello::new(&cluster.registry.cluster, 2, 0, 2);
    let hello = corekv_proto::encode::PeerEncoder::new().hello(&hello).to_vec();
    stream.write_all(&hello).expect("send the hello");
    stream.flush().unwrap();
    let mut reply = vec![0u8; 4096];
    let mut got = 0;
    let ack = loop {
        let n = stream.read(&mut reply[got..]).expect("read the ack");
        assert!(n > 0, "closed before an ack");
        got += n;
        let mut buffer = corekv_proto::frame::FrameBuffer::new(4096);
        buffer.spare()[..got].copy_from_slice(&reply[..got]);
        buffer.commit(got);
        if let Ok(Some(frame)) = buffer.next_frame() {
            break frame.to_vec();
        }
    };
    let frame = corekv_proto::frame::verify_peer(&ack).expect("a peer frame");
    let ack = frame.message_as_hello_ack().expect("a HelloAck");
    assert!(!ack.accepted());
    let reason = ack.reason().unwrap_or_default();
    assert!(reason.contains("says it is node 2") && reason.contains("node-2.corekv"), "{reason}");
    cluster.wait_logged(&[1, 2, 3], &["refused a peer connection", "says it is node 2"]);

    // A peer speaking plaintext.
    let mut plain = TcpStream::connect(&peer_addr).unwrap();
    plain.write_all(&hello).unwrap();
    cluster.wait_logged(&[1, 2, 3], &["refused a peer connection", "does not speak TLS"]);

    let client = cluster.client();
    block_on(client.put("peer/after", "ok")).expect("the cluster still replicates");
}

// Shows: bytes that are no TLS handshake, and a handshake cut short, on every client, peer and
// HTTP port leave each node serving.
#[test]
fn garbage_on_every_port_leaves_the_node_serving() {
    let (cluster, _pki) = tls_cluster();
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff, 0x00, 0x00],
        &[0x16, 0x03, 0x03, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef],
    ];
    let mut senders = Vec::new();
    for node in &cluster.registry.nodes {
        let mut addrs = vec![node.http_addr()];
        for s in 0..2 {
            addrs.push(node.client_addr(corekv_types::ids::ShardId(s)));
            addrs.push(node.peer_addr(corekv_types::ids::ShardId(s)));
        }
        for addr in addrs {
            for bytes in garbage {
                // All at once: a cut handshake waits for the node's handshake timeout.
                let (bytes, addr) = (bytes.to_vec(), addr.clone());
                senders.push(std::thread::spawn(move || {
                    let mut socket = TcpStream::connect(&addr).expect("connect");
                    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let _ = socket.write_all(&bytes);
                    // The node answers with an alert or closes; either way it is done with us.
                    let mut sink = Vec::new();
                    let _ = socket.read_to_end(&mut sink);
                }));
            }
        }
    }
    // Served while the cut handshakes wait, and after.
    let client = cluster.client();
    for i in 0..20 {
        block_on(client.put(format!("during/{i}"), "v")).expect("serving during garbage");
    }
    for sender in senders {
        sender.join().expect("garbage sender");
    }
    for i in 0..20 {
        block_on(client.put(format!("after/{i}"), "v")).expect("serving after garbage");
    }
    for id in 1..=3 {
        let (code, _) = cluster.http(id, "/health").expect("HTTPS still answers");
        assert_eq!(code, 200);
    }
}

// Shows: rotating the CA and every node's certificate on a running cluster, each step a
// SIGHUP, fails no request of a writer running throughout; a client of the new CA then
// connects, a node restarted with the new certificates rejoins, and a reload of a broken key
// keeps the files in use.
#[test]
fn certificates_rotate_on_sighup_under_load() {
    let (mut cluster, pki) = tls_cluster();
    let new_ca = Authority::new("test CA 2").expect("CA");
    let bundle = pki.path("bundle.pem");
    std::fs::write(&bundle, pki.ca.cert_pem() + &new_ca.cert_pem()).unwrap();
    // The writer (and the harness's HTTPS) trust both CAs from the start (step one of a
    // rotation: clients first).
    let (cert, key) = (pki.path("app.pem"), pki.path("app-key.pem"));
    cluster.http_tls = Some(Arc::new(
        corekv_types::tls::client_config(&bundle, Some((&cert, &key)), TlsVersion::Tls13).unwrap(),
    ));
    let writer = client_with(&cluster, Some(tls_config(&bundle, Some((&cert, &key)))));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        std::thread::spawn(move || {
            block_on(async {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match writer.put(format!("rot/{}", i % 500), i.to_string()).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            eprintln!("write failed: {error}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 1;
                }
            })
        })
    };
    let sighup_all = |cluster: &TestCluster| {
        for id in 1..=3 {
            cluster.signal(id, libc::SIGHUP);
        }
    };
    let progress = |what: &str| {
        let before = done.load(Ordering::Relaxed);
        let started = Instant::now();
        while done.load(Ordering::Relaxed) < before + 200 {
            assert!(started.elapsed() < Duration::from_secs(20), "writes stalled {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    progress("before the rotation");
    let expiry = |cluster: &TestCluster| {
        cluster.metric(1, "corekv_tls_certificate_expiry_timestamp_seconds")
    };
    // The node certificates (one for both uses) were issued without an end date: rcgen's
    // default, 4096-01-01; the metric has a series for each use.
    assert_eq!(expiry(&cluster), Some(2.0 * 67_090_118_400.0));
    // Nodes trust both CAs.
    std::fs::write(pki.path("ca.pem"), pki.ca.cert_pem() + &new_ca.cert_pem()).unwrap();
    sighup_all(&cluster);
    progress("after the CA bundle");
    // Nodes get certificates of the new CA.
    for id in 1..=3 {
        let issued = new_ca.node(NodeId(id), &["127.0.0.1"], Some((2020, 2090))).unwrap();
        issued.write(&pki.dir, &format!("node-{id}")).unwrap();
    }
    sighup_all(&cluster);
    progress("after the new node certificates");
    cluster.wait_logged(&[1, 2, 3], &["TLS certificates and keys reloaded"]);
    cluster.wait_until(
        Duration::from_secs(10),
        "the expiry metric to show the new certificate",
        || {
            expiry(&cluster) == Some(2.0 * 3_786_912_000.0) // 2090-01-01T00:00:00Z
        },
    );
    // A client of the new CA only, with a new-CA certificate, connects: the nodes serve the
    // new certificates and accept the new CA.
    let new_ca_file = pki.path("new-ca.pem");
    std::fs::write(&new_ca_file, new_ca.cert_pem()).unwrap();
    let (cert2, key2) = pki.client(&new_ca, "app2", "app", None);
    let fresh = client_with(&cluster, Some(tls_config(&new_ca_file, Some((&cert2, &key2)))));
    block_on(fresh.put("rot/new", "ok")).expect("a client of the new CA");
    // A node restarted now dials and accepts peers with the new certificates only.
    cluster.stop(3);
    progress("with node 3 down");
    cluster.restart(3);
    cluster.wait_until(Duration::from_secs(30), "node 3 to catch up", || {
        (0..2).all(|s| {
            let leader = cluster.leader(s).unwrap_or(0);
            leader != 0
                && cluster.shard_number(3, s, "applied_index").unwrap_or(0) + 50
                    >= cluster.shard_number(leader, s, "applied_index").unwrap_or(u64::MAX)
        })
    });
    // A broken key: the reload fails, the node keeps the files it has.
    std::fs::write(pki.path("node-1-key.pem"), "not a key").unwrap();
    cluster.signal(1, libc::SIGHUP);
    cluster.wait_logged(&[1, 2, 3], &["TLS reload failed", "node-1-key.pem"]);
    progress("after a failed reload");
    block_on(fresh.put("rot/new2", "ok")).expect("serving after a failed reload");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request may fail during the rotation");
}

// Shows: a node refuses to start, exit 2 and one line, with a peer certificate that does not
// name it, a client certificate that does not name its host, a key file that is no key, or
// TLS paths on the command line for a registry without `[tls]`.
#[test]
fn misconfigured_tls_is_refused_at_start() {
    let mut cluster = TestCluster::prepare(1, 1, &[]);
    let dir = cluster.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new("test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.node(NodeId(1), &["127.0.0.1"], None).unwrap().write(&dir, "node-1").unwrap();
    ca.node(NodeId(2), &["127.0.0.1"], None).unwrap().write(&dir, "node-2").unwrap();
    ca.node(NodeId(1), &["10.9.9.9"], None).unwrap().write(&dir, "elsewhere").unwrap();
    std::fs::write(dir.join("broken-key.pem"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let plain = cluster.registry_path.clone();
    let plain_copy = cluster.dir.path().join("plain.toml");
    std::fs::copy(&plain, &plain_copy).unwrap();
    cluster.add_to_registry(&format!(
        "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/node-{{id}}.pem\"\nkey = \"{0}/node-{{id}}-key.pem\"\n",
        dir.display()
    ));
    let data = cluster.dir.path().join("data");
    let file = |name: &str| dir.join(name).display().to_string();
    let cases: [(&Path, Vec<String>, &str); 4] = [
        (
            &cluster.registry_path,
            vec![
                "--peer-tls-cert".into(),
                file("node-2.pem"),
                "--peer-tls-key".into(),
                file("node-2-key.pem"),
            ],
            "is not for node-1.corekv",
        ),
        (
            &cluster.registry_path,
            vec![
                "--tls-cert".into(),
                file("elsewhere.pem"),
                "--tls-key".into(),
                file("elsewhere-key.pem"),
            ],
            "clients reach this node at 127.0.0.1",
        ),
        (
            &cluster.registry_path,
            vec!["--tls-key".into(), file("broken-key.pem")],
            "broken-key.pem",
        ),
        (&plain_copy, vec!["--tls-cert".into(), file("node-1.pem")], "no [tls] section"),
    ];
    for (registry, extra, expected) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (code, stderr) = common::serve_until_exit(registry, "1", &data, &extra);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

// Shows: a TLS client of a node without TLS is told the node may lack the [tls] section, and
// the node logs a TLS client on its plaintext client port and peer port.
#[test]
fn a_tls_client_of_a_plaintext_node_is_told_so() {
    let cluster = TestCluster::start(1, 1);
    let dir = cluster.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new("test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let mut config = ClientConfig::new(cluster.registry.clone());
    config.tls = Some(tls_config(&dir.join("ca.pem"), None));
    config.timeout = Duration::from_secs(2);
    let error = put_error(&Client::connect(config));
    assert!(
        matches!(&error, Error::Unavailable { last_error, .. } if last_error.contains("does its registry have the [tls] section")),
        "{error}"
    );
    cluster.wait_logged(&[1], &["refused a client that speaks TLS"]);
    // A TLS peer: its ClientHello on the peer port.
    let node = cluster.registry.node(NodeId(1)).unwrap();
    let peer =
        corekv_types::tls::client_config(&dir.join("ca.pem"), None, TlsVersion::Tls13).unwrap();
    let name = corekv_types::tls::host_name("node-1.corekv").unwrap();
    let mut session = rustls::ClientConnection::new(Arc::new(peer), name).unwrap();
    let mut socket = TcpStream::connect(node.peer_addr(corekv_types::ids::ShardId(0))).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = session.complete_io(&mut socket);
    cluster.wait_logged(&[1], &["refused a peer that speaks TLS"]);
}
