//! The `SCAN` cursors a shard remembers: a Redis cursor is a number, a corekv scan continues
//! after a key, so each page's last key is kept under a number for the next page. Bounded:
//! past [`RESP_SCAN_CURSORS_MAX`] the oldest cursor is forgotten, and a client using it is
//! told to start again (never given wrong keys).
//!
//! Cursors belong to the shard, not to a connection: cluster clients take a pooled
//! connection for each page.

use std::collections::{HashMap, VecDeque};

use crate::constants::RESP_SCAN_CURSORS_MAX;

/// See the module docs.
#[derive(Debug)]
pub struct Cursors {
    after: HashMap<u64, Vec<u8>>,
    /// Cursors, oldest first.
    order: VecDeque<u64>,
    next: u64,
}

impl Cursors {
    /// No cursors; numbers start after `seed` (a value differing between a shard's lives, so
    /// a cursor from before a restart is unknown rather than another scan's).
    pub fn new(seed: u64) -> Self {
        Cursors { after: HashMap::new(), order: VecDeque::new(), next: seed.max(1) }
    }

    /// Keeps `after`; the cursor naming it (never 0, which starts a scan).
    pub fn save(&mut self, after: Vec<u8>) -> u64 {
        if self.order.len() >= RESP_SCAN_CURSORS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.after.remove(&oldest);
            }
        }
        let cursor = self.next;
        self.next = self.next.checked_add(1).unwrap_or(1);
        self.after.insert(cursor, after);
        self.order.push_back(cursor);
        cursor
    }

    /// The key cursor `cursor` continues after.
    pub fn load(&self, cursor: u64) -> Option<Vec<u8>> {
        self.after.get(&cursor).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows cursors name what was saved, are never 0, and the oldest is forgotten first.
    #[test]
    fn cursors_are_kept_up_to_the_bound() {
        let mut cursors = Cursors::new(0);
        let first = cursors.save(b"a".to_vec());
        assert_ne!(first, 0);
        assert_eq!(cursors.load(first), Some(b"a".to_vec()));
        for i in 0..RESP_SCAN_CURSORS_MAX {
            cursors.save(i.to_string().into_bytes());
        }
        assert_eq!(cursors.load(first), None);
        assert_eq!(cursors.load(first + 1), Some(b"0".to_vec()));
        assert_eq!(cursors.load(0), None);
    }
}
