//! The corekv wire protocol: flatbuffers schemas, the code flatc generates from them, and the
//! framing around them. Nothing else lives here.
//!
//! - [`client`] and [`peer`]: generated from `schema/client.fbs` and `schema/peer.fbs` by
//!   `generate.sh` (flatc 25.12.19); committed, and checked for staleness in CI.
//! - [`frame`]: the u32 little-endian size prefix, an incremental decoder for which a partial
//!   frame is a normal [`frame::Decoded::Incomplete`] outcome, a bounded read buffer, and the
//!   verifier entry points that every untrusted frame goes through before any field is read.
//! - [`encode`]: builders that turn Rust values into finished, size-prefixed frames with one
//!   reused `FlatBufferBuilder`.
//! - [`constants`]: every limit of the protocol.
//! - [`shared`]: conversions between the generated types and `corekv-types` (key metadata,
//!   roles, the status shape), written once for both ends.
//!
//! A round trip, as a client and a server see it:
//!
//! ```
//! use corekv_proto::encode::RequestEncoder;
//! use corekv_proto::frame::{decode_frame, verify_request, Decoded};
//! use corekv_proto::client::Request;
//!
//! let mut encoder = RequestEncoder::new();
//! let bytes = encoder.put(7, b"{user:1}:name", b"ada").to_vec();
//!
//! let Decoded::Frame { len } = decode_frame(&bytes).unwrap() else {
//!     panic!("a whole frame was given");
//! };
//! assert_eq!(len, bytes.len());
//! let frame = verify_request(&bytes[..len]).unwrap();
//! assert_eq!(frame.id(), 7);
//! assert_eq!(frame.request_type(), Request::PutRequest);
//! let put = frame.request_as_put_request().unwrap();
//! assert_eq!(put.value().bytes(), b"ada");
//! ```
#![deny(missing_docs)]

pub mod constants;
pub mod encode;
pub mod frame;
pub mod shared;

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    deprecated,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
mod client_generated {
    include!("generated/client_generated.rs");
}

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    deprecated,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
mod peer_generated {
    include!("generated/peer_generated.rs");
}

/// Generated from `schema/client.fbs`: what clients and shards say to each other.
pub mod client {
    pub use crate::client_generated::corekv::client::*;
}

/// Generated from `schema/peer.fbs`: what the replicas of one shard say to each other.
pub mod peer {
    pub use crate::peer_generated::corekv::peer::*;
}
