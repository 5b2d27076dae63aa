//! The workload of the real-process fault and membership tests: writers that own their keys,
//! readers of every key, and one probe writer per shard, all recording every operation into a
//! history that `check_history` checks for linearizability (with a final read of every key).
//! Included by the test files that use it (`#[path]`), next to `common` and `linearizability`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_client::{Client, ClientConfig, Compare, Error, Txn, TxnOp, WriteOptions};

use crate::common::{block_on, TestCluster};
use crate::linearizability::{History, KvOp, KvRet};

/// Keys each writer owns. One writer per key: the client retries a put whose connection broke,
/// and two applications of one put are indistinguishable from one only if no other write to
/// the key comes between them.
pub const KEYS_PER_WRITER: usize = 4;

/// Clients writing and reading under faults, recording every operation.
pub struct Workload {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    start: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
    /// (shard, invoked, completed) of successful probe writes, in ns since `start`.
    probes: Arc<Mutex<Vec<(u32, u64, u64)>>>,
    writers: usize,
    /// Writes the writers completed (acknowledged), for throughput.
    writes_done: Arc<AtomicU64>,
}

pub fn nanos(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

pub fn writer_key(writer: usize, j: usize) -> String {
    format!("w{writer}-k{j}")
}

/// A key of `shard`, for the probes.
fn probe_key(client: &Client, shard: u32) -> String {
    (0..)
        .map(|i| format!("probe-{i}"))
        .find(|k| client.shard_of(k.as_bytes()).get() == shard)
        .unwrap()
}

impl Workload {
    /// Starts `writers` writers and `readers` readers (each pausing `pace` between operations)
    /// and one probe per shard that writes as often as it can.
    pub fn start(
        cluster: &TestCluster,
        writers: usize,
        readers: usize,
        pace: Duration,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::new()));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut config = ClientConfig::new(cluster.registry.clone());
        config.timeout = Duration::from_secs(3);
        config.backoff_max = Duration::from_millis(50);
        let shards = cluster.registry.shards;
        let (s, h, p) = (stop.clone(), history.clone(), probes.clone());
        let writes_done = Arc::new(AtomicU64::new(0));
        let done = writes_done.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = Client::connect(config);
                let threads = Arc::new(AtomicU64::new((writers + readers) as u64));
                let mut tasks = Vec::new();
                for w in 0..writers {
                    let (client, stop, history, threads) =
                        (client.clone(), s.clone(), h.clone(), threads.clone());
                    let done = done.clone();
                    tasks.push(tokio::spawn(async move {
                        let record = Record { history, threads, done, start };
                        writer(w, client, stop, record, pace).await
                    }));
                }
                for r in 0..readers {
                    let (client, stop, history) = (client.clone(), s.clone(), h.clone());
                    tasks.push(tokio::spawn(async move {
                        reader(r, writers, client, stop, history, start, pace).await
                    }));
                }
                for shard in 0..shards {
                    let (client, stop, probes) = (client.clone(), s.clone(), p.clone());
                    tasks.push(tokio::spawn(async move {
                        let key = probe_key(&client, shard);
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let invoked = nanos(start);
                            let options = WriteOptions::with_timeout(Duration::from_millis(500));
                            if client.put_with(&key, n.to_string(), options).await.is_ok() {
                                probes.lock().unwrap().push((shard, invoked, nanos(start)));
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }));
                }
                for task in tasks {
                    task.await.expect("workload task");
                }
            });
        });
        Workload { stop, history, start, thread: Some(thread), probes, writers, writes_done }
    }

    /// Writes the writers have had acknowledged so far.
    pub fn writes_completed(&self) -> u64 {
        self.writes_done.load(Ordering::Relaxed)
    }

    /// The longest time between `from` and `to` (ns since the start) in which no probe write
    /// to `shard` completed: how long writes to it were unavailable.
    pub fn longest_write_gap(&self, shard: u32, from: u64, to: u64) -> Duration {
        let mut done: Vec<u64> = self
            .probes
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, completed)| *s == shard && (from..=to).contains(completed))
            .map(|(_, _, completed)| *completed)
            .collect();
        done.sort_unstable();
        let mut previous = from;
        let mut longest = 0;
        for at in done.into_iter().chain([to]) {
            longest = longest.max(at - previous);
            previous = at;
        }
        Duration::from_nanos(longest)
    }

    pub fn now(&self) -> u64 {
        nanos(self.start)
    }

    /// Waits for the first write to `shard` invoked at or after `since` (ns) to succeed;
    /// returns how long after `since` it completed.
    pub fn wait_for_write(&self, shard: u32, since: u64, timeout: Duration) -> Duration {
        let began = Instant::now();
        loop {
            let done = self
                .probes
                .lock()
                .unwrap()
                .iter()
                .filter(|(s, invoked, _)| *s == shard && *invoked >= since)
                .map(|(_, _, completed)| *completed)
                .min();
            if let Some(completed) = done {
                return Duration::from_nanos(completed - since);
            }
            assert!(
                began.elapsed() < timeout,
                "no write to shard {shard} succeeded within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients, reads every key once more (recorded), and returns the history.
    pub fn finish(self, cluster: &TestCluster) -> History {
        self.finish_reading_with(cluster.client())
    }

    /// [`Workload::finish`], the final reads through `client`.
    pub fn finish_reading_with(mut self, client: Client) -> History {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("workload thread");
        }
        let history = self.history.clone();
        let start = self.start;
        let writers = self.writers;
        block_on(async {
            for w in 0..writers {
                for j in 0..KEYS_PER_WRITER {
                    let key = writer_key(w, j);
                    let id = history.lock().unwrap().invoke(
                        u64::MAX - 1,
                        key.as_bytes(),
                        KvOp::Get,
                        nanos(start),
                    );
                    let value = client.get(&key).await.expect("final read");
                    let ret = KvRet::Get(value.map(|kv| kv.value));
                    history.lock().unwrap().complete(id, ret, nanos(start));
                }
            }
        });
        let history = history.lock().unwrap().clone();
        history
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Small deterministic PRNG for the clients' choices.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Where a writer records what it did.
struct Record {
    history: Arc<Mutex<History>>,
    /// The next free checker thread id (a writer takes a new one after an open write).
    threads: Arc<AtomicU64>,
    /// Counts acknowledged writes.
    done: Arc<AtomicU64>,
    start: Instant,
}

async fn writer(w: usize, client: Client, stop: Arc<AtomicBool>, record: Record, pace: Duration) {
    let Record { history, threads, done, start } = record;
    let mut thread = w as u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
    let mut last: Vec<Option<Vec<u8>>> = vec![None; KEYS_PER_WRITER];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let j = (xorshift(&mut rng) % KEYS_PER_WRITER as u64) as usize;
        let key = writer_key(w, j);
        let value = format!("w{w}.{n}").into_bytes();
        let cas = xorshift(&mut rng) % 5 == 0;
        let (op, outcome) = match (&last[j], cas) {
            (Some(expect), true) => {
                let op = KvOp::Cas { expect: expect.clone(), new: value.clone() };
                let id = history.lock().unwrap().invoke(thread, key.as_bytes(), op, nanos(start));
                let txn = Txn {
                    compares: vec![Compare::value(&key).eq(expect.clone())],
                    success: vec![TxnOp::Put(key.clone().into_bytes(), value.clone())],
                    failure: vec![],
                };
                (id, client.txn(&txn).await.map(|r| KvRet::Cas(r.succeeded)))
            }
            _ => {
                let op = KvOp::Put(value.clone());
                let id = history.lock().unwrap().invoke(thread, key.as_bytes(), op, nanos(start));
                (id, client.put(&key, &value).await.map(|_| KvRet::Put))
            }
        };
        {
            let mut h = history.lock().unwrap();
            match outcome {
                Ok(ret) => {
                    if ret != KvRet::Cas(false) {
                        last[j] = Some(value);
                    }
                    h.complete(op, ret, nanos(start));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::Indeterminate(_)) => {
                    // Open: it may have applied. The value is unknown from here on.
                    last[j] = None;
                    thread = threads.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::Unavailable { .. }) => h.forget(op),
                Err(other) => panic!("writer {w}: unexpected error {other}"),
            }
        }
        tokio::time::sleep(pace).await;
    }
}

async fn reader(
    r: usize,
    writers: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    start: Instant,
    pace: Duration,
) {
    let thread = (writers + r) as u64;
    let mut rng = 0xD1B5_4A32_D192_ED03u64 ^ (r as u64 + 1);
    while !stop.load(Ordering::Relaxed) {
        let w = (xorshift(&mut rng) % writers as u64) as usize;
        let key = writer_key(w, (xorshift(&mut rng) % KEYS_PER_WRITER as u64) as usize);
        let id = history.lock().unwrap().invoke(thread, key.as_bytes(), KvOp::Get, nanos(start));
        let result = client.get(&key).await;
        {
            let mut h = history.lock().unwrap();
            match result {
                Ok(value) => h.complete(id, KvRet::Get(value.map(|kv| kv.value)), nanos(start)),
                Err(_) => h.forget(id),
            }
        }
        tokio::time::sleep(pace).await;
    }
}

/// Checks `history` and prints what was checked.
pub fn check_history(history: &History, what: &str) {
    let began = Instant::now();
    let stats = history.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    println!(
        "{what}: history linearizable: {} operations on {} keys ({} with unknown outcome), \
         checked in {:?}",
        stats.operations,
        stats.keys,
        stats.open,
        began.elapsed()
    );
    assert!(stats.operations > 100, "{what}: too few operations recorded to mean anything");
}

/// Waits until `node` has applied what each shard's leader had committed when called.
pub fn wait_caught_up(cluster: &TestCluster, node: u64) {
    for shard in 0..cluster.registry.shards {
        let leader = cluster.leader_of(shard);
        let target = cluster.shard_number(leader, shard, "commit_index").expect("leader status");
        cluster.wait_until(Duration::from_secs(30), &format!("node {node} to catch up"), || {
            cluster.shard_number(node, shard, "applied_index").is_some_and(|a| a >= target)
        });
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
