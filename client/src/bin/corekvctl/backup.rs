//! `corekvctl backup`: a consistent copy of a running cluster (`save`), and its check
//! (`verify`). The layout is `corekv_storage::backup`'s: one snapshot file per shard,
//! streamed from the shard's leader, and a manifest written last.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use corekv_client::{BackupOptions, Client, ShardId, ShardSnapshot};
use corekv_storage::backup::{self as files, Manifest, ShardFile};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{input_error, parse_duration, Failure};

/// Times a shard's stream is started over after it broke.
const SHARD_ATTEMPTS: u32 = 3;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Subcommand)]
pub(crate) enum BackupCommand {
    /// Take a backup of the running cluster into DIR (created; must be empty): for each
    /// shard, its leader's snapshot at an index it applied after the backup began, so the
    /// backup holds every write acknowledged before. Progress goes to stderr; the summary
    /// names each shard's index (the backup's cursor: `watch --from CURSOR` on this
    /// cluster continues exactly after it). An interrupted backup leaves no manifest, and
    /// `verify` and `corekv restore` refuse it.
    Save {
        /// The backup directory.
        dir: PathBuf,
        /// Most MiB per second each shard's leader sends, at least 1 [default: the node's
        /// snapshot write rate, --snapshot-write-mib].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate_mib: Option<u64>,
        /// How long to wait for a shard's stream to start (its leader may first have to
        /// take a snapshot).
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        start_timeout: Duration,
    },
    /// Check a backup: the manifest, and every shard file's size, checksum and snapshot
    /// (its header, payload checksum and archive). Exit status 1 names the first bad file
    /// of each shard and why. Needs no cluster.
    Verify {
        /// The backup directory.
        dir: PathBuf,
    },
}

/// Runs `backup verify`, which needs no registry.
pub(crate) fn verify(dir: &Path, json: bool) -> Result<u8, Failure> {
    if !dir.is_dir() {
        return Err(input_error(format!("{} is not a directory", dir.display())));
    }
    let manifest =
        files::read_manifest(dir).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let mut problems = Vec::new();
    let mut shards = Vec::new();
    for entry in &manifest.files {
        match files::load_shard(dir, &manifest.cluster, entry) {
            Ok(archive) => shards.push(json!({
                "shard": entry.shard, "index": entry.index, "term": entry.term,
                "keys": archive.len(), "bytes": entry.bytes, "ok": true,
            })),
            Err(error) => {
                shards.push(json!({"shard": entry.shard, "ok": false, "error": error.to_string()}));
                problems.push(error.to_string());
            }
        }
    }
    let partial = files::partial_files(dir).map_err(|e| input_error(e.to_string()))?;
    let text = if json {
        json!({"ok": problems.is_empty(), "cluster": manifest.cluster, "shards": shards})
            .to_string()
    } else {
        let mut lines = vec![format!(
            "backup of cluster {:?}, {} shards, cursor {}",
            manifest.cluster,
            manifest.shards,
            cursor(&manifest)
        )];
        for shard in &shards {
            lines.push(match shard["ok"].as_bool() {
                Some(true) => format!(
                    "shard {}: OK, index {}, {} keys, {} bytes",
                    shard["shard"], shard["index"], shard["keys"], shard["bytes"]
                ),
                _ => format!(
                    "shard {}: BAD: {}",
                    shard["shard"],
                    shard["error"].as_str().unwrap_or("")
                ),
            });
        }
        lines.join("\n")
    };
    println!("{text}");
    for path in partial {
        eprintln!(
            "corekvctl: {} is a file a backup did not finish (not part of it)",
            path.display()
        );
    }
    if problems.is_empty() {
        return Ok(0);
    }
    Err(Failure { code: 1, message: problems.join("; ") })
}

/// The watch cursor right after the backup: each shard's next index.
fn cursor(manifest: &Manifest) -> String {
    let next: Vec<String> =
        manifest.files.iter().map(|f| format!("{}:{}", f.shard, f.index + 1)).collect();
    next.join(",")
}

