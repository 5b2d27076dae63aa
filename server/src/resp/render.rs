//! Turning the shard core's replies into Redis's: each command's [`Render`] says what shape
//! its answer has; errors map to the codes cluster clients act on.
//!
//! | core error | Redis error | what a client does |
//! |---|---|---|
//! | `NotLeader` with a leader | `MOVED slot host:port` | retries there, refreshes its slot map |
//! | `NotLeader` without one | `TRYAGAIN` | retries after a pause (an election) |
//! | `Unavailable` | `CLUSTERDOWN` | retries later (no quorum, shutting down) |
//! | `Busy` | `TRYAGAIN` | retries after a pause |
//! | `Timeout` of a write | `UNCERTAIN` | must not assume either outcome |
//! | `Timeout` of a read | `TRYAGAIN` | retries |
//! | `PermissionDenied` | `NOPERM` | — |
//! | `InvalidRequest`, `TooLarge` | `ERR` | — |

use corekv_proto::client::{Entry, ErrorKind, ReplyFrame, TxnOpResult};

use super::glob;
use super::reply::Reply;
use super::session::{Host, Session};

/// The shape of a command's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Render {
    /// `+OK`.
    Ok,
    /// A get's entry, answered as the shape says (one of the one-key shapes).
    Get(Shape),
    /// A batch get's entries, answered as the shape says ([`Shape::Values`] or
    /// [`Shape::Exists`]).
    BatchGet(Shape),
    /// How many keys a batch delete deleted.
    Deleted,
    /// `SET` with a condition or `GET`: `OK` (or the old value) when written, null when the
    /// condition failed (or the old value).
    Set {
        /// `GET` was given: the transaction's first result is the old value.
        get: bool,
    },
    /// 1 when a conditional write applied, 0 when its condition failed.
    Applied,
    /// A `SCAN` page: the next cursor and the keys matching `pattern`.
    Scan {
        /// `MATCH`'s pattern.
        pattern: Option<Vec<u8>>,
    },
    /// `KEYS`: every key of the shard matching `pattern`.
    Keys {
        /// The pattern.
        pattern: Vec<u8>,
    },
    /// A command sent as a transaction: its results answer as the shape says.
    Txn(Shape),
    /// `EXEC`: each queued command's results, in order; null when a watched key changed.
    Exec(Vec<Shape>),
    /// `WATCH`: the keys' mod indexes are remembered for `EXEC`.
    Watch(Vec<Vec<u8>>),
}

/// How a run of transaction results answers one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One get: the value, or null.
    Value,
    /// Gets: their values.
    Values(usize),
    /// Gets: how many found a key.
    Exists(usize),
    /// Deletes: how many deleted a key.
    Deleted(usize),
    /// One get: the value's length.
    Strlen,
    /// One get: `string` or `none`.
    Type,
    /// One get: the time to live.
    Ttl {
        /// In ms.
        ms: bool,
    },
    /// One get: part of the value.
    Range {
        /// First byte.
        start: i64,
        /// Last byte.
        end: i64,
    },
    /// Puts: `OK`.
    Ok(usize),
    /// A get, then a write: the value the get read.
    OldValue,
    /// An `Incr`: the new value as an integer.
    Number,
    /// An `IncrFloat`: the new value.
    Float,
    /// An `Append` or `SetRange`: the new length.
    Length,
    /// An `Expire` (whether it applied) or a delete (whether it deleted): 1 or 0.
    Flag,
}

impl Shape {
    /// How many results it takes.
    pub fn results(&self) -> usize {
        match self {
            Shape::Values(n) | Shape::Exists(n) | Shape::Deleted(n) | Shape::Ok(n) => *n,
            Shape::OldValue => 2,
            _ => 1,
        }
    }

    /// Whether the command writes.
    fn writes(&self) -> bool {
        !matches!(
            self,
            Shape::Value
                | Shape::Values(_)
                | Shape::Exists(_)
                | Shape::Strlen
                | Shape::Type
                | Shape::Ttl { .. }
                | Shape::Range { .. }
        )
    }
}

