//! Reading Redis commands off a connection's bytes: RESP arrays of bulk strings (what every
//! client library sends) and inline commands (a line of words, what a person types into
//! `telnet`).
//!
//! The parser is restartable: it reads from the start of the unconsumed bytes every time and
//! says how many bytes one whole command took, or that the command is not whole yet. Bulk
//! strings' bodies are skipped by their lengths and copied only once the whole command has
//! arrived, so a large command arriving in pieces costs a pass over its headers each time.
//!
//! Every length is checked against [`Limits`] before anything is allocated for it. Anything
//! that is not a command — a negative or oversized length, a nested array, a bad header byte,
//! an unbalanced quote — is a [`ProtocolError`]: the connection answers it with Redis's
//! `-ERR Protocol error: …` and closes, since the stream cannot be resynchronised (Redis does
//! the same).

use std::fmt;

/// Sizes a command may not exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in one bulk string (a key or a value and some room for options).
    pub bulk_bytes_max: usize,
    /// Most arguments in one command (the command's name included).
    pub args_max: usize,
    /// Most bytes in one inline command line.
    pub inline_bytes_max: usize,
    /// Most bytes in one whole command (headers and bodies).
    pub command_bytes_max: usize,
}

/// One step of the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not one whole command yet: read more.
    Incomplete,
    /// A command (its arguments, the name first), and the bytes it took.
    Command { args: Vec<Vec<u8>>, consumed: usize },
    /// Bytes that carry no command (an empty line, `*0`): skip them.
    Nothing { consumed: usize },
}

/// Bytes that are not a Redis command; the connection closes after saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// Reads the command at the start of `input`.
pub fn parse(input: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    match input.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_array(input, limits),
        Some(_) => parse_inline(input, limits),
    }
}

/// The line at `at` (without its `\r\n`) and where the next one starts; `None` when the line
/// has not all arrived. A header line longer than any valid one is refused rather than
/// waited for.
fn line(input: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    // `*`/`$`, up to 20 digits and a sign: anything longer is not a header.
    const HEADER_BYTES_MAX: usize = 24;
    let rest = &input[at..];
    let window = &rest[..rest.len().min(HEADER_BYTES_MAX + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && window[end - 1] == b'\r' => {
            Ok(Some((&rest[..end - 1], at + end + 1)))
        }
        Some(_) => Err(ProtocolError("a header line must end with CRLF".into())),
        None if window.len() > HEADER_BYTES_MAX + 1 => {
            Err(ProtocolError("header line too long".into()))
        }
        None => Ok(None),
    }
}

/// A header's number: ASCII decimal, optionally negative, nothing else.
fn number(digits: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {what} length")))
}

fn parse_array(input: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some((header, mut at)) = line(input, 0)? else { return Ok(Parsed::Incomplete) };
    let count = number(&header[1..], "multibulk")?;
    if count <= 0 {
        // Redis ignores `*0` and `*-1` from clients.
        return Ok(Parsed::Nothing { consumed: at });
    }
    if count as u64 > limits.args_max as u64 {
        return Err(ProtocolError(format!(
            "invalid multibulk length: {count} arguments, at most {} are taken",
            limits.args_max
        )));
    }
    // Where each argument's bytes are; copied once the whole command has arrived (a large
    // command arriving in pieces is parsed again each time, its bodies not copied again).
    // Allocate only for what has arrived: a header alone must not reserve a large vector.
    let mut spans = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        let Some(&kind) = input.get(at) else { return Ok(Parsed::Incomplete) };
        if kind != b'$' {
            return Err(ProtocolError(format!("expected '$', got '{}'", kind.escape_ascii())));
        }
        let Some((header, body)) = line(input, at)? else { return Ok(Parsed::Incomplete) };
        let length = number(&header[1..], "bulk")?;
        if length < 0 || length as u64 > limits.bulk_bytes_max as u64 {
            return Err(ProtocolError(format!(
                "invalid bulk length {length} (at most {} bytes)",
                limits.bulk_bytes_max
            )));
        }
        let end = body + length as usize;
        if end + 2 > limits.command_bytes_max {
            return Err(ProtocolError(format!(
                "command too large (at most {} bytes)",
                limits.command_bytes_max
            )));
        }
        if input.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("a bulk string must end with CRLF".into()));
        }
        spans.push(body..end);
        at = end + 2;
    }
    let args = spans.into_iter().map(|span| input[span].to_vec()).collect();
    Ok(Parsed::Command { args, consumed: at })
}

