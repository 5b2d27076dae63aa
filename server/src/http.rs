//! The HTTP endpoint on `http_port`: `/health`, `/status`, `/metrics`, and
//! `/debug/pprof/flamegraph?seconds=N` (an SVG of where the process spent its CPU).
//!
//! It runs on its own thread, away from the shard executors: it only reads what the shards
//! publish (status snapshots refreshed every tick, atomic counters). HTTP itself — parsing,
//! keep-alive, chunked bodies, a thread per open connection so a slow client holds up no
//! other — is `tiny_http`'s. It is that library and not hyper because hyper 1.x depends on
//! tokio unconditionally, and the node is a glommio process that compiles no tokio (the
//! gateway, a tokio process, is where hyper belongs). Only `GET` is served. A profile takes
//! seconds, so it is taken and answered on a thread of its own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tiny_http::{Header, Method, Request, Response};

use crate::core::ReplicaStatus;
use crate::metrics::{self, ShardMetrics};
use crate::profile;

/// A shard's status as its executor last published it (every tick), and when.
#[derive(Debug, Clone)]
pub struct Published {
    /// When the executor published it.
    pub at: Instant,
    /// The status.
    pub status: ReplicaStatus,
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
        let statuses: Vec<Option<&ReplicaStatus>> =
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
    let server = tiny_http::Server::http(addr)
        .map_err(|error| anyhow::anyhow!("cannot listen for HTTP on {addr}: {error}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .with_context(|| format!("the HTTP listener on {addr} has no IP address"))?;
    std::thread::Builder::new()
        .name("http".to_string())
        .spawn(move || {
            for request in server.incoming_requests() {
                handle(request, &state);
            }
        })
        .context("starting the HTTP thread")?;
    Ok(HttpServer { addr: bound })
}

fn handle(request: Request, state: &HttpState) {
    if *request.method() != Method::Get {
        return respond(request, 405, "text/plain", "only GET is served\n".into());
    }
    let url = request.url().to_string();
    let (route, query) = match url.split_once('?') {
        Some((route, query)) => (route, Some(query)),
        None => (url.as_str(), None),
    };
    match route {
        "/health" => {
            let (code, body) = state.health();
            respond(request, code, "text/plain", body)
        }
        "/status" => respond(request, 200, "application/json", state.status_json()),
        "/metrics" => {
            let shards: Vec<&ShardMetrics> = state.metrics.iter().map(|m| m.as_ref()).collect();
            let body = metrics::render(state.node_id, &shards);
            respond(request, 200, metrics::CONTENT_TYPE, body)
        }
        "/debug/pprof/flamegraph" => match profile::seconds_from_query(query) {
            Ok(seconds) => profile_on_its_own_thread(request, seconds, state.node_id),
            Err(message) => respond(request, 400, "text/plain", message + "\n"),
        },
        _ => respond(
            request,
            404,
            "text/plain",
            "not found: try /health, /status, /metrics or /debug/pprof/flamegraph?seconds=N\n"
                .into(),
        ),
    }
}

/// Takes a CPU profile of `seconds` on a thread of its own (the HTTP thread goes on serving)
/// and answers with its flamegraph.
fn profile_on_its_own_thread(request: Request, seconds: u64, node_id: u64) {
    let title = format!("corekv node {node_id}");
    let spawned = std::thread::Builder::new().name("pprof".to_string()).spawn(move || {
        match profile::flamegraph(Duration::from_secs(seconds), &title) {
            Ok(svg) => respond(request, 200, "image/svg+xml", svg),
            Err(error @ profile::ProfileError::Busy) => {
                respond(request, 409, "text/plain", format!("{error}\n"))
            }
            Err(error) => {
                tracing::warn!(%error, "taking a CPU profile failed");
                respond(request, 500, "text/plain", format!("profile failed: {error}\n"))
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a thread for a profile");
    }
}

fn respond(request: Request, code: u16, content_type: &str, body: String) {
    // Every body is whole in memory: sent with its Content-Length, never chunked (tiny_http
    // would chunk bodies over 32 KiB to HTTP/1.1 clients, such as a flamegraph).
    let mut response =
        Response::from_string(body).with_status_code(code).with_chunked_threshold(usize::MAX);
    // The content types are constants of this module, always valid header values.
    if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
        response.add_header(header);
    }
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, "answering an HTTP request failed");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(statuses: Vec<StatusSlot>) -> String {
        let state = HttpState::new(7, "test".into(), statuses, Vec::new(), Duration::from_secs(5));
        let server = start("127.0.0.1:0", Arc::new(state)).expect("binding on loopback");
        server.addr.to_string()
    }

    fn raw(addr: &str, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("setting a timeout");
        stream.write_all(request).expect("sending");
        let mut response = Vec::new();
        // The server may close after answering a malformed request; what was read counts.
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    // Shows the routes answer with their status codes and bodies, and that a shard that has
    // not started makes /health a 503 that says which.
    #[test]
    fn routes_answer_and_health_names_a_shard_not_started() {
        let addr = serve(vec![Arc::new(Mutex::new(None))]);
        let (code, body) = get(&addr, "/health", Duration::from_secs(5)).expect("GET /health");
        assert_eq!(code, 503);
        assert_eq!(body, "shard 0: not started, or stopped\n");
        let (code, body) = get(&addr, "/status", Duration::from_secs(5)).expect("GET /status");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        assert_eq!(status["node_id"], 7);
        assert_eq!(status["serving"], false);
        let (code, _) = get(&addr, "/nowhere", Duration::from_secs(5)).expect("GET /nowhere");
        assert_eq!(code, 404);
        let (code, body) = get(&addr, "/debug/pprof/flamegraph?seconds=x", Duration::from_secs(5))
            .expect("GET a profile with a bad duration");
        assert_eq!(code, 400, "{body}");
    }

    // Shows a node with no shard problems is healthy and /metrics speaks Prometheus text.
    #[test]
    fn healthy_node_and_metrics_content_type() {
        let addr = serve(Vec::new());
        let (code, body) = get(&addr, "/health", Duration::from_secs(5)).expect("GET /health");
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let response = raw(&addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(metrics::CONTENT_TYPE), "{response}");
    }

    // Shows other methods are refused and a malformed request gets a 4xx, not a hang or a
    // crash, and the server goes on serving after both.
    #[test]
    fn refuses_other_methods_and_malformed_requests() {
        let addr = serve(Vec::new());
        let response = raw(
            &addr,
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        let response = raw(&addr, b"this is not HTTP\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        let (code, _) = get(&addr, "/health", Duration::from_secs(5)).expect("GET /health");
        assert_eq!(code, 200);
    }
}
