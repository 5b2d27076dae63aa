//! Users, roles and permissions with real processes: a 3-node TLS cluster whose registry has
//! `[auth]`. Users are named by client certificates (rcgen) or bearer tokens; a read-only user
//! reads what it may and nothing else (keys, batches, scans, transactions, watches, admin
//! requests), a token user writes its prefix, a connection with no user or an unknown one
//! gets nothing, and a changed policy applies to open connections after SIGHUP.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{tls_cluster_with, tls_config, Pki};
use common::{block_on, TestCluster};
use corekv_client::{
    Client, ClientConfig, Error, ScanOptions, ScanRange, TlsConfig, Txn, TxnOp, WatchSpec,
};
use futures_util::StreamExt;

/// The token of user `svc`, and its digest as the policy writes it.
const SVC_TOKEN: &str = "svc-secret-token";

/// The token of user `gw` (who may act for other users).
const GW_TOKEN: &str = "gw-secret-token";

fn policy(svc_digest: &str, reader_writes: bool) -> String {
    let gw_digest = corekv_server::auth::token_digest(GW_TOKEN);
    let reader_roles =
        if reader_writes { "[\"app-read\", \"app-write\"]" } else { "[\"app-read\"]" };
    format!(
        "[[role]]\nname = \"app-read\"\nread = [\"app/\"]\n\n\
         [[role]]\nname = \"app-write\"\nwrite = [\"app/\"]\n\n\
         [[role]]\nname = \"all\"\nwrite = [\"\"]\nadmin = true\n\n\
         [[role]]\nname = \"gateway\"\nproxy = true\n\n\
         [[user]]\nname = \"gw\"\nroles = [\"gateway\"]\ntokens = [\"sha256:{gw_digest}\"]\n\n\
         [[user]]\nname = \"reader\"\nroles = {reader_roles}\n\n\
         [[user]]\nname = \"root\"\nroles = [\"all\"]\n\n\
         [[user]]\nname = \"svc\"\nroles = [\"app-write\"]\ntokens = [\"sha256:{svc_digest}\"]\n"
    )
}

/// The cluster (its harness client is `root`), its PKI and the policy file.
fn auth_cluster() -> (TestCluster, Pki, PathBuf) {
    let digest = corekv_server::auth::token_digest(SVC_TOKEN);
    let mut policy_path = PathBuf::new();
    let (cluster, pki) = tls_cluster_with(
        |dir| {
            policy_path = dir.join("auth.toml");
            std::fs::write(&policy_path, policy(&digest, false)).expect("write the policy");
            // Inside [tls]: clients with a token need no certificate.
            format!(
                "client_certs = \"optional\"\n\n[auth]\npolicy = \"{}\"\n",
                policy_path.display()
            )
        },
        "root",
    );
    (cluster, pki, policy_path)
}

/// A client whose certificate names `user` (or none), with `token` (or none).
fn client_as(cluster: &TestCluster, pki: &Pki, user: Option<&str>, token: Option<&str>) -> Client {
    let cert = user.map(|user| pki.client(&pki.ca, &format!("user-{user}"), user, None));
    let cert_ref = cert.as_ref().map(|(c, k)| (c, k));
    let tls: TlsConfig = tls_config(&pki.path("ca.pem"), cert_ref);
    let mut config = ClientConfig::new(cluster.registry.clone());
    config.tls = Some(tls);
    config.token = token.map(str::to_string);
    config.timeout = Duration::from_secs(5);
    Client::connect(config)
}

fn denied<T: std::fmt::Debug>(result: corekv_client::Result<T>, words: &str) {
    match result {
        Err(Error::PermissionDenied(reason)) => assert!(reason.contains(words), "{reason}"),
        other => panic!("expected PermissionDenied ({words}), got {other:?}"),
    }
}

