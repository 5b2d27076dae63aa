//! Framing: how flatbuffers messages travel on a TCP stream, and the gate every untrusted
//! frame passes before any of its fields is read.
//!
//! ```text
//!  0        4                          4 + len
//!  +--------+--------------------------+--------+----
//!  | len:u32| flatbuffer (len bytes)   | len:u32| ...
//!  |   LE   | RequestFrame/ReplyFrame/ |        |
//!  |        | PeerFrame                |        |
//!  +--------+--------------------------+--------+----
//! ```
//!
//! `len` is at most [`FRAME_BYTES_MAX`]. The encoders in [`crate::encode`] produce exactly this
//! layout (flatbuffers' size-prefixed buffers).
//!
//! Reading is incremental: [`decode_frame`] looks at whatever bytes have arrived and answers
//! [`Decoded::Incomplete`] (a normal outcome, not an error) until a whole frame is there.
//! [`FrameBuffer`] is the read buffer that goes with it; it never holds more than one maximal
//! frame, so a peer that announces a huge length cannot make the receiver allocate it.
//! The `verify_*` functions run the flatbuffers verifier with the limits of
//! [`crate::constants`] and reject unknown union variants, so callers can then read fields
//! without further checks.

use flatbuffers::{InvalidFlatbuffer, VerifierOptions};

use crate::client::{ErrorKind, Reply, ReplyFrame, Request, RequestFrame};
use crate::constants::{
    FRAME_BYTES_MAX, FRAME_PREFIX_BYTES, VERIFIER_DEPTH_MAX, VERIFIER_TABLES_MAX,
};
use crate::peer::{PeerFrame, PeerMessage};

/// Why a frame was refused. Any of these ends the frame's connection or earns an error reply;
/// none of them is a reason to stop serving others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces a payload over [`FRAME_BYTES_MAX`]. The stream cannot be
    /// resynchronised after this: close the connection.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: usize,
        /// The limit, [`FRAME_BYTES_MAX`].
        max: usize,
    },
    /// The payload is not a valid flatbuffer of the expected root type.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The verifier's complaint, on one line.
        reason: String,
    },
    /// The payload is a valid flatbuffer but names a union variant this build does not know
    /// (a newer peer, or garbage that happened to verify).
    #[error("frame holds unknown {what} variant {tag}")]
    UnknownVariant {
        /// Which union: `request`, `reply`, `error` or `peer message`.
        what: &'static str,
        /// The variant tag found.
        tag: u8,
    },
}

impl From<InvalidFlatbuffer> for FrameError {
    fn from(error: InvalidFlatbuffer) -> Self {
        // The verifier's Display carries a multi-line trace; keep the first line, which names
        // the problem, so logs and error replies stay one line.
        let text = error.to_string();
        let reason = text.lines().next().unwrap_or("invalid flatbuffer").trim().to_string();
        FrameError::Malformed { reason }
    }
}

/// What [`decode_frame`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet: `needed` bytes in total (prefix included) must be buffered
    /// before the frame is complete. Read more and call again.
    Incomplete {
        /// Total bytes the frame occupies, once known; until the prefix itself is complete,
        /// the prefix length.
        needed: usize,
    },
    /// A whole frame occupies the first `len` bytes (prefix included). Pass exactly those
    /// bytes to a `verify_*` function: flatbuffers aligns a size-prefixed buffer as a whole, so
    /// the verifier must see the prefix too.
    Frame {
        /// Bytes the frame takes, prefix included.
        len: usize,
    },
}

/// Looks for one frame at the start of `bytes`. Checks the announced length against
/// [`FRAME_BYTES_MAX`] before anything else, so the answer never asks for a larger buffer.
pub fn decode_frame(bytes: &[u8]) -> Result<Decoded, FrameError> {
    let Some(prefix) = bytes.first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Ok(Decoded::Incomplete { needed: FRAME_PREFIX_BYTES });
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    let needed = FRAME_PREFIX_BYTES + len;
    if bytes.len() < needed {
        return Ok(Decoded::Incomplete { needed });
    }
    Ok(Decoded::Frame { len: needed })
}

