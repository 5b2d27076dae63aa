//! What a seed picks: the run's options (swarm testing) and the PRNG behind every choice.

use super::*;

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

impl Options {
    pub(crate) fn draw(rng: &mut Rng) -> Options {
        let delay_max = rng.pick(&[500, 2_000, 10_000, 40_000]);
        let disk_max = rng.pick(&[200, 2_000, 10_000, 30_000]);
        Options {
            nodes: rng.pick(&[3, 3, 5]),
            shards: rng.range(1, 3) as u32,
            clients: rng.range(1, 5) as usize,
            keys_per_shard: rng.range(1, 3) as usize,
            delay_us: (rng.range(50, 300), delay_max),
            loss: rng.pick(&[0.0, 0.0, 0.01, 0.05, 0.2]),
            duplicate: rng.pick(&[0.0, 0.01, 0.05]),
            disk_us: (rng.range(20, 200), disk_max),
            crashes: rng.chance(0.6),
            torn_writes: rng.chance(0.5),
            partitions: rng.chance(0.6),
            asymmetric: rng.chance(0.4),
            snapshot_entries: rng.pick(&[5, 20, 100, 1_000_000]),
            fault_us: rng.range(1_000_000, 3_000_000),
            nemesis_us: rng.pick(&[100_000, 300_000, 800_000]),
            tick_skew_pct: rng.pick(&[0, 5, 20]),
            wipes: false,
            entry_cache_bytes: corekv_storage::constants::ENTRY_CACHE_BYTES_MAX,
            spares: 0,
            operator_us: 0,
            history_retention: KEEP_HISTORY,
            history_cache_bytes: corekv_storage::constants::HISTORY_CACHE_BYTES_MAX,
            watchers: Vec::new(),
            slow_watchers: None,
            clock_skews: Vec::new(),
            computed: false,
        }
    }

    /// Everything `seed` picks before the run, with the PRNGs the run goes on with: the
    /// main one, the wipes' and the operator's. What was added later (wipes, the entry cache,
    /// membership) draws from PRNGs of its own, so that the runs of seeds without it stayed
    /// what they were.
    pub(crate) fn for_seed(seed: u64) -> (Options, Rng, Rng, Rng) {
        let mut rng = Rng(seed);
        let mut opts = Options::draw(&mut rng);
        let mut wipe_rng = Rng(seed ^ 0x5749_5045_5749_5045);
        opts.wipes = opts.crashes && wipe_rng.chance(0.5);
        if Rng(seed ^ 0x434f_4c44_434f_4c44).chance(0.5) {
            opts.entry_cache_bytes = 256;
        }
        let mut watch_rng = Rng(seed ^ 0x5741_5443_5741_5443);
        if watch_rng.chance(0.5) {
            opts.history_cache_bytes = 256;
        }
        if watch_rng.chance(0.3) {
            let max_bytes = SEGMENT_BYTES * watch_rng.range(2, 4);
            opts.history_retention =
                Retention { min_entries: 0, min_bytes: 0, min_age_ms: 0, max_bytes };
        }
        if watch_rng.chance(0.5) {
            let count = watch_rng.range(1, 2);
            let keys = opts.keys_per_shard as u64 * u64::from(opts.shards);
            opts.watchers = (0..count)
                .map(|_| {
                    let key = watch_rng.chance(0.5).then(|| watch_rng.below(keys) as usize);
                    (key, watch_rng.chance(0.5))
                })
                .collect();
            if watch_rng.chance(0.4) {
                opts.slow_watchers = Some(watch_rng.range(200, 2_000) as usize);
            }
        }
        let mut member_rng = Rng(seed ^ 0x4d45_4d42_4d45_4d42);
        if member_rng.chance(0.5) {
            opts.spares = member_rng.range(1, 2);
            opts.operator_us = member_rng.pick(&[30_000, 150_000, 400_000]);
        }
        let mut ttl_rng = Rng(seed ^ 0x5454_4c54_5454_4c54);
        if ttl_rng.chance(0.5) {
            let max = super::ttl::CLOCK_SKEW_MS_MAX as u64;
            opts.clock_skews = (0..opts.all_nodes())
                .map(|_| ttl_rng.range(0, 2 * max) as i64 - max as i64)
                .collect();
        }
        opts.computed = Rng(seed ^ 0x434f_4d50_434f_4d50).chance(0.5);
        (opts, rng, wipe_rng, member_rng)
    }

    /// The first voters and the spares.
    pub(crate) fn all_nodes(&self) -> u64 {
        self.nodes + self.spares
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "nodes={} shards={} clients={} keys/shard={} delay={}..{}us loss={} dup={} \
             disk={}..{}us crashes={} torn={} partitions={} asymmetric={} snapshot_every={} \
             faults={}ms nemesis_every~{}ms tick_skew={}% wipes={} entry_cache={}B spares={} \
             operator_every~{}ms history_cache={}B history_max={}B watchers={:?} \
             slow_watchers={:?} clock_skews_ms={:?} computed={}",
            self.nodes,
            self.shards,
            self.clients,
            self.keys_per_shard,
            self.delay_us.0,
            self.delay_us.1,
            self.loss,
            self.duplicate,
            self.disk_us.0,
            self.disk_us.1,
            self.crashes,
            self.torn_writes,
            self.partitions,
            self.asymmetric,
            self.snapshot_entries,
            self.fault_us / 1000,
            self.nemesis_us / 1000,
            self.tick_skew_pct,
            self.wipes,
            self.entry_cache_bytes,
            self.spares,
            self.operator_us / 1000,
            self.history_cache_bytes,
            self.history_retention.max_bytes,
            self.watchers,
            self.slow_watchers,
            self.clock_skews,
            self.computed,
        )
    }
}

/// The retention of runs that keep all the history they make.
const KEEP_HISTORY: Retention =
    Retention { min_entries: u64::MAX, min_bytes: u64::MAX, min_age_ms: 0, max_bytes: u64::MAX };
