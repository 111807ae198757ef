//! MCP semantics without I/O: the relay (sessions, calls in flight, id and token maps), routing
//! by name, the aggregation of many targets into one server, and target health.

pub mod aggregate;
pub mod era;
pub mod health;
pub mod params;
pub mod relay;
pub mod route;
pub mod session;
pub mod state;

/// Protocol revisions the gateway speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The revision offered when a client asks for one we do not know.
pub const LATEST_VERSION: &str = "2025-11-25";

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// The stateless revision: no `initialize`, every request carries its version and the
/// client's capabilities in `params._meta`.
pub const MODERN_VERSION: &str = "2026-07-28";

/// Every revision the gateway serves, newest first (what `server/discover` and a `-32022`
/// error list).
pub const ALL_VERSIONS: [&str; 5] = [
    MODERN_VERSION,
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

/// `_meta` keys of the 2026-07-28 request envelope and result metadata.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// Every key of that namespace starts so; a legacy upstream gets none of them.
pub const META_PREFIX: &str = "io.modelcontextprotocol/";

/// Results a 2026-07-28 client may cache: they carry `ttlMs` and `cacheScope`.
pub fn is_cacheable(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}
