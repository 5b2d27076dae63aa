//! tmp
pub mod constants;
pub mod core;
pub mod logging;
pub mod metrics;
