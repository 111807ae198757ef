//! Upstream links: one initialized (or initializing) connection to an MCP server each, a stdio
//! child or an HTTP session. A link knows its transport, not who uses it: the relay decides
//! which holder (today, one client session's target) a link serves, and the loop feeds it
//! readiness and hands what it reports (`LinkEvent`s) to the relay.

pub mod fetch;
pub mod http;
pub mod link;
pub mod stdio;

use mio::event::Source;
use mio::{Interest, Token};
use serde_json::Value;
use std::io;

/// A link's number: given by the relay, never reused.
pub type LinkId = u64;

/// What an upstream said, or what happened to it.
#[derive(Debug)]
pub enum LinkEvent {
    /// A JSON-RPC message from the target.
    Message(Value),
    /// A JSON-RPC success answer to upstream request `id`, its result left as text so it can
    /// be relayed without a `Value` tree.
    Answer(u64, Box<serde_json::value::RawValue>),
    /// The request with this upstream id will get no answer.
    RequestFailed(u64, Failure),
    /// The link is unusable.
    Fatal(String),
    /// Worth a log line.
    Log(String),
}

/// Why a request failed: the message for the client's JSON-RPC error, and its `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub data: Option<Value>,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            data: None,
        }
    }
}

/// Lends the loop's `Poll` and token table to a link, so it can watch its sockets and pipes
/// under fresh tokens that the loop routes back to it.
pub trait Registrar {
    fn register(&mut self, src: &mut dyn Source, interest: Interest) -> io::Result<Token>;
    fn reregister(
        &mut self,
        src: &mut dyn Source,
        token: Token,
        interest: Interest,
    ) -> io::Result<()>;
    fn deregister(&mut self, src: &mut dyn Source, token: Token);
}
