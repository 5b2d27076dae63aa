//! `--spawn-cluster N`: a local cluster for the run, started with `corekv dev` and stopped
//! after it, so one command reproduces a result.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running `corekv dev`.
pub struct SpawnedCluster {
    child: Child,
    /// Its registry file.
    pub registry: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `corekv` binary: `--corekv`, else the one beside this binary, else `corekv` on PATH.
pub fn corekv_binary(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("corekv"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("corekv"))
}

impl SpawnedCluster {
    /// Starts `nodes` nodes with `shards` shards from `base_port`, and waits for every leader.
    pub fn start(
        corekv: &Path,
        nodes: u32,
        shards: u32,
        base_port: u16,
    ) -> anyhow::Result<SpawnedCluster> {
        let dir = tempfile::Builder::new()
            .prefix("corekv-bench")
            .tempdir()
            .context("creating a directory for the cluster")?;
        let mut command = Command::new(corekv);
        command
            .args(["dev", "--nodes", &nodes.to_string(), "--shards", &shards.to_string()])
            .args(["--base-port", &base_port.to_string(), "--clean", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        stop_with_parent(&mut command);
        let mut child =
            command.spawn().with_context(|| format!("starting {} dev", corekv.display()))?;
        let stdout = child.stdout.take().context("dev output")?;
        let started = Instant::now();
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next() {
            let line = line.context("reading corekv dev's output")?;
            if line.contains("every shard has a leader") {
                let registry = dir.path().canonicalize()?.join("corekv.toml");
                // Keep reading what it prints until it exits: a closed pipe would make its
                // last words fail.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(SpawnedCluster { child, registry, _dir: dir });
            }
            if started.elapsed() > Duration::from_secs(120) {
                break;
            }
        }
        let _ = child.kill();
        bail!("corekv dev did not report a ready cluster")
    }
}

/// Has the child get SIGINT (`corekv dev` then stops its nodes) when this process dies,
/// whatever kills it: a bench killed by a signal runs no `Drop`, and the cluster would be left
/// running with its ports taken. (The death signal follows the thread that spawned the child;
/// the cluster is started from the main thread, which lives as long as the process.)
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls (prctl,
    // getppid, raise) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGINT);
            }
            Ok(())
        });
    }
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
