//! `corekvctl`: the command-line client of corekv.
//!
//! ```text
//! corekvctl [--registry FILE] [--timeout DURATION] [-o text|json] COMMAND
//!   put KEY [VALUE] [--file PATH] [--strip-newline]   value from the argument, a file, or stdin
//!   get KEY [--stale] [--raw]         prints the value (escaped; --raw: the exact bytes)
//!   del KEY
//!   scan PREFIX [--limit N] [--keys-only] [--stale]
//!   txn [FILE]                        a JSON transaction (stdin when FILE is - or absent)
//!   status                            every replica of every shard
//!   member list|add|promote|remove|replace   change the cluster while it runs
//!   watch KEY [--prefix | --range-end END] [--from CURSOR] [--prev] [--progress D] [--count N]
//!   leader transfer SHARD NODE | leader balance
//!   lease grant TTL [--key KEY | --shard N] | keep-alive ID [--once] | revoke ID | ttl ID [--keys]
//!   lock NAME [--ttl D] [-- CMD ARGS...]    hold a lock while CMD runs (or until Ctrl-C)
//!   elect NAME [PROPOSAL] [--ttl D]          campaign and lead, or print each new leader
//!   backup save DIR [--rate-mib N] | backup verify DIR   a consistent copy of the cluster
//! ```
//!
//! The registry is `--registry`, else `$COREKV_REGISTRY`, else `./corekv.toml`. A cluster
//! with TLS (the registry's `[tls]`) is reached with its CA (`--cacert`, `$COREKV_CACERT`, else
//! the registry's) and, where the nodes require one, a client certificate (`--cert`/`--cert-key`,
//! `$COREKV_CERT`/`$COREKV_CERT_KEY`), or a token (`--token`, `$COREKV_TOKEN`) where the cluster
//! has auth. Durations read
//! like `2s`, `500ms` or `1m`. Exit status: 0 success; 1 the condition asked about does not
//! hold (`get`: the key does not exist; `txn`: a compare failed, so the `failure` branch ran);
//! 2 usage or input error (a bad registry file included); 3 cluster unavailable, timed out, or
//! a write's outcome unknown; 4 permission denied (the cluster's auth refused the user). Errors go to stderr as one line. Values are taken as given
//! (every byte of the argument, the file or stdin); in text output, bytes that are not
//! printable text are escaped (`\xNN`, and `\\` for a backslash) and a newline ends the
//! value, unless `get --raw`; JSON output gives keys and values in base64. The transaction
//! format is in [`TXN_HELP`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use corekv_client::registry::Registry;
use corekv_client::{
    Client, ClientConfig, Error, LeaseId, ReadOptions, ScanOptions, ScanRange, TlsConfig,
    WriteOptions,
};
use futures_util::StreamExt;
use serde_json::json;

mod backup;
mod lease;
mod lock;
mod member;
mod output;
mod watch;

use corekv_client::text::{parse_duration, parse_txn};
use output::{entry_json, escape, meta_json, status_json, status_text, txn_json, txn_text};

/// `corekvctl txn --help`: the transaction format, with an example.
const TXN_HELP: &str = r#"Run a transaction described in JSON: if every compare holds, the success ops run, else the failure ops; atomically, on one shard (give the keys one hash tag, like {u1}:n and {u1}:m).

The file (or stdin):

  {
    "compare": [{"key": "{u1}:n", "target": "version", "op": "=", "value": 3},
                {"key": "{u1}:m", "target": "missing"}],
    "success": [{"op": "put", "key": "{u1}:n", "value": "Ada"},
                {"op": "get", "key": "{u1}:n"}],
    "failure": [{"op": "get", "key": "{u1}:n"}]
  }

compare: a list of {"key", "target", "op", "value"}. Targets: value (a string), version, mod_index, create_index (numbers) with op =, !=, < or >; exists and missing (no op, no value). A missing key has version, mod_index and create_index 0.
success, failure: lists of {"op": "get"|"put"|"delete", "key", "value" (put only), "ttl" (put only: "30s")}. Every part may be left out.

Output: SUCCEEDED or FAILED, then "compare N did not hold" when it failed (N from 0), then one line per op of the branch that ran. With -o json: {"succeeded", "failed_compare" (a number, or null when it succeeded), "index", "results"}.

Exit status: 0 the compares held; 1 a compare failed (the failure branch ran; a script tests this with `if corekvctl txn f.json; then ...`); 2 a malformed transaction; 3 the cluster was unavailable or the outcome is unknown.

Example:
  echo '{"compare": [{"key": "lock", "target": "missing"}],
         "success": [{"op": "put", "key": "lock", "value": "me"}]}' | corekvctl txn"#;