impl Render {
    /// Whether the command writes (a timeout then leaves its outcome unknown).
    fn writes(&self) -> bool {
        match self {
            Render::Txn(shape) => shape.writes(),
            Render::Exec(shapes) => shapes.iter().any(Shape::writes),
            other => {
                matches!(other, Render::Ok | Render::Deleted | Render::Set { .. } | Render::Applied)
            }
        }
    }
}

fn value<'a>(entry: Option<Entry<'a>>) -> Option<&'a [u8]> {
    entry.map(|e| e.value().map(|v| v.bytes()).unwrap_or_default())
}

impl Session {
    pub(super) fn render(
        &self,
        render: &Render,
        slot: Option<u32>,
        frame: &ReplyFrame<'_>,
        host: &mut dyn Host,
    ) -> Vec<u8> {
        if let Some(error) = frame.reply_as_error_reply() {
            let compare_failed = error.kind_type() == ErrorKind::CompareFailed;
            return match render {
                // A transaction without a failure branch reports a failed compare as an error.
                Render::Set { get: false } if compare_failed => self.reply(|r| r.null()),
                Render::Applied if compare_failed => self.reply(|r| r.int(0)),
                // A watched key changed: the transaction did nothing.
                Render::Exec(_) if compare_failed => self.reply(|r| r.null_array()),
                _ => {
                    let text = self.error_text(&error, render.writes(), slot, host);
                    self.reply(|r| r.error(&text))
                }
            };
        }
        let mut buf = Vec::new();
        let mut out = Reply { buf: &mut buf, resp3: self.resp3 };
        if !self.render_into(render, frame, &mut out, host) {
            out.error("ERR the shard answered with a reply of the wrong kind");
        }
        buf
    }

    /// Writes the answer; false when the reply is not the kind the request asks for.
    fn render_into(
        &self,
        render: &Render,
        frame: &ReplyFrame<'_>,
        r: &mut Reply<'_>,
        host: &mut dyn Host,
    ) -> bool {
        match render {
            Render::Ok => r.ok(),
            Render::Get(shape) => {
                let Some(get) = frame.reply_as_get_reply() else { return false };
                single(shape, get.entry(), r);
            }
            Render::BatchGet(shape) => {
                let Some(batch) = frame.reply_as_batch_get_reply() else { return false };
                many(shape, batch.results().iter().map(|x| x.entry()), r);
            }
            Render::Deleted => {
                let Some(batch) = frame.reply_as_batch_delete_reply() else { return false };
                r.int(batch.deleted().iter().filter(|d| *d).count() as i64);
            }
            Render::Set { .. } | Render::Applied => {
                let Some(txn) = frame.reply_as_txn_reply() else { return false };
                let first = txn.results().iter().next().and_then(|x| x.entry());
                match render {
                    Render::Set { get: true } => r.bulk_or_null(value(first)),
                    Render::Set { get: false } if txn.succeeded() => r.ok(),
                    Render::Set { get: false } => r.null(),
                    _ => r.int(txn.succeeded() as i64),
                }
            }
            Render::Txn(shape) => {
                let Some(txn) = frame.reply_as_txn_reply() else { return false };
                let results: Vec<TxnOpResult<'_>> = txn.results().iter().collect();
                if results.len() != shape.results() {
                    return false;
                }
                shaped(shape, &results, r);
            }
            Render::Exec(shapes) => {
                let Some(txn) = frame.reply_as_txn_reply() else { return false };
                let results: Vec<TxnOpResult<'_>> = txn.results().iter().collect();
                if results.len() != shapes.iter().map(Shape::results).sum::<usize>() {
                    return false;
                }
                r.array(shapes.len());
                let mut at = 0;
                for shape in shapes {
                    shaped(shape, &results[at..at + shape.results()], r);
                    at += shape.results();
                }
            }
            Render::Watch(_) => {
                // The session took the mod indexes (`Session::on_reply`).
                if frame.reply_as_batch_get_reply().is_none() {
                    return false;
                }
                r.ok();
            }
            Render::Scan { pattern } => {
                let Some(scan) = frame.reply_as_scan_reply() else { return false };
                let cursor = match scan.continuation() {
                    Some(after) => host.save_cursor(after.bytes().to_vec()),
                    None => 0,
                };
                let keys = scan.entries().iter().map(|e| e.key().bytes());
                let Some(keys) = matching(keys, pattern.as_deref()) else {
                    r.error(PATTERN_TOO_COSTLY);
                    return true;
                };
                r.array(2);
                r.bulk(cursor.to_string().as_bytes());
                r.array(keys.len());
                keys.iter().for_each(|k| r.bulk(k));
            }
            Render::Keys { pattern } => {
                let Some(scan) = frame.reply_as_scan_reply() else { return false };
                if scan.continuation().is_some() {
                    r.error(&format!(
                        "ERR KEYS would read more than {} keys of this shard (those starting \
                         with the pattern's literal prefix): use SCAN",
                        super::KEYS_MAX
                    ));
                    return true;
                }
                let keys = scan.entries().iter().map(|e| e.key().bytes());
                let Some(keys) = matching(keys, Some(pattern)) else {
                    r.error(PATTERN_TOO_COSTLY);
                    return true;
                };
                r.array(keys.len());
                keys.iter().for_each(|k| r.bulk(k));
            }
        }
        true
    }

