//! The in-process CPU profiler behind `/debug/pprof/flamegraph?seconds=N`: for boxes where
//! `perf` is not allowed. The `pprof` crate samples the whole process on `SIGPROF` (process CPU
//! time, so idle threads cost nothing and busy ones are sampled in proportion), unwinds each
//! sample with the binary's DWARF tables, and draws the counts with `inferno`. Nothing runs
//! between requests; one profile at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

/// Samples per second of CPU time: ~1% overhead on a busy core (an unwind takes 10–50 µs).
pub const FREQUENCY_HZ: i32 = 199;

/// Longest profile one request may ask for.
pub const SECONDS_MAX: u64 = 60;

/// The profile length when a request names none.
pub const SECONDS_DEFAULT: u64 = 10;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Why no profile was taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Another request's profile is running.
    #[error("a profile is already being taken; try again when it ends")]
    Busy,
    /// Starting the sampler or drawing the graph failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Parses `seconds=N` from a request's query string (`None`: no query).
pub fn seconds_from_query(query: Option<&str>) -> Result<u64, String> {
    let Some(query) = query else { return Ok(SECONDS_DEFAULT) };
    let mut seconds = SECONDS_DEFAULT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "seconds" => {
                seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=SECONDS_MAX).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "seconds must be a whole number from 1 to {SECONDS_MAX}, not {value:?}"
                        )
                    })?;
            }
            other => return Err(format!("unknown parameter {other:?} (only seconds=N)")),
        }
    }
    Ok(seconds)
}

/// Samples the process for `duration` and returns the flamegraph SVG.
pub fn flamegraph(duration: Duration, title: &str) -> Result<String, ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let result = take(duration, title).map_err(ProfileError::Failed);
    RUNNING.store(false, Ordering::Release);
    result
}

fn take(duration: Duration, title: &str) -> anyhow::Result<String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        // Samples that land inside these libraries are dropped rather than unwound: unwinding
        // from inside the C library's own unwinder or the vDSO can deadlock or misread.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .context("starting the profiler")?;
    std::thread::sleep(duration);
    let report = guard.report().build().context("collecting the samples")?;
    drop(guard);
    let samples: isize = report.data.values().sum();
    if samples == 0 {
        return Ok(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
             <text x=\"10\" y=\"25\">{title}: no CPU samples in {:.0} s (the process was idle)</text></svg>\n",
            duration.as_secs_f64()
        ));
    }
    let mut options = pprof::flamegraph::Options::default();
    options.title = format!("{title}: {samples} samples at {FREQUENCY_HZ} Hz");
    options.count_name = "samples".to_string();
    let mut svg = Vec::new();
    report.flamegraph_with_options(&mut svg, &mut options).context("drawing the flamegraph")?;
    String::from_utf8(svg).context("the flamegraph is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_and_reject() {
        assert_eq!(seconds_from_query(None), Ok(SECONDS_DEFAULT));
        assert_eq!(seconds_from_query(Some("seconds=3")), Ok(3));
        assert_eq!(seconds_from_query(Some("")), Ok(SECONDS_DEFAULT));
        assert!(seconds_from_query(Some("seconds=0")).is_err());
        assert!(seconds_from_query(Some("seconds=61")).is_err());
        assert!(seconds_from_query(Some("seconds=ten")).is_err());
        assert!(seconds_from_query(Some("rate=5")).is_err());
    }

    #[test]
    fn profiles_a_busy_thread_and_refuses_a_second_at_once() {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                x
            })
        };
        let first = std::thread::spawn(|| flamegraph(Duration::from_millis(1500), "test"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(flamegraph(Duration::from_millis(10), "test"), Err(ProfileError::Busy)));
        let svg = first.join().expect("profiling thread").expect("a profile");
        stop.store(true, Ordering::Relaxed);
        let _ = busy.join();
        assert!(
            svg.starts_with("<?xml") || svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..80.min(svg.len())]
        );
        assert!(svg.contains("samples at 199 Hz"), "no samples were drawn");
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
