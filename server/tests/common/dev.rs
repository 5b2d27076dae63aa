//! `corekv dev` under test: the process, its output line by line, a client of its cluster
//! and its nodes' pids.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig};

use super::{corekv_bin, wait_exit};

/// A `corekv dev` process under test, with its output read line by line.
pub struct Dev {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    printed: String,
}

impl Dev {
    pub fn start(dir: &std::path::Path, args: &[&str]) -> Dev {
        let mut child = Command::new(corekv_bin())
            .arg("dev")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Dev { child, lines, printed: String::new() }
    }

    /// Reads output until a line containing `text`; panics if the output ends first.
    pub fn wait_for(&mut self, text: &str) -> String {
        loop {
            let Some(Ok(line)) = self.lines.next() else {
                panic!("corekv dev's output ended before {text:?}:\n{}", self.printed);
            };
            self.printed.push_str(&line);
            self.printed.push('\n');
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling the child we started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        wait_exit(&mut self.child, Duration::from_secs(40))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
}

/// A client of the dev cluster in `dir`, with 10 s calls.
pub fn dev_client(dir: &std::path::Path) -> Client {
    let registry = Registry::load(dir.join("corekv.toml")).unwrap();
    let mut config = ClientConfig::new(registry);
    config.timeout = Duration::from_secs(10);
    Client::connect(config)
}

/// The pid of the `corekv serve` process of dev node `id` in `dir`, if one runs.
pub fn node_pid(dir: &std::path::Path, id: u64) -> Option<libc::pid_t> {
    let data = dir.join(format!("node-{id}")).display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains(" serve ") && cmdline.contains(&format!("{data} "))).then_some(pid)
    })
}
