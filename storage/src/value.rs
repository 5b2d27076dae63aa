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
    /// When the key expires, in ms since the Unix epoch on the clock of the leader that
    /// proposed its write; 0: never.
    pub expires_ms: u64,
}

/// A value as reads see it, borrowed from the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRef<'a> {
    /// The value bytes.
    pub value: &'a [u8],
    /// Its metadata.
    pub meta: KeyMeta,
    /// When the key expires (ms since the Unix epoch); 0: never.
    pub expires_ms: u64,
}

impl ValueRef<'_> {
    /// Whether the key still exists at `now_ms` (its deadline is after it).
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || now_ms < self.expires_ms
    }
}

impl Record {
    /// Whether the key still exists at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || now_ms < self.expires_ms
    }
}