/// The verifier limits applied to every untrusted frame.
pub fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: VERIFIER_DEPTH_MAX,
        max_tables: VERIFIER_TABLES_MAX,
        max_apparent_size: FRAME_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}

/// Runs the verifier over a whole frame. The prefix must announce exactly the bytes that
/// follow it: a frame is never trusted to describe more or less than it holds.
fn verified<'buf, T>(frame: &'buf [u8]) -> Result<T::Inner, FrameError>
where
    T: 'buf + flatbuffers::Follow<'buf> + flatbuffers::Verifiable,
{
    match decode_frame(frame)? {
        Decoded::Frame { len } if len == frame.len() => {}
        _ => {
            return Err(FrameError::Malformed {
                reason: format!("length prefix does not match the {} bytes given", frame.len()),
            })
        }
    }
    Ok(flatbuffers::size_prefixed_root_with_opts::<T>(&verifier_options(), frame)?)
}

/// Verifies a whole client request frame (prefix included).
pub fn verify_request(frame: &[u8]) -> Result<RequestFrame<'_>, FrameError> {
    let frame = verified::<RequestFrame>(frame)?;
    let tag = frame.request_type();
    if tag == Request::NONE || tag.variant_name().is_none() {
        return Err(FrameError::UnknownVariant { what: "request", tag: tag.0 });
    }
    Ok(frame)
}

/// Verifies a whole reply frame (prefix included).
pub fn verify_reply(frame: &[u8]) -> Result<ReplyFrame<'_>, FrameError> {
    let frame = verified::<ReplyFrame>(frame)?;
    let tag = frame.reply_type();
    if tag == Reply::NONE || tag.variant_name().is_none() {
        return Err(FrameError::UnknownVariant { what: "reply", tag: tag.0 });
    }
    if let Some(error) = frame.reply_as_error_reply() {
        let kind = error.kind_type();
        if kind == ErrorKind::NONE || kind.variant_name().is_none() {
            return Err(FrameError::UnknownVariant { what: "error", tag: kind.0 });
        }
    }
    Ok(frame)
}

/// A reply frame that passed [`verify_reply`], kept with its bytes: whoever holds one reads it
/// without verifying it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReply(Vec<u8>);

impl VerifiedReply {
    /// Verifies `frame` (prefix included) and keeps it.
    pub fn new(frame: Vec<u8>) -> Result<VerifiedReply, FrameError> {
        verify_reply(&frame)?;
        Ok(VerifiedReply(frame))
    }

    /// The reply.
    pub fn reply(&self) -> ReplyFrame<'_> {
        // SAFETY: the bytes passed `verify_reply` in `new` and cannot have changed since (the
        // field is private and never handed out mutably), which is what the unchecked accessor
        // requires.
        unsafe { flatbuffers::size_prefixed_root_unchecked::<ReplyFrame>(&self.0) }
    }

    /// The frame's bytes, prefix included.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Verifies a whole peer frame (prefix included).
pub fn verify_peer(frame: &[u8]) -> Result<PeerFrame<'_>, FrameError> {
    let frame = verified::<PeerFrame>(frame)?;
    let tag = frame.message_type();
    if tag == PeerMessage::NONE || tag.variant_name().is_none() {
        return Err(FrameError::UnknownVariant { what: "peer message", tag: tag.0 });
    }
    Ok(frame)
}

/// A read buffer for one connection: bytes go in through [`FrameBuffer::spare`] and
/// [`FrameBuffer::commit`], whole frames come out of [`FrameBuffer::next_frame`].
///
/// Its capacity grows only to fit the frame being read, and a frame is never larger than
/// [`FRAME_PREFIX_BYTES`] + [`FRAME_BYTES_MAX`]; consumed bytes are reclaimed by moving the
/// unread tail to the front.
#[derive(Debug)]
pub struct FrameBuffer {
    /// Storage; bytes `start..end` are received and not yet consumed.
    bytes: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// One past the last received byte.
    end: usize,
    /// Total size of the frame at `start`, once its prefix has been read (0 before).
    frame_bytes: usize,
    /// The smallest free space [`FrameBuffer::spare`] offers, so reads are not tiny.
    read_chunk_bytes: usize,
}

