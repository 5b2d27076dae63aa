//! The HTTP endpoint on `http_port`: `/health`, `/status`, `/metrics`, and
//! `/debug/pprof/flamegraph?seconds=N` (an SVG of where the process spent its CPU).
//!
//! It runs on its own thread with blocking sockets, away from the shard executors: it only
//! reads what the shards publish (status snapshots refreshed every tick, atomic counters).
//! Requests are parsed with `httparse`; only `GET` is served, one request per connection. A
//! profile takes seconds, so it is taken and answered on a thread of its own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::core::ShardStatus;
use crate::metrics::{self, ShardMetrics};
use crate::profile;

/// Longest request head accepted.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A shard's status as its executor last published it (every tick), and when.
#[derive(Debug, Clone)]
pub struct Published {
    /// When the executor published it.
    pub at: Instant,
    /// The status.
    pub status: ShardStatus,
}

/// Where a shard's executor publishes its status for the HTTP thread; `None` while the shard
/// starts and once it stopped.
pub type StatusSlot = Arc<Mutex<Option<Published>>>;

/// What the endpoint reports from.
pub struct HttpState {
    node_id: u64,
    cluster: String,
    statuses: Vec<StatusSlot>,
    metrics: Vec<Arc<ShardMetrics>>,
    /// A status older than this means the shard's executor is stuck: the node does not serve.
    stale_after: Duration,
}

impl HttpState {
    /// State over each shard's published status and metrics; a status older than
    /// `stale_after` counts as a shard that does not serve.
    pub fn new(
        node_id: u64,
        cluster: String,
        statuses: Vec<StatusSlot>,
        metrics: Vec<Arc<ShardMetrics>>,
        stale_after: Duration,
    ) -> Self {
        HttpState { node_id, cluster, statuses, metrics, stale_after }
    }

    fn shard_statuses(&self) -> Vec<Option<Published>> {
        self.statuses.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    /// Why each shard that does not serve does not (`core::health` says what serving means);
    /// empty when the node serves.
    fn problems(&self, shards: &[Option<Published>]) -> Vec<String> {
        let mut problems = Vec::new();
        for (shard, published) in shards.iter().enumerate() {
            match published {
                None => problems.push(format!("shard {shard}: not started, or stopped")),
                Some(p) if p.at.elapsed() > self.stale_after => problems.push(format!(
                    "shard {shard}: its executor has not reported for {} ms (stuck?)",
                    p.at.elapsed().as_millis()
                )),
                Some(p) => {
                    if let Some(problem) = &p.status.problem {
                        problems.push(format!("shard {shard}: {problem}"));
                    }
                }
            }
        }
        problems
    }

    /// 200 `ok` when every shard serves; else 503 and why, a line per shard.
    fn health(&self) -> (u16, String) {
        let problems = self.problems(&self.shard_statuses());
        if problems.is_empty() {
            (200, "ok\n".to_string())
        } else {
            (503, problems.join("\n") + "\n")
        }
    }

    fn status_json(&self) -> String {
        let shards = self.shard_statuses();
        let problems = self.problems(&shards);
        let statuses: Vec<Option<&ShardStatus>> =
            shards.iter().map(|p| p.as_ref().map(|p| &p.status)).collect();
        let value = serde_json::json!({
            "node_id": self.node_id,
            "cluster": self.cluster,
            // The same judgement as /health.
            "serving": problems.is_empty(),
            "problems": problems,
            "shards": statuses,
        });
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }
}

/// The running endpoint; the thread lives as long as the process.
pub struct HttpServer {
    /// The bound address.
    pub addr: std::net::SocketAddr,
}

/// Binds `addr` and serves from a background thread.
pub fn start(addr: &str, state: Arc<HttpState>) -> anyhow::Result<HttpServer> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("cannot listen for HTTP on {addr}"))?;
    let bound = listener.local_addr().context("reading the HTTP address")?;
    std::thread::Builder::new()
        .name("http".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = handle(stream, &state) {
                            tracing::debug!(%error, "HTTP request failed");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accepting an HTTP connection failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .context("starting the HTTP thread")?;
    Ok(HttpServer { addr: bound })
}

fn handle(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf = vec![0u8; REQUEST_BYTES_MAX];
    let mut filled = 0;
    let (method, path) = loop {
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("").to_string();
                let path = request.path.unwrap_or("").to_string();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => continue,
            Ok(httparse::Status::Partial) => {
                return respond(&mut stream, 431, "text/plain", "request head too large\n");
            }
            Err(error) => {
                return respond(&mut stream, 400, "text/plain", &format!("bad request: {error}\n"))
            }
        }
    };
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is served\n");
    }
    let route = path.split('?').next().unwrap_or("");
    match route {
        "/health" => {
            let (code, body) = state.health();
            respond(&mut stream, code, "text/plain", &body)
        }
        "/status" => respond(&mut stream, 200, "application/json", &state.status_json()),
        "/metrics" => {
            let shards: Vec<&ShardMetrics> = state.metrics.iter().map(|m| m.as_ref()).collect();
            let body = metrics::render(state.node_id, &shards);
            respond(&mut stream, 200, metrics::CONTENT_TYPE, &body)
        }
        "/debug/pprof/flamegraph" => {
            let seconds = match profile::seconds_from_query(path.split_once('?').map(|(_, q)| q)) {
                Ok(seconds) => seconds,
                Err(message) => return respond(&mut stream, 400, "text/plain", &(message + "\n")),
            };
            profile_on_its_own_thread(stream, seconds, state.node_id);
            Ok(())
        }
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try /health, /status, /metrics or /debug/pprof/flamegraph?seconds=N\n",
        ),
    }
}

/// Takes a CPU profile of `seconds` on a thread of its own (the HTTP thread goes on serving)
/// and answers with its flamegraph.
fn profile_on_its_own_thread(mut stream: TcpStream, seconds: u64, node_id: u64) {
    let title = format!("corekv node {node_id}");
    let spawned = std::thread::Builder::new().name("pprof".to_string()).spawn(move || {
        let answered = match profile::flamegraph(Duration::from_secs(seconds), &title) {
            Ok(svg) => respond(&mut stream, 200, "image/svg+xml", &svg),
            Err(error @ profile::ProfileError::Busy) => {
                respond(&mut stream, 409, "text/plain", &format!("{error}\n"))
            }
            Err(error) => {
                tracing::warn!(%error, "taking a CPU profile failed");
                respond(&mut stream, 500, "text/plain", &format!("profile failed: {error}\n"))
            }
        };
        if let Err(error) = answered {
            tracing::debug!(%error, "answering a profile request failed");
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a thread for a profile");
    }
}

fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// A minimal blocking `GET` for tools and tests (`corekv dev` polls `/status` with it):
/// returns the status code and body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let socket: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let body_start = match parsed.parse(&response)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => anyhow::bail!("incomplete HTTP response from {addr}"),
    };
    let code = parsed.code.context("HTTP response without a status code")?;
    Ok((code, String::from_utf8_lossy(&response[body_start..]).into_owned()))
}
