//! `corekv-bench watch`: `--watchers` watchers on one prefix while writers write new values
//! under it at `--rate` writes per second (open loop); reports the delay from each write's
//! acknowledgement to each watcher's receipt of its change (p50/p99/max; a change received
//! before its writer's acknowledgement counts 0), the changes delivered per second, and the
//! servers' resident memory before and after the watchers start.
//!
//! Every value starts with the write's sequence number; the acknowledgement times are kept
//! in a table by sequence number, which the watchers look their changes up in. The watchers
//! are spread over `--connections` clients (a corekv client carries all of its watches on one
//! connection per node and shard; etcd's, each on a gRPC stream of one channel), and read by
//! `--watcher-tasks` tasks: by default one per client, reading, when it wakes, every stream of
//! its share that has messages until none has (one task wake-up for a client's watchers; a
//! task per watcher costs the load generator a wake-up per watcher and change, which on a
//! small machine it takes from the nodes). Such a task is exempt from tokio's budget of work
//! per wake-up: held to it, a task of 125 watchers yielded after a change or two and, at
//! 3,000 writes/s, fell further behind with every turn. The writers write through a client of
//! their own, on a thread of their own (so each acknowledgement is timed as it arrives; on the
//! watchers' runtime, with `--writers-beside`, it waits for the watchers' tasks to be timed).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use corekv_client::{Client, WatchMessage, WatchSpec};
use futures_util::future::{AbortHandle, Abortable};
use hdrhistogram::Histogram;

/// The prefix watched and written.
pub const PREFIX: &str = "bench-watch/";

/// Failed writes whose error is printed (to stderr) before the rest are only counted.
const WRITE_ERRORS_REPORTED: u64 = 5;

/// What the run is asked to do.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub watchers: usize,
    pub rate: f64,
    pub keys: usize,
    pub value_size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// Tasks reading the watchers' streams (each watcher's stream is read by one).
    pub watcher_tasks: usize,
    /// Whether the writers run on a thread of their own (see [`apart`]).
    pub writers_apart: bool,
}

/// What it measured.
pub struct WatchResult {
    /// Writes acknowledged in the measured window.
    pub writes: u64,
    /// Write errors.
    pub write_errors: u64,
    /// Changes delivered to watchers in the measured window.
    pub events: u64,
    /// Delay from acknowledgement to delivery, µs.
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
    /// Resident memory (bytes) of the servers: before the watchers, with them started, at
    /// the end.
    pub rss: [Option<u64>; 3],
    /// The longest delay of a change received in each tenth of a second of the measured
    /// window, µs: where in the run the tail came from (one stall or spread thin).
    pub worst_by_tenth: Vec<u64>,
}

/// The slice of the measured window [`WatchResult::worst_by_tenth`] keeps a maximum for.
const TENTH_US: u64 = 100_000;

/// Acknowledgement times by sequence number (µs since the run's start, +1; 0: not yet).
struct Acks {
    start: Instant,
    at: Vec<AtomicU64>,
}

impl Acks {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    /// The delay of a change of write `seq` received now.
    fn delay_us(&self, seq: u64) -> Option<u64> {
        let acked = self.at.get(seq as usize)?.load(Ordering::Relaxed);
        Some(if acked == 0 { 0 } else { self.now_us().saturating_sub(acked) })
    }
}

/// What watchers share: the measured window and the merged results.
struct Shared {
    acks: Acks,
    measure_from_us: u64,
    measure_to_us: u64,
    events: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    worst_by_tenth: Mutex<Vec<u64>>,
}

impl Shared {
    /// Records a change of write `seq` received now.
    fn received(&self, seq: u64, local: &mut Local) {
        let now = self.acks.now_us();
        if now < self.measure_from_us || now > self.measure_to_us {
            return;
        }
        if let Some(delay) = self.acks.delay_us(seq) {
            local.record(delay.max(1));
            let tenth = ((now - self.measure_from_us) / TENTH_US) as usize;
            if let Some(worst) = local.worst_by_tenth.get_mut(tenth) {
                *worst = (*worst).max(delay);
            }
        }
    }

    /// Stops every watcher two seconds after the measured window (once `stops` are all the
    /// watchers'), so changes still on their way when the window closed are counted.
    async fn stop_after_window(&self, stops: Vec<AbortHandle>) {
        let stop = Duration::from_micros(self.measure_to_us + 2_000_000);
        tokio::time::sleep_until((self.acks.start + stop).into()).await;
        for stop in stops {
            stop.abort();
        }
    }

