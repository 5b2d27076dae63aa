//! A cluster of real `corekv` processes on loopback for integration tests: a temporary
//! registry and data directory, free ports, helpers to kill, pause, restart and inspect nodes,
//! and a raw protocol connection for talking to one specific replica.
#![allow(dead_code)]

pub mod dev;
pub mod gateway;
pub mod pki;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corekv_client::registry::{Node, Registry};
use corekv_client::{Client, ClientConfig, NodeId, ShardId};
use corekv_proto::client::Consistency;
use corekv_proto::encode::RequestEncoder;
use corekv_proto::frame::{verify_reply, FrameBuffer};

/// The `corekv` binary under test.
pub fn corekv_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corekv"))
}

/// The `corekvctl` binary, built beside `corekv` by the workspace test build.
pub fn corekvctl_bin() -> PathBuf {
    let path = corekv_bin().with_file_name("corekvctl");
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo nextest run --workspace), which build it",
        path.display()
    );
    path
}

/// The ports node `i` (from 0) uses when the cluster's ports start at `base`.
fn node_ports(base: u16, i: u64) -> (u16, u16, u16) {
    let base = base as u64;
    ((base + i * 20) as u16, (base + 1_000 + i * 20) as u16, (base + 2_000 + i) as u16)
}

/// A base port such that every port the cluster needs is free on 127.0.0.1 right now. Bases
/// stay below Linux's ephemeral range (32768 and up), where client sockets of tests running in
/// parallel come from.
fn free_base(nodes: u64, shards: u32) -> u16 {
    let mut x =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            ^ ((std::process::id() as u64) << 32)
            | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + (x % 20_000) as u16;
        let mut ports = Vec::new();
        for i in 0..nodes {
            let (client, peer, http) = node_ports(base, i);
            for s in 0..shards as u16 {
                ports.extend([client + s, peer + s, client + 10 + s]);
            }
            ports.push(http);
        }
        if claim_free(&ports) {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Reserves `ports` for this test process if each is free on 127.0.0.1 and not reserved by a
/// live process (this one included) against the other test processes running now (nextest
/// runs each test in a process of its own, several at once): one file per port, in a folder
/// of the temporary directory, naming the process that holds it; a port whose holder is gone
/// is taken over. Without this, a cluster starting in one test could pick the ports of a node
/// another test has killed and is about to restart, which then cannot bind them. Gives false,
/// reserving nothing, when one of them is taken.
fn claim_free(ports: &[u16]) -> bool {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join("corekv-test-ports");
    std::fs::create_dir_all(&dir).expect("create the test port reservations' folder");
    // One reservation at a time across processes: the lock goes with the file's descriptor.
    let lock = std::fs::File::create(dir.join("lock")).expect("open the reservations' lock");
    // SAFETY: flock on a descriptor this function owns for the whole call.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "lock reservations");
    let path = |port: u16| dir.join(port.to_string());
    let held = |port: u16| {
        let holder = std::fs::read_to_string(path(port)).ok()?.trim().parse::<i32>().ok();
        // (kill with 0 or less would ask about process groups: such a file is stale.)
        let holder = holder.filter(|&pid| pid > 0)?;
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let exists = unsafe { libc::kill(holder, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        exists.then_some(())
    };
    let bound = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_err();
    if ports.iter().any(|&port| held(port).is_some() || bound(port)) {
        return false;
    }
    let me = std::process::id().to_string();
    for &port in ports {
        std::fs::write(path(port), &me).expect("write a port reservation");
    }
    true
}

/// A running test cluster. Every node process is killed when it is dropped.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    pub registry_path: PathBuf,
    nodes: Vec<Option<Child>>,
    /// Extra `corekv serve` arguments for every node.
    serve_args: Vec<String>,
    /// Per node, the network namespace it runs in (`ip netns exec`), if any.
    netns: Vec<Option<String>>,
    /// Nodes started later to join the running cluster (`add_node`): each one's registry
    /// entry, and the file it was started with (the cluster's registry plus itself).
    joined: Vec<(Node, PathBuf)>,
    /// What [`TestCluster::client`] and [`TestCluster::http`] speak TLS with, for a cluster
    /// whose registry has `[tls]`.
    pub client_tls: Option<corekv_client::TlsConfig>,
    pub http_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl TestCluster {
    /// Starts `nodes` nodes with `shards` shards each and waits until every shard has a leader.
    pub fn start(nodes: u64, shards: u32) -> TestCluster {
        Self::start_with(nodes, shards, &[])
    }

    /// Like [`TestCluster::start`], passing `serve_args` to every `corekv serve`.
    pub fn start_with(nodes: u64, shards: u32, serve_args: &[&str]) -> TestCluster {
        let mut cluster = Self::prepare(nodes, shards, serve_args);
        cluster.launch();
        cluster
    }

    /// A cluster on loopback with its registry written, not started yet: the caller may
    /// prepare data directories first, then calls [`TestCluster::launch`].
    pub fn prepare(nodes: u64, shards: u32, serve_args: &[&str]) -> TestCluster {
        let base = free_base(nodes, shards);
        let hosts: Vec<(String, u16, u16, u16)> = (0..nodes)
            .map(|i| {
                let (client, peer, http) = node_ports(base, i);
                ("127.0.0.1".to_string(), client, peer, http)
            })
            .collect();
        Self::prepare_on(&hosts, shards, serve_args, vec![None; nodes as usize])
    }

    /// A cluster whose node `i` (from 0) listens on `hosts[i]` = (host, client port, peer
    /// port, http port) and runs in network namespace `netns[i]`, not started yet.
    pub fn prepare_on(
        hosts: &[(String, u16, u16, u16)],
        shards: u32,
        serve_args: &[&str],
        netns: Vec<Option<String>>,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // A name of its own: glommio listens with SO_REUSEPORT, so a node restarted on ports
        // another test's cluster took meanwhile shares them with it, and connections land on
        // either; the name makes the other cluster's nodes refuse them.
        let cluster = format!("test-{}", hosts.first().map_or(0, |h| h.1));
        let mut text = format!("cluster = \"{cluster}\"\nshards = {shards}\n");
        for (i, (host, client_port, peer_port, http_port)) in hosts.iter().enumerate() {
            let node = Node {
                id: NodeId(i as u64 + 1),
                host: host.to_string(),
                client_port: *client_port,
                peer_port: *peer_port,
                http_port: *http_port,
                // Redis ports after the client ports, in the 20 ports each node has for them.
                resp_port: (shards <= 10).then_some(*client_port + 10),
            };
            text.push_str(&node.to_toml());
        }
        let registry_path = dir.path().join("corekv.toml");
        std::fs::write(&registry_path, &text).expect("write registry");
        let registry = Registry::parse(&text, "test registry").expect("valid registry");
        let serve_args = serve_args.iter().map(|a| a.to_string()).collect();
        TestCluster {
            dir,
            registry,
            registry_path,
            nodes: Vec::new(),
            serve_args,
            netns,
            joined: Vec::new(),
            client_tls: None,
            http_tls: None,
        }
    }

    /// Appends `toml` (a section such as `[watch]`) to a prepared cluster's registry file.
    pub fn add_to_registry(&mut self, toml: &str) {
        let text = std::fs::read_to_string(&self.registry_path).expect("read registry");
        let text = format!("{text}\n{toml}\n");
        self.registry = Registry::parse(&text, "test registry").expect("valid registry");
        std::fs::write(&self.registry_path, &text).expect("write registry");
    }

    /// Starts every node of a prepared cluster and waits until every shard has a leader.
    pub fn launch(&mut self) {
        for id in 1..=self.netns.len() as u64 {
            let child = self.spawn(id);
            self.nodes.push(Some(child));
        }
        self.wait_for_leaders(Duration::from_secs(30));
        // Leadership then moves to each shard's preferred node once it has caught up (about a
        // second after the election). A test that picks a follower to kill must not race that
        // move: it once killed the node that had just become leader.
        self.wait_until(Duration::from_secs(15), "every shard led by its preferred node", || {
            (0..self.registry.shards)
                .all(|s| self.leader(s) == Some(self.registry.preferred_leader(ShardId(s)).get()))
        });
    }

    fn spawn(&self, id: u64) -> Child {
        self.spawn_with(id, &[])
    }

    fn spawn_with(&self, id: u64, extra: &[&str]) -> Child {
        let log = self.log_path(id);
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = match &self.netns[id as usize - 1] {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(corekv_bin());
                command
            }
            None => Command::new(corekv_bin()),
        };
        command
            .arg("serve")
            .arg("--registry")
            .arg(self.registry_of(id))
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--log")
            .arg("info,raft=info")
            .args(&self.serve_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start corekv")
    }

    /// Starts a new node (the next id) on free loopback ports with `--join` and an empty data
    /// directory, given the cluster's registry plus its own entry; returns its id. It is no
    /// member until `corekvctl member add` makes it one.
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let base = free_base(1, self.registry.shards);
        let (client_port, peer_port, http_port) = node_ports(base, 0);
        let node = Node {
            id: NodeId(id),
            host: "127.0.0.1".to_string(),
            client_port,
            peer_port,
            http_port,
            resp_port: (self.registry.shards <= 10).then_some(client_port + 10),
        };
        let text = std::fs::read_to_string(&self.registry_path).expect("registry");
        let text = format!("{text}{}", node.to_toml());
        let path = self.dir.path().join(format!("node-{id}.toml"));
        std::fs::write(&path, text).expect("write the new node's registry");
        self.joined.push((node, path));
        self.netns.push(None);
        let child = self.spawn_with(id, &["--join"]);
        self.nodes.push(Some(child));
        self.wait_until(Duration::from_secs(20), "the new node to serve /status", || {
            self.status(id).is_some()
        });
        id
    }

    /// Node `id`'s registry entry (a joined node's own).
    pub fn node(&self, id: u64) -> Option<Node> {
        self.registry.node(NodeId(id)).cloned().or_else(|| {
            self.joined.iter().find(|(n, _)| n.id == NodeId(id)).map(|(n, _)| n.clone())
        })
    }

    /// The registry file node `id` is started with.
    pub fn registry_of(&self, id: u64) -> PathBuf {
        match self.joined.iter().find(|(n, _)| n.id == NodeId(id)) {
            Some((_, path)) => path.clone(),
            None => self.registry_path.clone(),
        }
    }

    /// `corekvctl` with this cluster's registry and `args`: exit code, stdout, stderr.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        self.ctl_with(&self.registry_path, args)
    }

    /// `corekvctl` with the registry file `registry` and `args`.
    pub fn ctl_with(&self, registry: &Path, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(corekvctl_bin())
            .arg("--registry")
            .arg(registry)
            .args(args)
            .output()
            .expect("run corekvctl");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// The last lines of a node's log, and any panic message in it (for assertion messages).
    pub fn log_tail(&self, id: u64) -> String {
        log_tail(&self.log_path(id))
    }

    /// Whether node `id`'s log has a line with every one of `words`.
    pub fn logged(&self, id: u64, words: &[&str]) -> bool {
        std::fs::read_to_string(self.log_path(id))
            .unwrap_or_default()
            .lines()
            .any(|line| words.iter().all(|w| line.contains(w)))
    }

    /// Waits (up to 10 s) until one of nodes `ids` logs a line with every one of `words`.
    pub fn wait_logged(&self, ids: &[u64], words: &[&str]) {
        self.wait_until(Duration::from_secs(10), &format!("a log line with {words:?}"), || {
            ids.iter().any(|&id| self.logged(id, words))
        });
    }

    /// A client for this cluster.
    pub fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.registry.clone());
        config.timeout = Duration::from_secs(10);
        config.tls = self.client_tls.clone();
        Client::connect(config)
    }

    /// `GET path` on node `id`'s HTTP port.
    pub fn http(&self, id: u64, path: &str) -> Option<(u16, String)> {
        let addr = self.node(id)?.http_addr();
        corekv_server::http::get_with(&addr, path, Duration::from_secs(2), self.http_tls.clone())
            .ok()
    }

    /// A number from node `id`'s `/metrics`, summed over its shards.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let (_, body) = self.http(id, "/metrics")?;
        let prefix = format!("{name}{{");
        Some(
            body.lines()
                .filter(|l| l.starts_with(&prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// A number of shard `shard` in node `id`'s `/status` (`applied_index`, `keys`, ...).
    pub fn shard_number(&self, id: u64, shard: u32, field: &str) -> Option<u64> {
        self.status(id)?["shards"][shard as usize][field].as_u64()
    }

    /// A stale read of `key` from shard `shard` of node `id`: what that replica has applied.
    pub fn replica_value(&self, id: u64, shard: u32, key: &[u8]) -> Option<Vec<u8>> {
        let mut conn = self.raw(id, shard);
        conn.send(RequestEncoder::new().get(2, key, Consistency::Stale));
        let frame = conn.recv();
        let reply = verify_reply(&frame).expect("valid reply");
        let get = reply.reply_as_get_reply().expect("a get reply");
        assert!(get.stale(), "stale reads say so");
        get.entry().and_then(|e| e.value().map(|v| v.bytes().to_vec()))
    }

    /// Node `id`'s `/status`, parsed.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let (code, body) = self.http(id, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The leader every live node agrees shard `shard` has, if they agree.
    pub fn leader(&self, shard: u32) -> Option<u64> {
        let mut leader = None;
        for id in self.live_nodes() {
            let status = self.status(id)?;
            let l = status["shards"][shard as usize]["leader_id"].as_u64()?;
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader.filter(|l| self.live_nodes().contains(l))
    }

    /// The leader of `shard`, waiting (up to 15 s) while an election or a leadership transfer
    /// is under way.
    pub fn leader_of(&self, shard: u32) -> u64 {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader(shard) {
                return leader;
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!(
                    "timed out after 15s waiting for a leader of shard {shard}; each live node's view:\n{}",
                    self.views_of(shard)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What each live node says of shard `shard` (its `/status` entry, or why there is none),
    /// and the tail of its log: what a test shows when the nodes do not agree on a leader.
    pub fn views_of(&self, shard: u32) -> String {
        self.live_nodes()
            .iter()
            .map(|&id| {
                // An exited child not yet waited for is a zombie ('Z' in /proc's stat).
                let stat = self
                    .pid(id)
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok());
                let exited = stat.is_some_and(|s| {
                    s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
                });
                let view = match self.http(id, "/status") {
                    None if exited => "its process has exited".to_string(),
                    None => "no answer on /status".to_string(),
                    Some((code, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
                        Ok(status) if code == 200 => status["shards"][shard as usize].to_string(),
                        _ => format!("/status answered {code}: {body}"),
                    },
                };
                format!("--- node {id}: {view}\n{}", self.log_tail(id))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every shard has an agreed leader among the live nodes.
    pub fn wait_for_leaders(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if (0..self.registry.shards).all(|s| self.leader(s).is_some()) {
                return;
            }
            if started.elapsed() > timeout {
                let logs: Vec<String> = self
                    .live_nodes()
                    .iter()
                    .map(|&id| format!("--- node {id}\n{}", self.log_tail(id)))
                    .collect();
                panic!("not every shard elected a leader within {timeout:?}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `condition` holds, panicking with `what` after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            if started.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ids of nodes whose process runs.
    pub fn live_nodes(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).filter(|&id| self.nodes[id as usize - 1].is_some()).collect()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[id as usize - 1].as_ref().map(Child::id)
    }

    /// Sends `signal` to node `id`.
    pub fn signal(&self, id: u64, signal: i32) {
        let pid = self.pid(id).expect("node running") as libc::pid_t;
        // SAFETY: signalling a child process this harness started and has not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for a clean exit; returns its exit status.
    pub fn stop(&mut self, id: u64) -> std::process::ExitStatus {
        self.signal(id, libc::SIGTERM);
        let mut child = self.nodes[id as usize - 1].take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("node {id} did not stop within 20 s after SIGTERM\n{}", self.log_tail(id));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `id` again on its data directory.
    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes[id as usize - 1].is_none(), "node {id} is running");
        let child = self.spawn(id);
        self.nodes[id as usize - 1] = Some(child);
    }

    /// Starts node `id` again with extra `corekv serve` arguments.
    pub fn restart_with(&mut self, id: u64, extra: &[&str]) {
        assert!(self.nodes[id as usize - 1].is_none(), "node {id} is running");
        let child = self.spawn_with(id, extra);
        self.nodes[id as usize - 1] = Some(child);
    }

    /// Whether node `id`'s process has exited on its own.
    pub fn exited(&mut self, id: u64) -> bool {
        match &mut self.nodes[id as usize - 1] {
            Some(child) => child.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// A raw protocol connection to shard `shard` of node `id`, after a hello.
    pub fn raw(&self, id: u64, shard: u32) -> RawConn {
        let addr = self.node(id).expect("node").client_addr(ShardId(shard));
        let mut conn = RawConn::connect(&addr);
        let cluster = &self.registry.cluster;
        let hello = RequestEncoder::new().hello(1, cluster, self.registry.shards).to_vec();
        conn.send(&hello);
        let reply = conn.recv();
        assert!(verify_reply(&reply).unwrap().reply_as_hello_reply().is_some(), "hello accepted");
        conn
    }

    /// Kills every node, then stops them cleanly if they are still running.
    pub fn kill_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id);
        }
    }
}

impl Drop for TestCluster {
    /// Kills every node. When a test failed, the cluster's directory (registry, data, node
    /// logs) is kept for a look and its path printed.
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            if let Ok(empty) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self.dir, empty).keep();
                eprintln!(
                    "the failed test's cluster (data, node logs) is kept in {}",
                    kept.display()
                );
            }
        }
    }
}

/// A blocking connection speaking the client protocol, for tests that talk to one replica.
pub struct RawConn {
    pub stream: TcpStream,
    buffer: FrameBuffer,
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn { stream, buffer: FrameBuffer::new(65536) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next whole frame.
    pub fn recv(&mut self) -> Vec<u8> {
        loop {
            if let Some(frame) = self.buffer.next_frame().expect("valid framing") {
                return frame.to_vec();
            }
            let n = self.stream.read(self.buffer.spare()).expect("read");
            assert!(n > 0, "connection closed by the server");
            self.buffer.commit(n);
        }
    }

    /// The next whole frame, or `None` once the server closed the connection (or nothing
    /// came within the read timeout).
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(frame) = self.buffer.next_frame().expect("valid framing") {
                return Some(frame.to_vec());
            }
            match self.stream.read(self.buffer.spare()) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.commit(n),
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset) within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Runs `f` with a fresh current-thread tokio runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// Bytes of disk a directory takes (allocated blocks).
pub fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = entry.metadata().expect("metadata");
            // Blocks the file takes, not its length: watch history segments are sparse.
            total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.blocks() * 512 };
        }
    }
    total
}

/// A base port for `corekv dev` whose ports are all free (dev lays them out from the base).
pub fn dev_base(nodes: u32, shards: u32) -> u16 {
    for attempt in 0..200u32 {
        let base = 12_000 + ((std::process::id() * 7 + attempt * 331) % 15_000) as u16;
        let text = corekv_server::dev::registry_text(nodes, shards, base);
        let registry = Registry::parse(&text, "dev").expect("a valid dev registry");
        let mut ports = Vec::new();
        for n in &registry.nodes {
            for s in 0..shards as u16 {
                ports.extend([n.client_port + s, n.peer_port + s]);
                ports.extend(n.resp_port.map(|r| r + s));
            }
            ports.push(n.http_port);
        }
        if claim_free(&ports) {
            return base;
        }
    }
    panic!("no free ports for corekv dev");
}

/// Waits for `child` to exit by itself; kills it and panics after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `corekv serve` for node `id` with the registry file `registry` and data directory
/// `data_dir`, stdout discarded; stderr piped when `capture_stderr`, else discarded.
pub fn spawn_serve(
    registry: &Path,
    id: &str,
    data_dir: &Path,
    extra: &[&str],
    capture_stderr: bool,
) -> Child {
    Command::new(corekv_bin())
        .arg("serve")
        .arg("--registry")
        .arg(registry)
        .args(["--node-id", id])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(if capture_stderr { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("start corekv serve")
}

/// Runs `corekv serve` to its end (it must exit within 20 s): exit code and stderr.
pub fn serve_until_exit(
    registry: &Path,
    id: &str,
    data_dir: &Path,
    extra: &[&str],
) -> (i32, String) {
    let mut child = spawn_serve(registry, id, data_dir, extra, true);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.code().unwrap_or(-1), stderr)
}

/// The last lines of the log at `path`, and any panic message in it (for assertion messages).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let panics: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked at"))
        .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n"))
        .collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    if panics.is_empty() {
        tail
    } else {
        format!("{}\n...\n{tail}", panics.join("\n"))
    }
}
