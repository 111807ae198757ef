//! MCP semantics without I/O: the relay (sessions, calls in flight, id and token maps), routing
//! by name, the aggregation of many targets into one server, and target health.

pub mod aggregate;
pub mod health;
pub mod relay;
pub mod route;
pub mod session;

/// Protocol revisions the gateway speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The revision offered when a client asks for one we do not know.
pub const LATEST_VERSION: &str = "2025-11-25";

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}
