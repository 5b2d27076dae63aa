//! The HTTP endpoint on `http_port`: `/health`, `/status`, `/metrics`, and
//! `/debug/pprof/flamegraph?seconds=N` (an SVG of where the process spent its CPU).
//!
//! It runs on threads of its own, away from the shard executors: it only reads what the
//! shards publish (status snapshots refreshed every tick, atomic counters). The protocol is
//! the small part of HTTP/1.1 these routes need: `GET` only, no request bodies, keep-alive,
//! every response whole with its `Content-Length`; requests are parsed by `httparse`. Each
//! connection has a thread (at most [`HTTP_CONNECTIONS_MAX`], closed after
//! [`HTTP_IDLE_TIMEOUT`] idle), so a slow client or a profile that takes seconds holds up no
//! other. With the registry's `[tls]`, it is HTTPS only, with the client ports' certificate
//! and client-certificate rules (rustls). It is not hyper because hyper 1.x depends on tokio,
//! and the node is a glommio process that compiles no tokio.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::constants::{HTTP_CONNECTIONS_MAX, HTTP_HEAD_BYTES_MAX, HTTP_IDLE_TIMEOUT};
use crate::tls::NodeTls;

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
    /// The node's TLS, for its certificates' expiry in `/metrics`.
    tls: Option<Arc<NodeTls>>,
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
        HttpState { node_id, cluster, statuses, metrics, stale_after, tls: None }
    }

    /// The same, reporting the expiry of `tls`'s certificates.
    pub fn with_tls(self, tls: Option<Arc<NodeTls>>) -> Self {
        HttpState { tls, ..self }
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

/// Binds `addr` and serves from a background thread: with `tls`, HTTPS only (the client
/// ports' certificate and client certificate rules).
pub fn start(
    addr: &str,
    state: Arc<HttpState>,
    tls: Option<Arc<NodeTls>>,
) -> anyhow::Result<HttpServer> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
    let bound = listener.local_addr().context("the HTTP listener has no address")?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("http".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if open.load(Relaxed) >= HTTP_CONNECTIONS_MAX {
                    tracing::warn!("HTTP: {HTTP_CONNECTIONS_MAX} connections open; refusing one");
                    continue;
                }
                open.fetch_add(1, Relaxed);
                let (state, tls, open) = (state.clone(), tls.clone(), open.clone());
                let spawned =
                    std::thread::Builder::new().name("http-conn".to_string()).spawn(move || {
                        if let Err(error) = connection(stream, &state, tls.as_deref()) {
                            tracing::debug!(%error, "HTTP connection closed");
                        }
                        open.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    tracing::warn!("HTTP: cannot start a connection thread");
                }
            }
        })
        .context("starting the HTTP thread")?;
    Ok(HttpServer { addr: bound })
}

/// One connection, on its own thread: the TLS handshake, then requests until either side
/// closes or it idles out.
fn connection(stream: TcpStream, state: &HttpState, tls: Option<&NodeTls>) -> io::Result<()> {
    stream.set_write_timeout(Some(HTTP_IDLE_TIMEOUT))?;
    // The same socket, to set read deadlines through whatever wraps it.
    let socket = stream.try_clone()?;
    let peer = stream.peer_addr().ok();
    match tls {
        None => serve_requests(&mut { stream }, &socket, state),
        Some(tls) => {
            let session = rustls::ServerConnection::new(tls.configs().clients.clone())
                .map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(session, stream);
            let deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
            while stream.conn.is_handshaking() {
                let handshake = read_until(&socket, deadline)
                    .and_then(|()| stream.conn.complete_io(&mut stream.sock).map(drop));
                if let Err(error) = handshake {
                    // A client that closed before saying anything (a port probe) is not news.
                    if error.kind() == io::ErrorKind::UnexpectedEof {
                        tracing::debug!(?peer, %error, "HTTP connection closed in the TLS handshake");
                    } else {
                        tracing::warn!(?peer, %error, "refused an HTTP connection: TLS handshake failed");
                    }
                    return Ok(());
                }
            }
            let served = serve_requests(&mut stream, &socket, state);
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
            served
        }
    }
}

/// Reads requests and answers each, keep-alive, until the client closes, asks to close, or
/// sends something that is not HTTP.
fn serve_requests(
    stream: &mut (impl Read + Write),
    socket: &TcpStream,
    state: &HttpState,
) -> io::Result<()> {
    let mut input: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // A request's head must be in within the idle timeout of the last answer, however
        // slowly it trickles in: a connection cannot hold its slot longer.
        let deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
        let head = match take_head(stream, socket, &mut input, deadline)? {
            Head::Complete(n) => n,
            Head::Closed | Head::Answered => return Ok(()),
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(&input), Ok(httparse::Status::Complete(n)) if n == head) {
            return reply(stream, 400, "text/plain", "bad request\n", true);
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|n| n.trim() != "0");
        let close = request.version == Some(0)
            || header("connection").is_some_and(|c| c.contains("close"))
            || has_body;
        let (code, content_type, body) = if request.method != Some("GET") {
            (405, "text/plain", "only GET is served\n".to_string())
        } else if has_body {
            (400, "text/plain", "a GET request has no body\n".to_string())
        } else {
            route(request.path.unwrap_or("/"), state)
        };
        input.drain(..head);
        reply(stream, code, content_type, &body, close)?;
        if close {
            return Ok(());
        }
    }
}

