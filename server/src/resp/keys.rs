//! The commands on keys, each turned into one request to the shard core (the keys share a
//! slot, which the session checked), and the [`Render`] that turns the core's reply into
//! Redis's.
//!
//! Reads and plain writes use the matching request (a get, a batch put…). Every command that
//! reads and writes (`GETSET`, `GETDEL`, `INCR`, `APPEND`, `SETRANGE`, `EXPIRE`…) is a
//! transaction whose ops apply together in one raft entry, the computing ones inside the
//! state machine, so no other write can come between the read and the write. A command's
//! transaction form ([`Session::txn_form`]) is also what `MULTI` queues: `EXEC` sends all the
//! queued commands' ops as one transaction.

use std::borrow::Cow;

use corekv_proto::client::{CompareOp, CompareTarget, Consistency, TxnOpKind};
use corekv_proto::constants::{TTL_MS_MAX, VALUE_BYTES_MAX};
use corekv_proto::encode::{CompareSpec, TxnOpSpec};

use super::commands::Spec;
use super::render::{Render, Shape};
use super::session::{integer, is, Answer, Host, Session};

/// `SET`'s options.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SetOptions {
    /// `NX` (`Some(false)`: the key must not exist) or `XX` (`Some(true)`: it must).
    pub(super) exists: Option<bool>,
    /// `GET`: answer the old value.
    pub(super) get: bool,
    /// ms to live; 0: none.
    pub(super) ttl_ms: u64,
    /// `KEEPTTL`: keep the key's deadline.
    pub(super) keep_ttl: bool,
}

/// `EXPIRE`'s conditions, numbered as the transaction op's.
const EXPIRE_CONDITIONS: [(&str, u64); 4] = [("NX", 1), ("XX", 2), ("GT", 3), ("LT", 4)];

impl Session {
    pub(super) fn keyed(
        &mut self,
        seq: u64,
        spec: &Spec,
        args: &[Vec<u8>],
        slot: u32,
        host: &mut dyn Host,
    ) -> Answer {
        match self.keyed_request(seq, spec, args, host) {
            Ok(render) => Answer::Core(render, Some(slot)),
            Err(error) => self.error(&error),
        }
    }

