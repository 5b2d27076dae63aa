//! Writing Redis replies, in RESP2 or RESP3 (what the connection's `HELLO` chose).
//!
//! RESP3 has types RESP2 lacks — null, map, set, double, boolean — and this writer puts each
//! in its RESP2 form on a RESP2 connection (a null bulk string, a flat array of key, value,
//! a bulk string of the number), as Redis does.

/// A reply being written into `buf`.
pub struct Reply<'a> {
    /// The connection's output.
    pub buf: &'a mut Vec<u8>,
    /// The connection said `HELLO 3`.
    pub resp3: bool,
}

impl Reply<'_> {
    fn header(&mut self, kind: u8, n: i64) {
        self.buf.push(kind);
        self.buf.extend_from_slice(itoa(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// `+OK`-style status.
    pub fn simple(&mut self, text: &str) {
        self.buf.push(b'+');
        push_line(self.buf, text);
    }

    /// `+OK`.
    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// An error: `text` starts with its code (`ERR`, `MOVED`, `WRONGTYPE`…).
    pub fn error(&mut self, text: &str) {
        self.buf.push(b'-');
        push_line(self.buf, text);
    }

    /// An integer.
    pub fn int(&mut self, n: i64) {
        self.header(b':', n);
    }

    /// A bulk string.
    pub fn bulk(&mut self, bytes: &[u8]) {
        self.header(b'$', bytes.len() as i64);
        self.buf.extend_from_slice(bytes);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A bulk string, or null.
    pub fn bulk_or_null(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(bytes) => self.bulk(bytes),
            None => self.null(),
        }
    }

    /// Null: `_` in RESP3, the null bulk string in RESP2.
    pub fn null(&mut self) {
        self.buf.extend_from_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    /// Null where RESP2 has the null array (`*-1`): a failed transaction's `EXEC`.
    pub fn null_array(&mut self) {
        self.buf.extend_from_slice(if self.resp3 { b"_\r\n" } else { b"*-1\r\n" });
    }

    /// An array of `n` replies, written next.
    pub fn array(&mut self, n: usize) {
        self.header(b'*', n as i64);
    }

    /// A map of `n` pairs, written next (key, value, key, value…); a flat array in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n as i64);
        } else {
            self.header(b'*', 2 * n as i64);
        }
    }

    /// A set of `n` replies, written next; an array in RESP2.
    pub fn set(&mut self, n: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, n as i64);
    }

    /// A floating-point number: a RESP3 double, a bulk string in RESP2.
    pub fn double(&mut self, value: f64) {
        let text = format_double(value);
        if self.resp3 {
            self.buf.push(b',');
            push_line(self.buf, &text);
        } else {
            self.bulk(text.as_bytes());
        }
    }

    /// A long text (`INFO`, `CLUSTER NODES`): a RESP3 verbatim string, a bulk string in RESP2.
    pub fn verbatim(&mut self, text: &str) {
        if self.resp3 {
            self.header(b'=', text.len() as i64 + 4);
            self.buf.extend_from_slice(b"txt:");
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }
}

/// A number as Redis prints one: the shortest text that reads back the same, `inf`/`-inf`.
pub fn format_double(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's shortest round-trip form; integers without a fraction, like Redis's %.17g.
    let text = format!("{value}");
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

fn itoa(n: i64) -> String {
    n.to_string()
}

/// A status or error line: CR and LF would end the line early, so they become spaces.
fn push_line(buf: &mut Vec<u8>, text: &str) {
    buf.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(resp3: bool, write: impl FnOnce(&mut Reply<'_>)) -> String {
        let mut buf = Vec::new();
        write(&mut Reply { buf: &mut buf, resp3 });
        String::from_utf8(buf).expect("test replies are text")
    }

    // Shows each type's RESP2 and RESP3 forms, and that error lines cannot be split.
    #[test]
    fn types_in_both_protocols() {
        assert_eq!(written(false, |r| r.null()), "$-1\r\n");
        assert_eq!(written(true, |r| r.null()), "_\r\n");
        assert_eq!(written(false, |r| r.map(2)), "*4\r\n");
        assert_eq!(written(true, |r| r.map(2)), "%2\r\n");
        assert_eq!(written(false, |r| r.double(1.5)), "$3\r\n1.5\r\n");
        assert_eq!(written(true, |r| r.double(3.0)), ",3\r\n");
        assert_eq!(written(false, |r| r.bulk(b"a\r\nb")), "$4\r\na\r\nb\r\n");
        assert_eq!(written(false, |r| r.int(-2)), ":-2\r\n");
        assert_eq!(written(false, |r| r.error("ERR bad\r\nthing")), "-ERR bad  thing\r\n");
        assert_eq!(written(true, |r| r.verbatim("a")), "=5\r\ntxt:a\r\n");
        assert_eq!(format_double(10.5e20), "1050000000000000000000");
    }
}