    fn merge(&self, mut local: Local) {
        local.flush();
        self.events.fetch_add(local.events, Ordering::Relaxed);
        let _ = self.latency.lock().unwrap_or_else(|p| p.into_inner()).add(&local.histogram);
        let mut worst = self.worst_by_tenth.lock().unwrap_or_else(|p| p.into_inner());
        for (all, one) in worst.iter_mut().zip(&local.worst_by_tenth) {
            *all = (*all).max(*one);
        }
    }

    fn tenths(&self) -> usize {
        tenths(self.measure_from_us, self.measure_to_us)
    }
}

/// Tenths of a second (each [`TENTH_US`]) a window from `from_us` to `to_us` spans.
fn tenths(from_us: u64, to_us: u64) -> usize {
    ((to_us - from_us) / TENTH_US + 1) as usize
}

/// What a reading task checks at each wake-up beside its streams: ready once its
/// [`AbortHandle`] is aborted. Polling it is an atomic (a timer per watcher, polled at each
/// message, cost the load generator a twentieth of the machine's CPU at 1,000 watchers).
type Stop = Pin<Box<Abortable<futures_util::future::Pending<()>>>>;

/// A reading task's [`Stop`] and the handle that fires it.
fn stop() -> (AbortHandle, Stop) {
    let (handle, registration) = AbortHandle::new_pair();
    (handle, Box::pin(Abortable::new(futures_util::future::pending(), registration)))
}

/// One reading task's delays: appended to a list, put into its histogram a list at a time (a
/// thousand tasks' histograms do not stay in cache; recording into them one change at a
/// time cost the load generator a fifth of its CPU).
struct Local {
    delays: Vec<u64>,
    histogram: Histogram<u64>,
    events: u64,
    worst_by_tenth: Vec<u64>,
}

/// Delays a watcher lists before putting them into its histogram.
const DELAYS_LISTED: usize = 16 * 1024;

impl Local {
    fn new(shared: &Shared) -> Local {
        Local {
            delays: Vec::with_capacity(DELAYS_LISTED),
            histogram: histogram(),
            events: 0,
            worst_by_tenth: vec![0; shared.tenths()],
        }
    }