impl FrameBuffer {
    /// A buffer that reads in chunks of at least `read_chunk_bytes`.
    pub fn new(read_chunk_bytes: usize) -> Self {
        let read_chunk_bytes = read_chunk_bytes.clamp(64, FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
        FrameBuffer {
            bytes: vec![0; read_chunk_bytes],
            start: 0,
            end: 0,
            frame_bytes: 0,
            read_chunk_bytes,
        }
    }

    /// Free space to read into. Reclaims consumed bytes first and grows the buffer to fit the
    /// frame being read, never beyond one maximal frame.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want_free = self.read_chunk_bytes.max(self.frame_bytes.saturating_sub(self.len()));
        if self.bytes.len() - self.end < want_free && self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.bytes.len() - self.end < want_free {
            let capacity = (self.end + want_free).min(FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
            if capacity > self.bytes.len() {
                self.bytes.resize(capacity, 0);
            }
        }
        &mut self.bytes[self.end..]
    }

    /// The bytes read and not yet taken as frames.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Records that `n` bytes were written at the start of the last [`FrameBuffer::spare`].
    ///
    /// # Panics
    /// If `n` is more than the spare space (a caller bug).
    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.bytes.len(), "committed more bytes than were spare");
        self.end += n;
    }

    /// Bytes received and not consumed.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when every received byte belongs to a consumed frame.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The next whole frame (prefix included), consuming it, or `None` when more bytes are
    /// needed. An error means the stream is unusable (the length prefix is over the limit).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match decode_frame(&self.bytes[self.start..self.end])? {
            Decoded::Incomplete { needed } => {
                self.frame_bytes = needed;
                Ok(None)
            }
            Decoded::Frame { len } => {
                let base = self.start;
                self.start += len;
                self.frame_bytes = 0;
                Ok(Some(&self.bytes[base..base + len]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: the decoder reports Incomplete with the bytes needed, then the whole frame.
    #[test]
    fn decode_incomplete_then_whole() {
        let mut bytes = 5u32.to_le_bytes().to_vec();
        assert_eq!(decode_frame(&bytes[..2]).unwrap(), Decoded::Incomplete { needed: 4 });
        assert_eq!(decode_frame(&bytes).unwrap(), Decoded::Incomplete { needed: 9 });
        bytes.extend_from_slice(b"hello");
        assert_eq!(decode_frame(&bytes).unwrap(), Decoded::Frame { len: 9 });
    }

    // Shows: a length over the limit is refused from the prefix alone.
    #[test]
    fn decode_refuses_oversized_length() {
        let bytes = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::TooLarge { len: FRAME_BYTES_MAX + 1, max: FRAME_BYTES_MAX })
        );
    }

    // Shows: the frame buffer yields frames fed one byte at a time and reclaims space.
    #[test]
    fn frame_buffer_byte_by_byte() {
        let mut stream = Vec::new();
        for i in 0..50u8 {
            let payload = vec![i; i as usize];
            stream.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            stream.extend_from_slice(&payload);
        }
        let mut buffer = FrameBuffer::new(64);
        let mut seen = Vec::new();
        for byte in stream {
            buffer.spare()[0] = byte;
            buffer.commit(1);
            while let Some(frame) = buffer.next_frame().unwrap() {
                seen.push(frame[FRAME_PREFIX_BYTES..].to_vec());
            }
        }
        assert_eq!(seen.len(), 50);
        for (i, frame) in seen.iter().enumerate() {
            assert_eq!(frame, &vec![i as u8; i]);
        }
        assert!(buffer.is_empty());
        assert!(buffer.bytes.len() <= 64 + 64, "buffer grew to {}", buffer.bytes.len());
    }
}
