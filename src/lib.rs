//! mcplex: a single-threaded MCP gateway.
//!
//! Layers, top to bottom (nothing imports upward):
//! `event_loop` (the loop) -> `front` (HTTP decisions) -> `downstream` (client connections, over
//! `client_stream`) and `mcp` (the sans-IO relay) -> `upstream` (links, JWKS fetches) ->
//! `transport`, `tls` -> `http`, `jsonrpc` -> `config` -> `auth` (the front door's policies),
//! `base64`, `timer`, `scratch`, `idmap`, `metrics`, `log`. The codecs (`http`, `jsonrpc`,
//! `config`, `auth::jwt`, `auth::rules`) are pure and public so that `tests/` and `fuzz/` can
//! reach them.
// Denied everywhere; src/memory.rs alone allows it, for one call into the C library.
#![deny(unsafe_code)]

pub mod auth;
pub mod base64;
pub mod client_stream;
pub mod config;
pub mod downstream;
pub mod event_loop;
pub mod front;
pub mod http;
pub mod idmap;
pub mod jsonrpc;
pub mod log;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod scratch;
pub mod signals;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod upstream;
