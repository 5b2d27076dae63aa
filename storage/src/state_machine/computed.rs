//! What the computed transaction ops write, from the key's value: Redis's `INCRBY`,
//! `INCRBYFLOAT`, `APPEND`, `SETRANGE` and `EXPIRE` conditions, with Redis's rules and error
//! texts. Pure functions; the state machine reads the value and writes the result.

use super::TxnResult;
use crate::command::DeadlineCondition;
use crate::constants::COMPUTED_VALUE_BYTES_MAX;

/// What a computed op does.
#[derive(Debug, PartialEq)]
pub(super) enum Write {
    /// Write nothing; this is the result.
    Nothing(TxnResult),
    /// Write this value; the result is what [`Outcome`] says of it.
    Put(Vec<u8>, Outcome),
}

/// The result of a computed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The key's metadata after the write.
    Meta,
    /// The new value.
    Value,
    /// The new value's length.
    Length,
}

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const NOT_A_FLOAT: &str = "ERR value is not a valid float";
const TOO_LARGE: &str = "ERR string exceeds maximum allowed size (1048576 bytes)";

/// A decimal integer as Redis reads one: optional `-`, digits, no leading zero, no spaces.
fn integer(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) || digits.starts_with('+')
    {
        return None;
    }
    text.parse().ok()
}

/// A decimal number: what Rust parses as a finite f64, without spaces (Redis refuses those).
fn float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// `INCRBY`: the value (0 when missing) plus `delta`.
pub(super) fn incr(value: Option<&[u8]>, delta: &[u8]) -> Result<Write, String> {
    let delta = integer(delta).ok_or(NOT_AN_INTEGER)?;
    let current = match value {
        Some(value) => integer(value).ok_or(NOT_AN_INTEGER)?,
        None => 0,
    };
    let new = current.checked_add(delta).ok_or("ERR increment or decrement would overflow")?;
    Ok(Write::Put(new.to_string().into_bytes(), Outcome::Value))
}

/// `INCRBYFLOAT`: the value (0 when missing) plus `delta`, printed the shortest way that
/// reads back the same (no exponent).
pub(super) fn incr_float(value: Option<&[u8]>, delta: &[u8]) -> Result<Write, String> {
    let delta = float(delta).filter(|v| v.is_finite()).ok_or(NOT_A_FLOAT)?;
    let current = match value {
        Some(value) => float(value).filter(|v| v.is_finite()).ok_or(NOT_A_FLOAT)?,
        None => 0.0,
    };
    let new = current + delta;
    if !new.is_finite() {
        return Err("ERR increment would produce NaN or Infinity".into());
    }
    Ok(Write::Put(decimal(new).into_bytes(), Outcome::Value))
}

