//! `corekvctl watch`: one line per change of a key, a prefix or a range, until Ctrl-C (or
//! `--count` changes), each with the cursor a later `watch --from` resumes after.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use corekv_client::watch::{Change, ChangeKind, WatchScope};
use corekv_client::{Client, Cursor, Error, WatchMessage, WatchSpec};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::output::{b64, escape};
use super::{input_error, parse_duration, Failure};

/// `corekvctl watch`'s arguments.
#[derive(Args)]
pub(crate) struct WatchArgs {
    /// The key to watch (or, with --prefix, the prefix; with --range, the range's start).
    key: String,
    /// Watch every key that starts with KEY ("" for every key).
    #[arg(long, conflicts_with = "range_end")]
    prefix: bool,
    /// Watch the keys from KEY up to this one (not included).
    #[arg(long = "range-end", value_name = "END")]
    range_end: Option<String>,
    /// Start after a cursor a previous watch printed (SHARD:INDEX,...), not now.
    #[arg(long, value_name = "CURSOR")]
    from: Option<String>,
    /// Print each key's value before the change.
    #[arg(long)]
    prev: bool,
    /// Print a progress line per shard at least this often while nothing changes.
    #[arg(long, value_parser = parse_duration)]
    progress: Option<Duration>,
    /// Exit after this many changes.
    #[arg(long)]
    count: Option<u64>,
}

/// Runs the watch, printing as it goes. Exit status 1 when the cursor is older than the
/// history the cluster keeps (list again), 2 for bad arguments.
pub(crate) async fn watch(client: &Client, json: bool, args: WatchArgs) -> Result<(), Failure> {
    let scope = match (args.prefix, args.range_end) {
        (true, _) => WatchScope::Prefix(args.key.into_bytes()),
        (false, Some(end)) => {
            WatchScope::Range { start: args.key.into_bytes(), end: Some(end.into_bytes()) }
        }
        (false, None) => WatchScope::Key(args.key.into_bytes()),
    };
    let from = match &args.from {
        Some(text) => Some(text.parse::<Cursor>().map_err(|e| input_error(e.to_string()))?),
        None => None,
    };
    let spec = WatchSpec { scope, from, prev_value: args.prev, progress: args.progress };
    let mut watch = client.watch(spec)?;
    let mut out = std::io::stdout().lock();
    let mut changes = 0u64;
    while let Some(message) = watch.next().await {
        let message = message.map_err(|error| match error {
            Error::Compacted { .. } => Failure { code: 1, message: error.to_string() },
            other => other.into(),
        })?;
        // The stream has moved its cursor past this message already.
        let cursor = watch.cursor().to_string();
        let mut lines = String::new();
        match &message {
            WatchMessage::Event(event) => {
                for change in event.changes.iter() {
                    let revision = (event.shard.get(), event.index);
                    lines.push_str(&line(json, change, revision, &cursor));
                    changes += 1;
                }
            }
            WatchMessage::Progress { shard, index } => {
                lines.push_str(&if json {
                    format!(
                        "{}\n",
                        json!({"progress": format!("{shard}:{index}"), "cursor": cursor})
                    )
                } else {
                    format!("progress\t{shard}:{index}\tcursor={cursor}\n")
                });
            }
        }
        out.write_all(lines.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Failure { code: 3, message: format!("writing output: {e}") })?;
        if args.count.is_some_and(|count| changes >= count) {
            break;
        }
    }
    Ok(())
}

/// One change: `put KEY VALUE REVISION version=V [prev=VALUE] cursor=C`, tab-separated
/// (`delete KEY REVISION [expired] ...` for a delete, `expired` when its time to live ran
/// out), or one JSON object.
fn line(json: bool, change: &Change, revision: (u32, u64), cursor: &str) -> String {
    if json {
        return format!("{}\n", change_json(change, revision, cursor));
    }
    let revision = format!("{}:{}", revision.0, revision.1);
    let mut fields = Vec::new();
    match (&change.kind, &change.value) {
        (ChangeKind::Put, Some(value)) => {
            fields.push("put".to_string());
            fields.push(escape(&change.key));
            fields.push(escape(&value.value));
            fields.push(revision.clone());
            fields.push(format!("version={}", value.meta.version));
        }
        _ => {
            fields.push("delete".to_string());
            fields.push(escape(&change.key));
            fields.push(revision);
            if change.expired {
                fields.push("expired".to_string());
            }
        }
    }
    if let Some(prev) = &change.prev {
        fields.push(match &prev.value {
            Some(value) => format!("prev={}", escape(value)),
            None => "prev=(left out)".to_string(),
        });
    }
    fields.push(format!("cursor={cursor}"));
    format!("{}\n", fields.join("\t"))
}

fn change_json(change: &Change, (shard, index): (u32, u64), cursor: &str) -> Value {
    let mut object = json!({
        "kind": if change.kind == ChangeKind::Put { "put" } else { "delete" },
        "key": b64(&change.key),
        "shard": shard,
        "index": index,
        "cursor": cursor,
    });
    if let Some(value) = &change.value {
        object["value"] = json!(b64(&value.value));
        object["create_index"] = json!(value.meta.create_index);
        object["version"] = json!(value.meta.version);
    }
    if change.expired {
        object["expired"] = json!(true);
    }
    if let Some(prev) = &change.prev {
        object["prev"] = json!({
            "value": prev.value.as_deref().map(b64),
            "create_index": prev.meta.create_index,
            "mod_index": prev.meta.mod_index,
            "version": prev.meta.version,
        });
    }
    object
}
