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
//!          before is kept; bit 3: a delete of a key past its deadline (an expiry)
//!   meta   create_index u64 | mod_index u64 | version u64
//!   key, value: length u32 | bytes
//! ```
//!
//! All integers are little-endian. Decoding never trusts a length.
//!
//! Changes are kept encoded from the moment the state machine makes them ([`ChangeSet`]):
//! applying copies the keys and values into one buffer, which becomes the record's payload and
//! the entry watchers are sent from ([`HistoryEntry::changes`] reads it in place), so recording
//! a write costs a copy of its bytes, not an allocation per key and value.

use corekv_types::meta::KeyMeta;

/// Record kind: an entry's changes.
pub const KIND_ENTRY: u8 = 16;
/// Record kind: the history reaches this index.
pub const KIND_THROUGH: u8 = 17;
/// Record kind: the history restarts after this index.
pub const KIND_RESET: u8 = 18;

const FLAG_PUT: u8 = 1;
const FLAG_PREV: u8 = 2;
const FLAG_PREV_VALUE: u8 = 4;
const FLAG_EXPIRED: u8 = 8;

/// Bytes of an entry record's payload before its changes.
#[cfg(test)]
pub(super) const ENTRY_HEADER_BYTES: usize = 8 + 8 + 4;

/// One key changed, read in place from its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeView<'a> {
    /// The key.
    pub key: &'a [u8],
    /// For a put: the new value and the key's metadata after it; `None` for a delete.
    pub put: Option<(&'a [u8], KeyMeta)>,
    /// What the key held before, when it existed: its metadata, and its value unless it was
    /// left out (values before are kept up to a budget per entry).
    pub prev: Option<(KeyMeta, Option<&'a [u8]>)>,
    /// A delete because the key's deadline passed.
    pub expired: bool,
}

/// The changes of one entry, encoded (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    count: u32,
    bytes: Vec<u8>,
}

impl ChangeSet {
    /// Adds one change.
    pub fn push(
        &mut self,
        key: &[u8],
        put: Option<(&[u8], KeyMeta)>,
        prev: Option<(KeyMeta, Option<&[u8]>)>,
    ) {
        self.push_flagged(0, key, put, prev);
    }

    /// Adds the delete of a key whose deadline passed: what it held.
    pub fn push_expired(&mut self, key: &[u8], prev: (KeyMeta, Option<&[u8]>)) {
        self.push_flagged(FLAG_EXPIRED, key, None, Some(prev));
    }

    fn push_flagged(
        &mut self,
        mut flags: u8,
        key: &[u8],
        put: Option<(&[u8], KeyMeta)>,
        prev: Option<(KeyMeta, Option<&[u8]>)>,
    ) {
        if put.is_some() {
            flags |= FLAG_PUT;
        }
        if let Some((_, value)) = prev {
            flags |= FLAG_PREV;
            if value.is_some() {
                flags |= FLAG_PREV_VALUE;
            }
        }
        let out = &mut self.bytes;
        out.push(flags);
        put_bytes(out, key);
        if let Some((value, meta)) = put {
            put_bytes(out, value);
            put_meta(out, &meta);
        }
        if let Some((meta, value)) = prev {
            put_meta(out, &meta);
            if let Some(value) = value {
                put_bytes(out, value);
            }
        }
        self.count += 1;
    }

    /// Makes room for `bytes` more of encoded changes (one allocation for an entry's
    /// changes, rather than a buffer growing key by key).
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }

    /// Changes in it.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds no change.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The changes, read in place.
    pub fn iter(&self) -> Changes<'_> {
        Changes { reader: Reader { bytes: &self.bytes, at: 0 }, left: self.count }
    }
}

/// What one applied entry changed, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The raft index of the entry: the revision of its changes.
    pub index: u64,
    /// When this replica applied it (ms since the Unix epoch): what age-based retention
    /// goes by.
    pub time_ms: u64,
    changes: ChangeSet,
}

impl HistoryEntry {
    /// The entry of `index` with these changes.
    pub fn new(index: u64, time_ms: u64, changes: ChangeSet) -> Self {
        HistoryEntry { index, time_ms, changes }
    }

    /// Its changes, in the order they were applied, read in place.
    pub fn changes(&self) -> Changes<'_> {
        self.changes.iter()
    }

    /// Bytes it takes in memory (what the cache's bound counts).
    pub fn bytes(&self) -> usize {
        self.changes.bytes.len() + 64
    }
}

/// The changes of a [`ChangeSet`] or a [`HistoryEntry`], in order.
#[derive(Debug, Clone)]
pub struct Changes<'a> {
    reader: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for Changes<'a> {
    type Item = ChangeView<'a>;

    fn next(&mut self) -> Option<ChangeView<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // A change set is built by `push` or checked by `decode_entry` before it is kept.
        Some(self.reader.change().expect("a change set holds whole changes"))
    }
}

