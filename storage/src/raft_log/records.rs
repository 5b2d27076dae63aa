//! The log's WAL records (the table in the module docs): their kinds and payloads, encoded
//! and decoded.

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType, HardState};

/// Record kind: a run of raft entries.
pub const KIND_ENTRIES: u8 = 1;

/// Record kind: the raft hard state.
pub const KIND_HARD_STATE: u8 = 2;

/// Record kind: the log was compacted up to an index.
pub const KIND_COMPACT: u8 = 3;

/// Record kind: the log was replaced by a snapshot.
pub const KIND_SNAPSHOT_RESET: u8 = 4;

/// Record kind: the replica's rebuilding mark was set or cleared.
pub const KIND_REBUILDING: u8 = 5;

/// Bytes of the per-entry header inside an `ENTRIES` payload.
pub(super) const ENTRY_HEADER_BYTES: usize = 8 + 1 + 4 + 4;

/// Bytes of the `ENTRIES` payload header.
pub(super) const ENTRIES_HEADER_BYTES: usize = 8 + 4;

pub(super) fn entry_bytes(entry: &Entry) -> usize {
    ENTRY_HEADER_BYTES + entry.data.len() + entry.context.len()
}

pub(super) fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

pub(super) fn encode_hard_state(hs: &HardState) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&hs.term.to_le_bytes());
    out[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    out[16..].copy_from_slice(&hs.commit.to_le_bytes());
    out
}

pub(super) fn encode_rebuilding(mark: Option<u64>) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = mark.is_some() as u8;
    out[1..].copy_from_slice(&mark.unwrap_or(0).to_le_bytes());
    out
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Decodes the entry at `pos` of an `ENTRIES` payload; returns it and the position after it.
pub(super) fn decode_entry(payload: &Bytes, pos: usize, index: u64) -> Option<(Entry, usize)> {
    let term = u64_at(payload, pos)?;
    let entry_type = match *payload.get(pos + 8)? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    };
    let data_len = u32_at(payload, pos + 9)? as usize;
    let context_len = u32_at(payload, pos + 13)? as usize;
    let data_start = pos + ENTRY_HEADER_BYTES;
    let end = data_start.checked_add(data_len)?.checked_add(context_len)?;
    if end > payload.len() {
        return None;
    }
    let entry = Entry {
        term,
        index,
        entry_type,
        data: payload.slice(data_start..data_start + data_len),
        context: payload.slice(data_start + data_len..end),
        ..Default::default()
    };
    Some((entry, end))
}

pub(super) fn parse_pair(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() != 16 {
        return None;
    }
    Some((u64_at(payload, 0)?, u64_at(payload, 8)?))
}