/// What reading a request head came to.
enum Head {
    /// A whole head of this many bytes is at the start of the input.
    Complete(usize),
    /// The client closed, or took too long.
    Closed,
    /// The head was bad and has been answered (the connection closes).
    Answered,
}

/// Reads until the input starts with a whole request head, by `deadline`.
fn take_head(
    stream: &mut (impl Read + Write),
    socket: &TcpStream,
    input: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        match httparse::Request::new(&mut headers).parse(input) {
            Ok(httparse::Status::Complete(n)) => return Ok(Head::Complete(n)),
            Ok(httparse::Status::Partial) if input.len() < HTTP_HEAD_BYTES_MAX => {}
            Ok(httparse::Status::Partial) => {
                reply(stream, 431, "text/plain", "request head too large\n", true)?;
                return Ok(Head::Answered);
            }
            Err(error) => {
                reply(stream, 400, "text/plain", &format!("bad request: {error}\n"), true)?;
                return Ok(Head::Answered);
            }
        }
        if read_until(socket, deadline).is_err() {
            return Ok(Head::Closed);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(error)
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return Ok(Head::Closed)
            }
            Err(error) => return Err(error),
        }
    }
}

/// Sets the socket's read timeout to what is left until `deadline`; an error once it passed.
fn read_until(socket: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    socket.set_read_timeout(Some(left))
}

fn route(url: &str, state: &HttpState) -> (u16, &'static str, String) {
    let (route, query) = match url.split_once('?') {
        Some((route, query)) => (route, Some(query)),
        None => (url, None),
    };
    match route {
        "/health" => {
            let (code, body) = state.health();
            (code, "text/plain", body)
        }
        "/status" => (200, "application/json", state.status_json()),
        "/metrics" => {
            let shards: Vec<&ShardMetrics> = state.metrics.iter().map(|m| m.as_ref()).collect();
            let expiry = state.tls.as_ref().map(|tls| tls.configs().expiry).unwrap_or_default();
            let certificates = if state.tls.is_some() { &expiry[..] } else { &[] };
            (200, metrics::CONTENT_TYPE, metrics::render(state.node_id, &shards, certificates))
        }
        // A profile takes seconds; this connection's thread waits for it, no other does.
        "/debug/pprof/flamegraph" => match profile::seconds_from_query(query) {
            Ok(seconds) => {
                let title = format!("corekv node {}", state.node_id);
                match profile::flamegraph(Duration::from_secs(seconds), &title) {
                    Ok(svg) => (200, "image/svg+xml", svg),
                    Err(error @ profile::ProfileError::Busy) => {
                        (409, "text/plain", format!("{error}\n"))
                    }
                    Err(error) => {
                        tracing::warn!(%error, "taking a CPU profile failed");
                        (500, "text/plain", format!("profile failed: {error}\n"))
                    }
                }
            }
            Err(message) => (400, "text/plain", message + "\n"),
        },
        _ => (
            404,
            "text/plain",
            "not found: try /health, /status, /metrics or /debug/pprof/flamegraph?seconds=N\n"
                .into(),
        ),
    }
}

/// Writes one response, whole, with its `Content-Length`.
fn reply(
    stream: &mut impl Write,
    code: u16,
    content_type: &str,
    body: &str,
    close: bool,
) -> io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// A minimal blocking `GET` for tools and tests (`corekv dev` polls `/status` with it):
/// returns the status code and body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    get_with(addr, path, timeout, None)
}

/// [`get`] over TLS when given a client configuration (the node's certificate is checked
/// against the host part of `addr`).
pub fn get_with(
    addr: &str,
    path: &str,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<(u16, String)> {
    let socket: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match tls {
        None => {
            stream.write_all(request.as_bytes())?;
            stream.read_to_end(&mut response)?;
        }
        Some(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = corekv_types::tls::host_name(host).map_err(anyhow::Error::msg)?;
            let session = rustls::ClientConnection::new(config, name)?;
            let mut stream = rustls::StreamOwned::new(session, stream);
            stream.write_all(request.as_bytes())?;
            stream.flush()?;
            if let Err(error) = stream.read_to_end(&mut response) {
                // A server that closes without close_notify after a whole response is fine.
                if error.kind() != io::ErrorKind::UnexpectedEof || response.is_empty() {
                    return Err(error.into());
                }
            }
        }
    }
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
        let server = start("127.0.0.1:0", Arc::new(state), None).expect("binding on loopback");
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