/// Appends an entry record's header (its changes follow it, [`HistoryEntry`]'s bytes).
pub(super) fn encode_header(out: &mut Vec<u8>, index: u64, time_ms: u64, changes: &ChangeSet) {
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(&changes.count.to_le_bytes());
}

/// The bytes of an entry's changes, as its record carries them after the header.
pub(super) fn change_bytes(entry: &HistoryEntry) -> &[u8] {
    &entry.changes.bytes
}

/// The index and time of an entry record, without decoding its changes.
pub(super) fn entry_header(payload: &[u8]) -> Result<(u64, u64), String> {
    let mut r = Reader { bytes: payload, at: 0 };
    Ok((r.u64()?, r.u64()?))
}

/// Decodes an entry record's payload, checking every change.
pub(super) fn decode_entry(payload: &[u8]) -> Result<HistoryEntry, String> {
    let mut r = Reader { bytes: payload, at: 0 };
    let index = r.u64()?;
    let time_ms = r.u64()?;
    let count = r.u32()?;
    // Each change takes at least a flag and a key length: a count past that is a lie.
    if count as usize > payload.len() / 5 {
        return Err(format!("entry {index}: {count} changes cannot fit {} bytes", payload.len()));
    }
    let start = r.at;
    for _ in 0..count {
        r.change().map_err(|e| format!("entry {index}: {e}"))?;
    }
    if r.at != payload.len() {
        return Err(format!("entry {index}: {} bytes after its changes", payload.len() - r.at));
    }
    let changes = ChangeSet { count, bytes: payload[start..].to_vec() };
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

#[derive(Debug, Clone)]
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

    fn change(&mut self) -> Result<ChangeView<'a>, String> {
        let flags = self.u8()?;
        if flags & !(FLAG_PUT | FLAG_PREV | FLAG_PREV_VALUE | FLAG_EXPIRED) != 0 {
            return Err(format!("unknown change flags {flags:#x}"));
        }
        if flags & FLAG_EXPIRED != 0 && flags & FLAG_PUT != 0 {
            return Err("a put flagged as an expiry".to_string());
        }
        let key = self.bytes()?;
        let put = if flags & FLAG_PUT != 0 { Some((self.bytes()?, self.meta()?)) } else { None };
        let prev = if flags & FLAG_PREV != 0 {
            let meta = self.meta()?;
            let value = if flags & FLAG_PREV_VALUE != 0 { Some(self.bytes()?) } else { None };
            Some((meta, value))
        } else {
            None
        };
        Ok(ChangeView { key, put, prev, expired: flags & FLAG_EXPIRED != 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HistoryEntry {
        let meta = |v| KeyMeta { create_index: 3, mod_index: 9, version: v };
        let mut changes = ChangeSet::default();
        changes.push(b"a", Some((b"v", meta(2))), Some((meta(1), Some(b"u"))));
        changes.push(b"b", None, Some((meta(4), None)));
        changes.push(b"c", Some((b"", meta(1))), None);
        changes.push_expired(b"d", (meta(5), Some(b"gone")));
        HistoryEntry::new(9, 1_700_000_000_000, changes)
    }

    fn encoded(entry: &HistoryEntry) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out, entry.index, entry.time_ms, &entry.changes);
        out.extend_from_slice(change_bytes(entry));
        out
    }

    // Shows: an entry record decodes to what was encoded (puts, deletes, values before kept
    // and left out, an empty value), its changes read back in place, and its header reads
    // without the changes.
    #[test]
    fn entries_round_trip() {
        let out = encoded(&sample());
        let decoded = decode_entry(&out).unwrap();
        assert_eq!(decoded, sample());
        let keys: Vec<&[u8]> = decoded.changes().map(|c| c.key).collect();
        assert_eq!(keys, [b"a".as_slice(), b"b", b"c", b"d"]);
        let expired: Vec<bool> = decoded.changes().map(|c| c.expired).collect();
        assert_eq!(expired, [false, false, false, true]);
        assert_eq!(decoded.changes().nth(3).unwrap().prev.unwrap().1, Some(b"gone".as_slice()));
        let first = decoded.changes().next().unwrap();
        assert_eq!(first.put.unwrap().0, b"v");
        assert_eq!(first.prev.unwrap().1, Some(b"u".as_slice()));
        assert_eq!(decoded.changes().nth(1).unwrap().prev.unwrap().1, None);
        assert_eq!(entry_header(&out).unwrap(), (9, 1_700_000_000_000));
        assert_eq!(decode_index(&encode_index(42)).unwrap(), 42);
    }

    // Shows: every truncation of a record, a change count past its bytes, unknown flags and
    // trailing bytes are refused with a reason, never a panic.
    #[test]
    fn malformed_records_are_refused() {
        let out = encoded(&sample());
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
