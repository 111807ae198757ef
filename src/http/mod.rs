//! A small HTTP/1.1 codec. Everything here is pure: bytes in, `Complete`/`Partial`/error out, no
//! I/O, so it is unit-tested with byte strings and fuzzed (see `fuzz/`).

pub mod chunked;
pub mod client;
pub mod parse;
pub mod response;
pub mod sse;

/// The outcome of feeding bytes to an incremental parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole item, and how many input bytes it used.
    Complete(T, usize),
    /// Not enough bytes yet; call again with more.
    Partial,
}
