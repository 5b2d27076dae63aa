//! A connection's byte stream, plain or TLS (futures-rustls over glommio's `TcpStream`), one
//! type for the client and peer tasks.
//!
//! With TLS, a write may leave bytes in the session's buffer: writers flush when they have
//! nothing more to write (a plain stream's flush does nothing). rustls reads at most 4 KiB
//! from its socket at a time, so under TLS the socket is read through a buffer of
//! [`SOCKET_READ_CHUNK_BYTES`] (what a plain connection reads at once): one read of the socket
//! serves many of rustls's.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{Preallocated, TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

use super::peer::within;
use super::state::Shard;
use crate::constants::SOCKET_READ_CHUNK_BYTES;

/// A socket read through a buffer and written through another (under TLS).
type BufferedTcp = Coalesced<TcpStream<Preallocated>>;

/// Most bytes a [`Coalesced`] stream holds before it waits for the socket.
const COALESCE_BYTES_MAX: usize = 256 * 1024;

/// Writes gathered into one buffer and sent with one socket write: rustls hands its records
/// over as a vectored write, which glommio's stream would send one record per submission.
pub(crate) struct Coalesced<S> {
    inner: S,
    pending: Vec<u8>,
    sent: usize,
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    fn new(inner: S) -> Self {
        Coalesced { inner, pending: Vec::new(), sent: 0 }
    }

    /// Writes what is pending until it is all written or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` into the buffer (when there is room) and tries to write it.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending.len() - self.sent + total > COALESCE_BYTES_MAX && !self.pending.is_empty() {
            if let Poll::Ready(Err(error)) = self.poll_drain(cx) {
                return Poll::Ready(Err(error));
            }
            if !self.pending.is_empty() {
                return Poll::Pending;
            }
        }
        for buf in bufs {
            self.pending.extend_from_slice(buf);
        }
        // Written now if the socket takes it; the rest goes with the next write or flush.
        if let Poll::Ready(Err(error)) = self.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(total))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_gather(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_gather(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            other => other,
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
pub(crate) enum Stream {
    Plain(TcpStream),
    Accepted(Box<futures_rustls::server::TlsStream<BufferedTcp>>),
    Dialed(Box<futures_rustls::client::TlsStream<BufferedTcp>>),
}

impl Stream {
    /// The address of the other end, for logs.
    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Plain(s) => s.peer_addr().ok(),
            Stream::Accepted(s) => s.get_ref().0.inner.peer_addr().ok(),
            Stream::Dialed(s) => s.get_ref().0.inner.peer_addr().ok(),
        }
    }

    /// The certificate the other end showed, leaf first (TLS only).
    pub(crate) fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Accepted(s) => s.get_ref().1.peer_certificates()?.first(),
            Stream::Dialed(s) => s.get_ref().1.peer_certificates()?.first(),
        }
    }
}

/// The TLS handshake of an accepted connection (or the plain stream, without TLS). A failure
/// says why, with a hint when the other end spoke plaintext.
pub(crate) async fn accept(
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
) -> io::Result<Stream> {
    stream.set_nodelay(true)?;
    let Some(config) = tls else { return Ok(Stream::Plain(stream)) };
    let stream = Coalesced::new(stream.buffered_with(Preallocated::new(SOCKET_READ_CHUNK_BYTES)));
    let handshake = futures_rustls::TlsAcceptor::from(config).accept(stream);
    match within(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Some(Ok(stream)) => Ok(Stream::Accepted(Box::new(stream))),
        Some(Err(error)) => Err(explain(error)),
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Accepts connections on `listener` (the client or Redis port, whose TLS is the client
/// ports') until the shard stops, each served by a task of its own running `serve` once its
/// handshake passed ([`accept_logged`]). A failed accept (out of file descriptors and the
/// like) backs off instead of spinning.
pub(crate) async fn accept_clients_with<F, Fut>(
    shard: Rc<Shard>,
    listener: TcpListener,
    kind: &'static str,
    serve: F,
) where
    F: Fn(Rc<Shard>, Stream) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let serve = Rc::new(serve);
    while !shard.stopping.get() {
        match listener.accept().await {
            Ok(stream) => {
                let (shard, serve) = (shard.clone(), serve.clone());
                glommio::spawn_local(async move {
                    let tls = shard.tls.as_ref().map(|tls| tls.configs().clients.clone());
                    if let Some(stream) = accept_logged(&shard, stream, tls, kind).await {
                        serve(shard, stream).await;
                    }
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(shard = %shard.shard, %error, "accepting a {kind} connection failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// [`accept`] for one of `shard`'s listeners (`kind`: "client" or "peer"): a refused
/// handshake is counted and logged with the address, and gives `None`.
pub(crate) async fn accept_logged(
    shard: &Shard,
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    kind: &str,
) -> Option<Stream> {
    let addr = stream.peer_addr().ok();
    match accept(stream, tls).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            shard.metrics.tls_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // One that closed before saying anything (a port probe, a load balancer's check)
            // is not news.
            if error.kind() == io::ErrorKind::UnexpectedEof {
                tracing::debug!(shard = %shard.shard, ?addr, %error, "a {kind} connection closed in the TLS handshake");
            } else {
                tracing::warn!(shard = %shard.shard, ?addr, %error, "refused a {kind} connection");
            }
            None
        }
    }
}

/// Connects to `addr`, with TLS when given a configuration and the name the other end's
/// certificate must carry.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> io::Result<Stream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let Some((config, name)) = tls else { return Ok(Stream::Plain(stream)) };
    let stream = Coalesced::new(stream.buffered_with(Preallocated::new(SOCKET_READ_CHUNK_BYTES)));
    let handshake = futures_rustls::TlsConnector::from(config).connect(name, stream);
    match within(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Some(Ok(stream)) => Ok(Stream::Dialed(Box::new(stream))),
        Some(Err(error)) => Err(explain(error)),
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Whether a connection's first bytes are a TLS handshake record (a ClientHello): type 22,
/// version 3.1 to 3.4. A frame's length prefix never starts so: it would be a frame of over
/// 64 KiB before the hello.
pub(crate) fn looks_like_tls(first: &[u8]) -> bool {
    first.len() >= 3 && first[0] == 0x16 && first[1] == 0x03 && (1..=4).contains(&first[2])
}

/// A handshake error in words an operator can act on.
fn explain(error: io::Error) -> io::Error {
    let text = error.to_string();
    let hint = if text.contains("InvalidContentType") || text.contains("corrupt message") {
        " (the other end does not speak TLS: a plaintext client or peer?)"
    } else {
        ""
    };
    io::Error::new(error.kind(), format!("TLS handshake failed: {text}{hint}"))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Dialed(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Dialed(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Dialed(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Dialed(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
