//! Between the client's types and the wire's: metadata, entries, compare and transaction
//! specs, consistency; and the checks a request passes before it is sent.

use corekv_proto::client::{self as wire};
use corekv_proto::constants::{KEY_BYTES_MAX, TTL_MS_MAX, VALUE_BYTES_MAX};
use corekv_proto::encode::{CompareSpec, RequestEncoder, TxnOpSpec};

use crate::error::{Error, Result};
use crate::types::{CompareOp, CompareTarget, Consistency, KeyValue, LeaseId, TxnOp};

pub(super) fn key_value(e: &wire::Entry<'_>) -> KeyValue {
    KeyValue {
        key: e.key().bytes().to_vec(),
        value: e.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
        meta: e.meta().into(),
        ttl: match e.ttl_ms() {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        },
        lease: (e.lease() != 0).then(|| LeaseId(e.lease())),
    }
}

/// A write's time to live (ms, 0: none) and lease (0: none), checked: not both.
pub(super) fn ttl_and_lease(
    ttl: Option<std::time::Duration>,
    lease: Option<LeaseId>,
) -> Result<(u64, u64)> {
    if ttl.is_some() && lease.is_some() {
        return Err(Error::InvalidArgument(
            "a write takes a time to live or a lease, not both".to_string(),
        ));
    }
    Ok((ttl_ms(ttl)?, lease.map_or(0, |l| l.0)))
}

/// A time to live in whole milliseconds (rounded up: a key never lives shorter than asked),
/// checked against the limit; 0 for none.
pub(super) fn ttl_ms(ttl: Option<std::time::Duration>) -> Result<u64> {
    let Some(ttl) = ttl else { return Ok(0) };
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    if ttl.is_zero() || ms > u128::from(TTL_MS_MAX) {
        return Err(Error::InvalidArgument(format!(
            "a time to live must be between 1 ms and {TTL_MS_MAX} ms (ten years), not {ttl:?}"
        )));
    }
    Ok(ms as u64)
}

pub(super) fn protocol(what: &str) -> Error {
    Error::Protocol(format!("unexpected reply to {what}"))
}

pub(super) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty key".to_string()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "key".into(),
            size: key.len() as u64,
            limit: KEY_BYTES_MAX as u64,
        });
    }
    Ok(())
}

pub(super) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "value".into(),
            size: value.len() as u64,
            limit: VALUE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

thread_local! {
    static ENCODER: std::cell::RefCell<RequestEncoder> = std::cell::RefCell::new(RequestEncoder::new());
}

/// Builds one request frame with this thread's reused encoder.
pub(super) fn encode(f: impl FnOnce(&mut RequestEncoder) -> &[u8]) -> Vec<u8> {
    ENCODER.with(|e| f(&mut e.borrow_mut()).to_vec())
}

pub(super) fn wire_consistency(c: Consistency) -> wire::Consistency {
    match c {
        Consistency::Linearizable => wire::Consistency::Linearizable,
        Consistency::Stale => wire::Consistency::Stale,
    }
}

pub(super) fn compare_spec(c: &crate::types::Compare) -> CompareSpec<'_> {
    let op = match c.op {
        CompareOp::Equal => wire::CompareOp::Equal,
        CompareOp::NotEqual => wire::CompareOp::NotEqual,
        CompareOp::Less => wire::CompareOp::Less,
        CompareOp::Greater => wire::CompareOp::Greater,
    };
    let (target, value, number) = match &c.target {
        CompareTarget::Value(v) => (wire::CompareTarget::Value, Some(v.as_slice()), 0),
        CompareTarget::Version(n) => (wire::CompareTarget::Version, None, *n),
        CompareTarget::ModIndex(n) => (wire::CompareTarget::ModIndex, None, *n),
        CompareTarget::CreateIndex(n) => (wire::CompareTarget::CreateIndex, None, *n),
        CompareTarget::Exists => (wire::CompareTarget::Exists, None, 0),
    };
    CompareSpec { key: &c.key, target, op, value, number }
}

pub(super) fn op_spec(op: &TxnOp) -> Result<TxnOpSpec<'_>> {
    let (kind, key, value, ttl_ms, lease) = match op {
        TxnOp::Get(k) => (wire::TxnOpKind::Get, k, None, 0, 0),
        TxnOp::Put(k, v) => (wire::TxnOpKind::Put, k, Some(&v[..]), 0, 0),
        TxnOp::PutWithTtl(k, v, ttl) => {
            (wire::TxnOpKind::Put, k, Some(&v[..]), ttl_ms(Some(*ttl))?, 0)
        }
        TxnOp::PutWithLease(k, v, lease) => (wire::TxnOpKind::Put, k, Some(&v[..]), 0, lease.0),
        TxnOp::Delete(k) => (wire::TxnOpKind::Delete, k, None, 0, 0),
    };
    Ok(TxnOpSpec { kind, key, value, ttl_ms, lease, number: 0 })
}
