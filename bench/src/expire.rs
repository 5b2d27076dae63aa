//! `corekv-bench expire`: keys with a time to live, and how soon they go.
//!
//! Two parts, run one after the other:
//! 1. **Lag**: new keys put at `--rate` per second (open loop) with a time to live of
//!    `--ttl-ms`, for the warm-up and `--duration`; one watcher on their prefix notes when
//!    each key's expiry reaches it. The lag of a key is from its put's *sending* plus its time
//!    to live to the expiry's arrival: at least the time from its deadline (the leader fixes
//!    it between the send and the acknowledgement) to its deletion, plus the watch's delivery.
//!    Keys whose expiry never arrives (within `--ttl-ms` plus 10 s of the last put) are
//!    counted as missing. With `--with-leases`, each key is put with a lease of its own
//!    instead (granted with the key in one request; its lag from the grant's sending).
//! 2. **Writes while many keys expire** (`--expiring N`, 0 to skip): N keys are put with one
//!    time to live (`--ttl-ms`) in batches of 1,000, then `--concurrency` writers put other
//!    keys in a closed loop until every one of the N expired (the watcher counts them) and
//!    2 s more; reports writes and expiries per second, second by second, and the writes/s
//!    before the first expiry against those while they go.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corekv_client::{Client, WatchMessage, WatchSpec, WriteOptions};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

/// Prefix of the keys that expire in part 1.
const LAG_PREFIX: &str = "bench-exp/lag/";
/// Prefix of the keys that expire in part 2.
const MANY_PREFIX: &str = "bench-exp/many/";
/// Prefix of the keys part 2's writers write (they never expire).
const LOAD_PREFIX: &str = "bench-exp/load/";

/// What the run is asked to do.
#[derive(Debug, Clone)]
pub struct ExpireConfig {
    pub rate: f64,
    pub ttl: Duration,
    pub value_size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub expiring: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Each key goes with a lease of its own (granted with it) rather than a time to live.
    pub with_leases: bool,
}

/// Part 1's result.
pub struct LagResult {
    pub puts: u64,
    pub put_errors: u64,
    /// Expiries seen of keys put in the measured window.
    pub expired: u64,
    /// Keys put in the measured window whose expiry never came.
    pub missing: u64,
    /// Lag, µs.
    pub lag_us: Histogram<u64>,
    pub elapsed: Duration,
}

/// Part 2's result: per second from the end of the prefill, writes and expiries.
pub struct ManyResult {
    pub prefill: Duration,
    pub per_second: Vec<(u64, u64)>,
    /// Seconds from the end of the prefill to the last expiry.
    pub all_gone_after: Option<f64>,
    pub write_errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds")
}

fn seq_of(key: &[u8], prefix: &str) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?.parse().ok()
}

/// Follows the expiries of keys under `prefix`, calling `seen(seq, now)` for each.
fn follow_expiries(
    client: &Client,
    prefix: &'static str,
    seen: impl Fn(u64, Instant) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut watch = client.watch(WatchSpec::prefix(prefix)).context("starting the watch")?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(message)) = watch.next().await {
            let WatchMessage::Event(event) = message else { continue };
            let now = Instant::now();
            for change in event.changes.iter().filter(|c| c.expired) {
                if let Some(seq) = seq_of(&change.key, prefix) {
                    seen(seq, now);
                }
            }
        }
    }))
}