    pub(super) fn consistency(&self) -> Consistency {
        if self.readonly {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    }

    /// Sends the command's request; how to render its reply, or the error to answer.
    fn keyed_request(
        &mut self,
        seq: u64,
        spec: &Spec,
        args: &[Vec<u8>],
        host: &mut dyn Host,
    ) -> Result<Render, String> {
        let key = &args[1][..];
        let consistency = self.consistency();
        let keys = || args[1..].iter().map(Vec::as_slice).collect::<Vec<&[u8]>>();
        let enc = &mut self.encoder;
        let (frame, render) = match spec.name {
            "get" => (enc.get(seq, key, consistency), Render::Get(Shape::Value)),
            "getex" if args.len() == 2 => {
                (enc.get(seq, key, consistency), Render::Get(Shape::Value))
            }
            "strlen" => (enc.get(seq, key, consistency), Render::Get(Shape::Strlen)),
            "type" => (enc.get(seq, key, consistency), Render::Get(Shape::Type)),
            "ttl" => (enc.get(seq, key, consistency), Render::Get(Shape::Ttl { ms: false })),
            "pttl" => (enc.get(seq, key, consistency), Render::Get(Shape::Ttl { ms: true })),
            "getrange" => {
                let (start, end) = (integer(&args[2])?, integer(&args[3])?);
                (enc.get(seq, key, consistency), Render::Get(Shape::Range { start, end }))
            }
            "mget" => {
                let shape = Shape::Values(args.len() - 1);
                (enc.batch_get(seq, &keys(), consistency), Render::BatchGet(shape))
            }
            "exists" => {
                let shape = Shape::Exists(args.len() - 1);
                (enc.batch_get(seq, &keys(), consistency), Render::BatchGet(shape))
            }
            "del" | "unlink" => (enc.batch_delete(seq, &keys()), Render::Deleted),
            "setex" | "psetex" => {
                let unit = if spec.name == "setex" { 1000 } else { 1 };
                let ttl_ms = ttl(integer(&args[2])?, unit, spec.name)?;
                (enc.put_ttl(seq, key, &args[3], ttl_ms), Render::Ok)
            }
            "mset" => {
                let items: Vec<(&[u8], &[u8])> = pairs(spec, args)?;
                (enc.batch_put(seq, &items), Render::Ok)
            }
            "set" => {
                let options = set_options(&args[3..], host.now_ms(), "set")?;
                if options.exists.is_some() {
                    return Ok(self.conditional_set(seq, key, &args[2], &options, host));
                }
                if !options.get && !options.keep_ttl {
                    let frame = enc.put_ttl(seq, key, &args[2], options.ttl_ms);
                    host.submit(frame);
                    return Ok(Render::Ok);
                }
                return self.as_txn(seq, spec, args, host);
            }
            "setnx" => {
                let options = SetOptions { exists: Some(false), ..SetOptions::default() };
                self.conditional_set(seq, key, &args[2], &options, host);
                return Ok(Render::Applied);
            }
            "msetnx" => {
                let items = pairs(spec, args)?;
                let compares: Vec<CompareSpec<'_>> =
                    items.iter().map(|(key, _)| absent(key)).collect();
                let puts: Vec<TxnOpSpec<'_>> =
                    items.iter().map(|(k, v)| op(TxnOpKind::Put, k, Some(v))).collect();
                (enc.txn(seq, &compares, &puts, &[]), Render::Applied)
            }
            _ => return self.as_txn(seq, spec, args, host),
        };
        host.submit(frame);
        Ok(render)
    }

    /// Sends the command as a transaction of its [`Session::txn_form`].
    fn as_txn(
        &mut self,
        seq: u64,
        spec: &Spec,
        args: &[Vec<u8>],
        host: &mut dyn Host,
    ) -> Result<Render, String> {
        let (ops, shape) = txn_form(spec, args, host.now_ms())?;
        let ops: Vec<TxnOpSpec<'_>> = ops.iter().map(TxnStep::spec).collect();
        host.submit(self.encoder.txn(seq, &[], &ops, &[]));
        Ok(Render::Txn(shape))
    }

    /// `SET NX|XX` (and `SETNX`): a transaction comparing the key's existence, reading the
    /// old value too with `GET`.
    fn conditional_set(
        &mut self,
        seq: u64,
        key: &[u8],
        value: &[u8],
        options: &SetOptions,
        host: &mut dyn Host,
    ) -> Render {
        let compare = match options.exists {
            Some(true) => CompareSpec { op: CompareOp::Equal, ..absent(key) },
            _ => absent(key),
        };
        let get = op(TxnOpKind::Get, key, None);
        let put = set_op(key, value, options);
        let put = put.spec();
        let frame = if options.get {
            self.encoder.txn(seq, &[compare], &[get, put], &[get])
        } else {
            self.encoder.txn(seq, &[compare], &[put], &[])
        };
        host.submit(frame);
        Render::Set { get: options.get }
    }
}

/// The command as transaction ops, and how their results answer it: what `MULTI` queues, and
/// how every read-and-write command is sent. Commands with a condition of their own (`SET
/// NX`, `SETNX`, `MSETNX`) have none: a transaction's compares are the whole transaction's.
pub(super) fn txn_form<'a>(
    spec: &Spec,
    args: &'a [Vec<u8>],
    now_ms: u64,
) -> Result<(Vec<TxnStep<'a>>, Shape), String> {
    let key = &args[1][..];
    let get = TxnStep::new(TxnOpKind::Get, key, None);
    let gets = || args[1..].iter().map(|k| TxnStep::new(TxnOpKind::Get, k, None)).collect();
    let computed = |kind, value: &'a [u8]| TxnStep::new(kind, key, Some(Cow::Borrowed(value)));
    Ok(match spec.name {
        "get" => (vec![get], Shape::Value),
        "strlen" => (vec![get], Shape::Strlen),
        "type" => (vec![get], Shape::Type),
        "ttl" => (vec![get], Shape::Ttl { ms: false }),
        "pttl" => (vec![get], Shape::Ttl { ms: true }),
        "getrange" => {
            let (start, end) = (integer(&args[2])?, integer(&args[3])?);
            (vec![get], Shape::Range { start, end })
        }
        "mget" => (gets(), Shape::Values(args.len() - 1)),
        "exists" => (gets(), Shape::Exists(args.len() - 1)),
        "del" | "unlink" => {
            let deletes =
                args[1..].iter().map(|k| TxnStep::new(TxnOpKind::Delete, k, None)).collect();
            (deletes, Shape::Deleted(args.len() - 1))
        }
        "set" => {
            let options = set_options(&args[3..], now_ms, "set")?;
            if options.exists.is_some() {
                return Err("ERR SET NX and XX are not supported inside MULTI: WATCH the key, \
                            then SET"
                    .into());
            }
            let put = set_op(key, &args[2], &options);
            if options.get {
                (vec![get, put], Shape::OldValue)
            } else {
                (vec![put], Shape::Ok(1))
            }
        }
        "setex" | "psetex" => {
            let unit = if spec.name == "setex" { 1000 } else { 1 };
            let ttl_ms = ttl(integer(&args[2])?, unit, spec.name)?;
            let put =
                TxnStep { ttl_ms, ..TxnStep::new(TxnOpKind::Put, key, Some(args[3][..].into())) };
            (vec![put], Shape::Ok(1))
        }
        "mset" => {
            let puts: Vec<_> = pairs(spec, args)?
                .into_iter()
                .map(|(k, v)| TxnStep::new(TxnOpKind::Put, k, Some(v.into())))
                .collect();
            let n = puts.len();
            (puts, Shape::Ok(n))
        }
        "getset" => {
            let put = TxnStep::new(TxnOpKind::Put, key, Some(args[2][..].into()));
            (vec![get, put], Shape::OldValue)
        }
        "getdel" => (vec![get, TxnStep::new(TxnOpKind::Delete, key, None)], Shape::OldValue),
        "incr" => (vec![computed(TxnOpKind::Incr, b"1")], Shape::Number),
        "decr" => (vec![computed(TxnOpKind::Incr, b"-1")], Shape::Number),
        "incrby" | "decrby" => {
            let delta = integer(&args[2])?;
            let delta = if spec.name == "decrby" {
                delta.checked_neg().ok_or("ERR decrement would overflow")?
            } else {
                delta
            };
            let delta = Some(Cow::Owned(delta.to_string().into_bytes()));
            (vec![TxnStep::new(TxnOpKind::Incr, key, delta)], Shape::Number)
        }
        "incrbyfloat" => {
            let valid = std::str::from_utf8(&args[2])
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !valid {
                return Err("ERR value is not a valid float".into());
            }
            (vec![computed(TxnOpKind::IncrFloat, &args[2])], Shape::Float)
        }
        "append" => (vec![computed(TxnOpKind::Append, &args[2])], Shape::Length),
        "setrange" => {
            let offset = integer(&args[2])?;
            if offset < 0 {
                return Err("ERR offset is out of range".into());
            }
            if offset as u64 + args[3].len() as u64 > VALUE_BYTES_MAX as u64 {
                return Err("ERR string exceeds maximum allowed size (1048576 bytes)".into());
            }
            let set = TxnStep { number: offset as u64, ..computed(TxnOpKind::SetRange, &args[3]) };
            (vec![set], Shape::Length)
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            (vec![expire_op(spec.name, key, &args[2..], now_ms)?], Shape::Flag)
        }
        "persist" => (vec![TxnStep::new(TxnOpKind::Expire, key, None)], Shape::Flag),
        "getex" => {
            let options = set_options(&args[2..], now_ms, "getex")?;
            let persist = args[2..].iter().any(|a| is(a, "PERSIST"));
            if options.exists.is_some() || options.get || options.keep_ttl {
                return Err("ERR syntax error".into());
            }
            if options.ttl_ms == 0 && !persist {
                return Ok((vec![get], Shape::Value));
            }
            // With neither option GETEX reads only; PERSIST is an Expire with no time to live.
            let expire =
                TxnStep { ttl_ms: options.ttl_ms, ..TxnStep::new(TxnOpKind::Expire, key, None) };
            (vec![get, expire], Shape::OldValue)
        }
        other => return Err(format!("ERR {} is not supported inside MULTI", other.to_uppercase())),
    })
}