    fn record(&mut self, delay_us: u64) {
        self.delays.push(delay_us);
        self.events += 1;
        if self.delays.len() == DELAYS_LISTED {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for delay in self.delays.drain(..) {
            let _ = self.histogram.record(delay);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

fn value(seq: u64, size: usize) -> Vec<u8> {
    let mut value = seq.to_le_bytes().to_vec();
    value.resize(size.max(8), b'v');
    value
}

fn seq_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

/// Spawns `tasks` tasks (at most one per watch) that read the watches' streams, the watches
/// dealt out among them in turn (with as many tasks as clients, each task reads one
/// client's); `received` records each message. Returns the tasks and the handles that stop
/// them.
fn consume<S, F>(
    streams: Vec<S>,
    tasks: usize,
    shared: &Arc<Shared>,
    received: F,
) -> (Vec<tokio::task::JoinHandle<()>>, Vec<AbortHandle>)
where
    S: futures_util::Stream + Unpin + Send + 'static,
    S::Item: Send,
    F: Fn(S::Item, &Shared, &mut Local) + Clone + Send + Sync + 'static,
{
    let tasks = tasks.clamp(1, streams.len().max(1));
    let mut shares: Vec<Vec<S>> = (0..tasks).map(|_| Vec::new()).collect();
    for (i, stream) in streams.into_iter().enumerate() {
        shares[i % tasks].push(stream);
    }
    let mut stops = Vec::new();
    let handles = shares
        .into_iter()
        .map(|share| {
            let (shared, received) = (shared.clone(), received.clone());
            let (handle, mut stop) = stop();
            stops.push(handle);
            tokio::spawn(async move {
                let mut local = Local::new(&shared);
                let mut share = crate::share::Share::new(share);
                tokio::task::unconstrained(std::future::poll_fn(|cx| {
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    share.poll(cx, |message| received(message, &shared, &mut local))
                }))
                .await;
                shared.merge(local);
            })
        })
        .collect();
    (handles, stops)
}

/// Runs the writers' `work`: with `apart`, on a runtime of its own on a thread of its own,
/// so the tasks of the writers' client (which read the acknowledgements) never wait behind
/// the watchers' tasks and an acknowledgement is timed when it arrives rather than when the
/// watchers let its task run (which makes delays look shorter, at the price of a third
/// thread of the load generator competing for the CPUs); else here, beside the watchers.
async fn apart<F, Fut, T>(apart: bool, work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    if !apart {
        return work().await;
    }
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("writers".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the writers' runtime")
                .and_then(|runtime| runtime.block_on(work()));
            let _ = done.send(outcome);
        })
        .context("starting the writers' thread")?;
    result.await.context("the writers' thread ended without a result")?
}

/// Writes at `rate` per second until the window ends; returns (acknowledged in the window,
/// errors). `write(key, value)` is the system's put.
async fn write_load<F, Fut>(shared: &Arc<Shared>, config: &WatchConfig, write: F) -> (u64, u64)
where
    F: Fn(Vec<u8>, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let total = shared.acks.at.len() as u64;
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let started = Instant::now();
    let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for seq in 0..total {
        tokio::time::sleep_until((started + period.mul_f64(seq as f64)).into()).await;
        let key = format!("{PREFIX}{:08}", seq % config.keys as u64).into_bytes();
        let (write, shared, acked, errors) =
            (write.clone(), shared.clone(), acked.clone(), errors.clone());
        let value = value(seq, config.value_size);
        tasks.push(tokio::spawn(async move {
            if write(key, value).await {
                let now = shared.acks.now_us();
                shared.acks.at[seq as usize].store(now, Ordering::Relaxed);
                if now >= shared.measure_from_us && now <= shared.measure_to_us {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    (acked.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

fn shared(config: &WatchConfig) -> Arc<Shared> {
    let writes = (config.rate * (config.warmup + config.duration).as_secs_f64()).ceil() as usize;
    let acks = Acks { start: Instant::now(), at: (0..writes).map(|_| AtomicU64::new(0)).collect() };
    let measure_from_us = acks.now_us() + config.warmup.as_micros() as u64;
    let measure_to_us = measure_from_us + config.duration.as_micros() as u64;
    let tenths = tenths(measure_from_us, measure_to_us);
    Arc::new(Shared {
        acks,
        measure_from_us,
        measure_to_us,
        events: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
        worst_by_tenth: Mutex::new(vec![0; tenths]),
    })
}

/// Runs the watch benchmark against corekv through `clients`.
pub async fn run_corekv(
    clients: &[Client],
    writer: Client,
    config: &WatchConfig,
) -> anyhow::Result<WatchResult> {
    let rss_before = crate::report::process_rss_bytes("corekv");
    let mut watches = Vec::new();
    for i in 0..config.watchers {
        let client = &clients[i % clients.len()];
        let watch = client.watch(WatchSpec::prefix(PREFIX)).context("starting a watch")?;
        watches.push(watch);
    }
    // Let every watch reach its node before the clock starts.
    tokio::time::sleep(Duration::from_millis(500 + config.watchers as u64 / 20)).await;
    let rss_started = crate::report::process_rss_bytes("corekv");
    let shared = shared(config);
    let (watchers, stops) =
        consume(watches, config.watcher_tasks, &shared, |message, shared, local| {
            if let Ok(WatchMessage::Event(event)) = message {
                for change in event.changes.iter() {
                    if let Some(seq) = change.value.as_ref().and_then(|v| seq_of(&v.value)) {
                        shared.received(seq, local);
                    }
                }
            }
        });
    let timeout = config.timeout;
    let reported = Arc::new(AtomicU64::new(0));
    let (load_shared, load_config) = (shared.clone(), config.clone());
    let (writes, write_errors) = apart(config.writers_apart, move || async move {
        let write = move |key: Vec<u8>, value| {
            let (writer, reported) = (writer.clone(), reported.clone());
            async move {
                let options = corekv_client::WriteOptions::with_timeout(timeout);
                match writer.put_with(key.clone(), value, options).await {
                    Ok(_) => true,
                    Err(error) => {
                        // The first few say why; the count is in the result.
                        if reported.fetch_add(1, Ordering::Relaxed) < WRITE_ERRORS_REPORTED {
                            eprintln!(
                                "a write of {} failed: {error}",
                                String::from_utf8_lossy(&key)
                            );
                        }
                        false
                    }
                }
            }
        };
        Ok(write_load(&load_shared, &load_config, write).await)
    })
    .await?;
    let rss_end = crate::report::process_rss_bytes("corekv");
    shared.stop_after_window(stops).await;
    futures_util::future::join_all(watchers).await;
    Ok(finish(&shared, config, writes, write_errors, [rss_before, rss_started, rss_end]))
}

fn finish(
    shared: &Shared,
    config: &WatchConfig,
    writes: u64,
    write_errors: u64,
    rss: [Option<u64>; 3],
) -> WatchResult {
    WatchResult {
        writes,
        write_errors,
        events: shared.events.load(Ordering::Relaxed),
        latency_us: shared.latency.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        elapsed: config.duration,
        rss,
        worst_by_tenth: shared.worst_by_tenth.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Runs the watch benchmark against etcd at `endpoints`.
#[cfg(feature = "etcd")]
pub async fn run_etcd(
    endpoints: &str,
    connections: usize,
    config: &WatchConfig,
) -> anyhow::Result<WatchResult> {
    use etcd_client::{EventType, WatchOptions};
    let urls: Vec<&str> = endpoints.split(',').collect();
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients
            .push(etcd_client::Client::connect(&urls, None).await.context("connecting to etcd")?);
    }
    let rss_before = crate::report::process_rss_bytes("etcd");
    let mut streams = Vec::new();
    for i in 0..config.watchers {
        let mut watch = clients[i % clients.len()].watch_client();
        let options = WatchOptions::new().with_prefix();
        let stream = watch.watch(PREFIX, Some(options)).await.context("etcd watch")?;
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500 + config.watchers as u64 / 20)).await;
    let rss_started = crate::report::process_rss_bytes("etcd");
    let shared = shared(config);
    let (watchers, stops) =
        consume(streams, config.watcher_tasks, &shared, |message, shared, local| {
            let Ok(response) = message else { return };
            for event in response.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                if let Some(seq) = event.kv().and_then(|kv| seq_of(kv.value())) {
                    shared.received(seq, local);
                }
            }
        });
    let timeout = config.timeout;
    let urls: Vec<String> = urls.iter().map(|url| url.to_string()).collect();
    let (load_shared, load_config) = (shared.clone(), config.clone());
    let (writes, write_errors) = apart(config.writers_apart, move || async move {
        let client =
            etcd_client::Client::connect(&urls, None).await.context("connecting to etcd")?;
        let kv = client.kv_client();
        let write = move |key: Vec<u8>, value: Vec<u8>| {
            let mut kv = kv.clone();
            async move {
                matches!(tokio::time::timeout(timeout, kv.put(key, value, None)).await, Ok(Ok(_)))
            }
        };
        Ok(write_load(&load_shared, &load_config, write).await)
    })
    .await?;
    let rss_end = crate::report::process_rss_bytes("etcd");
    shared.stop_after_window(stops).await;
    futures_util::future::join_all(watchers).await;
    Ok(finish(&shared, config, writes, write_errors, [rss_before, rss_started, rss_end]))
}

/// The run's summary line.
pub fn summary(label: &str, result: &WatchResult) -> String {
    let h = &result.latency_us;
    let secs = result.elapsed.as_secs_f64();
    let mib =
        |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.0} MiB", b as f64 / 1048576.0));
    format!(
        "{label}: {:.0} writes/s acknowledged ({} errors), {:.0} changes/s delivered; \
         acknowledgement to delivery p50 {} us, p99 {} us, max {} us; server memory {} before \
         the watchers, {} with them, {} at the end\n",
        result.writes as f64 / secs,
        result.write_errors,
        result.events as f64 / secs,
        h.value_at_percentile(50.0),
        h.value_at_percentile(99.0),
        h.max(),
        mib(result.rss[0]),
        mib(result.rss[1]),
        mib(result.rss[2]),
    ) + &slowest_tenths(&result.worst_by_tenth)
}

/// Tenths of a second of the measured window that the longest delays fell in.
const SLOWEST_TENTHS_SHOWN: usize = 5;

/// A line naming the tenths of a second of the window with the longest delays (seconds
/// into the window, the longest delay in it), slowest first, and how many tenths had a delay
/// over 2 ms: one stall, or a tail spread over the whole run.
fn slowest_tenths(worst_by_tenth: &[u64]) -> String {
    let mut tenths: Vec<(usize, u64)> = worst_by_tenth.iter().copied().enumerate().collect();
    tenths.sort_by_key(|&(_, worst)| std::cmp::Reverse(worst));
    let over = worst_by_tenth.iter().filter(|&&worst| worst > 2_000).count();
    let shown: Vec<String> = tenths
        .iter()
        .take(SLOWEST_TENTHS_SHOWN)
        .filter(|&&(_, worst)| worst > 0)
        .map(|&(tenth, worst)| format!("{:.1}s {} us", tenth as f64 / 10.0, worst))
        .collect();
    format!(
        "slowest tenths of a second (time into the window, longest delay): {}; {over} of {} \
         tenths had a delay over 2 ms\n",
        shown.join(", "),
        worst_by_tenth.len()
    )
}
