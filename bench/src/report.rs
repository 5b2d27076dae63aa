//! Reporting: the summary line, the JSON result, the `.hgrm` percentile distribution, the
//! machine description, and the server CPU time the run cost.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::run::RunResult;

/// Percentiles reported everywhere.
pub const PERCENTILES: [(&str, f64); 5] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99)];

/// The machine the run happened on.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    json!({"cores": cores, "cpu_model": cpu, "kernel": kernel, "hostname": hostname})
}

/// Total CPU time (user + system, µs) of every process whose name is `name`.
pub fn process_cpu_us(name: &str) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // comm is in parentheses and may contain spaces; fields after it are space-separated.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after comm.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else { continue };
        let ticks = utime.parse::<u64>().unwrap_or(0) + stime.parse::<u64>().unwrap_or(0);
        total += ticks * 1_000_000 / ticks_per_sec.max(1);
        found = true;
    }
    found.then_some(total)
}

/// Total resident memory (bytes) of every process whose name is `name`.
pub fn process_rss_bytes(name: &str) -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        if status.lines().next().and_then(|l| l.strip_prefix("Name:")).map(str::trim) != Some(name)
        {
            continue;
        }
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kib) = kib {
            total += kib * 1024;
            found = true;
        }
    }
    found.then_some(total)
}

/// Latency percentiles in µs, and the curve for plots.
pub fn latency_json(h: &Histogram<u64>) -> (Value, Vec<Value>) {
    let mut latency = serde_json::Map::new();
    for (name, p) in PERCENTILES {
        latency.insert(name.to_string(), json!(h.value_at_percentile(p)));
    }
    latency.insert("max".into(), json!(h.max()));
    latency.insert("mean".into(), json!(h.mean()));
    let curve =
        h.iter_quantiles(2).map(|v| json!([v.percentile(), v.value_iterated_to()])).collect();
    (Value::Object(latency), curve)
}

/// The one-screen summary.
pub fn summary(label: &str, result: &RunResult, cpu_us_per_op: Option<f64>) -> String {
    let h = &result.latency_us;
    let errors: u64 = result.errors.values().sum();
    let mut text = format!(
        "{label}: {:.0} ops/s over {:.1}s ({} ops, {} errors)\n  latency: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us\n",
        result.ops_per_sec(),
        result.elapsed.as_secs_f64(),
        result.ops,
        errors,
        h.value_at_percentile(50.0),
        h.value_at_percentile(90.0),
        h.value_at_percentile(99.0),
        h.value_at_percentile(99.9),
        h.max(),
    );
    if result.conflicts > 0 {
        text.push_str(&format!("  compare-and-set conflicts: {}\n", result.conflicts));
    }
    for (kind, n) in &result.errors {
        text.push_str(&format!("  errors {kind}: {n}\n"));
    }
    if let Some(cpu) = cpu_us_per_op {
        text.push_str(&format!("  server CPU: {cpu:.1} us per op\n"));
    }
    text
}

/// Writes the percentile distribution in HdrHistogram's `.hgrm` text format (values in µs).
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    let mut out = Vec::new();
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse =
            if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { format!("{:>14}", "inf") };
        writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            v.value_iterated_to() as f64,
            q,
            v.count_since_last_iteration()
        )?;
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean(),
        h.stdev(),
        h.max() as f64,
        h.len()
    )?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