/// One transaction op, owning what it computed (a negated delta), borrowing the rest.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TxnStep<'a> {
    kind: TxnOpKind,
    key: &'a [u8],
    value: Option<Cow<'a, [u8]>>,
    ttl_ms: u64,
    number: u64,
}

impl<'a> TxnStep<'a> {
    fn new(kind: TxnOpKind, key: &'a [u8], value: Option<Cow<'a, [u8]>>) -> Self {
        TxnStep { kind, key, value, ttl_ms: 0, number: 0 }
    }

    /// The op as the request encoder takes it.
    pub(super) fn spec(&self) -> TxnOpSpec<'_> {
        TxnOpSpec {
            kind: self.kind,
            key: self.key,
            value: self.value.as_deref(),
            ttl_ms: self.ttl_ms,
            lease: 0,
            number: self.number,
        }
    }
}

/// A transaction op.
fn op<'a>(kind: TxnOpKind, key: &'a [u8], value: Option<&'a [u8]>) -> TxnOpSpec<'a> {
    TxnOpSpec { kind, key, value, ttl_ms: 0, lease: 0, number: 0 }
}

/// `SET`'s write: a put with its time to live, or keeping the key's deadline.
fn set_op<'a>(key: &'a [u8], value: &'a [u8], options: &SetOptions) -> TxnStep<'a> {
    let kind = if options.keep_ttl { TxnOpKind::PutKeepTtl } else { TxnOpKind::Put };
    TxnStep { ttl_ms: options.ttl_ms, ..TxnStep::new(kind, key, Some(Cow::Borrowed(value))) }
}

