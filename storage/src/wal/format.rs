//! The WAL's bytes on disk: segment files, their header block, and records.
//!
//! A shard's WAL is a sequence of segment files `DATA_DIR/shard-S/wal/{seq:020}.wal`, each
//! [`SEGMENT_BYTES`](crate::constants::SEGMENT_BYTES) long and written in place (the files are prepared by writing them whole,
//! so the hot path only ever overwrites blocks that were written before).
//!
//! ```text
//! segment file
//! +-------------------+------------+------------+-----+------------+-------------------+
//! | header block 4 KiB| record     | record     | ... | seal record| zeros / old bytes |
//! +-------------------+------------+------------+-----+------------+-------------------+
//! 0                   4096                                                    SEGMENT_BYTES
//!
//! header block
//!  0        8        12       16               24               32     34              290   294
//!  +--------+--------+--------+----------------+----------------+------+---------------+-----+--
//!  | magic  |version | shard  | seq (u64)      | segment bytes  | name | cluster name  | crc | 0
//!  |8 bytes | u32    | u32    | 0 = spare      | u64            | len  | (<= 256 bytes)| u32 |
//!  +--------+--------+--------+----------------+----------------+------+---------------+-----+--
//!
//! record (starts on a multiple of 8; the next one starts at the next multiple of 8)
//!  0        4        8    9          16               24               32                 32+len
//!  +--------+--------+----+----------+----------------+----------------+------------------+-----+
//!  | crc32c | len    |kind| zero (7) | flush seq (u64)| flush base(u64)| payload (len)    |pad 0|
//!  +--------+--------+----+----------+----------------+----------------+------------------+-----+
//! ```
//!
//! All integers are little-endian. The record crc is crc32c over bytes `4 .. 32 + len` (the
//! rest of the header and the payload), seeded with the segment's sequence number. The seed
//! makes records left over in a recycled segment fail their check, so old bytes can never be
//! mistaken for new records.
//!
//! `flush seq` numbers the flush that first wrote the record. Within a segment it never
//! decreases, so a record with a smaller number than the one before it is a leftover from
//! before a crash, never part of the log. `flush base` is the offset in this segment up to
//! which the log was durable when that flush began (0 when it began in an earlier segment):
//! a good record whose base lies past some bad bytes proves those bytes were durable once —
//! damage, refused — while bad bytes that no later base covers can only be the torn final
//! flush of a crash, which recovery truncates.
//!
//! Records may span 4 KiB blocks; the partly filled last block is written again, with more
//! records, by the next flush. Kind 0 is never valid (zeroed space), kind 255 is the seal that
//! closes a full segment; every other kind belongs to the WAL's user (see
//! [`crate::raft_log`]).

use crate::constants::{
    RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES,
};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CKVWAL\0\x01";

/// Version of this layout, in the header.
pub const FORMAT_VERSION: u32 = 1;

/// Longest cluster name a header records.
pub const CLUSTER_NAME_BYTES_MAX: usize = 256;

/// Offset of the header's crc: it covers every byte before it.
const HEADER_CRC_OFFSET: usize = 34 + CLUSTER_NAME_BYTES_MAX;

/// Record kind of the seal that ends a full segment.
pub const KIND_SEAL: u8 = 255;

/// Record kind that is never valid: what zeroed space reads as.
pub const KIND_INVALID: u8 = 0;

/// Who a segment belongs to: checked on every segment at recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIdentity {
    /// The cluster name from the registry file.
    pub cluster: String,
    /// The shard index.
    pub shard: u32,
}

/// A parsed segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Owner of the segment.
    pub identity: SegmentIdentity,
    /// Sequence number; 0 for a prepared spare that is not in the log yet.
    pub seq: u64,
    /// File size the segment was prepared with.
    pub segment_bytes: u64,
}

