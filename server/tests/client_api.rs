//! The Rust client against a real 3-node cluster: every API call, leader changes during a
//! stream of writes, a node that is down, and `corekvctl`'s output and exit codes.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{block_on, corekvctl_bin, TestCluster};
use corekv_client::{
    Compare, Error, ReadOptions, ScanOptions, ScanRange, Txn, TxnOp, TxnOpResult, WriteOptions,
};
use futures_util::StreamExt;

// Shows: get, put, delete and their metadata; stale reads; batches split across shards with
// results in the caller's order.
#[test]
fn single_keys_and_batches() {
    let cluster = TestCluster::start(3, 3);
    let client = cluster.client();
    block_on(async {
        assert_eq!(client.get("missing").await.unwrap(), None);
        let m1 = client.put("k", "v1").await.unwrap();
        assert_eq!((m1.version, m1.create_index, m1.mod_index), (1, m1.mod_index, m1.mod_index));
        let m2 = client.put("k", "v2").await.unwrap();
        assert_eq!(m2.version, 2);
        assert_eq!(m2.create_index, m1.create_index);
        assert!(m2.mod_index > m1.mod_index);
        let got = client.get("k").await.unwrap().unwrap();
        assert_eq!((got.value.as_slice(), got.meta), (&b"v2"[..], m2));
        // A stale read from any replica eventually sees it.
        let mut stale = None;
        for _ in 0..50 {
            stale = client.get_with("k", ReadOptions::stale()).await.unwrap();
            if stale.as_ref().is_some_and(|e| e.value == b"v2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stale.unwrap().value, b"v2");
        assert!(client.delete("k").await.unwrap());
        assert!(!client.delete("k").await.unwrap());
        assert_eq!(client.get("k").await.unwrap(), None);

        let keys: Vec<String> = (0..60).map(|i| format!("batch-{i}")).collect();
        let shards: std::collections::BTreeSet<u32> =
            keys.iter().map(|k| client.shard_of(k.as_bytes()).get()).collect();
        assert_eq!(shards.len(), 3, "the batch spans every shard");
        let items: Vec<(String, String)> =
            keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
        let metas = client.batch_put(&items, WriteOptions::default()).await.unwrap();
        assert_eq!(metas.len(), 60);
        assert!(metas.iter().all(|m| m.version == 1));
        let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
        asked.insert(5, "not-there".to_string());
        let got = client.batch_get(&asked, ReadOptions::default()).await.unwrap();
        for (key, value) in asked.iter().zip(&got) {
            match value {
                Some(v) => assert_eq!(v.value, format!("v-{key}").into_bytes(), "in caller order"),
                None => assert_eq!(key, "not-there"),
            }
        }
        let deleted = client
            .batch_delete(&["batch-1", "nope", "batch-2"], WriteOptions::default())
            .await
            .unwrap();
        assert_eq!(deleted, vec![true, false, true]);

        // Limits are checked before anything is sent.
        assert!(matches!(client.put("", "x").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(
            client.put("k", vec![0u8; 1024 * 1024 + 1]).await,
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(client.get(vec![b'k'; 4097]).await, Err(Error::TooLarge { .. })));
    });
}

// Shows: scans merge every shard in key order, honour prefix and range bounds, page with
// continuations without gaps or repeats, and stream across pages.
#[test]
fn scans_across_shards() {
    let cluster = TestCluster::start(3, 3);
    let client = cluster.client();
    block_on(async {
        let items: Vec<(String, String)> =
            (0..250).map(|i| (format!("user:{i:04}"), format!("{i}"))).collect();
        client.batch_put(&items, WriteOptions::default()).await.unwrap();
        client.batch_put(&[("other:1", "x"), ("zzz", "y")], WriteOptions::default()).await.unwrap();

        let all: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        let mut seen = Vec::new();
        let mut options = ScanOptions { limit: 37, ..Default::default() };
        loop {
            let page = client.scan(&ScanRange::prefix("user:"), &options).await.unwrap();
            assert!(page.entries.len() <= 37);
            seen.extend(page.entries.iter().map(|e| String::from_utf8(e.key.clone()).unwrap()));
            match page.continuation {
                Some(c) => options.continuation = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, all, "pages cover the prefix in order, once each");

        let page = client
            .scan(
                &ScanRange::range("user:0100", "user:0110"),
                &ScanOptions { keys_only: true, ..Default::default() },
            )
            .await
            .unwrap();
        let keys: Vec<String> =
            page.entries.iter().map(|e| String::from_utf8(e.key.clone()).unwrap()).collect();
        assert_eq!(keys, (100..110).map(|i| format!("user:{i:04}")).collect::<Vec<_>>());
        assert!(page.entries.iter().all(|e| e.value.is_empty()), "keys only");
        assert_eq!(page.continuation, None);

        let streamed: Vec<String> = client
            .scan_stream(ScanRange::All, ScanOptions { limit: 50, ..Default::default() })
            .map(|e| String::from_utf8(e.unwrap().key).unwrap())
            .collect()
            .await;
        assert_eq!(streamed.len(), 252);
        assert!(streamed.windows(2).all(|w| w[0] < w[1]), "the stream is in key order");
    });
}

// Shows: transactions take the success or failure branch by their compares, atomically; a
// failed transaction without a failure branch reports which compare failed; keys on different
// shards are refused with advice about hash tags.
#[test]
fn transactions() {
    let cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    block_on(async {
        let create = Txn::new()
            .when(Compare::missing("{acct}:a"))
            .and_then([TxnOp::put("{acct}:a", "100"), TxnOp::put("{acct}:b", "0")]);
        let r = client.txn(&create).await.unwrap();
        assert!(r.succeeded);
        assert_eq!(r.results.len(), 2);
        let again = client.txn(&create).await.unwrap();
        assert!(!again.succeeded);
        assert_eq!(again.failed_compare, Some(0), "no failure branch: the failed compare is named");

        let version = client.get("{acct}:a").await.unwrap().unwrap().meta.version;
        let transfer = |v: u64| {
            Txn::new()
                .when(Compare::version("{acct}:a").eq(v))
                .when(Compare::value("{acct}:b").eq("0"))
                .and_then([
                    TxnOp::put("{acct}:a", "60"),
                    TxnOp::put("{acct}:b", "40"),
                    TxnOp::get("{acct}:a"),
                ])
                .or_else([TxnOp::get("{acct}:a"), TxnOp::get("{acct}:b")])
        };
        let done = client.txn(&transfer(version)).await.unwrap();
        assert!(done.succeeded);
        match &done.results[2] {
            TxnOpResult::Get(Some(e)) => assert_eq!(e.value, b"60"),
            other => panic!("{other:?}"),
        }
        let lost = client.txn(&transfer(version)).await.unwrap();
        assert!(!lost.succeeded, "the version moved on");
        assert_eq!(lost.results.len(), 2, "the failure branch ran");
        let a = client.get("{acct}:a").await.unwrap().unwrap();
        let b = client.get("{acct}:b").await.unwrap().unwrap();
        assert_eq!((a.value.as_slice(), b.value.as_slice()), (&b"60"[..], &b"40"[..]));
        assert_eq!(a.meta.mod_index, b.meta.mod_index, "both writes landed at one index");

        let mut a_key = "x-0".to_string();
        let mut b_key = "x-1".to_string();
        for i in 0.. {
            let k = format!("x-{i}");
            if client.shard_of(k.as_bytes()).get() == 0 {
                a_key = k;
            } else {
                b_key = k;
            }
            if client.shard_of(a_key.as_bytes()).get() != client.shard_of(b_key.as_bytes()).get() {
                break;
            }
        }
        let cross = Txn::new().and_then([TxnOp::put(&a_key, "1"), TxnOp::put(&b_key, "2")]);
        match client.txn(&cross).await {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains("hash tag"), "{message}")
            }
            other => panic!("cross-shard txn: {other:?}"),
        }
    });
}

// Shows: status reports every replica, with one leader per shard.
#[test]
fn status_of_every_replica() {
    let cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    let reports = block_on(client.status());
    assert_eq!(reports.len(), 6);
    for shard in 0..2 {
        let leaders = reports
            .iter()
            .filter(|r| {
                r.shard.get() == shard
                    && r.status.as_ref().is_ok_and(|s| s.role == corekv_client::Role::Leader)
            })
            .count();
        assert_eq!(leaders, 1, "shard {shard}");
    }
}

// Shows: writes go on while leaders change under them (a leader is killed mid-stream). The
// write in flight at the kill may end as `Indeterminate` (the client never sends a write
// twice); every other write succeeds, every acknowledged write is readable after, and an
// indeterminate one either applied or did not.
#[test]
fn leader_changes_during_a_write_stream() {
    let mut cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            block_on(async {
                let mut i = 0u64;
                let mut unknown = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.put(format!("stream-{i}"), i.to_string()).await {
                        Ok(_) => {}
                        Err(corekv_client::Error::Indeterminate(_)) => unknown.push(i),
                        Err(e) => panic!("write {i}: {e}"),
                    }
                    i += 1;
                    written.store(i, Ordering::Relaxed);
                }
                (i, unknown)
            })
        })
    };
    cluster.wait_until(Duration::from_secs(10), "some writes", || {
        written.load(Ordering::Relaxed) > 50
    });
    let victim = cluster.leader_of(0);
    cluster.kill(victim);
    let before = written.load(Ordering::Relaxed);
    cluster.wait_until(Duration::from_secs(20), "writes after the kill", || {
        written.load(Ordering::Relaxed) > before + 100
    });
    stop.store(true, Ordering::Relaxed);
    let (total, unknown) = writer.join().expect("no write failed");
    assert!(unknown.len() <= 2, "only writes in flight at the kill are unknown: {unknown:?}");
    block_on(async {
        for i in 0..total {
            let value = client.get(format!("stream-{i}")).await.unwrap();
            if unknown.contains(&i) {
                assert!(value.is_none_or(|v| v.value == i.to_string().into_bytes()));
            } else if i % 7 == 0 {
                let value = value.expect("acknowledged write kept");
                assert_eq!(value.value, i.to_string().into_bytes());
            }
        }
    });
}

