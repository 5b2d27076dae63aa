//! The JSON transaction format of `corekvctl txn` (see `TXN_HELP` in `main.rs`) into a
//! [`Txn`], naming the first mistake.

use corekv_client::{Compare, Txn, TxnOp};
use serde_json::Value;

pub(crate) fn parse_txn(text: &str) -> Result<Txn, String> {
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
    let operand: corekv_client::Operand = match (target, c.get("value")) {
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
                TxnOp::put_with_ttl(key, string_field(op, "value")?, crate::parse_duration(ttl)?)
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