#[derive(Parser)]
#[command(name = "corekvctl", version, about = "Command-line client of corekv")]
struct Args {
    /// Registry file [default: $COREKV_REGISTRY, then ./corekv.toml].
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    /// Deadline of each call, like 2s or 500ms.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// CA certificates (PEM) to check TLS nodes against [default: $COREKV_CACERT, then the CA the
    /// registry file names].
    #[arg(long = "cacert", id = "tls_cacert", global = true, value_name = "FILE")]
    tls_cacert: Option<PathBuf>,
    /// Client certificate (PEM) shown to TLS nodes; its subject names the user [default:
    /// $COREKV_CERT].
    #[arg(long = "cert", id = "tls_cert", global = true, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The key of --cert (PEM) [default: $COREKV_CERT_KEY].
    #[arg(long = "cert-key", id = "tls_key", global = true, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// A bearer token naming the user, for a cluster with auth [default: $COREKV_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a value.
    ///
    /// The value is stored exactly as given: the argument's bytes, the file's, or all of
    /// stdin (`echo hi | corekvctl put k` stores "hi" and the newline; --strip-newline drops
    /// one trailing newline). A value that starts with `-` goes after `--`:
    /// `corekvctl put k -- -5`.
    Put {
        /// The key.
        key: String,
        /// The value; read from --file or stdin when absent.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Drop one trailing newline (\n or \r\n) from the value (for `echo ... |`).
        #[arg(long)]
        strip_newline: bool,
        /// The key expires this long after the leader takes the write (500ms, 30s, 5m, 2h,
        /// 7d); reads never return it past that.
        #[arg(long, value_parser = parse_duration, conflicts_with = "lease")]
        ttl: Option<Duration>,
        /// Attach the key to this lease (`lease grant`): it goes when the lease ends. The
        /// key must be on the lease's shard.
        #[arg(long)]
        lease: Option<LeaseId>,
    },
    /// Read a value (exit status 1 when the key does not exist).
    ///
    /// -o json adds "ttl_ms", the time left for a key with a time to live, and "lease", the
    /// lease a key is attached to.
    ///
    /// Text output escapes bytes that are not printable text (\xNN; \\ for a backslash)
    /// and ends with a newline, so binary values show safely on a terminal; --raw writes the
    /// exact bytes and nothing else (`corekvctl get --raw k > file` gives back what
    /// `put --file` stored). -o json gives the value in base64 with its metadata.
    Get {
        /// The key.
        key: String,
        /// Serve from any replica's applied state (may miss recent writes).
        #[arg(long)]
        stale: bool,
        /// Write the value's exact bytes, with no escaping and no newline.
        #[arg(long)]
        raw: bool,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
    },
    /// List keys with a prefix, in key order.
    Scan {
        /// The prefix ("" for every key).
        prefix: String,
        /// Most entries to print.
        #[arg(long)]
        limit: Option<usize>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Serve from any replica's applied state.
        #[arg(long)]
        stale: bool,
    },
    /// Run a transaction described in JSON (the format: `corekvctl txn --help`).
    #[command(long_about = TXN_HELP)]
    Txn {
        /// The JSON file; stdin when absent or "-".
        file: Option<PathBuf>,
    },
    /// Show every replica of every shard.
    Status,
    /// The cluster's members: list, add, promote, remove, replace.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Shards' leadership: transfer one, balance all.
    #[command(subcommand)]
    Leader(member::LeaderCommand),
    /// Print every change of a key, a prefix or a range as it happens, until Ctrl-C.
    ///
    /// One line per change, tab-separated: `put KEY VALUE SHARD:INDEX version=V cursor=C`
    /// or `delete KEY SHARD:INDEX cursor=C` (with --prev, `prev=VALUE` before the cursor);
    /// -o json: one object per line (keys and values in base64). CURSOR is where the watch
    /// stands after that line: `watch --from CURSOR` resumes exactly there, missing and
    /// repeating nothing. The watch follows leader changes and node restarts by itself.
    /// Exit status 1 when the cursor is older than the history the cluster keeps (list
    /// again with `scan`, then watch from now).
    Watch(watch::WatchArgs),
    /// Leases: grant, keep alive, revoke, time to live. Keys put with `--lease ID` go when
    /// the lease ends (revoked, or not kept alive for its time to live).
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Take a distributed lock and hold it while a command runs (`lock NAME -- CMD ARGS`),
    /// or until Ctrl-C. Prints the lock's key and fencing token (also given to the command
    /// as $COREKV_LOCK_KEY and $COREKV_LOCK_TOKEN: a token grows with each holder). The
    /// lock is released when the command exits, whose exit status is corekvctl's; if this
    /// process dies or hangs, the lock goes when its lease's time to live (--ttl) runs out.
    /// Exit status 3 when the lease is lost while the command runs (the command is killed).
    Lock(lock::LockArgs),
    /// Campaign in an election and lead until Ctrl-C (`elect NAME PROPOSAL`), printing the
    /// proposal once elected; or, without a proposal, print the leader's value each time
    /// it changes.
    Elect(lock::ElectArgs),
    /// Online backup: save a consistent copy of the running cluster, or verify one
    /// (`corekv restore` makes a new cluster from it).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
}

