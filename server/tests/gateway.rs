//! The HTTP gateway with real parts: `corekv dev` (three `corekv serve` processes), two or
//! more `corekv gateway` processes, curl for requests (HTTP/1.1 and HTTP/2), and Python's
//! httpx with httpx-sse as a browser-grade event-stream client. Every endpoint, binary keys
//! and values, paging across shards, bad input, the limits, a watch resumed with
//! `Last-Event-ID` after its gateway is SIGKILLed, a leader SIGKILLed under a curl write
//! loop, TLS and auth passed through, and the OpenAPI document walked against the
//! implementation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::dev::{dev_client, node_pid, Dev};
use common::gateway::{curl, Gateway, Reply};
use common::{block_on, dev_base};
use serde_json::{json, Value};

/// A 3-node, 2-shard `corekv dev` in `dir`.
fn dev(dir: &Path) -> Dev {
    let base = dev_base(3, 2).to_string();
    let mut dev = Dev::start(dir, &["--nodes", "3", "--shards", "2", "--base-port", &base]);
    dev.wait_for("every shard has a leader");
    dev
}

fn gateway(dir: &Path, name: &str, extra: &[&str]) -> Gateway {
    let log = dir.join(format!("{name}.log"));
    Gateway::start(&dir.join("corekv.toml"), extra, &log, &[])
}

fn put(gw: &Gateway, path: &str, body: &str) -> Reply {
    curl(&["-X", "PUT", "--data-binary", body, &gw.url(path)])
}

fn get(gw: &Gateway, path: &str) -> Reply {
    curl(&[&gw.url(path)])
}

fn send(gw: &Gateway, method: &str, path: &str) -> Reply {
    curl(&["-X", method, &gw.url(path)])
}

fn post_json(gw: &Gateway, path: &str, body: &str) -> Reply {
    curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        &gw.url(path),
    ])
}

