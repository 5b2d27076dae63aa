//! The accept loop: at most `--max-connections` connections (one more is answered 503 and
//! closed), TLS when `--tls-cert` is given, HTTP/1.1 by hyper with a deadline on request
//! heads, and a graceful stop: no new connections, idle ones closed, requests in flight
//! finished (watch streams end with their final event), for up to 10 s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use corekv_types::registry::{ClientCerts, TlsVersion};
use corekv_types::tls;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch as signal, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::error::ApiError;
use crate::GatewayArgs;

/// How long a client may take to send a request's head (and a TLS handshake).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Serves `router` on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    max_connections: usize,
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
                None => serve_connection(tcp, None, router, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            // A certificate the handshake verified names the caller.
                            let user = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|cert| tls::subject_common_name(cert))
                                .map(CertUser);
                            serve_connection(stream, user, router, watcher).await
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

/// One connection's requests.
async fn serve_connection<S>(
    stream: S,
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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    watcher.watch(connection).await.map_err(|e| e.to_string())
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