fn parse_inline(input: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let window = &input[..input.len().min(limits.inline_bytes_max + 1)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > limits.inline_bytes_max {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = input[..end].strip_suffix(b"\r").unwrap_or(&input[..end]);
    let args = split_inline(line)?;
    if args.is_empty() {
        return Ok(Parsed::Nothing { consumed: end + 1 });
    }
    if args.len() > limits.args_max {
        return Err(ProtocolError("too many arguments in an inline request".into()));
    }
    Ok(Parsed::Command { args, consumed: end + 1 })
}

/// Splits an inline command into words the way Redis does: by spaces, with `"…"` (escapes
/// `\n \r \t \b \a \\ \" \xHH`) and `'…'` (escape `\'`) quoting; a closing quote must be
/// followed by a space or the end.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || ProtocolError("unbalanced quotes in request".into());
    let mut words = Vec::new();
    let mut at = 0;
    loop {
        while at < line.len() && line[at].is_ascii_whitespace() {
            at += 1;
        }
        if at == line.len() {
            return Ok(words);
        }
        let mut word = Vec::new();
        match line[at] {
            b'"' => {
                at += 1;
                loop {
                    match line.get(at) {
                        None => return Err(unbalanced()),
                        Some(b'"') => break,
                        Some(b'\\') if at + 3 < line.len() && line[at + 1] == b'x' => {
                            let hex = std::str::from_utf8(&line[at + 2..at + 4]).ok();
                            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                                Some(byte) => {
                                    word.push(byte);
                                    at += 4;
                                }
                                None => {
                                    word.push(b'x');
                                    at += 2;
                                }
                            }
                        }
                        Some(b'\\') if at + 1 < line.len() => {
                            word.push(match line[at + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            at += 2;
                        }
                        Some(&byte) => {
                            word.push(byte);
                            at += 1;
                        }
                    }
                }
                at += 1;
                if line.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            b'\'' => {
                at += 1;
                loop {
                    match line.get(at) {
                        None => return Err(unbalanced()),
                        Some(b'\'') => break,
                        Some(b'\\') if line.get(at + 1) == Some(&b'\'') => {
                            word.push(b'\'');
                            at += 2;
                        }
                        Some(&byte) => {
                            word.push(byte);
                            at += 1;
                        }
                    }
                }
                at += 1;
                if line.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            _ => {
                while at < line.len() && !line[at].is_ascii_whitespace() {
                    word.push(line[at]);
                    at += 1;
                }
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { bulk_bytes_max: 64, args_max: 4, inline_bytes_max: 32, command_bytes_max: 100 };

    fn command(args: &[&str], consumed: usize) -> Parsed {
        Parsed::Command { args: args.iter().map(|a| a.as_bytes().to_vec()).collect(), consumed }
    }

    // Shows arrays of bulk strings parse, pipelined commands one at a time, and every prefix
    // of a command is Incomplete rather than an error or a wrong command.
    #[test]
    fn arrays_parse_and_prefixes_wait() {
        let one = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let two = [&one[..], b"*1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(parse(&two, &LIMITS), Ok(command(&["GET", "k"], one.len())));
        assert_eq!(parse(&two[one.len()..], &LIMITS), Ok(command(&["PING"], 14)));
        for cut in 0..one.len() {
            assert_eq!(parse(&one[..cut], &LIMITS), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        // Binary bodies are taken by length: CRLF inside a value is data.
        let binary = b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n";
        assert_eq!(parse(binary, &LIMITS), Ok(command(&["ECHO", "a\r\nb"], binary.len())));
        assert_eq!(parse(b"*0\r\n", &LIMITS), Ok(Parsed::Nothing { consumed: 4 }));
    }

    // Shows every malformed shape is a protocol error, named, never a panic or a command:
    // bad lengths, oversized bulks and arrays, nested arrays, missing CRLFs, endless headers.
    #[test]
    fn malformed_arrays_are_protocol_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "invalid multibulk length"),
            (b"*5\r\n", "invalid multibulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$65\r\n", "invalid bulk length"),
            (b"*1\r\n$99999999999999999999999\r\n", "invalid bulk length"),
            (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$1\r\nab\r\n", "must end with CRLF"),
            (b"*1\n", "must end with CRLF"),
            (b"*1111111111111111111111111111", "header line too long"),
        ];
        let large = [&b"*2\r\n$60\r\n"[..], &[b'a'; 60], b"\r\n$60\r\n"].concat();
        let cases = [cases, &[(&large[..], "command too large")]].concat();
        for (input, expected) in cases {
            match parse(input, &LIMITS) {
                Err(ProtocolError(reason)) => {
                    assert!(reason.contains(expected), "{input:?}: {reason}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    // Shows inline commands split like Redis's: spaces, both quotes, escapes; an empty line
    // is nothing; an unterminated quote or an endless line is an error.
    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(parse(b"PING\r\n", &LIMITS), Ok(command(&["PING"], 6)));
        assert_eq!(parse(b"set  k v\n", &LIMITS), Ok(command(&["set", "k", "v"], 9)));
        let quoted = b"set \"a b\\x41\\n\" 'it\\'s'\r\n";
        assert_eq!(parse(quoted, &LIMITS), Ok(command(&["set", "a bA\n", "it's"], quoted.len())));
        assert_eq!(parse(b"\r\n", &LIMITS), Ok(Parsed::Nothing { consumed: 2 }));
        assert_eq!(parse(b"PIN", &LIMITS), Ok(Parsed::Incomplete));
        assert!(parse(b"set \"k\n", &LIMITS).is_err());
        assert!(parse(b"set \"k\"x\n", &LIMITS).is_err());
        assert!(parse(&[b'a'; 40], &LIMITS).is_err());
        assert!(parse(b"a b c d e\n", &LIMITS).is_err());
    }
}