/// A failure with its exit status.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match error {
            _ if error.is_unavailable() => 3,
            // The lease is gone: the condition asked about does not hold.
            Error::LeaseNotFound(_) => 1,
            Error::PermissionDenied(_) => 4,
            _ => 2,
        };
        Failure { code, message: error.to_string() }
    }
}

pub(crate) fn input_error(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

/// The registry file to use, and where that choice came from (for error messages).
fn registry_path(arg: Option<PathBuf>) -> (PathBuf, &'static str) {
    if let Some(path) = arg {
        return (path, "from --registry");
    }
    match std::env::var_os("COREKV_REGISTRY") {
        Some(path) => (PathBuf::from(path), "from $COREKV_REGISTRY"),
        None => (
            PathBuf::from("corekv.toml"),
            "the default; name one with --registry or $COREKV_REGISTRY",
        ),
    }
}

/// Loads the registry; a failure says where the path came from.
fn load_registry(arg: Option<PathBuf>) -> Result<Registry, Failure> {
    let (path, source) = registry_path(arg);
    Registry::load(&path).map_err(|error| {
        let reason = error.reason;
        input_error(format!("{} ({source}): {reason}", path.display()))
    })
}

/// `text` without one trailing newline (`\n` or `\r\n`).
fn strip_newline(mut text: Vec<u8>) -> Vec<u8> {
    if text.last() == Some(&b'\n') {
        text.pop();
        if text.last() == Some(&b'\r') {
            text.pop();
        }
    }
    text
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("corekvctl: starting the runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("corekvctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(args: Args) -> Result<u8, Failure> {
    let json = args.output == Output::Json;
    if let Command::Backup(backup::BackupCommand::Verify { dir }) = &args.command {
        return backup::verify(dir, json);
    }
    let registry = load_registry(args.registry)?;
    let (cacert, cert, key) =
        (args.tls_cacert.as_deref(), args.tls_cert.as_deref(), args.tls_key.as_deref());
    let tls = TlsConfig::from_command_line(&registry, cacert, cert, key)?;
    let mut config = ClientConfig::new(registry);
    config.tls = tls;
    config.token = args.token.or_else(|| std::env::var("COREKV_TOKEN").ok());
    config.timeout = args.timeout;
    config.connect_timeout = args.timeout.min(Duration::from_secs(1));
    let client = Client::connect(config);
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Put { key, value, file, strip_newline: strip, ttl, lease } => {
            let value = put_value(value, file)?;
            let value = if strip { strip_newline(value) } else { value };
            let options = WriteOptions { ttl, lease, ..Default::default() };
            let meta = client.put_with(key.as_bytes(), &value, options).await?;
            write(
                &mut out,
                if json { format!("{}\n", meta_json(&meta)) } else { "OK\n".to_string() },
            )?;
        }
        Command::Get { key, stale, raw } => get(&client, &mut out, json, &key, stale, raw).await?,
        Command::Del { key } => {
            let deleted = client.delete(key.as_bytes()).await?;
            let text = if json {
                format!("{}\n", json!({"deleted": deleted}))
            } else {
                format!("{}\n", deleted as u8)
            };
            write(&mut out, text)?;
        }
        Command::Scan { prefix, limit, keys_only, stale } => {
            let options = ScanOptions {
                keys_only,
                consistency: if stale {
                    corekv_client::Consistency::Stale
                } else {
                    Default::default()
                },
                // Pages of at most 1,000 entries; --limit stops the stream early.
                limit: limit.unwrap_or(1000).clamp(1, 1000),
                ..Default::default()
            };
            scan(&client, &mut out, json, &prefix, limit, options).await?;
        }
        Command::Txn { file } => {
            let text = txn_input(file)?;
            let txn = parse_txn(&text).map_err(|e| input_error(format!("transaction: {e}")))?;
            let response = client.txn(&txn).await?;
            write(
                &mut out,
                if json { format!("{}\n", txn_json(&response)) } else { txn_text(&response) },
            )?;
            if !response.succeeded {
                // The result is printed; the status tells scripts a compare failed.
                return Ok(1);
            }
        }
        Command::Member(command) => member::member(&client, json, command).await?,
        Command::Leader(command) => member::leader(&client, json, command).await?,
        Command::Status => status(&client, &mut out, json).await?,
        Command::Watch(watch_args) => {
            drop(out);
            watch::watch(&client, json, watch_args).await?;
        }
        Command::Lease(command) => {
            drop(out);
            return lease::lease(&client, json, command).await;
        }
        Command::Lock(lock_args) => {
            drop(out);
            return lock::lock(&client, json, lock_args).await;
        }
        Command::Elect(elect_args) => {
            drop(out);
            return lock::elect(&client, json, elect_args).await;
        }
        Command::Backup(backup::BackupCommand::Save { dir, rate_mib, start_timeout }) => {
            drop(out);
            return backup::save(&client, json, &dir, rate_mib, start_timeout).await;
        }
        Command::Backup(backup::BackupCommand::Verify { dir }) => {
            drop(out);
            return backup::verify(&dir, json);
        }
    }
    Ok(0)
}

/// `status`: every replica of every shard; exit status 3 when none answered, 4 when the
/// cluster's auth refused the user (status is an admin right).
async fn status(
    client: &Client,
    out: &mut std::io::StdoutLock<'_>,
    json: bool,
) -> Result<(), Failure> {
    let reports = client.status().await;
    let reachable = reports.iter().filter(|r| r.status.is_ok()).count();
    write(out, if json { format!("{}\n", status_json(&reports)) } else { status_text(&reports) })?;
    if reachable == 0 {
        // Refused by the cluster's auth, not unreachable: say so (exit 4).
        let denied = reports.iter().find_map(|r| match &r.status {
            Err(error @ Error::PermissionDenied(_)) => Some(error.clone()),
            _ => None,
        });
        if let Some(error) = denied {
            return Err(Failure::from(error));
        }
        return Err(Failure { code: 3, message: "no replica answered".to_string() });
    }
    Ok(())
}

/// `get`: the value (escaped, raw, or as JSON with its metadata); exit status 1 when the key
/// does not exist.
async fn get(
    client: &Client,
    out: &mut std::io::StdoutLock<'_>,
    json: bool,
    key: &str,
    stale: bool,
    raw: bool,
) -> Result<(), Failure> {
    if raw && json {
        return Err(input_error("get: --raw and -o json exclude each other"));
    }
    let options = if stale { ReadOptions::stale() } else { ReadOptions::default() };
    match client.get_with(key.as_bytes(), options).await? {
        Some(entry) if raw => out
            .write_all(&entry.value)
            .and_then(|()| out.flush())
            .map_err(|e| Failure { code: 3, message: format!("writing output: {e}") }),
        Some(entry) if json => write(out, format!("{}\n", entry_json(&entry))),
        Some(entry) => write(out, format!("{}\n", escape(&entry.value))),
        None => {
            Err(Failure { code: 1, message: format!("key not found: {}", escape(key.as_bytes())) })
        }
    }
}

/// Writes `text` to standard output.
fn write(out: &mut std::io::StdoutLock<'_>, text: String) -> Result<(), Failure> {
    out.write_all(text.as_bytes())
        .map_err(|e| Failure { code: 3, message: format!("writing output: {e}") })
}

/// The value to put: the argument, else the file, else standard input.
fn put_value(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    match (value, file) {
        (Some(v), _) => Ok(v.into_bytes()),
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| input_error(format!("reading {}: {e}", path.display()))),
        (None, None) => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| input_error(format!("reading stdin: {e}")))?;
            Ok(v)
        }
    }
}

