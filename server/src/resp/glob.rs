//! Redis's glob patterns (`KEYS`, `SCAN … MATCH`): `*` any bytes, `?` one byte, `[abc]`,
//! `[^abc]`, `[a-z]` one byte of (or not of) a class, `\x` the byte `x`. Bytes, not
//! characters, as in Redis.
//!
//! Matching is the two-pointer method with one backtrack point (the last `*`), so it takes
//! at most O(pattern × key) steps whatever the pattern: no pattern can make it exponential.

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let mut unbounded = u64::MAX;
    matches_within(pattern, key, &mut unbounded).unwrap_or(false)
}

/// Whether `key` matches `pattern`, spending at most `steps` (one per byte compared, taken
/// off it); `None` once they are spent.
pub fn matches_within(pattern: &[u8], key: &[u8], steps: &mut u64) -> Option<bool> {
    let (mut p, mut k) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the key byte it absorbs
    // next.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        *steps = steps.checked_sub(1)?;
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, k));
                p += 1;
                continue;
            }
            Some(_) => {
                if let Some(next) = one(pattern, p, key[k], steps) {
                    p = next;
                    k += 1;
                    continue;
                }
            }
            None => {}
        }
        match star {
            Some((after, absorbed)) => {
                p = after;
                k = absorbed + 1;
                star = Some((after, absorbed + 1));
            }
            None => return Some(false),
        }
    }
    Some(pattern[p..].iter().all(|&b| b == b'*'))
}

/// Whether the pattern element at `p` (not `*`) matches `byte`; the index after it if so.
fn one(pattern: &[u8], p: usize, byte: u8, steps: &mut u64) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => class(pattern, p + 1, byte, steps),
        literal => (literal == byte).then_some(p + 1),
    }
}

/// A `[…]` class starting after its `[`: whether `byte` is in it, and the index after its
/// `]`. An unterminated class runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], mut p: usize, byte: u8, steps: &mut u64) -> Option<usize> {
    let negated = pattern.get(p) == Some(&b'^');
    if negated {
        p += 1;
    }
    let mut found = false;
    while p < pattern.len() && pattern[p] != b']' {
        // A spent budget ends the class as a mismatch; the caller then finds it spent.
        *steps = steps.saturating_sub(1);
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            found |= pattern[p + 1] == byte;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (low, high) = (pattern[p].min(pattern[p + 2]), pattern[p].max(pattern[p + 2]));
            found |= (low..=high).contains(&byte);
            p += 3;
        } else {
            found |= pattern[p] == byte;
            p += 1;
        }
    }
    (found != negated).then_some((p + 1).min(pattern.len()))
}

/// The bytes every key matching `pattern` starts with (up to its first special byte): a scan
/// need only look at keys with this prefix.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut p = 0;
    while p < pattern.len() {
        match pattern[p] {
            b'*' | b'?' | b'[' => break,
            b'\\' if p + 1 < pattern.len() => {
                prefix.push(pattern[p + 1]);
                p += 2;
            }
            b'\\' => break,
            byte => {
                prefix.push(byte);
                p += 1;
            }
        }
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows the pattern forms Redis documents for KEYS, case by case.
    #[test]
    fn redis_examples() {
        let yes = |p: &str, k: &str| assert!(matches(p.as_bytes(), k.as_bytes()), "{p} ~ {k}");
        let no = |p: &str, k: &str| assert!(!matches(p.as_bytes(), k.as_bytes()), "{p} !~ {k}");
        yes("h?llo", "hello");
        yes("h*llo", "heeeello");
        yes("h*llo", "hllo");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        no("h[^e]llo", "hello");
        yes("h[a-b]llo", "hbllo");
        no("h[a-b]llo", "hcllo");
        yes("*", "");
        yes("a*b*c", "axxbyyc");
        no("a*b*c", "axxbyy");
        yes("a\\*", "a*");
        no("a\\*", "ab");
        yes("user:*", "user:1");
        no("user:?", "user:12");
    }

    // Shows a pattern built to make naive backtracking exponential finishes at once.
    #[test]
    fn adversarial_patterns_stay_linear() {
        let key = vec![b'a'; 4096];
        let pattern = "a*".repeat(200) + "b";
        assert!(!matches(pattern.as_bytes(), &key));
    }

    // Shows a budget bounds the work: a costly match stops with None once it is spent.
    #[test]
    fn budgets_bound_the_work() {
        let key = vec![b'a'; 4096];
        // Each of the key's 2,097 first bytes starts an attempt of 2,001 steps.
        let pattern = [b"*".to_vec(), b"a".repeat(2000), b"b".to_vec()].concat();
        let mut steps = 100_000;
        assert_eq!(matches_within(&pattern, &key, &mut steps), None);
        assert_eq!(steps, 0);
        let mut plenty = 1_000;
        assert_eq!(matches_within(b"a*", b"abc", &mut plenty), Some(true));
        assert!(plenty < 1_000);
    }

    #[test]
    fn prefixes_stop_at_the_first_special_byte() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a\\*b?"), b"a*b");
        assert_eq!(literal_prefix(b"*x"), b"");
    }
}
