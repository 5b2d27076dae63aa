//! The history log's records: what one applied entry changed, and the marks that say how far
//! the history reaches.
//!
//! | kind | payload | meaning |
//! | --- | --- | --- |
//! | 16 `ENTRY` | index u64, time_ms u64, count u32, then `count` changes | every change entry `index` made, applied at `time_ms` (wall clock, ms since the Unix epoch) |
//! | 17 `THROUGH` | index u64 | every change of the entries up to `index` is in the history |
//! | 18 `RESET` | index u64 | the history before this record is void: the state was replaced by a snapshot at `index` (or the history was lost); it covers the entries after it |
//!
//! ```text
//! change:  flags u8 | key | [put: value | meta] | [prev: meta | [value]]
//!   flags  bit 0: a put (else a delete); bit 1: the key existed before; bit 2: the value
//!          before is kept
//!   meta   create_index u64 | mod_index u64 | version u64
//!   key, value: length u32 | bytes
//! ```
//!
//! All integers are little-endian. Decoding never trusts a length.

use corekv_types::meta::KeyMeta;

use crate::state_machine::{Change, Prev};

/// Record kind: an entry's changes.
pub const KIND_ENTRY: u8 = 16;
/// Record kind: the history reaches this index.
pub const KIND_THROUGH: u8 = 17;
/// Record kind: the history restarts after this index.
pub const KIND_RESET: u8 = 18;

const FLAG_PUT: u8 = 1;
const FLAG_PREV: u8 = 2;
const FLAG_PREV_VALUE: u8 = 4;

/// Bytes of an entry record's payload before its changes.
#[cfg(test)]
pub(super) const ENTRY_HEADER_BYTES: usize = 8 + 8 + 4;

/// What one applied entry changed, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The raft index of the entry: the revision of its changes.
    pub index: u64,
    /// When this replica applied it (ms since the Unix epoch): what age-based retention
    /// goes by.
    pub time_ms: u64,
    /// Its changes, in the order they were applied.
    pub changes: Vec<Change>,
}

impl HistoryEntry {
    /// Bytes its keys and values take (what memory bounds count).
    pub fn bytes(&self) -> usize {
        self.changes.iter().map(|c| c.bytes() + 64).sum::<usize>() + 64
    }
}

/// Appends an entry record's payload to `out`.
pub(super) fn encode_entry(out: &mut Vec<u8>, entry: &HistoryEntry) {
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.time_ms.to_le_bytes());
    out.extend_from_slice(&(entry.changes.len() as u32).to_le_bytes());
    for change in &entry.changes {
        let mut flags = 0;
        if change.put.is_some() {
            flags |= FLAG_PUT;
        }
        if let Some(prev) = &change.prev {
            flags |= FLAG_PREV;
            if prev.value.is_some() {
                flags |= FLAG_PREV_VALUE;
            }
        }
        out.push(flags);
        put_bytes(out, &change.key);
        if let Some((value, meta)) = &change.put {
            put_bytes(out, value);
            put_meta(out, meta);
        }
        if let Some(prev) = &change.prev {
            put_meta(out, &prev.meta);
            if let Some(value) = &prev.value {
                put_bytes(out, value);
            }
        }
    }
}

/// The index and time of an entry record, without decoding its changes.
pub(super) fn entry_header(payload: &[u8]) -> Result<(u64, u64), String> {
    let mut r = Reader { bytes: payload, at: 0 };
    Ok((r.u64()?, r.u64()?))
}

