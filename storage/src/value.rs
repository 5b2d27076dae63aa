//! A value as the state keeps it ([`Record`]) and as reads borrow it ([`ValueRef`]), shared
//! by the state machine's overlay and the snapshot archive beneath it.

use corekv_types::meta::KeyMeta;

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The value bytes.
    pub value: Box<[u8]>,
    /// Its metadata.
    pub meta: KeyMeta,
}

/// A value as reads see it, borrowed from the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRef<'a> {
    /// The value bytes.
    pub value: &'a [u8],
    /// Its metadata.
    pub meta: KeyMeta,
}
