//! What `corekvctl` prints: values escaped for a terminal, and each result as text or JSON
//! (keys and values in base64 there).

use base64::Engine;
use corekv_client::{KeyMeta, KeyValue, ReplicaReport, TxnOpResult, TxnResponse};
use serde_json::{json, Value};

/// Bytes for a terminal: printable text as is, everything else as `\xNN` (and `\\`).
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn meta_json(m: &KeyMeta) -> Value {
    json!({"create_index": m.create_index, "mod_index": m.mod_index, "version": m.version})
}

pub(crate) fn entry_json(e: &KeyValue) -> Value {
    let mut object = json!({"key": b64(&e.key), "value": b64(&e.value),
           "create_index": e.meta.create_index, "mod_index": e.meta.mod_index,
           "version": e.meta.version});
    if let Some(ttl) = e.ttl {
        object["ttl_ms"] = json!(ttl.as_millis() as u64);
    }
    if let Some(lease) = e.lease {
        object["lease"] = json!(lease.to_string());
    }
    object
}

pub(crate) fn txn_json(r: &TxnResponse) -> Value {
    let results: Vec<Value> = r
        .results
        .iter()
        .map(|res| match res {
            TxnOpResult::Get(found) => json!({"get": found.as_ref().map(entry_json)}),
            TxnOpResult::Put(meta) => json!({"put": meta_json(meta)}),
            TxnOpResult::Delete(deleted) => json!({"delete": deleted}),
        })
        .collect();
    json!({"succeeded": r.succeeded, "failed_compare": r.failed_compare, "index": r.index, "results": results})
}

pub(crate) fn txn_text(r: &TxnResponse) -> String {
    let mut text = String::from(if r.succeeded { "SUCCEEDED\n" } else { "FAILED\n" });
    if let Some(i) = r.failed_compare {
        text.push_str(&format!("compare {i} did not hold\n"));
    }
    for res in &r.results {
        match res {
            TxnOpResult::Get(Some(e)) => {
                text.push_str(&format!("get {}\t{}\n", escape(&e.key), escape(&e.value)))
            }
            TxnOpResult::Get(None) => text.push_str("get (not found)\n"),
            TxnOpResult::Put(m) => text.push_str(&format!("put version {}\n", m.version)),
            TxnOpResult::Delete(d) => text.push_str(&format!("delete {}\n", *d as u8)),
        }
    }
    text
}

pub(crate) fn status_json(reports: &[ReplicaReport]) -> Value {
    let replicas: Vec<Value> = reports
        .iter()
        .map(|r| match &r.status {
            // The replica's own status shape (the node's /status per shard), and where it is.
            Ok(s) => {
                let mut replica = serde_json::to_value(s)
                    .unwrap_or_else(|e| json!({"error": format!("status not representable: {e}")}));
                replica["node_id"] = json!(r.node_id);
                replica["addr"] = json!(r.addr);
                replica
            }
            Err(e) => json!({"node_id": r.node_id, "shard": r.shard, "addr": r.addr, "error": e.to_string()}),
        })
        .collect();
    json!({"replicas": replicas})
}

pub(crate) fn status_text(reports: &[ReplicaReport]) -> String {
    let mut text = format!(
        "{:<6} {:<5} {:<22} {:<13} {:>6} {:>7} {:>10} {:>10} {:>10} {:>9}  SERVING\n",
        "SHARD", "NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "KEYS"
    );
    let mut sorted: Vec<&ReplicaReport> = reports.iter().collect();
    sorted.sort_by_key(|r| (r.shard, r.node_id));
    for r in sorted {
        match &r.status {
            Ok(s) => text.push_str(&format!(
                "{:<6} {:<5} {:<22} {:<13} {:>6} {:>7} {:>10} {:>10} {:>10} {:>9}  {}\n",
                r.shard,
                r.node_id,
                r.addr,
                s.role.as_str(),
                s.term,
                s.leader_id,
                s.commit_index,
                s.applied_index,
                s.last_index,
                s.keys,
                match (&s.problem, s.joining) {
                    (None, _) => "yes".to_string(),
                    (Some(_), true) => "no (joining)".to_string(),
                    (Some(problem), false) => format!("no: {problem}"),
                }
            )),
            Err(e) => text.push_str(&format!(
                "{:<6} {:<5} {:<22} unreachable: {e}\n",
                r.shard, r.node_id, r.addr
            )),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: binary and control bytes are escaped, text is not.
    #[test]
    fn escaping() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\x00b\n\\"), "a\\x00b\\x0a\\\\");
        assert_eq!(escape(&[0xff, b'x']), "\\xffx");
        assert_eq!(escape("héllo".as_bytes()), "héllo");
    }
}