    /// The Redis error for a core error (the table in this module's header).
    fn error_text(
        &self,
        error: &corekv_proto::client::ErrorReply<'_>,
        writes: bool,
        slot: Option<u32>,
        host: &dyn Host,
    ) -> String {
        let shard = self.place.shard;
        if let Some(not_leader) = error.kind_as_not_leader() {
            let leader = corekv_types::ids::NodeId(not_leader.leader_id());
            return match (slot, host.resp_addr(leader, shard)) {
                (Some(slot), Some(addr)) if leader.get() != 0 => format!("MOVED {slot} {addr}"),
                _ => format!("TRYAGAIN shard {shard} is electing a leader; retry"),
            };
        }
        if let Some(unavailable) = error.kind_as_unavailable() {
            return format!("CLUSTERDOWN {}", unavailable.reason().unwrap_or("unavailable"));
        }
        if let Some(busy) = error.kind_as_busy() {
            return format!(
                "TRYAGAIN shard {shard} is busy; retry in {} ms",
                busy.retry_after_ms()
            );
        }
        if error.kind_as_timeout().is_some() {
            return if writes {
                "UNCERTAIN the write timed out: it may or may not have been applied".into()
            } else {
                format!("TRYAGAIN the read timed out on shard {shard}; retry")
            };
        }
        if let Some(denied) = error.kind_as_permission_denied() {
            return format!("NOPERM {}", denied.reason().unwrap_or("permission denied"));
        }
        if let Some(invalid) = error.kind_as_invalid_request() {
            return format!("ERR {}", invalid.reason().unwrap_or("invalid request"));
        }
        if let Some(large) = error.kind_as_too_large() {
            return format!(
                "ERR {} too large: {} bytes, at most {}",
                large.what().unwrap_or("request"),
                large.size(),
                large.limit()
            );
        }
        if let Some(not_member) = error.kind_as_not_member() {
            return format!(
                "CLUSTERDOWN node {} is no longer a member of shard {}",
                not_member.node_id(),
                not_member.shard()
            );
        }
        format!("ERR the shard refused the request ({:?})", error.kind_type())
    }
}

/// The answer from one key's entry (or its absence), for a one-key shape.
fn single(shape: &Shape, entry: Option<Entry<'_>>, r: &mut Reply<'_>) {
    let bytes = value(entry);
    match shape {
        Shape::Value | Shape::OldValue => r.bulk_or_null(bytes),
        Shape::Strlen => r.int(bytes.map_or(0, <[u8]>::len) as i64),
        Shape::Type => r.simple(if entry.is_some() { "string" } else { "none" }),
        Shape::Ttl { ms } => r.int(match entry {
            None => -2,
            Some(e) if e.ttl_ms() == 0 => -1,
            Some(e) if *ms => e.ttl_ms() as i64,
            Some(e) => (e.ttl_ms() as i64 + 500) / 1000,
        }),
        Shape::Range { start, end } => r.bulk(range(bytes.unwrap_or_default(), *start, *end)),
        other => unreachable!("{other:?} is not a one-key shape"),
    }
}

