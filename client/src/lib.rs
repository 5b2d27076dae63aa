//! corekv's Rust client (work in progress: registry and placement).
#![deny(missing_docs)]

pub mod placement;
pub mod registry;
