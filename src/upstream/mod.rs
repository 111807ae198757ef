//! Upstream transports: one module per kind of target.

pub mod http;
pub mod stdio;
