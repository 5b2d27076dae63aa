//! `corekvctl` without a cluster: usage and input errors exit with status 2 and one line on
//! stderr; an unreachable cluster exits with status 3.

use std::process::Command;

fn ctl(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_corekvctl")).args(args).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn registry(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("corekv.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

// Shows: each kind of input error exits 2 with one line.
#[test]
fn input_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = registry(dir.path(), "cluster = \"c\"\nshards = 1\nbogus = 1\n");
    let (code, err) = ctl(&["--registry", &bad, "get", "k"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `bogus`") && err.trim().lines().count() == 1, "{err}");
    let (code, err) = ctl(&["--registry", "/does/not/exist.toml", "get", "k"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read registry file"), "{err}");
    assert_eq!(ctl(&["frobnicate"]).0, 2, "unknown command");
    assert_eq!(ctl(&["get"]).0, 2, "missing key");
    assert_eq!(ctl(&["--timeout", "0s", "get", "k"]).0, 2, "zero timeout");
}

// Shows: nothing listening means exit status 3 within the timeout.
#[test]
fn unreachable_cluster_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = registry(
        dir.path(),
        &format!("cluster = \"c\"\nshards = 1\n[[node]]\nid = 1\nhost = \"127.0.0.1\"\nclient_port = {port}\npeer_port = {}\nhttp_port = {}\n", port as u32 + 1, port as u32 + 2),
    );
    let started = std::time::Instant::now();
    let (code, err) = ctl(&["--registry", &path, "--timeout", "300ms", "put", "k", "v"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("corekvctl: cluster unavailable"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
