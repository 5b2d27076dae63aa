//! What the load generator asks for: which operation, on which key.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Writes only.
    Put,
    /// Reads only.
    Get,
    /// Reads and writes, `--read-ratio` of them reads.
    Mixed,
    /// YCSB A: 50% reads, 50% updates, zipfian keys.
    YcsbA,
    /// YCSB B: 95% reads, 5% updates, zipfian keys.
    YcsbB,
    /// YCSB C: reads only, zipfian keys.
    YcsbC,
    /// Compare-and-set transactions on a key's version.
    Txn,
    /// Watchers on a prefix while writers write under it (`--watchers`, `--rate`).
    Watch,
    /// Keys with a time to live: expiry lag at `--rate`, writes while `--expiring` keys go.
    Expire,
    /// Leases kept alive: what keep-alives cost (`--leases`, `--ttl-ms`).
    Leases,
    /// Writes without and during an online backup, and a restore's time.
    Backup,
    /// Draw the latency curves of result files (`--plot FILE.svg`).
    Plot,
}

impl Workload {
    /// Share of operations that are reads.
    pub fn read_ratio(self, mixed: f64) -> f64 {
        match self {
            Workload::Put
            | Workload::Txn
            | Workload::Watch
            | Workload::Expire
            | Workload::Leases
            | Workload::Backup
            | Workload::Plot => 0.0,
            Workload::Get | Workload::YcsbC => 1.0,
            Workload::Mixed => mixed,
            Workload::YcsbA => 0.5,
            Workload::YcsbB => 0.95,
        }
    }

    /// Whether keys are zipfian unless the user says otherwise.
    pub fn zipfian_by_default(self) -> bool {
        matches!(self, Workload::YcsbA | Workload::YcsbB | Workload::YcsbC)
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::YcsbA => "ycsb-a",
            Workload::YcsbB => "ycsb-b",
            Workload::YcsbC => "ycsb-c",
            Workload::Txn => "txn",
            Workload::Watch => "watch",
            Workload::Expire => "expire",
            Workload::Leases => "leases",
            Workload::Backup => "backup",
            Workload::Plot => "plot",
        }
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys much more likely (YCSB's zipfian, exponent 0.99).
    Zipfian,
}

/// One operation to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read key number `usize`.
    Read(usize),
    /// Write key number `usize`.
    Write(usize),
    /// Compare-and-set key number `usize`.
    Cas(usize),
}

/// Draws operations; one per task (not shared), seeded per task.
pub struct Generator {
    rng: SmallRng,
    keys: usize,
    zipf: Option<Zipf<f64>>,
    read_ratio: f64,
    txn: bool,
}

impl Generator {
    /// A generator for `keys` keys.
    pub fn new(
        seed: u64,
        keys: usize,
        distribution: KeyDistribution,
        read_ratio: f64,
        txn: bool,
    ) -> Self {
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipfian => Zipf::new(keys as f64, 0.99).ok(),
        };
        Generator { rng: SmallRng::seed_from_u64(seed), keys, zipf, read_ratio, txn }
    }

    fn key(&mut self) -> usize {
        match &self.zipf {
            // Zipf draws 1..=n; scatter the popular ranks over the key space.
            Some(zipf) => {
                let rank = zipf.sample(&mut self.rng) as u64;
                (rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.keys as u64) as usize
            }
            None => self.rng.random_range(0..self.keys),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let key = self.key();
        if self.txn {
            Op::Cas(key)
        } else if self.rng.random_bool(self.read_ratio) {
            Op::Read(key)
        } else {
            Op::Write(key)
        }
    }
}

/// Key number `i`, `size` bytes long: `k` and the zero-padded number (longer when needed).
pub fn key_bytes(i: usize, size: usize) -> Vec<u8> {
    let digits = size.saturating_sub(1).max(1);
    format!("k{i:0digits$}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: keys have the asked size and are distinct.
    #[test]
    fn keys() {
        assert_eq!(key_bytes(42, 16), b"k000000000000042".to_vec());
        assert_eq!(key_bytes(42, 16).len(), 16);
        assert_ne!(key_bytes(1, 16), key_bytes(2, 16));
    }

    // Shows: zipfian draws favour a few keys; uniform ones do not; the read ratio holds.
    #[test]
    fn distributions() {
        let count_top = |distribution| {
            let mut g = Generator::new(7, 1000, distribution, 0.5, false);
            let mut hits = vec![0u32; 1000];
            for _ in 0..100_000 {
                let (Op::Read(k) | Op::Write(k) | Op::Cas(k)) = g.next_op();
                hits[k] += 1;
            }
            hits.sort_unstable();
            hits.iter().rev().take(10).sum::<u32>()
        };
        assert!(count_top(KeyDistribution::Zipfian) > 20_000, "zipfian is skewed");
        assert!(count_top(KeyDistribution::Uniform) < 2_000, "uniform is flat");
        let mut g = Generator::new(1, 100, KeyDistribution::Uniform, 0.95, false);
        let reads = (0..10_000).filter(|_| matches!(g.next_op(), Op::Read(_))).count();
        assert!((9_300..9_700).contains(&reads), "{reads} reads of 10,000");
    }
}