/// Encodes a header block (`SEGMENT_HEADER_BYTES` long).
///
/// # Panics
/// If the cluster name is longer than [`CLUSTER_NAME_BYTES_MAX`] (the registry loader refuses
/// such names first).
pub fn encode_segment_header(header: &SegmentHeader) -> Vec<u8> {
    let name = header.identity.cluster.as_bytes();
    assert!(
        name.len() <= CLUSTER_NAME_BYTES_MAX,
        "cluster name over {CLUSTER_NAME_BYTES_MAX} bytes"
    );
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    block[0..8].copy_from_slice(&SEGMENT_MAGIC);
    block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[12..16].copy_from_slice(&header.identity.shard.to_le_bytes());
    block[16..24].copy_from_slice(&header.seq.to_le_bytes());
    block[24..32].copy_from_slice(&header.segment_bytes.to_le_bytes());
    block[32..34].copy_from_slice(&(name.len() as u16).to_le_bytes());
    block[34..34 + name.len()].copy_from_slice(name);
    let crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
    block[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    block
}

/// Parses a header block; the error says what is wrong, for a message that also names the file.
pub fn decode_segment_header(block: &[u8]) -> Result<SegmentHeader, String> {
    if block.len() < HEADER_CRC_OFFSET + 4 {
        return Err(format!("file too short for a segment header ({} bytes)", block.len()));
    }
    if block[0..8] != SEGMENT_MAGIC {
        return Err("not a corekv WAL segment (bad magic)".to_string());
    }
    let stored_crc = read_u32(block, HEADER_CRC_OFFSET);
    let crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
    if stored_crc != crc {
        return Err(format!(
            "header checksum mismatch (stored {stored_crc:#x}, computed {crc:#x})"
        ));
    }
    let version = read_u32(block, 8);
    if version != FORMAT_VERSION {
        return Err(format!("segment format version {version}, this build reads {FORMAT_VERSION}"));
    }
    let name_len = u16::from_le_bytes([block[32], block[33]]) as usize;
    if name_len > CLUSTER_NAME_BYTES_MAX {
        return Err(format!("cluster name length {name_len} over {CLUSTER_NAME_BYTES_MAX}"));
    }
    let cluster = std::str::from_utf8(&block[34..34 + name_len])
        .map_err(|_| "cluster name is not UTF-8".to_string())?
        .to_string();
    Ok(SegmentHeader {
        identity: SegmentIdentity { cluster, shard: read_u32(block, 12) },
        seq: read_u64(block, 16),
        segment_bytes: read_u64(block, 24),
    })
}

/// Bytes a record with `payload_len` bytes of payload takes, padding included.
pub fn record_size(payload_len: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + payload_len, RECORD_ALIGN_BYTES)
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

fn crc_seed(seq: u64) -> u32 {
    crc32c::crc32c(&seq.to_le_bytes())
}

/// Writes one record (header, payload, zero padding) at the end of `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    kind: u8,
    flush_seq: u64,
    flush_base: u64,
    payload: &[u8],
) {
    encode_record_parts(out, seq, kind, flush_seq, flush_base, &[payload]);
}

/// [`encode_record`] of a payload given in parts, written one after the other (so a caller
/// with a header and a body apart copies each once).
pub fn encode_record_parts(
    out: &mut Vec<u8>,
    seq: u64,
    kind: u8,
    flush_seq: u64,
    flush_base: u64,
    parts: &[&[u8]],
) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(kind != KIND_INVALID);
    debug_assert!(len <= RECORD_PAYLOAD_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&flush_seq.to_le_bytes());
    out.extend_from_slice(&flush_base.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    let crc = crc32c::crc32c_append(crc_seed(seq), &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_size(len), 0);
}

/// A record that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The user's record kind.
    pub kind: u8,
    /// The flush that wrote it.
    pub flush_seq: u64,
    /// Offset up to which this segment was durable when that flush began.
    pub flush_base: u64,
    /// The payload.
    pub payload: &'a [u8],
    /// Bytes the record takes (header, payload, padding): the next record starts this far on.
    pub size: usize,
}

/// Why bytes at an offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// Fewer bytes left in the segment than a header.
    NoRoomForHeader,
    /// All header bytes are zero: never-written (or zeroed) space.
    Zeroed,
    /// The header is not plausible (kind 0, reserved bytes set, length too large).
    BadHeader(String),
    /// The length runs past the end of the segment.
    Truncated {
        /// The payload length the header announces.
        len: usize,
    },
    /// The checksum does not match.
    BadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordProblem::NoRoomForHeader => write!(f, "no room for a record header"),
            RecordProblem::Zeroed => write!(f, "zeroed record header"),
            RecordProblem::BadHeader(why) => write!(f, "bad record header: {why}"),
            RecordProblem::Truncated { len } => {
                write!(f, "record of {len} payload bytes runs past the end of the segment")
            }
            RecordProblem::BadChecksum { stored, computed } => {
                write!(f, "record checksum mismatch (stored {stored:#x}, computed {computed:#x})")
            }
        }
    }
}

