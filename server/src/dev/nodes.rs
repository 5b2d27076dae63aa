//! The node processes of a dev cluster: starting them, noticing one that exits, restarting or
//! stopping one on request, and stopping them all.
//!
//! Each node runs in a process group of its own, so a Ctrl-C in the terminal reaches only
//! `corekv dev`, which then stops the nodes one clean SIGTERM each (a node that got the
//! terminal's SIGINT too would take the second signal as "exit at once"). A node also gets
//! SIGTERM if `corekv dev` itself dies (`PR_SET_PDEATHSIG`), so no node outlives it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a node gets to stop cleanly after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node of the dev cluster is doing.
enum State {
    Running(Child),
    /// Stopped on request (`corekv dev stop N`).
    Stopped,
    /// Exited by itself (reported once, when noticed).
    Exited,
}

/// One node: how to start it, and its process.
struct Node {
    id: u64,
    cpus: Vec<usize>,
    state: State,
}

/// The node processes of a dev cluster.
pub(crate) struct Nodes {
    exe: PathBuf,
    registry: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Nodes {
    /// Nodes `ids`, each with its CPU list, none started yet; their data and logs go in `dir`.
    pub(crate) fn new(
        exe: PathBuf,
        registry: PathBuf,
        dir: PathBuf,
        ids: impl IntoIterator<Item = (u64, Vec<usize>)>,
    ) -> Nodes {
        let nodes =
            ids.into_iter().map(|(id, cpus)| Node { id, cpus, state: State::Stopped }).collect();
        Nodes { exe, registry, dir, nodes }
    }

    /// The log file of node `id`.
    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts every node; on a failure, stops those already started.
    pub(crate) fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if let Err(error) = self.start_at(i) {
                self.stop_all();
                return Err(error);
            }
        }
        Ok(())
    }

    fn start_at(&mut self, i: usize) -> anyhow::Result<u32> {
        let (id, cpus) = (self.nodes[i].id, self.nodes[i].cpus.clone());
        let child = self.spawn(id, &cpus)?;
        let pid = child.id();
        self.nodes[i].state = State::Running(child);
        Ok(pid)
    }

    fn spawn(&self, id: u64, cpus: &[usize]) -> anyhow::Result<Child> {
        let log_path = self.log_path(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating the log file")?;
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .arg("--registry")
            .arg(&self.registry)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")))
            .args(cpu_args(cpus))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        stop_with_parent(&mut command);
        command.spawn().with_context(|| format!("starting node {id}"))
    }

    /// The first node that exited by itself since the last call, with its status; it is
    /// marked exited (not restarted).
    pub(crate) fn reap_exited(&mut self) -> Option<(u64, ExitStatus)> {
        for node in &mut self.nodes {
            if let State::Running(child) = &mut node.state {
                if let Ok(Some(status)) = child.try_wait() {
                    node.state = State::Exited;
                    return Some((node.id, status));
                }
            }
        }
        None
    }

    /// Restarts node `id`, which must not be running; the reply line for the requester.
    pub(crate) fn restart(&mut self, id: u64) -> Result<String, String> {
        let i = self.index(id)?;
        if let State::Running(child) = &self.nodes[i].state {
            return Err(format!("node {id} is running (pid {}); stop it first", child.id()));
        }
        let pid = self.start_at(i).map_err(|e| format!("{e:#}"))?;
        Ok(format!("node {id} restarted (pid {pid}); its log is {}", self.log_path(id).display()))
    }

    /// Stops node `id` cleanly (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]); the reply line
    /// for the requester.
    pub(crate) fn stop(&mut self, id: u64) -> Result<String, String> {
        let i = self.index(id)?;
        let State::Running(child) = &mut self.nodes[i].state else {
            return Err(format!("node {id} is not running"));
        };
        let status = stop_child(id, child);
        self.nodes[i].state = State::Stopped;
        Ok(format!("node {id} stopped ({status})"))
    }

    fn index(&self, id: u64) -> Result<usize, String> {
        self.nodes.iter().position(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
            format!("there is no node {id} (nodes: {})", ids.join(", "))
        })
    }

    /// SIGTERM to every running node, then SIGKILL to any that has not stopped after
    /// [`STOP_TIMEOUT`].
    pub(crate) fn stop_all(&mut self) {
        for node in &self.nodes {
            if let State::Running(child) = &node.state {
                terminate(child);
            }
        }
        for node in &mut self.nodes {
            if let State::Running(child) = &mut node.state {
                wait_stopped(node.id, child);
                node.state = State::Stopped;
            }
        }
    }
}

/// SIGTERM to `child`.
fn terminate(child: &Child) {
    // SAFETY: sending a signal to a child process we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// Stops `child` (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and reaps it.
fn stop_child(id: u64, child: &mut Child) -> String {
    terminate(child);
    wait_stopped(id, child)
}

/// Waits for `child`, sent SIGTERM, to exit; SIGKILLs it after [`STOP_TIMEOUT`]. Its exit
/// status, as text.
fn wait_stopped(id: u64, child: &mut Child) -> String {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "corekv dev: node {id} did not stop in time; killing it"
                );
                let _ = child.kill();
                return child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            }
        }
    }
}

/// Makes the child get SIGTERM when this process dies.
fn stop_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls (prctl,
    // getppid, raise) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// `--cpus LIST` for `cpus`, or nothing when there are none (the node then uses them all).
pub(crate) fn cpu_args(cpus: &[usize]) -> Vec<String> {
    if cpus.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    vec!["--cpus".to_string(), list.join(",")]
}

/// The last non-empty line of a node's log (what it said before it exited).
pub(crate) fn last_log_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string)
}