/// The answer from several keys' entries (or their absence): their values, or how many
/// exist.
fn many<'a>(
    shape: &Shape,
    entries: impl ExactSizeIterator<Item = Option<Entry<'a>>>,
    r: &mut Reply<'_>,
) {
    match shape {
        Shape::Exists(_) => r.int(entries.filter(Option::is_some).count() as i64),
        Shape::Values(_) => {
            r.array(entries.len());
            entries.for_each(|entry| r.bulk_or_null(value(entry)));
        }
        other => unreachable!("{other:?} is not a several-key shape"),
    }
}

/// Why a `SCAN` or `KEYS` was refused after reading.
const PATTERN_TOO_COSTLY: &str =
    "ERR the pattern takes too long to match against these keys: use a simpler one";

/// The keys `pattern` (all, without one) matches, within the step budget
/// ([`crate::constants::RESP_PATTERN_STEPS_MAX`]); `None` past it.
fn matching<'k>(
    keys: impl Iterator<Item = &'k [u8]>,
    pattern: Option<&[u8]>,
) -> Option<Vec<&'k [u8]>> {
    let mut steps = crate::constants::RESP_PATTERN_STEPS_MAX;
    let mut found = Vec::new();
    for key in keys {
        let matched = match pattern {
            Some(pattern) => glob::matches_within(pattern, key, &mut steps)?,
            None => true,
        };
        if matched {
            found.push(key);
        }
    }
    Some(found)
}

/// One command's answer from its run of transaction results (as many as its shape takes).
fn shaped(shape: &Shape, results: &[TxnOpResult<'_>], r: &mut Reply<'_>) {
    if let Some(error) = results.iter().find_map(|x| x.error()) {
        return r.error(error);
    }
    let first = &results[0];
    match shape {
        Shape::Value
        | Shape::Strlen
        | Shape::Type
        | Shape::Ttl { .. }
        | Shape::Range { .. }
        | Shape::OldValue => single(shape, first.entry(), r),
        Shape::Values(_) | Shape::Exists(_) => many(shape, results.iter().map(|x| x.entry()), r),
        Shape::Deleted(_) => r.int(results.iter().filter(|x| x.deleted()).count() as i64),
        Shape::Ok(_) => r.ok(),
        Shape::Number => {
            let text = first.value().map(|v| v.bytes()).unwrap_or_default();
            match std::str::from_utf8(text).ok().and_then(|t| t.parse::<i64>().ok()) {
                Some(n) => r.int(n),
                None => r.error("ERR the shard answered INCR with a value that is not a number"),
            }
        }
        Shape::Float => r.bulk(first.value().map(|v| v.bytes()).unwrap_or_default()),
        Shape::Length => r.int(first.length() as i64),
        Shape::Flag => r.int((first.applied() || first.deleted()) as i64),
    }
}

/// `GETRANGE`'s bytes: Redis's clamping of negative and past-the-end offsets.
pub fn range(bytes: &[u8], start: i64, end: i64) -> &[u8] {
    let len = bytes.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    if start > end || start >= len {
        return &[];
    }
    &bytes[start as usize..=end as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows GETRANGE's offsets behave as Redis documents ("This is a string").
    #[test]
    fn getrange_offsets() {
        let text = b"This is a string";
        assert_eq!(range(text, 0, 3), b"This");
        assert_eq!(range(text, -3, -1), b"ing");
        assert_eq!(range(text, 0, -1), text);
        assert_eq!(range(text, 10, 100), b"string");
        assert_eq!(range(text, 5, 3), b"");
        assert_eq!(range(text, 100, 200), b"");
        assert_eq!(range(b"", 0, -1), b"");
    }
}