// Shows: through two gateways at once (writes through one, reads through the other) every
// endpoint does what the API says: raw values with their metadata in headers and as JSON,
// binary keys and values byte for byte, compare-and-set, time to live, a prefix listing
// paged across both shards (every key once, in order), prefix deletes, transactions,
// leases; bad input gets the right status and a JSON error; and the OpenAPI document
// matches what the gateway serves.
#[test]
fn every_endpoint_through_two_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let _dev = dev(dir.path());
    let (a, b) = (gateway(dir.path(), "a", &[]), gateway(dir.path(), "b", &[]));

    let written = put(&a, "/v1/kv/greeting", "hello");
    assert_eq!(written.status, 200, "{}", written.text());
    let meta = written.json();
    let mod_index = meta["mod_index"].as_u64().unwrap();
    assert_eq!((meta["key"].as_str(), meta["version"].as_u64()), (Some("greeting"), Some(1)));
    let read = get(&b, "/v1/kv/greeting");
    assert_eq!((read.status, read.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(read.header("content-type"), Some("application/octet-stream"));
    assert_eq!(read.header("x-corekv-mod-index"), Some(mod_index.to_string().as_str()));
    assert_eq!(read.header("x-corekv-shard"), meta["shard"].to_string().as_str().into());
    let as_json = get(&b, "/v1/kv/greeting?format=json").json();
    assert_eq!(
        (as_json["value"].as_str(), as_json["mod_index"].as_u64()),
        (Some("hello"), Some(mod_index))
    );
    let stale = get(&b, "/v1/kv/greeting?stale");
    assert_eq!((stale.status, stale.header("x-corekv-stale")), (200, Some("true")));
    // HTTP/2 (cleartext, prior knowledge) on the same port.
    let h2 = curl(&["--http2-prior-knowledge", &b.url("/v1/kv/greeting")]);
    assert_eq!((h2.version.as_str(), h2.status, h2.text()), ("HTTP/2", 200, "hello".into()));
    assert_eq!(h2.header("x-corekv-mod-index"), Some(mod_index.to_string().as_str()));
    let head = curl(&["-I", &b.url("/v1/kv/greeting")]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("x-corekv-version"), Some("1"));
    assert_eq!(get(&b, "/v1/kv/missing").error_code(404), "not_found");

    // Binary keys and values, byte for byte.
    let value: Vec<u8> = (0..=255u8).collect();
    let value_file = dir.path().join("binary-value");
    std::fs::write(&value_file, &value).unwrap();
    let key_path = "/v1/kv/bin%00%FF%2Fkey";
    let at = format!("@{}", value_file.display());
    let stored = curl(&["-X", "PUT", "--data-binary", &at, &a.url(key_path)]);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(
        stored.json()["key_b64"],
        base64::engine::general_purpose::STANDARD.encode(b"bin\0\xff/key")
    );
    assert_eq!(get(&b, key_path).body, value);
    let binary = get(&b, &format!("{key_path}?format=json")).json();
    assert_eq!(binary["value_b64"], base64::engine::general_purpose::STANDARD.encode(&value));
    assert!(binary.get("value").is_none(), "{binary}");

    // Compare-and-set on the mod index (0: only if missing).
    let wrong = format!("/v1/kv/greeting?cas={}", mod_index + 100);
    assert_eq!(put(&a, &wrong, "lost").error_code(409), "compare_failed");
    let right = put(&a, &format!("/v1/kv/greeting?cas={mod_index}"), "won");
    assert_eq!((right.status, right.json()["version"].as_u64()), (200, Some(2)));
    assert_eq!(put(&a, "/v1/kv/fresh?cas=0", "1").status, 200);
    assert_eq!(put(&a, "/v1/kv/fresh?cas=0", "2").error_code(409), "compare_failed");
    assert_eq!(send(&a, "DELETE", "/v1/kv/fresh?cas=1").error_code(409), "compare_failed");
    let fresh = get(&b, "/v1/kv/fresh?format=json").json()["mod_index"].as_u64().unwrap();
    let deleted = send(&a, "DELETE", &format!("/v1/kv/fresh?cas={fresh}"));
    assert_eq!(deleted.json(), json!({"deleted": true}));
    assert_eq!(send(&a, "DELETE", "/v1/kv/fresh").json(), json!({"deleted": false}));

    // A time to live.
    assert_eq!(put(&a, "/v1/kv/short?ttl=1", "x").status, 200);
    let ttl: u64 = get(&b, "/v1/kv/short").header("x-corekv-ttl-ms").unwrap().parse().unwrap();
    assert!(ttl <= 1000, "{ttl}");
    wait_until(Duration::from_secs(15), "the key to expire", || {
        get(&b, "/v1/kv/short").status == 404
    });

    listing_pages_across_shards(&a, &b);
    transactions(&a);
    leases(&a, &b);
    bad_input(&a, dir.path());
    walk_openapi(&b);

    let metrics = get(&a, "/metrics").text();
    assert!(
        metrics.contains(r#"corekv_gateway_requests_total{code="200",endpoint="kv_put"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"corekv_gateway_requests_total{code="409",endpoint="kv_put"}"#),
        "{metrics}"
    );
}

/// 57 keys over both shards, listed 7 at a time: every key once, in key order.
fn listing_pages_across_shards(a: &Gateway, b: &Gateway) {
    let keys: Vec<String> = (0..57).map(|i| format!("list/{i:03}")).collect();
    for key in &keys {
        assert_eq!(put(a, &format!("/v1/kv/{key}"), key).status, 200);
    }
    let (mut listed, mut shards, mut pages) = (Vec::new(), BTreeSet::new(), 0);
    let mut page: Option<String> = None;
    loop {
        let mut path = "/v1/kv/list/?prefix&limit=7".to_string();
        if let Some(token) = &page {
            path.push_str(&format!("&page={token}"));
        }
        let reply = get(b, &path).json();
        pages += 1;
        for entry in reply["entries"].as_array().unwrap() {
            assert_eq!(entry["key"], entry["value"], "{entry}");
            listed.push(entry["key"].as_str().unwrap().to_string());
            shards.insert(entry["shard"].as_u64().unwrap());
        }
        match reply["next_page"].as_str() {
            Some(token) => page = Some(token.to_string()),
            None => break,
        }
        assert!(pages < 20, "the listing does not end");
    }
    assert_eq!(listed, keys, "every key once, in order");
    assert_eq!(shards, BTreeSet::from([0, 1]), "the keys span both shards");
    assert!(pages >= 9, "{pages} pages");
    let keys_only = get(b, "/v1/kv/list/?prefix&limit=2&keys_only").json();
    assert_eq!(keys_only["entries"][0]["value"], "", "{keys_only}");
    let gone = send(a, "DELETE", "/v1/kv/list/?prefix").json();
    assert_eq!(gone["deleted"], 57);
    assert_eq!(get(b, "/v1/kv/list/?prefix").json()["entries"], json!([]));
}

fn transactions(a: &Gateway) {
    let txn = r#"{"compare": [{"key": "{t}:lock", "target": "missing"}],
                  "success": [{"op": "put", "key": "{t}:lock", "value": "me"},
                              {"op": "get", "key": "{t}:lock"}],
                  "failure": [{"op": "get", "key": "{t}:lock"}]}"#;
    let first = post_json(a, "/v1/txn", txn).json();
    assert_eq!(first["succeeded"], true, "{first}");
    assert_eq!(first["results"][1]["get"]["value"], "me", "{first}");
    let second = post_json(a, "/v1/txn", txn).json();
    assert_eq!(
        (second["succeeded"].as_bool(), second["failed_compare"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(second["results"][0]["get"]["value"], "me", "{second}");
}

fn leases(a: &Gateway, b: &Gateway) {
    let granted = send(a, "POST", "/v1/lease?ttl=30s&key=leased/a");
    assert_eq!(granted.status, 201, "{}", granted.text());
    let id = granted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(put(a, &format!("/v1/kv/leased/a?lease={id}"), "held").status, 200);
    assert_eq!(get(b, "/v1/kv/leased/a").header("x-corekv-lease"), Some(id.as_str()));
    let info = get(b, &format!("/v1/lease/{id}?keys")).json();
    assert_eq!(
        (info["ttl_ms"].as_u64(), &info["keys"]),
        (Some(30_000), &json!([{"key": "leased/a"}]))
    );
    let kept = send(b, "POST", &format!("/v1/lease/{id}/keepalive")).json();
    assert_eq!(kept["ttl_ms"], 30_000);
    let revoked = send(a, "DELETE", &format!("/v1/lease/{id}")).json();
    assert_eq!(revoked["deleted_keys"], 1);
    assert_eq!(get(b, "/v1/kv/leased/a").status, 404);
    assert_eq!(get(b, &format!("/v1/lease/{id}")).error_code(404), "not_found");
    assert_eq!(send(a, "POST", "/v1/lease?ttl=30s").error_code(400), "bad_request");
}

fn bad_input(a: &Gateway, dir: &Path) {
    let big = dir.join("two-mib");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let at = format!("@{}", big.display());
    let too_large = curl(&["-X", "PUT", "--data-binary", &at, &a.url("/v1/kv/big")]);
    assert_eq!(too_large.error_code(413), "too_large");
    assert_eq!(get(a, "/v1/kv/big").status, 404, "nothing was written");
    let long_key = format!("/v1/kv/{}", "k".repeat(5000));
    assert_eq!(put(a, &long_key, "v").error_code(413), "too_large");
    assert_eq!(get(a, "/v1/watch/x?from=0:zz").error_code(400), "bad_request");
    let last_id = curl(&["-H", "Last-Event-ID: not-a-cursor", &a.url("/v1/watch/x")]);
    assert_eq!(last_id.error_code(400), "bad_request");
    assert_eq!(
        post_json(a, "/v1/txn", r#"{"compare": [{"key": "k""#).error_code(400),
        "bad_request"
    );
    let two_shards = r#"{"success": [{"op": "put", "key": "a", "value": "1"},
                                     {"op": "put", "key": "b", "value": "1"}]}"#;
    assert_eq!(post_json(a, "/v1/txn", two_shards).error_code(400), "bad_request");
    assert_eq!(put(a, "/v1/kv/k?ttl=1&lease=0001000000000001", "v").error_code(400), "bad_request");
    assert_eq!(put(a, "/v1/kv/k?cas=abc", "v").error_code(400), "bad_request");
    assert_eq!(get(a, "/v1/kv/k?prefx").error_code(400), "bad_request");
    assert_eq!(get(a, "/v1/kv/%zz").error_code(400), "bad_request");
    assert_eq!(get(a, "/v1/lease/not-hex").error_code(400), "bad_request");
    assert_eq!(send(a, "PATCH", "/v1/kv/k").error_code(405), "method_not_allowed");
    assert_eq!(get(a, "/v2/nothing").error_code(404), "not_found");
    let bad_auth = curl(&["-H", "Authorization: Basic eDp5", &a.url("/v1/kv/k")]);
    assert_eq!(bad_auth.error_code(400), "bad_request");
}

// ---------------------------------------------------------------------------------------
// The OpenAPI document against the gateway
// ---------------------------------------------------------------------------------------

/// Walks every operation of the served OpenAPI document: the test has a request for each
/// (and the document an operation for each request the test knows); the answer's status is
/// one the document lists and its JSON body matches the documented schema; every documented
/// query parameter is accepted, an undocumented one refused, and every parameter the
/// gateway says it takes is documented.
fn walk_openapi(gw: &Gateway) {
    let doc = get(gw, "/v1/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(put(gw, "/v1/kv/walk/a", "1").status, 200);
    assert_eq!(put(gw, "/v1/kv/walk/b", "1").status, 200);
    let lease = send(gw, "POST", "/v1/lease?ttl=60s&key=walk/a").json();
    let lease = lease["id"].as_str().unwrap().to_string();
    let txn = r#"{"success": [{"op": "get", "key": "walk/a"}]}"#;
    // (method, documented path, concrete path, body)
    let cases: Vec<(&str, &str, String, Option<&str>)> = vec![
        ("get", "/health", "/health".into(), None),
        ("get", "/metrics", "/metrics".into(), None),
        ("get", "/v1/openapi.json", "/v1/openapi.json".into(), None),
        ("get", "/v1/kv/{key}", "/v1/kv/walk/a?format=json".into(), None),
        ("head", "/v1/kv/{key}", "/v1/kv/walk/a".into(), None),
        ("put", "/v1/kv/{key}", "/v1/kv/walk/a".into(), Some("2")),
        ("delete", "/v1/kv/{key}", "/v1/kv/walk/b".into(), None),
        ("post", "/v1/txn", "/v1/txn".into(), Some(txn)),
        ("post", "/v1/lease", "/v1/lease?ttl=60s&key=walk/a".into(), None),
        ("get", "/v1/lease/{id}", format!("/v1/lease/{lease}?keys"), None),
        ("post", "/v1/lease/{id}/keepalive", format!("/v1/lease/{lease}/keepalive"), None),
        ("get", "/v1/watch/{key}", "/v1/watch/walk/?prefix".into(), None),
        ("delete", "/v1/lease/{id}", format!("/v1/lease/{lease}"), None),
    ];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let tested: BTreeSet<(String, String)> =
        cases.iter().map(|(m, p, _, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, tested, "the document's operations are the ones the test walks");

    for (method, path, concrete, body) in &cases {
        let op = &doc["paths"][*path][*method];
        let reply = request(gw, method, concrete, *body);
        let documented = &op["responses"][reply.status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {path}: status {} is not documented",
            reply.status
        );
        let schema = &documented["content"]["application/json"]["schema"];
        if schema.is_object() && reply.header("content-type") == Some("application/json") {
            if let Err(why) = check_schema(&doc, schema, &reply.json()) {
                panic!(
                    "{method} {path}: the answer does not match the document: {why}\n{}",
                    reply.text()
                );
            }
        }
        // Parameters: each documented one is taken; an undocumented one is refused and the
        // refusal names only documented ones.
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["in"] == "query").collect())
            .unwrap_or_default();
        if *path == "/health" || *path == "/metrics" || *path == "/v1/openapi.json" {
            continue;
        }
        let names: BTreeSet<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        for param in &params {
            let sample = match param["schema"]["type"].as_str() {
                Some("boolean") => "true",
                Some("integer") => "1",
                _ => "x",
            };
            let name = param["name"].as_str().unwrap();
            let mut with = with_query(concrete, &format!("{name}={sample}"));
            // A parameter that only goes with another (a listing's `limit` with `prefix`).
            if let Some(requires) = param["x-corekv-requires"].as_str() {
                with = with_query(&with, requires);
            }
            let reply = request(gw, method, &with, *body);
            assert!(
                !reply.text().contains("unknown query parameter"),
                "{method} {path} ?{name}: {}",
                reply.text()
            );
        }
        for extra in ["undocumented=1", "prefix&undocumented=1"] {
            if extra.starts_with("prefix") && !names.contains("prefix") {
                continue;
            }
            let reply = request(gw, method, &with_query(concrete, extra), *body);
            assert_eq!(reply.status, 400, "{method} {path} ?{extra}: {}", reply.text());
            if *method == "head" {
                continue; // no body to read the refusal from
            }
            let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(message.contains("unknown query parameter \"undocumented\""), "{message}");
            if let Some((_, takes)) = message.split_once("takes ") {
                for taken in takes.trim_end_matches(')').split(", ") {
                    assert!(names.contains(taken), "{method} {path} takes {taken:?}, undocumented");
                }
            }
        }
    }
}

fn with_query(path: &str, query: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{query}")
}

/// One request of the walk (a watch is read for a second, then cut).
fn request(gw: &Gateway, method: &str, path: &str, body: Option<&str>) -> Reply {
    let url = gw.url(path);
    let mut args: Vec<&str> = match method {
        "head" => vec!["-I"],
        other => vec![
            "-X",
            match other {
                "get" => "GET",
                "put" => "PUT",
                "post" => "POST",
                "delete" => "DELETE",
                _ => panic!("{other}"),
            },
        ],
    };
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    if path.starts_with("/v1/watch") {
        args.extend(["-N", "--max-time", "1"]);
    }
    args.push(&url);
    curl(&args)
}

/// Whether `value` matches `schema` (the subset of JSON Schema the document uses: `$ref`,
/// `type` (one or a list), `required`, `properties`, `items`, `enum`, `oneOf`).
fn check_schema(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.strip_prefix("#/components/schemas/").ok_or("bad $ref")?;
        return check_schema(doc, &doc["components"]["schemas"][name], value);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return match options.iter().any(|o| check_schema(doc, o, value).is_ok()) {
            true => Ok(()),
            false => Err(format!("{value} matches none of {schema}")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_ok = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| type_ok(t)) {
        return Err(format!("{value} is not of type {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{value} is not one of {allowed:?}"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{value} lacks {name:?}"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, field) in object {
                let Some(field_schema) = properties.get(name) else {
                    return Err(format!("field {name:?} is not documented"));
                };
                check_schema(doc, field_schema, field).map_err(|e| format!("{name}: {e}"))?;
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for item in array {
            check_schema(doc, items, item)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------

// Shows: an event-stream client (httpx + httpx-sse, reconnecting with Last-Event-ID as a
// browser's EventSource does) following a prefix sees every change exactly once, in log
// order per shard, although its gateway is SIGKILLed mid-stream (writes go on meanwhile)
// and restarted; and a gateway stopped with SIGTERM ends its streams with a final `end`
// event and exits 0.
#[test]
fn a_watch_resumes_after_its_gateway_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let _dev = dev(dir.path());
    let mut a = gateway(dir.path(), "a", &["--heartbeat", "1s"]);
    let client = dev_client(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/sse_follow.py");
    // One stop key per shard: changes on different shards come in no set order.
    let stops: Vec<String> = (0..2)
        .map(|shard| {
            (0..)
                .map(|n| format!("feed/~stop-{n}"))
                .find(|k| client.shard_of(k.as_bytes()).get() == shard)
                .unwrap()
        })
        .collect();
    let mut follower = Command::new("python3")
        .arg(&script)
        .arg(a.url("/v1/watch/feed/?prefix"))
        .args(&stops)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with httpx and httpx-sse (pip install httpx httpx-sse)");
    let (lines_tx, lines) = std::sync::mpsc::channel::<Value>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value: Value = serde_json::from_str(&line).unwrap_or(json!({"unparsed": line}));
            if lines_tx.send(value).is_err() {
                return;
            }
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(30)).expect("the follower starts");
    assert!(first.get("ready").is_some(), "{first}");

    // Per shard, the (index, key) of every write, in the order the log has them.
    let mut expected: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    let mut write = |key: String| {
        let meta = block_on(client.put(&key, "v")).expect("put");
        expected
            .entry(client.shard_of(key.as_bytes()).get() as u64)
            .or_default()
            .push((meta.mod_index, key));
    };
    for i in 0..60 {
        write(format!("feed/{i:03}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    a.kill();
    for i in 60..120 {
        write(format!("feed/{i:03}"));
    }
    a.restart();
    for i in 120..180 {
        write(format!("feed/{i:03}"));
    }
    for stop in &stops {
        write(stop.clone());
    }

    let mut seen: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the follower reports the stop keys' changes within 60 s");
        if line.get("reconnect").is_some() {
            reconnects += 1;
            continue;
        }
        if line.get("ready").is_some() {
            continue;
        }
        let key = line["key"].as_str().unwrap_or_else(|| panic!("{line}")).to_string();
        let entry = (line["index"].as_u64().unwrap(), key.clone());
        seen.entry(line["shard"].as_u64().unwrap()).or_default().push(entry);
        if stops.iter().all(|stop| seen.values().flatten().any(|(_, k)| k == stop)) {
            break;
        }
    }
    assert!(follower.wait().unwrap().success());
    assert!(reconnects >= 1, "the follower had to reconnect");
    assert_eq!(seen, expected, "every change once, in log order per shard");

    // SIGTERM: the open stream gets its final event, and the gateway exits 0.
    let stream = Command::new("curl")
        .args(["-s", "-N", "--max-time", "30", &a.url("/v1/watch/feed/?prefix")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.terminate().success(), "{}", a.log_text());
    let output = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.contains("event: ready"), "{text}");
    assert!(text.contains("event: end\ndata: {\"reason\":\"shutting_down\"}"), "{text}");
}

// Shows: the gateway's limits: past --max-connections a connection gets 503 with
// Retry-After, and so does a body that would take the gateway past --max-body-memory (one
// larger than all of it: 413); a connection that sends nothing, half the HTTP/2 preface or
// half a request head is closed at --head-timeout; past --max-watches a watch gets 503
// `unavailable`, and a slot frees when a stream ends.
#[test]
fn limits_answer_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let _dev = dev(dir.path());
    let flags = [
        "--max-connections",
        "2",
        "--max-watches",
        "1",
        "--head-timeout",
        "2s",
        "--max-body-memory",
        "1",
    ];
    let gw = gateway(dir.path(), "limits", &flags);
    // Start from no other connection open (the start-up health checks' have closed): the
    // metrics request sees only itself.
    wait_until(Duration::from_secs(5), "no connection but this one", || {
        get(&gw, "/metrics").text().contains("corekv_gateway_connections 1\n")
    });
    std::thread::sleep(Duration::from_millis(300)); // and that one closes too
    let held: Vec<_> =
        (0..2).map(|_| std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = get(&gw, "/health");
    assert_eq!(refused.error_code(503), "unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    drop(held);
    wait_until(Duration::from_secs(5), "a connection slot", || get(&gw, "/health").status == 200);

    // --max-body-memory (1 MiB): a body being read slowly holds its 600 KiB; a second one at
    // the same time would pass the limit and is answered 503; one larger than the whole
    // budget is 413 (retrying cannot help).
    let body = dir.path().join("600-kib");
    std::fs::write(&body, vec![b' '; 600 << 10]).unwrap();
    let at = format!("@{}", body.display());
    let slow = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--limit-rate", "200K"])
        .args(["-H", "Expect:", "-X", "POST", "--data-binary", &at, &gw.url("/v1/txn")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let refused = curl(&["-X", "POST", "--data-binary", &at, &gw.url("/v1/txn")]);
    assert_eq!(refused.error_code(503), "unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let slow_status = slow.wait_with_output().unwrap();
    // (600 KiB of spaces is not a transaction: read whole, then refused as such.)
    assert_eq!(String::from_utf8_lossy(&slow_status.stdout), "400");
    let big = dir.path().join("two-mib-txn");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let at = format!("@{}", big.display());
    let too_big = curl(&["-X", "POST", "--data-binary", &at, &gw.url("/v1/txn")]);
    assert_eq!(too_big.error_code(413), "too_large");
    let small = r#"{"success": [{"op": "get", "key": "k"}]}"#;
    assert_eq!(post_json(&gw, "/v1/txn", small).status, 200);

    // A connection that sends nothing, or half of the HTTP/2 preface, or half a request head,
    // is closed at --head-timeout (and gives its slot back).
    for start in [&b""[..], b"PRI * HTTP/2", b"GET /health HTTP/1.1\r\n"] {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        tcp.write_all(start).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let opened = Instant::now();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        let open_for = opened.elapsed();
        let why = String::from_utf8_lossy(start);
        assert!(open_for >= Duration::from_millis(1500), "{why:?}: closed after {open_for:?}");
        assert!(open_for < Duration::from_secs(8), "{why:?}: open for {open_for:?}");
    }
    wait_until(Duration::from_secs(5), "the slots back", || get(&gw, "/health").status == 200);

    let mut first = Command::new("curl")
        .args(["-s", "-N", "--max-time", "3", &gw.url("/v1/watch/w/?prefix")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let second = get(&gw, "/v1/watch/w/?prefix");
    assert_eq!(second.error_code(503), "unavailable");
    assert_eq!(second.header("retry-after"), Some("1"));
    first.wait().unwrap();
    wait_until(Duration::from_secs(5), "a watch slot", || {
        let reply = curl(&["-N", "--max-time", "1", &gw.url("/v1/watch/w/?prefix")]);
        reply.status == 200
    });
}

// ---------------------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------------------

// Shows: with a curl loop writing through the gateway, SIGKILLing the leader of shard 0
// loses no acknowledged write: every key a 200 answered for reads
// back with its value afterwards, and writes during the election end as 503 or 504 with a
// JSON error, never a silent wrong answer.
#[test]
fn a_leader_killed_under_a_curl_write_loop_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let _dev = dev(dir.path());
    let gw = gateway(dir.path(), "loop", &[]);
    let client = dev_client(dir.path());
    let script = format!(
        "for i in $(seq 0 299); do \
           code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 -X PUT \
                  --data-binary v$i {url}/v1/kv/loop/$i); \
           echo \"$i $code\"; \
         done",
        url = gw.url("")
    );
    let mut writer =
        Command::new("bash").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(writer.stdout.take().unwrap());
    let mut acknowledged = Vec::new();
    let mut failed = Vec::new();
    let mut killed = false;
    for line in stdout.lines().map_while(Result::ok) {
        let (i, code) = line.split_once(' ').unwrap();
        let i: u32 = i.parse().unwrap();
        match code {
            "200" => acknowledged.push(i),
            "503" | "504" => failed.push(i),
            other => panic!("write {i}: status {other}"),
        }
        if i == 100 && !killed {
            let leader = block_on(client.status())
                .into_iter()
                .find_map(|r| {
                    let status = r.status.ok()?;
                    (r.shard.get() == 0 && status.role == corekv_client::Role::Leader)
                        .then_some(r.node_id.get())
                })
                .expect("shard 0 has a leader");
            let pid = node_pid(dir.path(), leader).expect("the leader's pid");
            // SAFETY: killing a process of this test's dev cluster.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed = true;
        }
    }
    assert!(writer.wait().unwrap().success());
    assert!(killed);
    assert!(
        acknowledged.len() >= 200,
        "{} acknowledged, {} failed",
        acknowledged.len(),
        failed.len()
    );
    for i in acknowledged {
        let read = get(&gw, &format!("/v1/kv/loop/{i}"));
        assert_eq!((read.status, read.text()), (200, format!("v{i}")), "acknowledged write {i}");
    }
}

fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// TLS and auth
// ---------------------------------------------------------------------------------------

// Shows: on a cluster with TLS and auth, an HTTPS gateway passes its callers' identities
// through to the nodes, which check their rights: a bearer token acts as its user; a client
// certificate the gateway verified acts as its subject's user (the gateway's own user has
// the proxy right and no other); a read-only user reads app/ and is refused (403
// `permission_denied`) writes, other prefixes' reads, listings and watches; an unknown
// token and a caller with no identity are refused too.
#[test]
fn tokens_and_client_certificates_pass_through_to_the_nodes() {
    let digest = corekv_server::auth::token_digest("svc-token");
    let (cluster, pki) = common::pki::tls_cluster_with(
        |dir| {
            let policy = dir.join("auth.toml");
            std::fs::write(
                &policy,
                format!(
                    "[[role]]\nname = \"app-read\"\nread = [\"app/\"]\n\n\
                     [[role]]\nname = \"app-write\"\nwrite = [\"app/\"]\n\n\
                     [[role]]\nname = \"all\"\nwrite = [\"\"]\nadmin = true\n\n\
                     [[role]]\nname = \"gateway\"\nproxy = true\n\n\
                     [[user]]\nname = \"reader\"\nroles = [\"app-read\"]\n\n\
                     [[user]]\nname = \"root\"\nroles = [\"all\"]\n\n\
                     [[user]]\nname = \"gw\"\nroles = [\"gateway\"]\n\n\
                     [[user]]\nname = \"svc\"\nroles = [\"app-write\"]\n\
                     tokens = [\"sha256:{digest}\"]\n"
                ),
            )
            .unwrap();
            format!("client_certs = \"optional\"\n\n[auth]\npolicy = \"{}\"\n", policy.display())
        },
        "root",
    );
    block_on(cluster.client().put("app/x", "1")).unwrap();
    let server = pki.ca.node(corekv_client::NodeId(99), &["127.0.0.1"], None).unwrap();
    server.write(&pki.dir, "gateway-server").unwrap();
    let (gw_cert, gw_key) = pki.client(&pki.ca, "gw", "gw", None);
    let (reader_cert, reader_key) = pki.client(&pki.ca, "reader", "reader", None);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let ca = path(&pki.path("ca.pem"));
    let flags = [
        "--tls-cert".to_string(),
        path(&pki.path("gateway-server.pem")),
        "--tls-key".into(),
        path(&pki.path("gateway-server-key.pem")),
        "--client-ca".into(),
        ca.clone(),
        "--cert".into(),
        path(&gw_cert),
        "--cert-key".into(),
        path(&gw_key),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let log = cluster.dir.path().join("gateway.log");
    let gw = Gateway::start(&cluster.registry_path, &flags, &log, &["--cacert", &ca]);
    let (reader_cert, reader_key) = (path(&reader_cert), path(&reader_key));
    let as_reader = |args: &[&str]| {
        let mut all = vec!["--cacert", &ca, "--cert", &reader_cert, "--key", &reader_key];
        all.extend(args);
        curl(&all)
    };
    let read = as_reader(&[&gw.url("/v1/kv/app/x")]);
    assert_eq!((read.status, read.text()), (200, "1".to_string()));
    // HTTP/2 by ALPN, the certificate's user passed through the same way.
    let h2 = as_reader(&["--http2", &gw.url("/v1/kv/app/x")]);
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{}", h2.text());
    let h2 = as_reader(&["--http2", "-X", "PUT", "--data-binary", "2", &gw.url("/v1/kv/app/x")]);
    assert_eq!(h2.error_code(403), "permission_denied");
    let refused = as_reader(&["-X", "PUT", "--data-binary", "2", &gw.url("/v1/kv/app/x")]);
    assert_eq!(refused.error_code(403), "permission_denied");
    assert!(refused.text().contains("reader"), "{}", refused.text());
    assert_eq!(as_reader(&[&gw.url("/v1/kv/other/y")]).error_code(403), "permission_denied");
    let listing = as_reader(&[&gw.url("/v1/kv/other/?prefix")]);
    assert_eq!(listing.error_code(403), "permission_denied");
    assert_eq!(as_reader(&[&gw.url("/v1/kv/app/?prefix")]).json()["entries"][0]["value"], "1");
    let watch = as_reader(&[&gw.url("/v1/watch/other/?prefix")]);
    assert_eq!(watch.error_code(403), "permission_denied");
    let watch = as_reader(&["-N", "--max-time", "1", &gw.url("/v1/watch/app/?prefix")]);
    assert_eq!(watch.status, 200, "{}", watch.text());

    let with_token = |token: &str, args: &[&str]| {
        let header = format!("Authorization: Bearer {token}");
        let mut all = vec!["--cacert", ca.as_str(), "-H", header.as_str()];
        all.extend(args);
        curl(&all)
    };
    let written =
        with_token("svc-token", &["-X", "PUT", "--data-binary", "2", &gw.url("/v1/kv/app/y")]);
    assert_eq!(written.status, 200, "{}", written.text());
    let other = with_token("svc-token", &[&gw.url("/v1/kv/other/y")]);
    assert_eq!(other.error_code(403), "permission_denied");
    let unknown = with_token("not-a-token", &[&gw.url("/v1/kv/app/y")]);
    assert_eq!(unknown.error_code(403), "permission_denied");
    assert!(unknown.text().contains("token"), "{}", unknown.text());
    let nobody = curl(&["--cacert", &ca, &gw.url("/v1/kv/app/x")]);
    assert_eq!(nobody.error_code(403), "permission_denied");
    // Plaintext HTTP to the HTTPS port gets no HTTP answer (the handshake fails).
    let plaintext = curl(&[&gw.url("/v1/kv/app/x").replace("https", "http")]);
    assert_eq!(plaintext.status, 0, "plaintext to the HTTPS port: {}", plaintext.text());
    // A resumed watch the user may not read is refused before its stream starts (403), not
    // inside it, so an EventSource stops rather than reconnecting for ever.
    let resumed = as_reader(&["-H", "Last-Event-ID: 0:1,1:1", &gw.url("/v1/watch/other/?prefix")]);
    assert_eq!(resumed.error_code(403), "permission_denied");
}

// ---------------------------------------------------------------------------------------
// Start-up mistakes
// ---------------------------------------------------------------------------------------

// Shows: a gateway given a missing registry, a certificate without its key, client
// certificates to check without a certificate of its own, or a port already taken, exits 2
// at once with one line saying what is wrong.
#[test]
fn bad_flags_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("corekv.toml");
    std::fs::write(&registry, corekv_server::dev::registry_text(3, 2, 7100)).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let registry = registry.display().to_string();
    let missing = dir.path().join("missing.toml").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--registry", &missing], "missing.toml"),
        (&["--registry", &registry, "--tls-cert", "c.pem"], "--tls-key"),
        (
            &[
                "--registry",
                &registry,
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--client-ca",
                "ca.pem",
            ],
            "own certificate",
        ),
        (&["--registry", &registry, "--listen", &taken], &taken),
    ];
    for (args, words) in cases {
        let output = Command::new(common::corekv_bin()).arg("gateway").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
        if !words.starts_with("--") {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        }
    }
}
