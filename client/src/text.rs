//! The text forms `corekvctl` and the HTTP gateway share: a transaction as JSON, and
//! durations like `30s`.
//!
//! A transaction:
//!
//! ```json
//! {
//!   "compare": [{"key": "{u1}:n", "target": "version", "op": "=", "value": 3},
//!               {"key": "{u1}:m", "target": "missing"}],
//!   "success": [{"op": "put", "key": "{u1}:n", "value": "Ada", "ttl": "30s"},
//!               {"op": "get", "key": "{u1}:n"}],
//!   "failure": [{"op": "get", "key": "{u1}:n"}]
//! }
//! ```
//!
//! `compare` targets are `value` (a string operand), `version`, `mod_index`,
//! `create_index` (numbers) with `op` one of `=`, `!=`, `<`, `>`; and `exists`, `missing`
//! (no op, no value). Ops are `get`, `put` (with `value`, and `ttl` or `lease`) and
//! `delete`. Every part may be left out.

use std::time::Duration;

use crate::{Compare, Txn, TxnOp};
use serde_json::Value;

/// Reads a transaction in the JSON form above; the error names the first mistake.
pub fn parse_txn(text: &str) -> Result<Txn, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("expected a JSON object")?;
    for key in object.keys() {
        if !["compare", "success", "failure"].contains(&key.as_str()) {
            return Err(format!("unknown field {key:?} (expected compare, success, failure)"));
        }
    }
    let list = |name: &str| -> Result<Vec<Value>, String> {
        match object.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(_) => Err(format!("{name} must be a list")),
        }
    };
    let mut txn = Txn::new();
    for (i, c) in list("compare")?.iter().enumerate() {
        txn = txn.when(parse_compare(c).map_err(|e| format!("compare {i}: {e}"))?);
    }
    for (name, branch) in [("success", true), ("failure", false)] {
        for (i, op) in list(name)?.iter().enumerate() {
            let op = parse_op(op).map_err(|e| format!("{name} {i}: {e}"))?;
            txn = if branch { txn.and_then([op]) } else { txn.or_else([op]) };
        }
    }
    Ok(txn)
}

fn string_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    v.get(name).and_then(Value::as_str).ok_or_else(|| format!("needs a string {name:?}"))
}

fn parse_compare(c: &Value) -> Result<Compare, String> {
    let key = string_field(c, "key")?;
    let target = string_field(c, "target")?;
    if target == "exists" {
        return Ok(Compare::exists(key));
    }
    if target == "missing" {
        return Ok(Compare::missing(key));
    }
    let builder = match target {
        "value" => Compare::value(key),
        "version" => Compare::version(key),
        "mod_index" => Compare::mod_index(key),
        "create_index" => Compare::create_index(key),
        other => return Err(format!("unknown target {other:?}")),
    };
    let operand: crate::Operand = match (target, c.get("value")) {
        ("value", Some(Value::String(s))) => s.as_str().into(),
        (_, Some(Value::Number(n))) if target != "value" => {
            n.as_u64().ok_or("the value must be a whole number")?.into()
        }
        _ => {
            return Err(format!(
                "target {target:?} needs a {} \"value\"",
                if target == "value" { "string" } else { "numeric" }
            ))
        }
    };
    Ok(match string_field(c, "op")? {
        "=" | "==" => builder.eq(operand),
        "!=" => builder.ne(operand),
        "<" => builder.lt(operand),
        ">" => builder.gt(operand),
        other => return Err(format!("unknown operator {other:?}")),
    })
}

fn parse_op(op: &Value) -> Result<TxnOp, String> {
    let key = string_field(op, "key")?;
    Ok(match string_field(op, "op")? {
        "get" => TxnOp::get(key),
        "put" => match (op.get("ttl"), op.get("lease")) {
            (None, None) => TxnOp::put(key, string_field(op, "value")?),
            (Some(ttl), None) => {
                let ttl = ttl.as_str().ok_or("\"ttl\" must be a duration string like \"30s\"")?;
                TxnOp::put_with_ttl(key, string_field(op, "value")?, parse_duration(ttl)?)
            }
            (None, Some(lease)) => {
                let lease = lease.as_str().ok_or("\"lease\" must be a lease id string")?;
                TxnOp::put_with_lease(key, string_field(op, "value")?, lease.parse()?)
            }
            (Some(_), Some(_)) => Err("a put takes \"ttl\" or \"lease\", not both")?,
        },
        "delete" => TxnOp::delete(key),
        other => Err(format!("unknown op {other:?}"))?,
    })
}

/// A duration like `2s`, `500ms`, `1.5m`, `2h` or `1d` (greater than zero).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 2s or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be greater than zero"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: the documented transaction format parses, and mistakes are named.
    #[test]
    fn transactions() {
        let txn = parse_txn(
            r#"{"compare": [{"key": "k", "target": "version", "op": "=", "value": 3},
                            {"key": "k", "target": "missing"}],
                "success": [{"op": "put", "key": "k", "value": "v"}],
                "failure": [{"op": "get", "key": "k"}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compares, vec![Compare::version("k").eq(3), Compare::missing("k")]);
        assert_eq!(txn.success, vec![TxnOp::put("k", "v")]);
        assert_eq!(txn.failure, vec![TxnOp::get("k")]);
        assert!(parse_txn(r#"{"compares": []}"#).unwrap_err().contains("unknown field"));
        assert!(parse_txn(
            r#"{"compare": [{"key": "k", "target": "version", "op": "=", "value": "x"}]}"#
        )
        .unwrap_err()
        .contains("numeric"));
        assert!(parse_txn(r#"{"success": [{"op": "frob", "key": "k"}]}"#)
            .unwrap_err()
            .contains("unknown op"));
    }
}