/// Runs `backup save`.
pub(crate) async fn save(
    client: &Client,
    json: bool,
    dir: &Path,
    rate_mib: Option<u64>,
    start_timeout: Duration,
) -> Result<u8, Failure> {
    prepare_dir(dir)?;
    let options = BackupOptions {
        bytes_per_sec: rate_mib.map_or(0, |mib| mib.saturating_mul(1024 * 1024)),
        start_timeout,
        ..BackupOptions::default()
    };
    let shards = client.registry().shards;
    let received: Arc<Vec<(AtomicU64, AtomicU64)>> =
        Arc::new((0..shards).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect());
    let began = Instant::now();
    let reporter = tokio::spawn(report_progress(received.clone(), began));
    let saves = (0..shards).map(|s| save_shard(client, dir, ShardId(s), &options, &received));
    let results = futures_util::future::join_all(saves).await;
    reporter.abort();
    // The last line, whatever the timer's phase: every shard streamed (or the failure below).
    print_progress(&received, began);
    let mut entries = Vec::new();
    for result in results {
        entries.push(result?);
    }
    let cluster = client.registry().cluster.clone();
    let entries = finish_and_check(dir, &cluster, entries).await?;
    let manifest = Manifest {
        format: files::BACKUP_FORMAT_VERSION,
        cluster: client.registry().cluster.clone(),
        shards,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        files: entries,
    };
    files::write_manifest(dir, &manifest)
        .map_err(|e| Failure { code: 3, message: e.to_string() })?;
    print_summary(dir, &manifest, began.elapsed(), json);
    Ok(0)
}