/// The transaction's JSON: the file, else (none, or `-`) standard input.
fn txn_input(file: Option<PathBuf>) -> Result<String, Failure> {
    match file {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(&path)
            .map_err(|e| input_error(format!("reading {}: {e}", path.display()))),
        _ => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| input_error(format!("reading stdin: {e}")))?;
            Ok(t)
        }
    }
}

/// `scan`: every entry with the prefix, in key order, at most `limit`.
async fn scan(
    client: &Client,
    out: &mut std::io::StdoutLock<'_>,
    json: bool,
    prefix: &str,
    limit: Option<usize>,
    options: ScanOptions,
) -> Result<(), Failure> {
    let keys_only = options.keys_only;
    let range = if prefix.is_empty() { ScanRange::All } else { ScanRange::prefix(prefix) };
    let mut stream = std::pin::pin!(client.scan_stream(range, options));
    let mut entries = Vec::new();
    let mut count = 0;
    while let Some(entry) = stream.next().await {
        if limit.is_some_and(|l| count >= l) {
            break;
        }
        let entry = entry?;
        count += 1;
        if json {
            entries.push(entry_json(&entry));
        } else if keys_only {
            write(out, format!("{}\n", escape(&entry.key)))?;
        } else {
            write(out, format!("{}\t{}\n", escape(&entry.key), escape(&entry.value)))?;
        }
    }
    if json {
        write(out, format!("{}\n", json!({"count": entries.len(), "entries": entries})))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: durations parse in the documented forms and bad ones are refused.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    // Shows: no two flags of any subcommand clash (a global flag named like a subcommand's,
    // such as `--key`, would make that subcommand panic when run).
    #[test]
    fn flags_do_not_clash() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }
}