/// Part 1 (see the module docs).
pub async fn run_lag(client: &Client, config: &ExpireConfig) -> anyhow::Result<LagResult> {
    let lags = Lags::new(config, config.ttl);
    let watcher = {
        let lags = lags.clone();
        follow_expiries(client, LAG_PREFIX, move |seq, now| lags.seen(seq, now))?
    };
    tokio::time::sleep_until(lags.start.into()).await;
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(lags.from.len());
    let begin = tokio::time::Instant::now();
    for seq in 0..lags.from.len() {
        tokio::time::sleep_until(begin + period.mul_f64(seq as f64)).await;
        let (client, lags, errors) = (client.clone(), lags.clone(), errors.clone());
        let options = WriteOptions {
            ttl: Some(config.ttl),
            timeout: Some(config.timeout),
            ..Default::default()
        };
        let value = vec![b'v'; config.value_size];
        let (with_leases, ttl, timeout) = (config.with_leases, config.ttl, config.timeout);
        tasks.push(tokio::spawn(async move {
            let key = format!("{LAG_PREFIX}{seq}");
            lags.due_from_now(seq);
            let written = if with_leases {
                client.lease_grant_with(ttl, &[(key, value)], Some(timeout)).await.map(|_| ())
            } else {
                client.put_with(key, value, options).await.map(|_| ())
            };
            if written.is_err() {
                lags.forget(seq);
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    Ok(finish_lag(lags, errors, watcher, config).await)
}

/// The keys of a lag run: when each one's deadline counts from, and the lags of their
/// expiries as they come.
#[derive(Clone)]
struct Lags {
    /// The first put: times count from it.
    start: Instant,
    /// Keys whose deadline counts from before this (µs since `start`) are the warm-up's.
    measured_from_us: u64,
    ttl: Duration,
    /// Per key: µs since `start` (+1) its deadline counts from; 0: not put (or failed).
    from: Arc<Vec<AtomicU64>>,
    lag: Arc<Mutex<Histogram<u64>>>,
    expired: Arc<AtomicU64>,
}

impl Lags {
    /// For a run of `config`'s length and rate, keys expiring `ttl` after their time; the
    /// first put 300 ms from now (the watch starts before it).
    fn new(config: &ExpireConfig, ttl: Duration) -> Lags {
        let total = (config.rate * (config.warmup + config.duration).as_secs_f64()).ceil();
        Lags {
            start: Instant::now() + Duration::from_millis(300),
            measured_from_us: config.warmup.as_micros() as u64,
            ttl,
            from: Arc::new((0..total as usize).map(|_| AtomicU64::new(0)).collect()),
            lag: Arc::new(Mutex::new(histogram())),
            expired: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Now, as a key's time: µs since the start, +1.
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    /// Key `seq`'s deadline counts from `at_us` (a [`Lags::now_us`]).
    fn due_from(&self, seq: usize, at_us: u64) {
        self.from[seq].store(at_us, Ordering::Relaxed);
    }

    /// Key `seq`'s deadline counts from now.
    fn due_from_now(&self, seq: usize) {
        self.due_from(seq, self.now_us());
    }

    /// Key `seq` was not put.
    fn forget(&self, seq: usize) {
        self.from[seq].store(0, Ordering::Relaxed);
    }

    fn measured(&self, at_us: u64) -> bool {
        at_us > self.measured_from_us
    }

    /// Key `seq`'s expiry arrived at `now`.
    fn seen(&self, seq: u64, now: Instant) {
        let at = self.from.get(seq as usize).map_or(0, |a| a.load(Ordering::Relaxed));
        if at == 0 || !self.measured(at) {
            return;
        }
        let due = self.start + Duration::from_micros(at) + self.ttl;
        let lag = now.saturating_duration_since(due).as_micros().max(1) as u64;
        let _ = self.lag.lock().unwrap_or_else(|p| p.into_inner()).record(lag);
        self.expired.fetch_add(1, Ordering::Relaxed);
    }

    /// Keys put in the measured window.
    fn wanted(&self) -> u64 {
        self.from.iter().filter(|a| self.measured(a.load(Ordering::Relaxed))).count() as u64
    }
}

/// Waits (the time to live and 10 s at most) for the expiries of every key put in the
/// measured window, stops the watcher, and says what came of it.
async fn finish_lag(
    lags: Lags,
    errors: Arc<AtomicU64>,
    watcher: tokio::task::JoinHandle<()>,
    config: &ExpireConfig,
) -> LagResult {
    let (wanted, expired) = (lags.wanted(), &lags.expired);
    let give_up = Instant::now() + lags.ttl + Duration::from_secs(10);
    while expired.load(Ordering::Relaxed) < wanted && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let expired = expired.load(Ordering::Relaxed);
    let lag_us = lags.lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
    LagResult {
        puts: wanted,
        put_errors: errors.load(Ordering::Relaxed),
        expired,
        missing: wanted.saturating_sub(expired),
        lag_us,
        elapsed: config.duration,
    }
}

/// Part 2 (see the module docs).
pub async fn run_many(client: &Client, config: &ExpireConfig) -> anyhow::Result<ManyResult> {
    let n = config.expiring;
    let expiries: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let last_expiry = Arc::new(Mutex::new(None::<Instant>));
    let gone = Arc::new(AtomicU64::new(0));
    let epoch = Arc::new(Mutex::new(None::<Instant>));
    let watcher = {
        let (expiries, last, gone, epoch) =
            (expiries.clone(), last_expiry.clone(), gone.clone(), epoch.clone());
        follow_expiries(client, MANY_PREFIX, move |_, now| {
            gone.fetch_add(1, Ordering::Relaxed);
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            if let Some(epoch) = *epoch.lock().unwrap_or_else(|p| p.into_inner()) {
                let second = now.saturating_duration_since(epoch).as_secs();
                *expiries.lock().unwrap_or_else(|p| p.into_inner()).entry(second).or_default() += 1;
            }
        })?
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The prefill: batches of 1,000 keys, 8 at a time.
    let prefill_start = Instant::now();
    let value = vec![b'v'; config.value_size];
    let batches: Vec<Vec<(String, Vec<u8>)>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| c.iter().map(|i| (format!("{MANY_PREFIX}{i}"), value.clone())).collect())
        .collect();
    let options = WriteOptions {
        ttl: Some(config.ttl),
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut batches = batches.into_iter();
    loop {
        let wave: Vec<_> = batches.by_ref().take(8).collect();
        if wave.is_empty() {
            break;
        }
        let puts = wave.iter().map(|items| client.batch_put(items, options));
        for result in futures_util::future::join_all(puts).await {
            result.context("prefilling the keys that expire")?;
        }
    }
    let prefill = prefill_start.elapsed();
    if prefill >= config.ttl {
        bail!(
            "the prefill took {prefill:?}, longer than the time to live: give --ttl-ms more \
             (the writes must run before the keys expire)"
        );
    }
    let t0 = Instant::now();
    *epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(t0);
    let writes: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let (client, writes, stop, errors) =
                (client.clone(), writes.clone(), stop.clone(), errors.clone());
            let value = value.clone();
            let timeout = config.timeout;
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut local: BTreeMap<u64, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{LOAD_PREFIX}{w}/{}", i % 1000);
                    i += 1;
                    let options = WriteOptions::with_timeout(timeout);
                    match client.put_with(key, &value, options).await {
                        Ok(_) => *local.entry(t0.elapsed().as_secs()).or_default() += 1,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let mut all = writes.lock().unwrap_or_else(|p| p.into_inner());
                for (second, count) in local {
                    *all.entry(second).or_default() += count;
                }
            })
        })
        .collect();
    let give_up = t0 + config.ttl + Duration::from_secs(120);
    while gone.load(Ordering::Relaxed) < n as u64 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    futures_util::future::join_all(writers).await;
    watcher.abort();
    let writes = writes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let expiries = expiries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let seconds = writes.keys().chain(expiries.keys()).copied().max().unwrap_or(0);
    let per_second = (0..=seconds)
        .map(|s| (writes.get(&s).copied().unwrap_or(0), expiries.get(&s).copied().unwrap_or(0)))
        .collect();
    let all_gone_after = (gone.load(Ordering::Relaxed) >= n as u64)
        .then(|| *last_expiry.lock().unwrap_or_else(|p| p.into_inner()))
        .flatten()
        .map(|last| last.saturating_duration_since(t0).as_secs_f64());
    Ok(ManyResult {
        prefill,
        per_second,
        all_gone_after,
        write_errors: errors.load(Ordering::Relaxed),
    })
}

/// Part 1's result in one line.
pub fn lag_summary(label: &str, r: &LagResult) -> String {
    let h = &r.lag_us;
    format!(
        "{label}: {:.0} keys/s put with a time to live ({} errors), {} expired, {} missing; \
         lag from send + ttl to the expiry's arrival p50 {} us, p99 {} us, max {} us\n",
        r.puts as f64 / r.elapsed.as_secs_f64(),
        r.put_errors,
        r.expired,
        r.missing,
        h.value_at_percentile(50.0),
        h.value_at_percentile(99.0),
        h.max(),
    )
}

/// Part 2's result: the timeline, and writes/s before the first expiry against while they go.
pub fn many_summary(label: &str, ttl: Duration, r: &ManyResult) -> String {
    let mut text = format!(
        "{label}: prefill took {:.1} s; keys all expired {} after the writers started\n\
         second  writes  expiries\n",
        r.prefill.as_secs_f64(),
        r.all_gone_after.map_or("never".to_string(), |s| format!("{s:.1} s")),
    );
    for (second, (writes, expiries)) in r.per_second.iter().enumerate() {
        text.push_str(&format!("{second:>6}  {writes:>6}  {expiries:>8}\n"));
    }
    let expiring: Vec<&(u64, u64)> = r.per_second.iter().filter(|(_, e)| *e > 0).collect();
    let first = r.per_second.iter().position(|(_, e)| *e > 0).unwrap_or(r.per_second.len());
    let calm: Vec<u64> =
        r.per_second.iter().take(first.saturating_sub(1)).map(|(w, _)| *w).collect();
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let during: Vec<u64> = expiring.iter().map(|(w, _)| *w).collect();
    text.push_str(&format!(
        "writes/s before the expiries {:.0}, while they go {:.0} (time to live {} ms, {} write \
         errors)\n",
        mean(&calm),
        mean(&during),
        ttl.as_millis(),
        r.write_errors,
    ));
    text
}

/// Part 1 against etcd, which has no time to live per key: keys go with leases. A lease of
/// `--ttl-ms` (whole seconds, as etcd takes them) is granted every 100 ms and the keys put
/// in that window attach to it; a key's lag is from its lease's grant request plus the time
/// to live — etcd's deadline for it — to its delete's arrival at a watcher.
#[cfg(feature = "etcd")]
pub async fn run_lag_etcd(endpoints: &str, config: &ExpireConfig) -> anyhow::Result<LagResult> {
    use etcd_client::{EventType, PutOptions, WatchOptions};
    let urls: Vec<&str> = endpoints.split(',').collect();
    let client = etcd_client::Client::connect(&urls, None).await.context("connecting to etcd")?;
    let ttl_s = config.ttl.as_millis().div_ceil(1000).max(1) as i64;
    let ttl = Duration::from_secs(ttl_s as u64);
    // A key's deadline counts from its lease's grant request.
    let lags = Lags::new(config, ttl);
    let mut watch_client = client.watch_client();
    let mut stream = watch_client
        .watch(LAG_PREFIX, Some(WatchOptions::new().with_prefix()))
        .await
        .context("etcd watch")?;
    let watcher = {
        let lags = lags.clone();
        tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let now = Instant::now();
                for event in response.events() {
                    if event.event_type() != EventType::Delete {
                        continue;
                    }
                    if let Some(seq) = event.kv().and_then(|kv| seq_of(kv.key(), LAG_PREFIX)) {
                        lags.seen(seq, now);
                    }
                }
            }
        })
    };
    tokio::time::sleep_until(lags.start.into()).await;
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let window = Duration::from_millis(100);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(lags.from.len());
    let begin = tokio::time::Instant::now();
    let mut lease: Option<(i64, u64, tokio::time::Instant)> = None;
    let mut lease_client = client.lease_client();
    for seq in 0..lags.from.len() {
        let at = begin + period.mul_f64(seq as f64);
        tokio::time::sleep_until(at).await;
        if lease.is_none_or(|(_, _, granted)| at >= granted + window) {
            let asked_us = lags.now_us();
            match lease_client.grant(ttl_s, None).await {
                Ok(granted) => lease = Some((granted.id(), asked_us, at)),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some((id, asked_us, _)) = lease else { continue };
        let (mut kv, lags, errors) = (client.kv_client(), lags.clone(), errors.clone());
        let value = vec![b'v'; config.value_size];
        tasks.push(tokio::spawn(async move {
            let key = format!("{LAG_PREFIX}{seq}");
            lags.due_from(seq, asked_us);
            let options = PutOptions::new().with_lease(id);
            if kv.put(key, value, Some(options)).await.is_err() {
                lags.forget(seq);
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    Ok(finish_lag(lags, errors, watcher, config).await)
}