// Shows: with one of three nodes down the client keeps working on every shard; a call that
// cannot reach a quorum fails with Unavailable within its deadline.
#[test]
fn a_down_node_and_a_lost_quorum() {
    let mut cluster = TestCluster::start(3, 2);
    let client = cluster.client();
    cluster.kill(1);
    block_on(async {
        for i in 0..40 {
            client.put(format!("down-{i}"), "v").await.unwrap();
        }
        assert_eq!(client.get("down-39").await.unwrap().unwrap().value, b"v");
    });
    cluster.kill(2);
    block_on(async {
        let started = std::time::Instant::now();
        let result = client
            .put_with("no-quorum", "v", WriteOptions::with_timeout(Duration::from_secs(2)))
            .await;
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(
            matches!(result, Err(Error::Unavailable { .. } | Error::Indeterminate(_))),
            "{result:?}"
        );
        let read = client
            .get_with("down-1", ReadOptions::default().with_timeout(Duration::from_secs(2)))
            .await;
        assert!(matches!(read, Err(Error::Unavailable { .. })), "{read:?}");
    });
}

fn ctl(cluster: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(corekvctl_bin())
        .arg("--registry")
        .arg(&cluster.registry_path)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Shows: corekvctl's commands, text and JSON output, binary safety, and exit codes
// (0 ok, 1 not found, 2 input error, 3 unavailable).
#[test]
fn corekvctl_commands_and_exit_codes() {
    let mut cluster = TestCluster::start(3, 2);
    assert_eq!(
        ctl(&cluster, &["put", "greeting", "hello world"]),
        (0, "OK\n".into(), String::new())
    );
    assert_eq!(ctl(&cluster, &["get", "greeting"]).1, "hello world\n");
    let (code, out, _) = ctl(&cluster, &["-o", "json", "get", "greeting"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(b64.decode(json["value"].as_str().unwrap()).unwrap(), b"hello world");
    assert_eq!(json["version"], 1);

    let (code, _, err) = ctl(&cluster, &["get", "nothing-here"]);
    assert_eq!(code, 1);
    assert_eq!(err, "corekvctl: key not found: nothing-here\n");

    // Values from a file; binary values escaped in text and exact in JSON.
    let file = cluster.dir.path().join("blob");
    std::fs::write(&file, [0u8, 1, 2, b'x', 0xff]).unwrap();
    assert_eq!(ctl(&cluster, &["put", "blob", "--file", file.to_str().unwrap()]).0, 0);
    assert_eq!(ctl(&cluster, &["get", "blob"]).1, "\\x00\\x01\\x02x\\xff\n");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&cluster, &["-o", "json", "get", "blob"]).1).unwrap();
    assert_eq!(b64.decode(json["value"].as_str().unwrap()).unwrap(), vec![0u8, 1, 2, b'x', 0xff]);

    for i in 0..5 {
        ctl(&cluster, &["put", &format!("list:{i}"), &format!("{i}")]);
    }
    assert_eq!(
        ctl(&cluster, &["scan", "list:"]).1,
        "list:0\t0\nlist:1\t1\nlist:2\t2\nlist:3\t3\nlist:4\t4\n"
    );
    assert_eq!(
        ctl(&cluster, &["scan", "list:", "--limit", "2", "--keys-only"]).1,
        "list:0\nlist:1\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&cluster, &["-o", "json", "scan", "list:"]).1).unwrap();
    assert_eq!(json["count"], 5);

    assert_eq!(ctl(&cluster, &["del", "list:0"]).1, "1\n");
    assert_eq!(ctl(&cluster, &["del", "list:0"]).1, "0\n");

    let txn_file = cluster.dir.path().join("txn.json");
    std::fs::write(
        &txn_file,
        r#"{"compare": [{"key": "{t}a", "target": "missing"}],
            "success": [{"op": "put", "key": "{t}a", "value": "1"}, {"op": "get", "key": "{t}a"}]}"#,
    )
    .unwrap();
    assert_eq!(
        ctl(&cluster, &["txn", txn_file.to_str().unwrap()]).1,
        "SUCCEEDED\nput version 1\nget {t}a\t1\n"
    );
    // The second time the key exists: the compare fails, which scripts see as exit status 1.
    let (code, out, _) = ctl(&cluster, &["-o", "json", "txn", txn_file.to_str().unwrap()]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (json["succeeded"].as_bool(), json["failed_compare"].as_u64()),
        (Some(false), Some(0))
    );

    let (code, out, _) = ctl(&cluster, &["status"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("SHARD"), "{out}");
    assert_eq!(out.matches("leader").count(), 2, "one leader per shard\n{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&cluster, &["-o", "json", "status"]).1).unwrap();
    let replicas = json["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 6);
    // The replicas' own status shape came over the wire: serving state included.
    for replica in replicas {
        assert_eq!(replica["serving"], true, "{replica}");
        assert!(replica["wal_durable"].as_str().is_some_and(|d| d.contains(':')), "{replica}");
    }

    // Input errors: bad duration, malformed transaction, missing registry.
    assert_eq!(ctl(&cluster, &["--timeout", "soon", "get", "x"]).0, 2);
    std::fs::write(&txn_file, "{not json").unwrap();
    let (code, _, err) = ctl(&cluster, &["txn", txn_file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("corekvctl: transaction: not JSON"), "{err}");
    let output = Command::new(corekvctl_bin())
        .args(["--registry", "/nonexistent.toml", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));

    // Unavailable: every node down.
    cluster.kill_all();
    let (code, _, err) = ctl(&cluster, &["--timeout", "500ms", "get", "greeting"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("corekvctl: cluster unavailable"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

// Shows: binary values round-trip through `put --file` and `get --raw` byte for byte;
// `--strip-newline` drops what `echo` adds; a value starting with `-` goes after `--`; `txn
// --help` carries the format; a transaction whose compare failed exits 1 and names the
// compare the same way with or without a failure branch; a missing registry says where its
// path came from; and with every node down the call ends at once, saying so in one line.
#[test]
fn corekvctl_binary_values_transactions_and_messages() {
    let mut cluster = TestCluster::start(3, 2);
    let blob: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = cluster.dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    assert_eq!(ctl(&cluster, &["put", "blob", "--file", file.to_str().unwrap()]).0, 0);
    let raw = ctl_bytes(&cluster, &["get", "--raw", "blob"], None);
    assert_eq!(raw, blob, "get --raw gives back the exact bytes");
    let escaped = ctl(&cluster, &["get", "blob"]).1;
    assert!(escaped.contains("\\x00") && escaped.ends_with('\n'), "text mode escapes");

    assert_eq!(ctl_bytes(&cluster, &["put", "echoed"], Some(b"hi\n")), b"OK\n");
    assert_eq!(ctl_bytes(&cluster, &["get", "--raw", "echoed"], None), b"hi\n");
    ctl_bytes(&cluster, &["put", "stripped", "--strip-newline"], Some(b"hi\r\n"));
    assert_eq!(ctl_bytes(&cluster, &["get", "--raw", "stripped"], None), b"hi");
    assert_eq!(ctl(&cluster, &["put", "negative", "--", "-5"]).0, 0);
    assert_eq!(ctl(&cluster, &["get", "negative"]).1, "-5\n");
    let (_, help, _) = ctl(&cluster, &["put", "--help"]);
    assert!(help.contains("--strip-newline") && help.contains("corekvctl put k -- -5"), "{help}");
    let (_, help, _) = ctl(&cluster, &["get", "--help"]);
    assert!(help.contains("--raw") && help.contains("escapes"), "{help}");

    let (code, help, _) = ctl(&cluster, &["txn", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("\"compare\"") && help.contains("Example"), "{help}");
    assert!(help.contains("1 a compare failed"), "{help}");
    let txn = |failure: &str| {
        format!(
            r#"{{"compare": [{{"key": "{{t}}a", "target": "exists"}},
                            {{"key": "{{t}}a", "target": "version", "op": "=", "value": 9}}],
                "success": [{{"op": "put", "key": "{{t}}a", "value": "1"}}]{failure}}}"#
        )
    };
    ctl(&cluster, &["put", "{t}a", "0"]);
    for body in [txn(""), txn(r#", "failure": [{"op": "get", "key": "{t}a"}]"#)] {
        let path = cluster.dir.path().join("txn.json");
        std::fs::write(&path, &body).unwrap();
        let (code, out, _) = ctl(&cluster, &["-o", "json", "txn", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["failed_compare"], 1, "the same with or without a failure branch: {out}");
        let (code, out, _) = ctl(&cluster, &["txn", path.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(out.starts_with("FAILED\ncompare 1 did not hold\n"), "{out}");
    }

    let output = Command::new(corekvctl_bin())
        .args(["get", "x"])
        .env("COREKV_REGISTRY", "/nonexistent/corekv.toml")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(err.contains("/nonexistent/corekv.toml (from $COREKV_REGISTRY)"), "{err}");
    let output = Command::new(corekvctl_bin())
        .args(["get", "x"])
        .env_remove("COREKV_REGISTRY")
        .current_dir(cluster.dir.path().join("node-1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("corekv.toml (the default; name one with --registry"), "{err}");

    cluster.kill_all();
    let started = std::time::Instant::now();
    let (code, _, err) = ctl(&cluster, &["--timeout", "10s", "put", "k", "v"]);
    assert_eq!(code, 3, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.contains("every node refused the connection"), "{err}");
    assert_eq!(err.matches("cluster unavailable").count(), 1, "said once: {err}");
}

/// corekvctl's stdout as bytes, with `stdin` fed in when given.
fn ctl_bytes(cluster: &TestCluster, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(corekvctl_bin())
        .arg("--registry")
        .arg(&cluster.registry_path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap().stdout
}