/// The compare "`key` does not exist".
fn absent(key: &[u8]) -> CompareSpec<'_> {
    CompareSpec {
        key,
        target: CompareTarget::Exists,
        op: CompareOp::NotEqual,
        value: None,
        number: 0,
    }
}

/// A key and its value, borrowed from a command's arguments.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// `MSET`'s key, value pairs.
fn pairs<'a>(spec: &Spec, args: &'a [Vec<u8>]) -> Result<Vec<Pair<'a>>, String> {
    if args.len() % 2 == 0 {
        return Err(format!("ERR wrong number of arguments for '{}' command", spec.name));
    }
    Ok(args[1..].chunks(2).map(|kv| (&kv[0][..], &kv[1][..])).collect())
}

/// A time to live of `amount` units of `unit_ms`, checked as Redis checks it.
fn ttl(amount: i64, unit_ms: u64, command: &str) -> Result<u64, String> {
    let invalid = || format!("ERR invalid expire time in '{command}' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let ms = (amount as u64).checked_mul(unit_ms).ok_or_else(invalid)?;
    if ms > TTL_MS_MAX {
        return Err(format!(
            "ERR invalid expire time in '{command}' command: at most ten years ({TTL_MS_MAX} ms)"
        ));
    }
    Ok(ms)
}

/// The time to live until deadline `amount` (in units of `unit_ms`, since the Unix epoch):
/// at least 1 ms (a deadline already past leaves the key the least time there is: it is gone
/// by the next read, as in Redis).
fn ttl_until(amount: i64, unit_ms: u64, command: &str, now_ms: u64) -> Result<u64, String> {
    let invalid = || format!("ERR invalid expire time in '{command}' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let deadline_ms = (amount as u64).checked_mul(unit_ms).ok_or_else(invalid)?;
    let ttl_ms = deadline_ms.saturating_sub(now_ms).max(1);
    if ttl_ms > TTL_MS_MAX {
        return Err(format!(
            "ERR invalid expire time in '{command}' command: at most ten years from now"
        ));
    }
    Ok(ttl_ms)
}

/// `EXPIRE key n [NX|XX|GT|LT]` and its `P…`/`…AT` forms: the deadline-setting op. A time
/// already past deletes the key (answering whether it existed), as Redis does; with a
/// condition it gives the key the shortest deadline there is, under the condition.
fn expire_op<'a>(
    command: &str,
    key: &'a [u8],
    options: &[Vec<u8>],
    now_ms: u64,
) -> Result<TxnStep<'a>, String> {
    let amount = integer(&options[0])?;
    let mut condition = 0;
    for option in &options[1..] {
        let found = EXPIRE_CONDITIONS.iter().find(|(name, _)| is(option, name));
        match found {
            Some((_, number)) if condition == 0 || condition == *number => condition = *number,
            Some((_, number)) => {
                let text = if condition >= 3 && *number >= 3 {
                    "ERR GT and LT options at the same time are not compatible"
                } else {
                    "ERR NX and XX, GT or LT options at the same time are not compatible"
                };
                return Err(text.into());
            }
            None => {
                return Err(format!("ERR Unsupported option {}", String::from_utf8_lossy(option)))
            }
        }
    }
    let unit = if command.starts_with('p') { 1 } else { 1000 };
    let at = command.ends_with("at");
    let past = if at { amount.saturating_mul(unit as i64) <= now_ms as i64 } else { amount <= 0 };
    if past && condition == 0 {
        return Ok(TxnStep::new(TxnOpKind::Delete, key, None));
    }
    let ttl_ms = match (past, at) {
        (true, _) => 1,
        (false, true) => ttl_until(amount, unit, command, now_ms)?,
        (false, false) => ttl(amount, unit, command)?,
    };
    Ok(TxnStep { ttl_ms, number: condition, ..TxnStep::new(TxnOpKind::Expire, key, None) })
}