/// Decodes an entry record's payload.
pub(super) fn decode_entry(payload: &[u8]) -> Result<HistoryEntry, String> {
    let mut r = Reader { bytes: payload, at: 0 };
    let index = r.u64()?;
    let time_ms = r.u64()?;
    let count = r.u32()? as usize;
    // Each change takes at least a flag and a key length: a count past that is a lie.
    if count > payload.len() / 5 {
        return Err(format!("entry {index}: {count} changes cannot fit {} bytes", payload.len()));
    }
    let mut changes = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.u8()?;
        if flags & !(FLAG_PUT | FLAG_PREV | FLAG_PREV_VALUE) != 0 {
            return Err(format!("entry {index}: unknown change flags {flags:#x}"));
        }
        let key = r.bytes()?.into();
        let put = if flags & FLAG_PUT != 0 { Some((r.bytes()?.into(), r.meta()?)) } else { None };
        let prev = if flags & FLAG_PREV != 0 {
            let meta = r.meta()?;
            let value = if flags & FLAG_PREV_VALUE != 0 { Some(r.bytes()?.into()) } else { None };
            Some(Prev { meta, value })
        } else {
            None
        };
        changes.push(Change { key, put, prev });
    }
    if r.at != payload.len() {
        return Err(format!("entry {index}: {} bytes after its changes", payload.len() - r.at));
    }
    Ok(HistoryEntry { index, time_ms, changes })
}

/// The payload of a `THROUGH` or `RESET` record.
pub(super) fn encode_index(index: u64) -> [u8; 8] {
    index.to_le_bytes()
}

/// Decodes a `THROUGH` or `RESET` payload.
pub(super) fn decode_index(payload: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| format!("index record of {} bytes, not 8", payload.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_meta(out: &mut Vec<u8>, meta: &KeyMeta) {
    out.extend_from_slice(&meta.create_index.to_le_bytes());
    out.extend_from_slice(&meta.mod_index.to_le_bytes());
    out.extend_from_slice(&meta.version.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end =
            self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
                format!("record ends at byte {} where {n} more were expected", self.bytes.len())
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn meta(&mut self) -> Result<KeyMeta, String> {
        Ok(KeyMeta { create_index: self.u64()?, mod_index: self.u64()?, version: self.u64()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HistoryEntry {
        let meta = |v| KeyMeta { create_index: 3, mod_index: 9, version: v };
        HistoryEntry {
            index: 9,
            time_ms: 1_700_000_000_000,
            changes: vec![
                Change {
                    key: b"a".as_slice().into(),
                    put: Some((b"v".as_slice().into(), meta(2))),
                    prev: Some(Prev { meta: meta(1), value: Some(b"u".as_slice().into()) }),
                },
                Change {
                    key: b"b".as_slice().into(),
                    put: None,
                    prev: Some(Prev { meta: meta(4), value: None }),
                },
                Change {
                    key: b"c".as_slice().into(),
                    put: Some((Box::default(), meta(1))),
                    prev: None,
                },
            ],
        }
    }

    // Shows: an entry record decodes to what was encoded (puts, deletes, values before kept
    // and left out, an empty value), and its header reads without the changes.
    #[test]
    fn entries_round_trip() {
        let mut out = Vec::new();
        encode_entry(&mut out, &sample());
        assert_eq!(decode_entry(&out).unwrap(), sample());
        assert_eq!(entry_header(&out).unwrap(), (9, 1_700_000_000_000));
        assert_eq!(decode_index(&encode_index(42)).unwrap(), 42);
    }

    // Shows: every truncation of a record, a change count past its bytes, unknown flags and
    // trailing bytes are refused with a reason, never a panic.
    #[test]
    fn malformed_records_are_refused() {
        let mut out = Vec::new();
        encode_entry(&mut out, &sample());
        for len in 0..out.len() {
            assert!(decode_entry(&out[..len]).is_err(), "truncated at {len}");
        }
        let mut lying = out.clone();
        lying[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(&lying).unwrap_err().contains("cannot fit"));
        let mut flags = out.clone();
        flags[ENTRY_HEADER_BYTES] = 0x80;
        assert!(decode_entry(&flags).unwrap_err().contains("flags"));
        let mut trailing = out;
        trailing.push(0);
        assert!(decode_entry(&trailing).unwrap_err().contains("after its changes"));
        assert!(decode_index(&[1, 2, 3]).is_err());
    }
}