/// Creates the backup directory, or checks that it is empty.
fn prepare_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| input_error(format!("creating {}: {e}", dir.display())))?;
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| input_error(format!("reading {}: {e}", dir.display())))?;
    if entries.next().is_some() {
        return Err(input_error(format!(
            "{} is not empty: a backup goes into a new or empty directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Streams one shard's snapshot into its file, still under its temporary name (started over
/// if the stream breaks); returns its manifest entry, the key count left for the check.
async fn save_shard(
    client: &Client,
    dir: &Path,
    shard: ShardId,
    options: &BackupOptions,
    received: &[(AtomicU64, AtomicU64)],
) -> Result<ShardFile, Failure> {
    let name = files::shard_file_name(shard.get());
    let partial = dir.join(format!("{name}{}", files::PARTIAL_SUFFIX));
    let mut attempt = 1;
    let snapshot = loop {
        match stream_into(client, &partial, shard, options, received).await {
            Ok(snapshot) => break snapshot,
            Err(error) if error.is_unavailable() && attempt < SHARD_ATTEMPTS => {
                eprintln!("corekvctl: shard {shard}: {error}; starting it over");
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    };
    Ok(ShardFile {
        shard: shard.get(),
        file: name,
        index: snapshot.index,
        term: snapshot.term,
        bytes: snapshot.bytes,
        crc32c: snapshot.crc32c,
        keys: 0,
        node: snapshot.node.get(),
    })
}

/// Once every shard is in: gives each file its final name, then reads each back as `verify`
/// would (counting its keys) before the manifest vouches for it. Until then every file is
/// `*.partial`, so an interrupted save leaves none that looks finished.
async fn finish_and_check(
    dir: &Path,
    cluster: &str,
    mut entries: Vec<ShardFile>,
) -> Result<Vec<ShardFile>, Failure> {
    let failed = |e: String| Failure { code: 3, message: e };
    for entry in &entries {
        let partial = dir.join(format!("{}{}", entry.file, files::PARTIAL_SUFFIX));
        files::finish_file(&partial, &dir.join(&entry.file)).map_err(|e| failed(e.to_string()))?;
    }
    let checks = entries.iter().map(|entry| {
        let (dir, cluster, entry) = (dir.to_path_buf(), cluster.to_string(), entry.clone());
        tokio::task::spawn_blocking(move || {
            files::load_shard(&dir, &cluster, &entry).map(|archive| archive.len() as u64)
        })
    });
    let counted = futures_util::future::join_all(checks).await;
    for (entry, keys) in entries.iter_mut().zip(counted) {
        let keys = keys.map_err(|e| failed(format!("checking shard {}: {e}", entry.shard)))?;
        entry.keys = keys.map_err(|e| failed(e.to_string()))?;
    }
    Ok(entries)
}

/// One try at streaming shard `shard` into `path` (written from scratch), synced.
async fn stream_into(
    client: &Client,
    path: &Path,
    shard: ShardId,
    options: &BackupOptions,
    received: &[(AtomicU64, AtomicU64)],
) -> corekv_client::Result<ShardSnapshot> {
    let output =
        |e: std::io::Error| corekv_client::Error::Output(format!("{}: {e}", path.display()));
    // Each 4 MiB write is durable when it returns (O_DSYNC): buffered writes would pile up
    // a shard's whole file in the page cache and flush it in one burst at the end, which on
    // a disk the cluster shares stalls the nodes' WAL syncs for up to a second (seen on a
    // one-disk test machine: writes on a node timed out). Synced as it comes, the backup
    // loads the disk at the stream's pace instead.
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DSYNC)
        .open(path)
        .await
        .map_err(output)?;
    let mut writer = tokio::io::BufWriter::with_capacity(4 * 1024 * 1024, file);
    let counters = &received[shard.get() as usize];
    let mut progress = |got: u64, total: u64| {
        counters.0.store(got, Relaxed);
        counters.1.store(total, Relaxed);
    };
    let snapshot = client.backup_shard(shard, options, &mut writer, &mut progress).await?;
    writer.flush().await.map_err(output)?;
    writer.into_inner().sync_all().await.map_err(output)?;
    Ok(snapshot)
}

/// Prints every shard's progress to stderr once a second.
async fn report_progress(received: Arc<Vec<(AtomicU64, AtomicU64)>>, began: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        print_progress(&received, began);
    }
}

/// One line of progress on stderr: each shard's bytes so far, and the rate.
fn print_progress(received: &[(AtomicU64, AtomicU64)], began: Instant) {
    let mut got = 0;
    let shards: Vec<String> = received
        .iter()
        .enumerate()
        .map(|(s, (g, t))| {
            let (g, t) = (g.load(Relaxed), t.load(Relaxed));
            got += g;
            match t {
                0 => format!("shard {s}: waiting for its snapshot"),
                t => format!("shard {s}: {:.1}/{:.1} MiB", g as f64 / MIB, t as f64 / MIB),
            }
        })
        .collect();
    let rate = got as f64 / MIB / began.elapsed().as_secs_f64().max(1e-3);
    eprintln!("backup: {} ({rate:.1} MiB/s)", shards.join(", "));
}

fn print_summary(dir: &Path, manifest: &Manifest, elapsed: Duration, json: bool) {
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let keys: u64 = manifest.files.iter().map(|f| f.keys).sum();
    let secs = elapsed.as_secs_f64();
    if json {
        let value = json!({
            "dir": dir.display().to_string(),
            "cluster": manifest.cluster,
            "shards": manifest.files,
            "bytes": bytes,
            "keys": keys,
            "seconds": secs,
            "cursor": cursor(manifest),
        });
        println!("{value}");
        return;
    }
    for f in &manifest.files {
        println!(
            "shard {}: index {} term {}, {} keys, {:.1} MiB, from node {}",
            f.shard,
            f.index,
            f.term,
            f.keys,
            f.bytes as f64 / MIB,
            f.node
        );
    }
    println!(
        "backup of cluster {:?} in {}: {keys} keys, {:.1} MiB in {secs:.1} s ({:.1} MiB/s)",
        manifest.cluster,
        dir.display(),
        bytes as f64 / MIB,
        bytes as f64 / MIB / secs.max(1e-9)
    );
    println!("cursor {} (watch --from it continues right after the backup)", cursor(manifest));
}