/// `SET`'s (and `GETEX`'s) options after the value: `NX|XX`, `GET`, `KEEPTTL`, `EX s|PX
/// ms|EXAT ts|PXAT ms-ts` (and `PERSIST` for `GETEX`); errors name `command`.
fn set_options(args: &[Vec<u8>], now_ms: u64, command: &str) -> Result<SetOptions, String> {
    let syntax = || "ERR syntax error".to_string();
    let mut options = SetOptions::default();
    let mut expiry = false;
    let mut at = 0;
    while at < args.len() {
        let arg = &args[at];
        if is(arg, "NX") || is(arg, "XX") {
            if options.exists.is_some() {
                return Err(syntax());
            }
            options.exists = Some(is(arg, "XX"));
        } else if is(arg, "GET") {
            options.get = true;
        } else if is(arg, "KEEPTTL") || (is(arg, "PERSIST") && command == "getex") {
            if expiry {
                return Err(syntax());
            }
            expiry = true;
            options.keep_ttl = is(arg, "KEEPTTL");
        } else if ["EX", "PX", "EXAT", "PXAT"].iter().any(|w| is(arg, w)) {
            let amount = args.get(at + 1).ok_or_else(syntax)?;
            if expiry {
                return Err(syntax());
            }
            expiry = true;
            let amount = integer(amount)?;
            let unit = if is(arg, "EX") || is(arg, "EXAT") { 1000 } else { 1 };
            options.ttl_ms = if is(arg, "EX") || is(arg, "PX") {
                ttl(amount, unit, command)?
            } else {
                ttl_until(amount, unit, command, now_ms)?
            };
            at += 1;
        } else {
            return Err(syntax());
        }
        at += 1;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    // Shows SET's options parse as Redis's do, conflicting ones are a syntax error, and
    // expiry times are checked.
    #[test]
    fn set_options_parse_like_redis() {
        let parse = |words: &[&str]| set_options(&args(words), 1_000_000, "set");
        assert_eq!(parse(&[]), Ok(SetOptions::default()));
        assert_eq!(
            parse(&["nx", "GET", "EX", "10"]),
            Ok(SetOptions { exists: Some(false), get: true, ttl_ms: 10_000, keep_ttl: false })
        );
        assert_eq!(parse(&["XX"]).map(|o| o.exists), Ok(Some(true)));
        assert_eq!(parse(&["KEEPTTL"]).map(|o| o.keep_ttl), Ok(true));
        assert_eq!(parse(&["PXAT", "1000500"]).map(|o| o.ttl_ms), Ok(500));
        assert_eq!(parse(&["EXAT", "1"]).map(|o| o.ttl_ms), Ok(1));
        let now = 1_780_000_000_000u64;
        let far = set_options(&args(&["EXAT", &(now / 1000 + 60).to_string()]), now, "set");
        assert_eq!(far.map(|o| o.ttl_ms), Ok(60_000), "a real clock's deadlines");
        assert_eq!(parse(&["NX", "XX"]), Err("ERR syntax error".into()));
        assert_eq!(parse(&["EX", "1", "PX", "5"]), Err("ERR syntax error".into()));
        assert_eq!(parse(&["EX", "1", "KEEPTTL"]), Err("ERR syntax error".into()));
        assert_eq!(parse(&["PERSIST"]), Err("ERR syntax error".into()), "GETEX's only");
        let getex = set_options(&args(&["EX", "0"]), 0, "getex");
        assert_eq!(getex, Err("ERR invalid expire time in 'getex' command".into()));
        assert_eq!(parse(&["EX"]), Err("ERR syntax error".into()));
        assert_eq!(parse(&["BOGUS"]), Err("ERR syntax error".into()));
        assert!(parse(&["EX", "0"]).is_err_and(|e| e.contains("invalid expire time")));
        assert!(parse(&["EX", "x"]).is_err_and(|e| e.contains("not an integer")));
        assert!(parse(&["EX", "999999999999"]).is_err_and(|e| e.contains("ten years")));
    }

    // Shows EXPIRE's forms: relative and absolute, in s and ms; a time already past deletes
    // (or, under a condition, gives the shortest deadline); conditions checked.
    #[test]
    fn expire_forms() {
        let now = 1_000_000;
        let expire = |command, words: &[&str]| expire_op(command, b"k", &args(words), now);
        let ttl_of = |step: TxnStep<'_>| (step.kind, step.ttl_ms, step.number);
        assert_eq!(expire("expire", &["10"]).map(ttl_of), Ok((TxnOpKind::Expire, 10_000, 0)));
        assert_eq!(expire("pexpire", &["10", "gt"]).map(ttl_of), Ok((TxnOpKind::Expire, 10, 3)));
        assert_eq!(expire("expireat", &["1010"]).map(ttl_of), Ok((TxnOpKind::Expire, 10_000, 0)));
        assert_eq!(expire("pexpireat", &["1000001"]).map(ttl_of), Ok((TxnOpKind::Expire, 1, 0)));
        assert_eq!(expire("expire", &["0"]).map(ttl_of), Ok((TxnOpKind::Delete, 0, 0)));
        assert_eq!(expire("expireat", &["5"]).map(ttl_of), Ok((TxnOpKind::Delete, 0, 0)));
        assert_eq!(expire("expire", &["-1", "NX"]).map(ttl_of), Ok((TxnOpKind::Expire, 1, 1)));
        assert!(expire("expire", &["10", "NX", "XX"]).is_err_and(|e| e.contains("NX and XX")));
        assert!(expire("expire", &["10", "GT", "LT"]).is_err_and(|e| e.contains("GT and LT")));
        assert!(expire("expire", &["10", "ZZ"]).is_err_and(|e| e.contains("Unsupported option")));
        assert!(expire("expire", &["x"]).is_err_and(|e| e.contains("not an integer")));
    }
}
