//! Opening a connection to a node: TCP, then TLS when the client is configured for it
//! (tokio-rustls; the node's certificate is checked against the host the registry names).
//!
//! A TLS write may leave bytes in the session's buffer: writers flush after each write (a
//! plain socket's flush does nothing). rustls reads at most 4 KiB from its socket at a time,
//! so under TLS the socket is read through a 64 KiB buffer (one read serves many of rustls's).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corekv_types::registry::{Registry, TlsVersion};
use tokio::io::BufReader;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A socket read through a buffer (under TLS; writes go straight through).
type BufferedTcp = BufReader<TcpStream>;

/// The read buffer of a TLS connection: what a plain connection reads at once.
const TLS_READ_BUFFER_BYTES: usize = 64 * 1024;

use crate::connection::OpenError;
use crate::error::Error;

/// How a client speaks TLS to the nodes: the CA it checks their certificates against, and the
/// certificate (and key) it shows them, if any. Set it as [`ClientConfig::tls`](crate::ClientConfig::tls)
/// for a cluster whose registry file has a `[tls]` section.
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Nodes checked against the CA certificates in `ca` (PEM); `cert_and_key`: the client
    /// certificate chain and its private key (PEM), which name the user; `min_version`: the
    /// oldest TLS version spoken.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert_and_key: Option<(&Path, &Path)>,
        min_version: TlsVersion,
    ) -> Result<TlsConfig, Error> {
        let config = corekv_types::tls::client_config(ca.as_ref(), cert_and_key, min_version)
            .map_err(Error::Tls)?;
        Ok(TlsConfig { config: Arc::new(config) })
    }

    /// [`TlsConfig::from_files`] with the registry's CA (or `ca` when given) and TLS version.
    /// An error when the registry has no `[tls]` section and no CA is given.
    pub fn for_registry(
        registry: &Registry,
        ca: Option<&Path>,
        cert_and_key: Option<(&Path, &Path)>,
    ) -> Result<TlsConfig, Error> {
        let min = registry.tls.as_ref().map_or(TlsVersion::Tls13, |t| t.min_version);
        let ca = match (ca, &registry.tls) {
            (Some(ca), _) => ca,
            (None, Some(tls)) => tls.ca.as_path(),
            (None, None) => {
                return Err(Error::Tls(
                    "no CA to check the nodes against: the registry file has no [tls] section \
                     and none was given"
                        .into(),
                ))
            }
        };
        Self::from_files(ca, cert_and_key, min)
    }

    /// What a command-line tool was given: `--cacert`, `--cert` and `--cert-key`, or where
    /// one is not, `$COREKV_CACERT`, `$COREKV_CERT` and `$COREKV_CERT_KEY`; the registry's CA
    /// when none is given ([`TlsConfig::for_registry`]). `None` for a cluster without
    /// `[tls]` given no CA; an error for a certificate without its key (or a key without its
    /// certificate), or a certificate with no TLS to show it on.
    pub fn from_command_line(
        registry: &Registry,
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<TlsConfig>, Error> {
        let from_env = |given: Option<&Path>, var: &str| {
            given.map(Path::to_path_buf).or_else(|| std::env::var_os(var).map(PathBuf::from))
        };
        let cacert = from_env(cacert, "COREKV_CACERT");
        let (cert, key) = (from_env(cert, "COREKV_CERT"), from_env(key, "COREKV_CERT_KEY"));
        let cert_and_key = match (&cert, &key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(Error::Tls(
                    "--cert and --cert-key go together (or $COREKV_CERT and $COREKV_CERT_KEY)"
                        .into(),
                ))
            }
        };
        if registry.tls.is_none() && cacert.is_none() {
            if cert_and_key.is_some() {
                return Err(Error::Tls(
                    "--cert without TLS: the registry file has no [tls] section and no --cacert \
                     was given"
                        .into(),
                ));
            }
            return Ok(None);
        }
        Ok(Some(Self::for_registry(registry, cacert.as_deref(), cert_and_key)?))
    }
}

/// A connection's byte stream.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<BufferedTcp>>),
}

/// The reading half of a [`Stream`].
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<BufferedTcp>>),
}

/// The writing half of a [`Stream`].
pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<BufferedTcp>>),
}

impl Stream {
    /// The halves, for a reader task and a writer task.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// Connects to `addr` within `timeout`, and makes the TLS handshake when `tls` is given.
/// Closing the socket resets it and drops unsent data (see `connection`'s module docs).
pub(crate) async fn open(
    addr: &str,
    tls: Option<&TlsConfig>,
    timeout: Duration,
) -> Result<Stream, OpenError> {
    let unavailable = OpenError::Unreachable;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| unavailable(format!("connecting to {addr} timed out")))?
        .map_err(|e| {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                OpenError::Refused(addr.to_string())
            } else {
                unavailable(format!("connecting to {addr}: {e}"))
            }
        })?;
    stream.set_nodelay(true).map_err(|e| unavailable(format!("{addr}: {e}")))?;
    stream.set_zero_linger().map_err(|e| unavailable(format!("{addr}: {e}")))?;
    let Some(tls) = tls else { return Ok(Stream::Plain(stream)) };
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = corekv_types::tls::host_name(host).map_err(|e| OpenError::Fatal(Error::Tls(e)))?;
    let stream = BufReader::with_capacity(TLS_READ_BUFFER_BYTES, stream);
    let handshake = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, stream);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(tls_failure(addr, &e).unwrap_or_else(|| {
            // A node without TLS reads the ClientHello as a frame it refuses, and closes.
            let hint = if e.kind() == io::ErrorKind::UnexpectedEof {
                " (a node without TLS closes so: does its registry have the [tls] section?)"
            } else {
                ""
            };
            unavailable(format!("TLS handshake with {addr}: {e}{hint}"))
        })),
        Err(_) => Err(unavailable(format!("TLS handshake with {addr} timed out"))),
    }
}

/// The caller's error for an I/O error that is TLS refusing the connection (a certificate
/// the node does not trust, one of the node's the client does not, a closed handshake):
/// retrying will not help.
pub(crate) fn tls_failure(addr: &str, error: &io::Error) -> Option<OpenError> {
    let tls = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())?;
    let hint = match tls {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            ": the node requires a client certificate (corekvctl: --cert and --cert-key)"
        }
        rustls::Error::AlertReceived(_) => ": the node refused this client's certificate",
        rustls::Error::InvalidCertificate(_) => ": the node's certificate is not trusted",
        _ => "",
    };
    Some(OpenError::Fatal(Error::Tls(format!("{addr}: {tls}{hint}"))))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