/// A number as `INCRBYFLOAT` writes it: rounded to 15 significant digits (what an f64 holds
/// exactly, so 0.1 + 0.2 is 0.3, as Redis's long double arithmetic gives), no exponent, no
/// trailing zeros.
fn decimal(value: f64) -> String {
    const SIGNIFICANT: i32 = 15;
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let places = (SIGNIFICANT - 1 - magnitude).max(0) as usize;
    let text = format!("{value:.places$}");
    if !text.contains('.') {
        return text;
    }
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// `APPEND`: the value (empty when missing) and `tail`.
pub(super) fn append(value: Option<&[u8]>, tail: &[u8]) -> Result<Write, String> {
    let current = value.unwrap_or_default();
    if current.len() + tail.len() > COMPUTED_VALUE_BYTES_MAX {
        return Err(TOO_LARGE.into());
    }
    Ok(Write::Put([current, tail].concat(), Outcome::Length))
}

/// `SETRANGE`: `bytes` written over the value from `offset`, zero bytes filling any gap.
/// Writing nothing changes nothing (and creates no key).
pub(super) fn set_range(value: Option<&[u8]>, bytes: &[u8], offset: u64) -> Result<Write, String> {
    let current = value.unwrap_or_default();
    if bytes.is_empty() {
        return Ok(Write::Nothing(TxnResult::Length(current.len() as u64)));
    }
    let end = offset.saturating_add(bytes.len() as u64);
    if end > COMPUTED_VALUE_BYTES_MAX as u64 {
        return Err(TOO_LARGE.into());
    }
    let (offset, end) = (offset as usize, end as usize);
    let mut new = current.to_vec();
    if new.len() < end {
        new.resize(end, 0);
    }
    new[offset..end].copy_from_slice(bytes);
    Ok(Write::Put(new, Outcome::Length))
}

/// Whether a key whose deadline is `current` (0: none) takes deadline `new` (0: none) under
/// `condition` ([`DeadlineCondition`]'s number). Removing a deadline applies only to a key
/// that has one (`PERSIST`).
pub(super) fn deadline_holds(condition: u64, current: u64, new: u64) -> bool {
    // No deadline is the latest one.
    let rank = |ms: u64| if ms == 0 { u64::MAX } else { ms };
    if new == 0 {
        return current != 0;
    }
    match DeadlineCondition::from_u64(condition) {
        Some(DeadlineCondition::Always) => true,
        Some(DeadlineCondition::IfNone) => current == 0,
        Some(DeadlineCondition::IfSome) => current != 0,
        Some(DeadlineCondition::IfLater) => current != 0 && rank(new) > rank(current),
        Some(DeadlineCondition::IfEarlier) => rank(new) < rank(current),
        // The leader checks conditions before proposing; an unknown one applies nowhere.
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(write: Result<Write, String>) -> Vec<u8> {
        match write {
            Ok(Write::Put(value, _)) => value,
            other => panic!("not a write: {other:?}"),
        }
    }

    // Shows INCRBY's rules: a missing key is 0, only canonical integers count, overflow is
    // refused; and the error texts are Redis's.
    #[test]
    fn incr_follows_redis() {
        assert_eq!(put(incr(None, b"5")), b"5");
        assert_eq!(put(incr(Some(b"-3"), b"1")), b"-2");
        assert_eq!(put(incr(Some(b"0"), b"-1")), b"-1");
        for bad in [&b"x"[..], b"", b" 1", b"01", b"+1", b"1.5", b"99999999999999999999"] {
            assert_eq!(incr(Some(bad), b"1"), Err(NOT_AN_INTEGER.into()), "{bad:?}");
        }
        assert!(incr(Some(b"9223372036854775807"), b"1").is_err_and(|e| e.contains("overflow")));
        assert_eq!(incr(None, b"x"), Err(NOT_AN_INTEGER.into()));
    }

    // Shows INCRBYFLOAT adds, prints without trailing zeros or exponents, and refuses what
    // is not a finite number.
    #[test]
    fn incr_float_follows_redis() {
        assert_eq!(put(incr_float(Some(b"10.50"), b"0.1")), b"10.6");
        assert_eq!(put(incr_float(Some(b"5.0e3"), b"2.0e2")), b"5200");
        assert_eq!(put(incr_float(None, b"-1.5")), b"-1.5");
        assert_eq!(put(incr_float(Some(b"0.2"), b"0.1")), b"0.3");
        assert_eq!(put(incr_float(Some(b"1e20"), b"1")), b"100000000000000000000");
        assert_eq!(put(incr_float(Some(b"1.5"), b"-1.5")), b"0");
        assert_eq!(put(incr_float(Some(b"3"), b"0.0001")), b"3.0001");
        assert_eq!(incr_float(Some(b"abc"), b"1"), Err(NOT_A_FLOAT.into()));
        assert_eq!(incr_float(Some(b"1"), b"inf"), Err(NOT_A_FLOAT.into()));
        assert!(incr_float(Some(b"1.7e308"), b"1.7e308").is_err_and(|e| e.contains("Infinity")));
    }

    // Shows APPEND and SETRANGE lengths, zero padding, and the size limit.
    #[test]
    fn append_and_set_range() {
        assert_eq!(put(append(Some(b"Hello"), b" World")), b"Hello World");
        assert_eq!(put(set_range(Some(b"Hello World"), b"Redis", 6)), b"Hello Redis");
        assert_eq!(put(set_range(None, b"Redis", 6)), b"\0\0\0\0\0\0Redis");
        assert_eq!(set_range(Some(b"abc"), b"", 100), Ok(Write::Nothing(TxnResult::Length(3))));
        let big = vec![b'x'; COMPUTED_VALUE_BYTES_MAX];
        assert_eq!(append(Some(&big), b"y"), Err(TOO_LARGE.into()));
        assert_eq!(set_range(None, b"y", COMPUTED_VALUE_BYTES_MAX as u64), Err(TOO_LARGE.into()));
        assert_eq!(set_range(None, b"y", u64::MAX), Err(TOO_LARGE.into()));
    }

    // Shows EXPIRE's NX/XX/GT/LT, with no deadline counting as forever, and PERSIST.
    #[test]
    fn deadline_conditions() {
        let (always, none, some, later, earlier) = (0, 1, 2, 3, 4);
        assert!(deadline_holds(always, 0, 10));
        assert!(deadline_holds(none, 0, 10) && !deadline_holds(none, 5, 10));
        assert!(deadline_holds(some, 5, 10) && !deadline_holds(some, 0, 10));
        assert!(deadline_holds(later, 5, 10) && !deadline_holds(later, 0, 10));
        assert!(!deadline_holds(later, 15, 10));
        assert!(deadline_holds(earlier, 0, 10) && deadline_holds(earlier, 15, 10));
        assert!(!deadline_holds(earlier, 5, 10));
        assert!(deadline_holds(always, 5, 0) && !deadline_holds(always, 0, 0));
        assert!(!deadline_holds(9, 0, 10));
    }
}