// Shows: a user with read rights on `app/` reads `app/x` (alone, in a batch, a scan, a
// transaction, a watch) and cannot write it, read `other/y`, scan or watch beyond `app/`,
// or make admin requests; corekvctl exits 4 on a refusal.
#[test]
fn a_read_only_user_reads_only_what_it_may() {
    let (cluster, pki, _) = auth_cluster();
    let root = cluster.client();
    block_on(root.put("app/x", "1")).expect("root writes app/");
    block_on(root.put("other/y", "2")).expect("root writes other/");
    let reader = client_as(&cluster, &pki, Some("reader"), None);
    let entry = block_on(reader.get("app/x")).expect("reader reads app/x").expect("present");
    assert_eq!(entry.value, b"1");
    denied(block_on(reader.put("app/x", "3")), "user \"reader\" may not write \"app/x\"");
    denied(block_on(reader.get("other/y")), "may not read \"other/y\"");
    denied(block_on(reader.delete("app/x")), "may not write");
    let both = ["app/x", "other/y"];
    denied(block_on(reader.batch_get(&both, Default::default())), "may not read \"other/y\"");
    let page = block_on(reader.scan(&ScanRange::Prefix(b"app/".to_vec()), &ScanOptions::default()))
        .expect("reader scans app/");
    assert!(page.entries.iter().all(|e| e.key.starts_with(b"app/")) && !page.entries.is_empty());
    denied(
        block_on(reader.scan(&ScanRange::Prefix(b"other/".to_vec()), &ScanOptions::default())),
        "may not read every key",
    );
    denied(
        block_on(reader.scan(&ScanRange::All, &ScanOptions::default())),
        "may not read every key",
    );
    let txn = Txn::new().and_then([TxnOp::get("app/x"), TxnOp::put("app/x", "4")]);
    denied(block_on(reader.txn(&txn)), "may not write \"app/x\"");
    let txn = Txn::new().and_then([TxnOp::get("app/x")]);
    block_on(reader.txn(&txn)).expect("a read-only transaction on app/");
    // Watches: app/ is followed; other/ is refused, the stream ends with the refusal.
    block_on(async {
        let mut watch = reader.watch(WatchSpec::prefix("other/")).expect("a watch starts");
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Err(Error::PermissionDenied(reason)))) => {
                assert!(reason.contains("other/"), "{reason}")
            }
            other => panic!("expected the watch of other/ to be refused, got {other:?}"),
        }
        let mut watch = reader.watch(WatchSpec::prefix("app/")).expect("a watch starts");
        // The watch starts from now: write until its first event arrives.
        let event = loop {
            root.put("other/y", "6").await.unwrap();
            root.put("app/x", "5").await.unwrap();
            match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
                Ok(Some(Ok(corekv_client::WatchMessage::Event(event)))) => break event,
                Ok(Some(Ok(_))) | Err(_) => continue,
                other => panic!("expected events on app/, got {other:?}"),
            }
        };
        assert!(event.changes.iter().all(|c| c.key.starts_with(b"app/")), "{event:?}");
    });
    // Leases: a read-only user may not use them; a writer may not put keys outside its
    // prefixes with one.
    let ttl = Duration::from_secs(5);
    denied(block_on(reader.lease_grant_for("app/x", ttl)), "use leases");
    let svc = client_as(&cluster, &pki, None, Some(SVC_TOKEN));
    block_on(svc.lease_grant_with(ttl, &[("app/leased", "1")], None)).expect("keys in app/");
    let outside = svc.lease_grant_with(ttl, &[("other/leased", "1")], None);
    denied(block_on(outside), "may not write \"other/leased\"");
    // Another user's lease holding keys outside svc's prefixes: svc may neither revoke it
    // (that deletes them) nor keep it alive.
    let theirs = block_on(root.lease_grant_with(ttl, &[("other/held", "1")], None)).unwrap();
    denied(block_on(svc.lease_revoke(theirs.id)), "\"other/held\", a key of the lease");
    denied(block_on(svc.lease_keep_alive(theirs.id)), "a key of the lease");
    assert!(block_on(root.get("other/held")).unwrap().is_some(), "the key is still there");
    // Admin requests.
    let shard = corekv_client::ShardId(0);
    denied(block_on(reader.transfer_leader(shard, corekv_client::NodeId(2))), "admin right");
    // corekvctl: exit status 4 and the reason, for a status too (an admin right).
    let (code, _, err) = cluster.ctl(&[
        "--cert",
        &cert_arg(&pki, "reader"),
        "--cert-key",
        &key_arg(&pki, "reader"),
        "status",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("admin right"), "{err}");
    let cert = pki.path("user-reader.pem");
    let key = pki.path("user-reader-key.pem");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (code, _, err) = cluster.ctl(&["--cert", cert, "--cert-key", key, "put", "app/x", "7"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("permission denied") && err.contains("may not write"), "{err}");
    let (code, out, err) = cluster.ctl(&["--cert", cert, "--cert-key", key, "get", "app/x"]);
    assert_eq!((code, out.as_str()), (0, "5\n"), "{err}");
}

// Shows: a token names its user (and wins over no certificate); an unknown token is refused
// at the hello; a connection with no user, or a certificate whose user the policy does not
// know, gets nothing.
#[test]
fn tokens_and_unknown_users() {
    let (cluster, pki, _) = auth_cluster();
    let svc = client_as(&cluster, &pki, None, Some(SVC_TOKEN));
    block_on(svc.put("app/svc", "1")).expect("the token user writes app/");
    denied(block_on(svc.get("other/y")), "user \"svc\" may not read");
    let wrong = client_as(&cluster, &pki, None, Some("not-a-token"));
    match block_on(wrong.get("app/svc")) {
        Err(Error::PermissionDenied(reason)) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected the hello to be refused, got {other:?}"),
    }
    let nobody = client_as(&cluster, &pki, None, None);
    denied(block_on(nobody.get("app/svc")), "no user");
    let stranger = client_as(&cluster, &pki, Some("stranger"), None);
    denied(block_on(stranger.get("app/svc")), "\"stranger\" is not in the cluster's policy");
}

// Shows: a user with the proxy right (by certificate or by token) acts for another user and
// gets exactly that user's rights (a read-only user's reads pass, its writes are refused);
// without the right, or for a user the policy does not know, the hello is refused; the proxy
// alone may do nothing; a policy reload that takes the right away refuses the next request on
// a connection already acting.
#[test]
fn a_proxy_acts_for_other_users_with_their_rights() {
    let (cluster, pki, policy_path) = auth_cluster();
    let root = cluster.client();
    block_on(root.put("app/x", "1")).expect("root writes");
    let acting = |user: &str, as_user: Option<&str>| {
        let cert = pki.client(&pki.ca, &format!("user-{user}"), user, None);
        let mut config = ClientConfig::new(cluster.registry.clone());
        config.tls = Some(tls_config(&pki.path("ca.pem"), Some((&cert.0, &cert.1))));
        config.act_as = as_user.map(str::to_string);
        config.timeout = Duration::from_secs(5);
        Client::connect(config)
    };
    let as_reader = acting("gw", Some("reader"));
    let read = block_on(as_reader.get("app/x")).expect("the proxy reads as reader");
    assert_eq!(read.map(|e| e.value), Some(b"1".to_vec()));
    denied(block_on(as_reader.put("app/x", "2")), "user \"reader\" may not write");
    denied(block_on(as_reader.get("other/y")), "user \"reader\" may not read");
    let as_root = acting("gw", Some("root"));
    block_on(as_root.put("other/y", "1")).expect("the proxy writes as root");
    denied(block_on(acting("reader", Some("root")).get("app/x")), "may not act for other users");
    denied(block_on(acting("gw", Some("nobody")).get("app/x")), "\"nobody\" is not in");
    denied(block_on(acting("gw", None).get("app/x")), "user \"gw\" may not read");

    // A proxy known by its token acts the same way.
    let mut config = ClientConfig::new(cluster.registry.clone());
    config.tls = Some(tls_config(&pki.path("ca.pem"), None));
    config.token = Some(GW_TOKEN.to_string());
    config.act_as = Some("reader".to_string());
    let by_token = Client::connect(config);
    assert!(block_on(by_token.get("app/x")).expect("reads as reader").is_some());
    denied(block_on(by_token.put("app/x", "3")), "user \"reader\" may not write");

    // Taking the proxy right away applies, after SIGHUP, to a connection already open.
    let digest = corekv_server::auth::token_digest(SVC_TOKEN);
    block_on(async {
        as_reader.get("app/x").await.expect("the proxy reads as reader");
        let without = policy(&digest, false).replace("proxy = true", "");
        std::fs::write(&policy_path, without).unwrap();
        for id in 1..=3 {
            cluster.signal(id, libc::SIGHUP);
        }
        let started = std::time::Instant::now();
        loop {
            match as_reader.get("app/x").await {
                Err(Error::PermissionDenied(reason)) => {
                    assert!(reason.contains("may not act for other users"), "{reason}");
                    break;
                }
                Ok(_) => assert!(started.elapsed() < Duration::from_secs(10), "still acting"),
                Err(other) => panic!("expected a refusal, got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

// Shows: a changed policy applies after SIGHUP to connections already open (no restart), and
// a policy file that does not load keeps the one in force.
#[test]
fn policy_changes_apply_on_sighup() {
    let (cluster, pki, policy_path) = auth_cluster();
    let reader = client_as(&cluster, &pki, Some("reader"), None);
    block_on(reader.get("app/x")).expect("reader reads");
    denied(block_on(reader.put("app/x", "1")), "may not write");
    let digest = corekv_server::auth::token_digest(SVC_TOKEN);
    std::fs::write(&policy_path, policy(&digest, true)).unwrap();
    for id in 1..=3 {
        cluster.signal(id, libc::SIGHUP);
    }
    cluster.wait_until(Duration::from_secs(10), "the reader to be allowed to write", || {
        block_on(reader.put("app/x", "1")).is_ok()
    });
    // A running watch of app/ ends when its user loses the right to read app/, and a token
    // removed from the policy stops working on the connection it opened.
    let svc = client_as(&cluster, &pki, None, Some(SVC_TOKEN));
    block_on(async {
        // (`{t}`: one hash tag, one shard, one connection for both requests; connections
        // live as long as the runtime that opened them.)
        svc.put("app/{t}", "1").await.expect("the token works");
        let mut watch = reader.watch(WatchSpec::prefix("app/")).expect("a watch starts");
        // Wait until it runs: a change arrives.
        loop {
            reader.put("app/x", "w").await.unwrap();
            match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
                Ok(Some(Ok(corekv_client::WatchMessage::Event(_)))) => break,
                Ok(Some(Ok(_))) | Err(_) => continue,
                other => panic!("expected a change, got {other:?}"),
            }
        }
        let revoked = policy(&"0".repeat(64), true)
            .replace("read = [\"app/\"]", "read = [\"else/\"]")
            .replace("write = [\"app/\"]", "write = [\"else/\"]");
        std::fs::write(&policy_path, revoked).unwrap();
        for id in 1..=3 {
            cluster.signal(id, libc::SIGHUP);
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                Ok(Some(Err(Error::PermissionDenied(reason)))) => {
                    assert!(reason.contains("may no longer read"), "{reason}");
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected the watch to end refused, got {other:?}"),
            }
        }
        match svc.put("else/{t}", "1").await {
            Err(Error::PermissionDenied(reason)) => {
                assert!(reason.contains("token was removed"), "{reason}")
            }
            other => panic!("expected the removed token to be refused, got {other:?}"),
        }
    });
    write_bad_policy(&policy_path);
    for id in 1..=3 {
        cluster.signal(id, libc::SIGHUP);
    }
    cluster.wait_until(Duration::from_secs(10), "the failed reload in the logs", || {
        (1..=3).all(|id| cluster.logged(id, &["auth policy reload failed"]))
    });
    // The policy in force (reader may write else/ now, not app/) stays.
    block_on(reader.put("else/x", "2")).expect("the policy in force stays");
    denied(block_on(reader.put("app/x", "2")), "may not write");
}

fn write_bad_policy(path: &Path) {
    std::fs::write(path, "[[user]]\nname = \"reader\"\nroles = [\"missing\"]\n").unwrap();
}

fn cert_arg(pki: &Pki, user: &str) -> String {
    pki.path(&format!("user-{user}.pem")).display().to_string()
}

fn key_arg(pki: &Pki, user: &str) -> String {
    pki.path(&format!("user-{user}-key.pem")).display().to_string()
}
