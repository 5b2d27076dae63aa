//! The accept loop: at most `--max-connections` connections (one more is answered 503 and
//! closed), TLS when `--tls-cert` is given, then HTTP/1.1 (with a deadline on request heads)
//! or HTTP/2 (chosen by ALPN over TLS, by the connection's first bytes in cleartext; a
//! connection that sends nothing is closed at the same deadline) by hyper, and a graceful
//! stop: no new connections, idle ones closed, requests in flight finished (watch streams end
//! with their final event), for up to 10 s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use corekv_types::registry::{ClientCerts, TlsVersion};
use corekv_types::tls;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch as signal, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::error::ApiError;
use crate::GatewayArgs;

/// The first bytes of every HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/2 connection may leave a ping unanswered.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Requests in flight on one HTTP/2 connection (each may hold a body of up to --max-body).
const H2_STREAMS_MAX: u32 = 256;

/// How often an idle HTTP/2 connection is pinged (a dead peer is noticed within twice that).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS the flags ask for (`--tls-cert`, `--tls-key`), if any.
pub fn tls_acceptor(args: &GatewayArgs) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    let min = TlsVersion::Tls12;
    let mut config = match &args.client_ca {
        Some(ca) => tls::server_config(ca, cert, key, ClientCerts::Optional, min)
            .map_err(anyhow::Error::msg)?,
        None => rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(tls::versions(min))
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(tls::read_certs(cert).map_err(anyhow::Error::msg)?, {
                tls::read_key(key).map_err(anyhow::Error::msg)?
            })
            .with_context(|| format!("{} and {}", cert.display(), key.display()))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves `router` on `listener` until `shutdown` turns true, then drains. A connection
/// must send its TLS handshake, and each request head, within `head_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    (max_connections, head_timeout): (usize, Duration),
    mut shutdown: signal::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|&stopping| stopping) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("accepting a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tokio::spawn(refuse(tcp, tls.is_some()));
            continue;
        };
        let (router, tls, metrics) = (router.clone(), tls.clone(), metrics.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            metrics.connections.inc();
            let served = match tls {
                None => match sniff(&tcp, head_timeout).await {
                    Ok(protocol) => {
                        let connection = (protocol, head_timeout);
                        serve_connection(tcp, connection, None, router, watcher).await
                    }
                    Err(error) => Err(error),
                },
                Some(acceptor) => {
                    match tokio::time::timeout(head_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let session = stream.get_ref().1;
                            // A certificate the handshake verified names the caller.
                            let user = session
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|cert| tls::subject_common_name(cert))
                                .map(CertUser);
                            let protocol = match session.alpn_protocol() {
                                Some(b"h2") => Protocol::Http2,
                                _ => Protocol::Http1,
                            };
                            let connection = (protocol, head_timeout);
                            serve_connection(stream, connection, user, router, watcher).await
                        }
                        Ok(Err(error)) => Err(format!("TLS handshake: {error}")),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!("connection from {peer}: {error}");
            }
            metrics.connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}: stopping anyway");
        }
    }
}

/// The user a connection's verified client certificate names (its subject's common name),
/// in every request's extensions.
#[derive(Debug, Clone)]
pub struct CertUser(pub String);

/// Waits, up to `timeout`, for a plaintext connection's first bytes: the HTTP/2 preface
/// (HTTP/2 with prior knowledge), or anything else (HTTP/1.1). A connection that sends
/// nothing, or part of the preface only, is closed at the deadline.
async fn sniff(tcp: &TcpStream, timeout: Duration) -> Result<Protocol, String> {
    let look = async {
        let mut first = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut first).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a request".to_string());
            }
            if !H2_PREFACE.starts_with(&first[..n]) {
                return Ok(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Protocol::Http2);
            }
            // Part of the preface: the rest is on its way (peek would return at once).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, look).await.map_err(|_| "no request in time".to_string())?
}

/// One connection's requests, in `protocol`, each head within `head_timeout` (HTTP/1.1).
async fn serve_connection<S>(
    stream: S,
    (protocol, head_timeout): (Protocol, Duration),
    user: Option<CertUser>,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let mut request = request.map(axum::body::Body::new);
        if let Some(user) = &user {
            request.extensions_mut().insert(user.clone());
        }
        async move { router.call(request).await }
    });
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .max_buf_size(64 * 1024);
            watcher.watch(builder.serve_connection(io, service)).await
        }
        // Many requests in flight on one connection: far fewer system calls per request.
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_STREAMS_MAX)
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT);
            watcher.watch(builder.serve_connection(io, service)).await
        }
    }
    .map_err(|e| e.to_string())
}

/// Answers a connection over the limit: 503 with `Retry-After` over plaintext, a close over
/// TLS (no handshake is spent on it).
async fn refuse(mut tcp: TcpStream, tls: bool) {
    if !tls {
        let body = ApiError::unavailable("the gateway is at its limit of connections").body();
        let body = body.to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
    }
    let _ = tcp.shutdown().await;
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
