//! `corekv gateway` under test, and requests to it with curl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{corekv_bin, wait_exit};

/// A running `corekv gateway`; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
    /// `https` when started with `--tls-cert`.
    scheme: &'static str,
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl Gateway {
    /// Starts a gateway for `registry` with `extra` flags, its log in `log`; waits until it
    /// answers `/health` (curl gets `curl_tls` for an HTTPS gateway).
    pub fn start(registry: &Path, extra: &[&str], log: &Path, curl_tls: &[&str]) -> Gateway {
        let port = free_port();
        let mut args = vec![
            "gateway".to_string(),
            "--registry".into(),
            registry.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let scheme = if extra.contains(&"--tls-cert") { "https" } else { "http" };
        let mut gateway = Gateway { child: None, port, args, log: log.to_path_buf(), scheme };
        gateway.launch(curl_tls);
        gateway
    }

    fn launch(&mut self, curl_tls: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("gateway log");
        let child = Command::new(corekv_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start corekv gateway");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let mut args = curl_tls.to_vec();
            let url = self.url("/health");
            args.push(&url);
            if curl(&args).status == 200 {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the gateway exited ({status}): {}", self.log_text());
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the gateway did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and waits for the process to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same flags.
    pub fn restart(&mut self) {
        self.kill();
        self.launch(&[]);
    }

    /// SIGTERM, and its exit status (it must stop within 20 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling the child we started.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        wait_exit(&mut child, Duration::from_secs(20))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Reply {
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics, showing it, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// The error code of a JSON error body, after checking the status.
    pub fn error_code(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let json = self.json();
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
        json["error"]["code"].as_str().expect("an error code").to_string()
    }
}

/// Runs curl with `args` (plus `-s -i`, a 20 s limit, no `Expect: 100-continue`) and parses
/// the answer; status 0 when curl got none.
pub fn curl(args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "-H", "Expect:"])
        .args(args)
        .output()
        .expect("run curl (Debian package curl)");
    parse_reply(&output.stdout)
}

/// A response as `curl -i` prints it (skipping `100 Continue` heads).
pub fn parse_reply(mut raw: &[u8]) -> Reply {
    loop {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Reply {
                version: String::new(),
                status: 0,
                headers: Vec::new(),
                body: raw.to_vec(),
            };
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let body = &raw[end + 4..];
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.split_whitespace();
        let version = words.next().unwrap_or_default().to_string();
        let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 100 {
            raw = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        return Reply { version, status, headers, body: body.to_vec() };
    }
}
