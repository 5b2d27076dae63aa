//! Where a key lives (DESIGN.md §4): its slot is CRC16 (XMODEM) of its hash tag — the part
//! between the first `{` and the next `}` when that part is non-empty — or of the whole key,
//! modulo 16384 (Redis Cluster's rule). Shard `s` of `n` owns the contiguous slot range
//! `[s * 16384 / n, (s + 1) * 16384 / n)`.
//!
//! ```
//! use corekv_types::placement::{crc16_xmodem, slot, shard_for_key};
//! assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
//! // Keys with the same hash tag share a slot, so they can be used in one transaction.
//! assert_eq!(slot(b"{user:1}:name"), slot(b"{user:1}:mail"));
//! assert!(shard_for_key(b"{user:1}:name", 4).get() < 4);
//! ```

use std::ops::Range;

use crate::ids::ShardId;

/// Number of slots keys hash into.
pub const SLOTS: u32 = 16384;

/// CRC16 with the XMODEM parameters (polynomial 0x1021, initial value 0, no reflection), the
/// checksum Redis Cluster uses for key slots.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The part of `key` that decides its slot: the bytes between the first `{` and the next `}`
/// after it when there are any, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot of `key`, in `0..16384`.
pub fn slot(key: &[u8]) -> u32 {
    crc16_xmodem(hash_tag(key)) as u32 % SLOTS
}

/// The slots shard `shard` of `shards` owns.
///
/// # Panics
/// If `shards` is 0 or `shard >= shards` (the registry loader refuses such configurations).
pub fn slot_range(shard: ShardId, shards: u32) -> Range<u32> {
    let shard = shard.get();
    assert!(shards > 0 && shard < shards, "shard {shard} of {shards}");
    let start = (shard as u64 * SLOTS as u64 / shards as u64) as u32;
    let end = ((shard as u64 + 1) * SLOTS as u64 / shards as u64) as u32;
    start..end
}

/// The shard of `shards` that owns `slot`.
pub fn shard_for_slot(slot: u32, shards: u32) -> ShardId {
    assert!(shards > 0 && slot < SLOTS, "slot {slot} of {shards} shards");
    // The ranges are floor(s * SLOTS / n); start from the estimate and step to the owner.
    let mut shard = ShardId((slot as u64 * shards as u64 / SLOTS as u64) as u32);
    while slot >= slot_range(shard, shards).end {
        shard.0 += 1;
    }
    while slot < slot_range(shard, shards).start {
        shard.0 -= 1;
    }
    shard
}

/// The shard of `shards` that owns `key`.
pub fn shard_for_key(key: &[u8], shards: u32) -> ShardId {
    shard_for_slot(slot(key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: the CRC matches the XMODEM check value and Redis Cluster's published slots.
    #[test]
    fn known_vectors() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
        // Slots Redis Cluster assigns (CLUSTER KEYSLOT).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"hello"), 866);
    }

    // Shows: hash tags follow Redis's rule, including the edge cases.
    #[test]
    fn hash_tags() {
        assert_eq!(slot(b"{user1}:a"), slot(b"{user1}:b"));
        assert_eq!(hash_tag(b"{user1}:a"), b"user1");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}", "empty first tag: whole key");
        assert_eq!(
            hash_tag(b"foo{{bar}}zap"),
            b"{bar",
            "up to the first closing brace after the first opening one"
        );
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar", "only the first tag");
        assert_eq!(hash_tag(b"no-tag}{"), b"no-tag}{");
        assert_eq!(hash_tag(b"{unclosed"), b"{unclosed");
    }

    // Shows: shard ranges tile the slot space exactly, for many shard counts, and every slot
    // maps back to the shard whose range holds it.
    #[test]
    fn ranges_tile_the_slots() {
        for shards in [1, 2, 3, 5, 7, 16, 100, 16384] {
            let mut next = 0;
            for shard in 0..shards {
                let range = slot_range(ShardId(shard), shards);
                assert_eq!(range.start, next);
                next = range.end;
            }
            assert_eq!(next, SLOTS);
            for slot in (0..SLOTS).step_by(7) {
                assert!(slot_range(shard_for_slot(slot, shards), shards).contains(&slot));
            }
        }
    }
}
