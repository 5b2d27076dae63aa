//! Reads of the state machine: the layers (overlay, frozen, base) merged, the first that knows
//! a key deciding.

use std::ops::Bound;

use super::{StateMachine, ValueRef};
use crate::constants::SCAN_SKIPPED_MAX;

/// How a [`StateMachine::scan`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanEnd<'s> {
    /// A key in the range was left unvisited.
    pub more: bool,
    /// When keys past their deadline stopped the scan: the last of them, after which to go
    /// on (the caller's last visited key otherwise).
    pub skipped_to: Option<&'s [u8]>,
}
use crate::snapshot::{Archive, Overlay};

/// Which layer a merged entry came from (lower wins).
type Layered<'a> = (&'a [u8], Option<ValueRef<'a>>);

/// Merges sorted layers: at equal keys the first layer wins; deletions are dropped.
struct Merge<'a> {
    layers: Vec<std::iter::Peekable<Box<dyn Iterator<Item = Layered<'a>> + 'a>>>,
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a [u8], ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let smallest =
                self.layers.iter_mut().filter_map(|l| l.peek().map(|(k, _)| *k)).min()?;
            let mut winner = None;
            for layer in &mut self.layers {
                if layer.peek().is_some_and(|(k, _)| *k == smallest) {
                    let (_, value) = layer.next().expect("peeked");
                    if winner.is_none() {
                        winner = Some(value);
                    }
                }
            }
            if let Some(Some(value)) = winner {
                return Some((smallest, value));
            }
        }
    }
}

fn overlay_range<'a>(
    overlay: &'a Overlay,
    lower: Bound<&'a [u8]>,
    upper: Bound<&'a [u8]>,
) -> Box<dyn Iterator<Item = Layered<'a>> + 'a> {
    Box::new(overlay.range::<[u8], _>((lower, upper)).map(|(k, r)| {
        (
            &k[..],
            r.as_ref().map(|r| ValueRef {
                value: &r.value,
                meta: r.meta,
                expires_ms: r.expires_ms,
            }),
        )
    }))
}

fn archive_range<'a>(
    archive: &'a Archive,
    lower: Bound<&'a [u8]>,
    upper: Bound<&'a [u8]>,
) -> Box<dyn Iterator<Item = Layered<'a>> + 'a> {
    let start = archive.lower_bound(lower);
    Box::new(
        (start..archive.len())
            .map(move |i| archive.entry(i))
            .take_while(move |(k, _)| match upper {
                Bound::Unbounded => true,
                Bound::Included(u) => *k <= u,
                Bound::Excluded(u) => *k < u,
            })
            .map(|(k, v)| (k, Some(v))),
    )
}

impl StateMachine {
    /// Reads one key as it is at `now_ms` (ms since the Unix epoch; the state machine's clock
    /// when that is later): nothing once past its deadline.
    pub fn get_at(&self, key: &[u8], now_ms: u64) -> Option<ValueRef<'_>> {
        let now = now_ms.max(self.clock_ms);
        self.get(key).filter(|v| v.live_at(now))
    }

    /// Reads one key as the layers hold it, past its deadline or not.
    pub fn get(&self, key: &[u8]) -> Option<ValueRef<'_>> {
        if let Some(value) = self.overlay.get(key) {
            return value.as_ref().map(|r| ValueRef {
                value: &r.value,
                meta: r.meta,
                expires_ms: r.expires_ms,
            });
        }
        if let Some(value) = self.frozen.as_ref().and_then(|f| f.get(key)) {
            return value.as_ref().map(|r| ValueRef {
                value: &r.value,
                meta: r.meta,
                expires_ms: r.expires_ms,
            });
        }
        self.base.as_ref().and_then(|b| b.get(key))
    }

    fn merged<'s>(&'s self, lower: Bound<&'s [u8]>, upper: Bound<&'s [u8]>) -> Merge<'s> {
        let mut layers = vec![overlay_range(&self.overlay, lower, upper).peekable()];
        if let Some(frozen) = &self.frozen {
            layers.push(overlay_range(frozen, lower, upper).peekable());
        }
        if let Some(base) = &self.base {
            layers.push(archive_range(base, lower, upper).peekable());
        }
        Merge { layers }
    }

    /// Visits the keys in `(lower, upper)` that exist at `now_ms` (as [`StateMachine::get_at`]
    /// says) in ascending order until `visit` returns false (that key is not taken), or until
    /// [`SCAN_SKIPPED_MAX`] keys past their deadline were passed over in a row (so a range
    /// full of them costs a bounded amount per call). Says whether a key in the range was
    /// left unvisited, and after which key to go on when the skipped keys stopped it.
    pub fn scan<'s>(
        &'s self,
        lower: Bound<&'s [u8]>,
        upper: Bound<&'s [u8]>,
        now_ms: u64,
        mut visit: impl FnMut(&'s [u8], ValueRef<'s>) -> bool,
    ) -> ScanEnd<'s> {
        let now = now_ms.max(self.clock_ms);
        let mut skipped = 0;
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) =
            (lower, upper)
        {
            let both_included = matches!((lower, upper), (Bound::Included(_), Bound::Included(_)));
            if l > u || (l == u && !both_included) {
                return ScanEnd::default();
            }
        }
        for (key, value) in self.merged(lower, upper) {
            if !value.live_at(now) {
                skipped += 1;
                if skipped == SCAN_SKIPPED_MAX {
                    return ScanEnd { more: true, skipped_to: Some(key) };
                }
                continue;
            }
            skipped = 0;
            if !visit(key, value) {
                return ScanEnd { more: true, skipped_to: None };
            }
        }
        ScanEnd::default()
    }

    /// Every key, value and metadata, in key order (for comparing replicas in tests).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], ValueRef<'_>)> {
        self.merged(Bound::Unbounded, Bound::Unbounded)
    }
}
