//! Latency percentile curves of one or more result files, overlaid in one SVG: the x axis is
//! the percentile on HdrHistogram's usual scale (each step right adds a nine), the y axis
//! latency on a log scale.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;

/// `(label, [(percentile, latency µs)])` of one result file.
type Curve = (String, Vec<(f64, f64)>);

fn load(path: &Path) -> anyhow::Result<Curve> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let label = value["label"].as_str().map(str::to_string).unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    });
    let points: Vec<(f64, f64)> = value["percentiles"]
        .as_array()
        .with_context(|| {
            format!("{} has no \"percentiles\" (not a corekv-bench result?)", path.display())
        })?
        .iter()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
        .filter(|(p, _)| *p < 100.0)
        .collect();
    if points.is_empty() {
        bail!("{} has no latency points", path.display());
    }
    Ok((label, points))
}

/// Percentile → x position: 0 at 0%, 1 at 90%, 2 at 99%, 3 at 99.9%...
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

/// Draws the curves of `inputs` into `out` (SVG).
pub fn plot(out: &Path, inputs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    if inputs.is_empty() {
        bail!("give one or more result files (written with --json) to plot");
    }
    let curves: Vec<Curve> = inputs.iter().map(|p| load(p)).collect::<anyhow::Result<_>>()?;
    let max_x = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(p, _)| nines(*p)))
        .fold(1.0, f64::max)
        .min(5.0);
    let max_y =
        curves.iter().flat_map(|(_, c)| c.iter().map(|(_, l)| *l)).fold(1.0, f64::max) * 1.5;
    let min_y = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(_, l)| *l))
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 1.5;
    let root = SVGBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let text = format!("{p:.3}");
            format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, points)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(p, l)| (nines(*p), *l)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    Ok(())
}
