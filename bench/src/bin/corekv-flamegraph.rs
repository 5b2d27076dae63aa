//! `corekv-flamegraph`: turns `perf script` output into an SVG flamegraph with the `inferno`
//! crate (its perf collapser, then its flamegraph renderer), so `perf/flamegraph.sh` needs
//! nothing beyond this workspace and `perf`.
//!
//! ```text
//! perf script -i perf.data | corekv-flamegraph [--title T] [--folded FILE] > out.svg
//! corekv-flamegraph PERF-SCRIPT-OUTPUT [--title T] [--folded FILE] > out.svg
//! ```

use std::io::{BufReader, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::collapse::Collapse;
use inferno::flamegraph::{self, Options as GraphOptions};

#[derive(Parser, Debug)]
#[command(name = "corekv-flamegraph", version, about = "perf script output to an SVG flamegraph")]
struct Args {
    /// `perf script` output [default: standard input].
    input: Option<PathBuf>,
    /// The flamegraph's title.
    #[arg(long, default_value = "corekv")]
    title: String,
    /// Also write the folded stacks (one line per distinct stack and its sample count).
    #[arg(long)]
    folded: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = real_main(args) {
        eprintln!("corekv-flamegraph: {error:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let reader: Box<dyn Read> = match &args.input {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut folded = Vec::new();
    let mut fold_options = FoldOptions::default();
    // Thread names (shard-0, http, ...) as the bottom row.
    fold_options.include_pid = false;
    fold_options.include_tid = false;
    Folder::from(fold_options)
        .collapse(BufReader::new(reader), &mut folded)
        .context("folding the perf samples")?;
    let text = String::from_utf8(folded).context("the folded stacks are not UTF-8")?;
    let stacks: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if stacks.is_empty() {
        bail!(
            "no samples in the input (was the process idle, or is this not `perf script` output?)"
        );
    }
    if let Some(path) = &args.folded {
        std::fs::write(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut graph_options = GraphOptions::default();
    graph_options.title = args.title.clone();
    graph_options.count_name = "samples".to_string();
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut graph_options, stacks.iter().copied(), &mut svg)
        .context("drawing the flamegraph")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&svg).context("writing the SVG")?;
    stdout.flush().context("writing the SVG")
}
