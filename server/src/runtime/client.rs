//! Client connections on `client_port + s`: one task per connection that reads frames into the
//! core and writes the replies the driver hands it, pipelined, in whatever order they come.
//!
//! Backpressure: a connection with [`CONNECTION_REQUESTS_IN_FLIGHT_MAX`] requests unanswered,
//! or [`CONNECTION_OUTPUT_BYTES_MAX`] reply bytes unsent, is not read from until that drops, so
//! a client that sends faster than the shard serves (or reads slower than it replies) is slowed
//! by TCP instead of growing the server's memory. A frame whose length prefix is over the limit
//! closes the connection (the stream cannot be resynchronised); a frame that fails verification
//! is answered `InvalidRequest` and the connection carries on. Either way, other connections
//! are not affected.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use corekv_proto::frame::FrameBuffer;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpListener;

use super::net::{self, Stream};
use super::state::{ClientConn, Shard};
use crate::constants::{
    CONNECTION_OUTPUT_BYTES_MAX, CONNECTION_REQUESTS_IN_FLIGHT_MAX, SOCKET_READ_CHUNK_BYTES,
};
use crate::core::ConnId;

/// Accepts client connections for the shard.
pub(crate) async fn accept_clients(shard: Rc<Shard>, listener: TcpListener) {
    net::accept_clients_with(shard, listener, "client", |shard, stream| async move {
        let id = shard.next_conn_id();
        if shard.core.borrow().checks_access() {
            let user =
                stream.peer_cert().and_then(|cert| corekv_types::tls::subject_common_name(cert));
            shard.core.borrow_mut().on_client_connected(id, user);
        }
        let conn = Rc::new(ClientConn::default());
        shard.conns.borrow_mut().insert(id, conn.clone());
        shard.metrics.client_connections.fetch_add(1, Relaxed);
        if let Err(error) = serve(&shard, id, &conn, stream).await {
            tracing::debug!(shard = %shard.shard, conn = id, %error, "client connection closed");
        }
        shard.conns.borrow_mut().remove(&id);
        shard.core.borrow_mut().on_client_closed(id);
        shard.metrics.client_connections.fetch_sub(1, Relaxed);
    })
    .await
}

/// Reads requests and writes replies on one connection until either side closes.
async fn serve(shard: &Shard, id: ConnId, conn: &ClientConn, mut stream: Stream) -> io::Result<()> {
    let plaintext_port = matches!(stream, Stream::Plain(_));
    let mut unflushed = false;
    let mut input = FrameBuffer::new(SOCKET_READ_CHUNK_BYTES);
    let mut written = 0usize;
    let mut greeted = false;
    poll_fn(|cx| loop {
        let mut progress = false;
        {
            let mut out = conn.out.borrow_mut();
            while written < out.len() {
                match Pin::new(&mut stream).poll_write(cx, &out[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        unflushed = true;
                        progress = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => break,
                }
            }
            // TLS keeps what it could not send yet; pushed out once all is written.
            if written == out.len() && unflushed {
                match Pin::new(&mut stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => unflushed = false,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {}
                }
            }
            if written == out.len() && !unflushed {
                out.clear();
                written = 0;
                if conn.close_after_output.get() {
                    return Poll::Ready(Ok(()));
                }
                if conn.notify_drained.replace(false) {
                    let mut core = shard.core.borrow_mut();
                    core.set_now(shard.now_us());
                    core.on_client_drained(id);
                    drop(core);
                    shard.wake.notify();
                }
            }
        }
        if shard.stopping.get() {
            return Poll::Ready(Ok(()));
        }
        let room = conn.in_flight.get() < CONNECTION_REQUESTS_IN_FLIGHT_MAX
            && conn.out.borrow().len() < CONNECTION_OUTPUT_BYTES_MAX
            && !conn.close_after_output.get();
        if room {
            match Pin::new(&mut stream).poll_read(cx, input.spare()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => {
                    input.commit(n);
                    progress = true;
                    if plaintext_port && !greeted && net::looks_like_tls(input.pending()) {
                        tracing::warn!(shard = %shard.shard, conn = id, "refused a client that speaks TLS: this node's registry file has no [tls] section");
                        return Poll::Ready(Ok(()));
                    }
                    if let Err(error) = take_frames(shard, id, conn, &mut greeted, &mut input) {
                        return Poll::Ready(Err(error));
                    }
                    shard.wake.notify();
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        if !progress {
            *conn.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
    })
    .await
}

/// Hands every whole frame in `input` to the core.
fn take_frames(
    shard: &Shard,
    id: ConnId,
    conn: &ClientConn,
    greeted: &mut bool,
    input: &mut FrameBuffer,
) -> io::Result<()> {
    let mut core = shard.core.borrow_mut();
    core.set_now(shard.now_us());
    loop {
        match input.next_frame() {
            Ok(Some(frame)) => {
                conn.in_flight.set(conn.in_flight.get() + 1);
                core.on_client_frame(id, greeted, frame);
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                shard.metrics.malformed_frames.fetch_add(1, Relaxed);
                tracing::debug!(shard = %shard.shard, conn = id, %error, "closing a client connection");
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    }
}
