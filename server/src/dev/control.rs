//! The dev cluster's control socket, `DIR/dev.sock`: how `corekv dev restart N` and `corekv
//! dev stop N`, run in another terminal, reach the `corekv dev` that owns the nodes.
//!
//! ```text
//!   corekv dev restart 2                      corekv dev (supervising)
//!   ────────────────────                      ────────────────────────
//!   connect DIR/dev.sock ───────────────────► accepted between two supervision rounds
//!   "restart 2\n"        ───────────────────► Nodes::restart(2)
//!                        ◄─────────────────── "ok node 2 restarted (pid 4242); ...\n"
//!                                             or "error node 2 is running (pid 4100); ...\n"
//! ```
//!
//! One request per connection, one line each way. The supervisor polls the socket without
//! blocking, so a client that connects and sends nothing holds nothing up for longer than
//! [`REQUEST_TIMEOUT`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// The socket's name in the dev directory.
pub(crate) const SOCKET_FILE: &str = "dev.sock";

/// How long a requester may take to send its line, and the supervisor to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest request line read.
const REQUEST_BYTES_MAX: u64 = 256;

/// What a requester asks of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start node N again (after it exited or was stopped).
    Restart(u64),
    /// Stop node N cleanly; the others keep running.
    Stop(u64),
}

impl Request {
    fn to_line(self) -> String {
        match self {
            Request::Restart(id) => format!("restart {id}\n"),
            Request::Stop(id) => format!("stop {id}\n"),
        }
    }

    fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let (verb, id) = (words.next(), words.next().map(str::parse::<u64>));
        match (verb, id, words.next()) {
            (Some("restart"), Some(Ok(id)), None) => Ok(Request::Restart(id)),
            (Some("stop"), Some(Ok(id)), None) => Ok(Request::Stop(id)),
            _ => Err(format!("unknown request {:?} (expected restart N or stop N)", line.trim())),
        }
    }
}

/// The listening socket, removed when dropped.
pub(crate) struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listens on `DIR/dev.sock`, replacing a stale socket file left by a dev cluster that was
    /// killed (the caller holds the dev directory's lock, so no live one owns it).
    pub(crate) fn listen(dir: &Path) -> anyhow::Result<Control> {
        let path = dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", path.display()))
            }
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        listener.set_nonblocking(true).context("making the control socket non-blocking")?;
        Ok(Control { listener, path })
    }

    /// Serves the requests waiting, each answered by `handle` (`Ok(reply)` or `Err(reason)`).
    pub(crate) fn serve_pending(&self, mut handle: impl FnMut(Request) -> Result<String, String>) {
        while let Ok((stream, _)) = self.listener.accept() {
            if let Err(error) = serve_one(stream, &mut handle) {
                tracing::debug!(%error, "a control request failed");
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(
    stream: UnixStream,
    handle: &mut impl FnMut(Request) -> Result<String, String>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_BYTES_MAX)).read_line(&mut line)?;
    let answer = match Request::parse(&line).and_then(&mut *handle) {
        Ok(reply) => format!("ok {reply}\n"),
        Err(reason) => format!("error {reason}\n"),
    };
    (&stream).write_all(answer.as_bytes())
}

/// Sends `request` to the `corekv dev` running in `dir`; its answer, or why it failed.
pub fn send(dir: &Path, request: Request) -> anyhow::Result<String> {
    let path = dir.join(SOCKET_FILE);
    let stream = UnixStream::connect(&path).map_err(|error| {
        anyhow::anyhow!(
            "no corekv dev is running in {} ({}: {error})",
            dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).context("setting a timeout")?;
    (&stream).write_all(request.to_line().as_bytes()).context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).context("reading the answer")?;
    let answer = answer.trim_end();
    match answer.split_once(' ') {
        Some(("ok", reply)) => Ok(reply.to_string()),
        Some(("error", reason)) => bail!("{reason}"),
        _ => bail!("corekv dev answered {answer:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: requests travel over the socket and come back with the handler's answer, errors
    // as errors; a malformed request is refused; with nobody listening, `send` says so.
    #[test]
    fn requests_reach_the_supervisor_and_answers_come_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path(), Request::Stop(1))
            .unwrap_err()
            .to_string()
            .contains("no corekv dev is running"));
        let control = Control::listen(dir.path()).unwrap();
        let client = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                (send(&dir, Request::Restart(2)), send(&dir, Request::Stop(9)))
            })
        };
        let mut seen = Vec::new();
        while seen.len() < 2 {
            control.serve_pending(|request| {
                seen.push(request);
                match request {
                    Request::Restart(id) => Ok(format!("node {id} restarted")),
                    Request::Stop(id) => Err(format!("there is no node {id}")),
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        let (restarted, stopped) = client.join().unwrap();
        assert_eq!(restarted.unwrap(), "node 2 restarted");
        assert_eq!(stopped.unwrap_err().to_string(), "there is no node 9");
        assert_eq!(seen, [Request::Restart(2), Request::Stop(9)]);
        assert!(Request::parse("frob 2").unwrap_err().contains("unknown request"));
        assert!(Request::parse("restart x").is_err());
        drop(control);
        assert!(!dir.path().join(SOCKET_FILE).exists(), "the socket file is removed");
    }
}
