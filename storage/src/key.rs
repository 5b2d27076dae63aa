//! [`Key`]: a key as the state machine's maps hold it, short keys stored inline.
//!
//! A map of `Box<[u8]>` keys makes every comparison during a lookup follow a pointer to its
//! own heap allocation: a B-tree search over a shard's keys touched ~30 scattered cache lines,
//! and it was the largest user-space cost of a put (bench/RESULTS.md, "Where the time goes").
//! Keys of up to [`INLINE_BYTES`] bytes — the common case, 16-byte keys in the standard
//! benchmarks — live inside the map's nodes instead, so a search reads the node it is in and
//! nothing else, and inserting one allocates nothing. Longer keys fall back to the heap.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest key stored inline (a `Key` is then 24 bytes, as big as a boxed slice plus a tag).
pub const INLINE_BYTES: usize = 22;

/// A key: its bytes inline when short, boxed otherwise. Ordered, compared and hashed as its
/// bytes, so maps of `Key` are searched with `&[u8]`.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    /// Up to [`INLINE_BYTES`] bytes, `len` of them used (`len <= INLINE_BYTES`, kept by
    /// `From`, the only constructor).
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    /// A longer key.
    Heap(Box<[u8]>),
}

impl Key {
    /// The key's bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// Whether the bytes are stored inline.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&[u8]> for Key {
    #[inline]
    fn from(key: &[u8]) -> Key {
        if key.len() <= INLINE_BYTES {
            let mut bytes = [0u8; INLINE_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            Key(Repr::Inline { len: key.len() as u8, bytes })
        } else {
            Key(Repr::Heap(key.into()))
        }
    }
}

impl From<Vec<u8>> for Key {
    fn from(key: Vec<u8>) -> Key {
        if key.len() <= INLINE_BYTES {
            Key::from(key.as_slice())
        } else {
            Key(Repr::Heap(key.into_boxed_slice()))
        }
    }
}

impl Deref for Key {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Key {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Key {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_boxed() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert!(Key::from(&[7u8; INLINE_BYTES][..]).is_inline());
        assert!(!Key::from(&[7u8; INLINE_BYTES + 1][..]).is_inline());
        assert!(Key::from(Vec::new()).is_inline());
        assert!(Key::from(Vec::new()).is_empty());
        assert_eq!(&*Key::from(&b"abc"[..]), b"abc");
        assert_eq!(&*Key::from(vec![9u8; 100]), &[9u8; 100][..]);
    }

    proptest! {
        /// A map of `Key`s orders and finds keys exactly as a map of their bytes does, across
        /// the inline/boxed boundary (where a 22-byte key sorts against a 23-byte one).
        #[test]
        fn orders_and_finds_like_bytes(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..30), 0..64),
            probe in proptest::collection::vec(0u8..4, 0..30),
        ) {
            let by_key: BTreeMap<Key, usize> =
                keys.iter().enumerate().map(|(i, k)| (Key::from(k.as_slice()), i)).collect();
            let by_bytes: BTreeMap<Vec<u8>, usize> =
                keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
            let a: Vec<(&[u8], usize)> = by_key.iter().map(|(k, v)| (&k[..], *v)).collect();
            let b: Vec<(&[u8], usize)> = by_bytes.iter().map(|(k, v)| (&k[..], *v)).collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(by_key.get(probe.as_slice()), by_bytes.get(&probe));
        }
    }
}