/// Checks the record at `offset` of a segment whose bytes are `segment` and whose sequence
/// number is `seq`. Cheap tests come first, so scanning garbage stays fast.
pub fn parse_record(
    segment: &[u8],
    offset: usize,
    seq: u64,
) -> Result<RecordView<'_>, RecordProblem> {
    if offset + RECORD_HEADER_BYTES > segment.len() {
        return Err(RecordProblem::NoRoomForHeader);
    }
    let header = &segment[offset..offset + RECORD_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(RecordProblem::Zeroed);
    }
    let len = read_u32(header, 4) as usize;
    let kind = header[8];
    if kind == KIND_INVALID {
        return Err(RecordProblem::BadHeader("kind 0".to_string()));
    }
    if header[9..16].iter().any(|&b| b != 0) {
        return Err(RecordProblem::BadHeader("reserved bytes are not zero".to_string()));
    }
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordProblem::BadHeader(format!("length {len} over the maximum")));
    }
    let end = offset + RECORD_HEADER_BYTES + len;
    if end > segment.len() {
        return Err(RecordProblem::Truncated { len });
    }
    let stored = read_u32(header, 0);
    let computed = crc32c::crc32c_append(crc_seed(seq), &segment[offset + 4..end]);
    if stored != computed {
        return Err(RecordProblem::BadChecksum { stored, computed });
    }
    Ok(RecordView {
        kind,
        flush_seq: read_u64(header, 16),
        flush_base: read_u64(header, 24),
        payload: &segment[offset + RECORD_HEADER_BYTES..end],
        size: record_size(len),
    })
}

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Prefix of prepared spare segments' file names.
pub const SPARE_PREFIX: &str = "spare-";

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SegmentIdentity {
        SegmentIdentity { cluster: "local".to_string(), shard: 3 }
    }

    // Shows: a header survives encode/decode and any flipped bit is caught.
    #[test]
    fn header_round_trip_and_bit_flips() {
        let header = SegmentHeader { identity: identity(), seq: 42, segment_bytes: 1 << 26 };
        let block = encode_segment_header(&header);
        assert_eq!(block.len(), SEGMENT_HEADER_BYTES as usize);
        assert_eq!(decode_segment_header(&block).unwrap(), header);
        for byte in 0..HEADER_CRC_OFFSET + 4 {
            let mut bad = block.clone();
            bad[byte] ^= 0x10;
            assert!(decode_segment_header(&bad).is_err(), "flip at byte {byte} went unnoticed");
        }
    }

    // Shows: a record round-trips, is aligned, and fails under another segment's seed.
    #[test]
    fn record_round_trip_and_seed() {
        let mut out = vec![0u8; 16];
        encode_record(&mut out, 7, 3, 99, 4096, b"hello world");
        assert_eq!(out.len(), 16 + record_size(11));
        assert_eq!(out.len() % RECORD_ALIGN_BYTES, 0);
        let view = parse_record(&out, 16, 7).unwrap();
        assert_eq!(
            (view.kind, view.flush_seq, view.flush_base, view.payload),
            (3, 99, 4096, &b"hello world"[..])
        );
        assert!(matches!(parse_record(&out, 16, 8), Err(RecordProblem::BadChecksum { .. })));
    }

    // Shows: each kind of damage is told apart.
    #[test]
    fn record_problems() {
        let mut out = Vec::new();
        encode_record(&mut out, 1, 1, 1, 0, &[5u8; 100]);
        assert_eq!(parse_record(&out[..10], 0, 1), Err(RecordProblem::NoRoomForHeader));
        assert_eq!(parse_record(&[0u8; 64], 0, 1), Err(RecordProblem::Zeroed));
        assert!(matches!(
            parse_record(&out[..70], 0, 1),
            Err(RecordProblem::Truncated { len: 100 })
        ));
        let mut flipped = out.clone();
        flipped[50] ^= 1;
        assert!(matches!(parse_record(&flipped, 0, 1), Err(RecordProblem::BadChecksum { .. })));
        let mut kind0 = out.clone();
        kind0[8] = 0;
        assert!(matches!(parse_record(&kind0, 0, 1), Err(RecordProblem::BadHeader(_))));
    }

    // Shows: segment names parse back to their sequence numbers and nothing else parses.
    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("12.wal"), None);
        assert_eq!(parse_segment_file_name("spare-1.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001x.wal"), None);
    }
}
