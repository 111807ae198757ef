//! Configuration: YAML in agentgateway's shape, checked field by field into a validated [`Config`].
//!
//! The file is read as a generic YAML tree and walked by hand, so that every error names the
//! path of the bad field (`binds[0].listeners[0].routes[0]...`) and all errors are reported at
//! once rather than the first one only. Unknown fields are errors; fields that a later release
//! implements are recognised and rejected with "not supported yet", never silently ignored.

use crate::tls::TlsOptions;

mod door;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Largest accepted request head (request line + headers), bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest accepted number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Largest accepted request body (one JSON-RPC message or batch), bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest line a stdio child may write (one JSON-RPC message), bytes.
pub const DEFAULT_MAX_STDIO_LINE: usize = 8 * 1024 * 1024;
/// A client must deliver a whole request head and body within this time.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream must answer a request within this time.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// A session with no client activity is ended after this time.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// An upstream must answer `initialize` within this time.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// On SIGTERM, requests in flight get this long before the gateway stops.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_millis(800);
/// Maximum simultaneous client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Maximum simultaneous MCP sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Maximum requests one session may have in flight.
pub const DEFAULT_MAX_INFLIGHT: usize = 256;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub binds: Vec<Bind>,
    pub limits: Limits,
    /// The JWKS documents the gateway fetches (and refreshes) for its routes' JWT policies.
    pub jwks: Vec<Jwks>,
}

pub type JwksTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// A JWKS by URL: where the loop's fetcher gets it and whose keys it sets.
#[derive(Debug, Clone)]
pub struct Jwks {
    pub auth: Rc<crate::auth::JwtAuth>,
    /// Resolved at load time.
    pub url: Url,
    /// For an https URL: the TLS to fetch it over (the `jwks` entry's `backendTLS`, else the
    /// Mozilla roots) and the name to verify, made at load time.
    pub tls: Option<JwksTls>,
}

/// Tunables; all have defaults (see the `DEFAULT_*` constants).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_stdio_line: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub init_timeout: Duration,
    pub session_ttl: Duration,
    pub max_connections: usize,
    pub max_sessions: usize,
    pub max_inflight: usize,
    /// Refuse requests whose Host or Origin could come from a DNS-rebinding attack.
    pub dns_rebinding_protection: bool,
    /// Host names (besides loopback names) that requests may carry in `Host`.
    pub allowed_hosts: Vec<String>,
    /// On SIGTERM/SIGINT, requests in flight get this long to finish.
    pub drain_timeout: Duration,
    /// A target that failed to start is not tried again for later sessions until a backoff
    /// (doubling from 1 s up to this) has passed; zero turns backoff off.
    pub target_backoff: Duration,
    /// Prefix of every session id (`<instance>.<random>`), so a load balancer can route a
    /// session to the process that owns it. From `instanceId` or `MCPLEX_INSTANCE_ID`.
    pub instance_id: Option<String>,
    /// Where `/metrics` and `/healthz` are served on their own (`statsAddr`).
    pub stats_addr: Option<SocketAddr>,
    pub access_log: crate::log::AccessLog,
    pub log_level: u8,
    /// The HMAC key of input rounds' `requestState` (`requestStateKey`), shared by instances
    /// that must verify each other's; none: a random key per process.
    pub state_key: Option<Secret>,
}

/// Key material read from the config, the environment or a file. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Shortest `requestStateKey` accepted, in bytes.
pub const MIN_STATE_KEY: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_stdio_line: DEFAULT_MAX_STDIO_LINE,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            dns_rebinding_protection: true,
            allowed_hosts: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            target_backoff: Duration::ZERO,
            instance_id: None,
            stats_addr: None,
            access_log: crate::log::AccessLog::Off,
            log_level: crate::log::INFO,
            state_key: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub addr: SocketAddr,
    pub listeners: Vec<Listener>,
    /// HTTPS listeners: the port's server TLS (None: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Bind {
    /// Whether a route of this port turns upstream certificate verification off
    /// (`backendTLS.insecure` on the route, its backend or a target).
    pub fn skips_tls_verification(&self) -> bool {
        let routes = self.listeners.iter().flat_map(|l| l.routes.iter());
        routes
            .flat_map(|r| {
                let own = r.backend.targets.iter().map(|t| t.policies.tls.as_ref());
                own.chain([r.policy.upstream.tls.as_ref()])
            })
            .any(|t| t.is_some_and(|t| t.options.insecure))
    }

    /// Whether a route of this port authenticates clients with `mcpAuthentication` and also
    /// passes their token on to a target (`backendAuth: passthrough`), which the MCP
    /// authorization spec forbids (tokens are for this resource alone).
    pub fn passes_oauth_tokens_on(&self) -> bool {
        let routes = self.listeners.iter().flat_map(|l| l.routes.iter());
        routes.into_iter().any(|r| {
            let oauth = (r.policy.door.as_ref())
                .and_then(|d| d.jwt.as_ref())
                .is_some_and(|j| j.mcp.is_some());
            oauth && r.policy.passthrough
        })
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub routes: Vec<Route>,
    pub tls: Option<ListenerTls>,
}

/// An HTTPS listener's `tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: crate::tls::ListenerCert,
    /// Client certificates must be signed by a root in this PEM file.
    pub root: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Option<String>,
    pub hostnames: Vec<String>,
    /// Any one of these must match (none = every request).
    pub matches: Vec<RouteMatch>,
    pub backend: Rc<McpBackend>,
    /// What the route's upstream traffic carries: TLS, credentials, headers, timeouts, retries.
    pub policy: Rc<RoutePolicy>,
    /// `cors`: which browser origins may call this route.
    pub cors: Option<Rc<Cors>>,
}

/// A route's policies for its upstreams (agentgateway's route, backend and target
/// `policies`, merged at load time).
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// `backendTLS`, `backendAuth`, `requestHeaderModifier` of the route (and of its backend
    /// entry): what every HTTP target of the route gets unless the target says otherwise.
    pub upstream: UpstreamPolicy,
    /// `timeout.requestTimeout`: a client's request through this route must be answered within
    /// this (else `config.requestTimeout`).
    pub request_timeout: Option<Duration>,
    /// `timeout.backendRequestTimeout`: each HTTP request to an upstream (each attempt) must be
    /// answered within this.
    pub backend_timeout: Option<Duration>,
    /// `retry`: failed upstream HTTP requests that are safe to repeat are sent again.
    pub retry: Option<Retry>,
    /// Some HTTP target of the route forwards the client's own credential
    /// (`backendAuth: {passthrough: {}}`), so stateless requests share links only with
    /// requests carrying the same credential.
    pub passthrough: bool,
    /// `apiKey`, `jwtAuth` / `mcpAuthentication`, `localRateLimit`, `mcpAuthorization`: who
    /// may come in, how often, and what they may see and call.
    pub door: Option<Rc<crate::auth::Door>>,
}

/// Backend policies for HTTP upstreams, at one level (route, backend or target).
#[derive(Debug, Default, Clone)]
pub struct UpstreamPolicy {
    pub tls: Option<Rc<BackendTls>>,
    pub auth: Option<BackendAuth>,
    /// `requestHeaderModifier`, in the order the levels apply (route first, target last).
    pub headers: Vec<HeaderOp>,
}

impl UpstreamPolicy {
    /// This level with `top` (a more specific one) over it: its TLS and credentials win,
    /// its header changes apply after these.
    pub fn under(&self, top: &UpstreamPolicy) -> UpstreamPolicy {
        UpstreamPolicy {
            tls: top.tls.clone().or_else(|| self.tls.clone()),
            auth: top.auth.clone().or_else(|| self.auth.clone()),
            headers: self.headers.iter().chain(&top.headers).cloned().collect(),
        }
    }
}

/// How requests to an upstream authenticate (`backendAuth`).
#[derive(Clone, PartialEq, Eq)]
pub enum BackendAuth {
    /// `key`: header `header` carries `value` (by default `Authorization: Bearer <key>`).
    Key { header: String, value: Secret },
    /// `passthrough`: the client's own `Authorization` goes to this target: as it came, or
    /// (with a `location`) its token under `header` after `prefix`.
    Passthrough {
        header: String,
        prefix: Option<String>,
        verbatim: bool,
    },
}

impl fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAuth::Key { header, .. } => write!(f, "Key({header}: <redacted>)"),
            BackendAuth::Passthrough { header, .. } => write!(f, "Passthrough({header})"),
        }
    }
}

/// One `requestHeaderModifier` change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Another header of that name (kept beside any earlier one).
    Add(String, String),
    /// That header, replacing any earlier one.
    Set(String, String),
    Remove(String),
}

/// `retry`: how often a failed upstream request is tried, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u8,
    pub backoff: Duration,
    /// HTTP statuses that count as a failure worth another attempt (besides a connection
    /// that broke or timed out).
    pub codes: Vec<u16>,
}

/// The most `retry.attempts`.
pub const MAX_ATTEMPTS: u64 = 10;

/// Headers a `requestHeaderModifier` cannot touch: HTTP framing and hop-by-hop headers, and
/// the ones the gateway writes for the MCP transport.
const RESERVED_HEADERS: [&str; 16] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

/// What one link to an HTTP target sends, from the route's and the target's policies.
#[derive(Debug, Clone, Default)]
pub struct LinkPolicy {
    pub tls: Option<Rc<BackendTls>>,
    /// Headers on every request (the key of `backendAuth` among them).
    pub headers: Vec<(String, String)>,
    /// Where the client's credential goes (passthrough), if anywhere.
    pub passthrough: Option<BackendAuth>,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

impl RoutePolicy {
    /// The settings of a link to `target` on this route.
    pub fn for_target(&self, target: &Target) -> LinkPolicy {
        let up = self.upstream.under(&target.policies);
        let mut headers: Vec<(String, String)> = Vec::new();
        let set = |h: &mut Vec<(String, String)>, name: &str, value: &str| {
            h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            h.push((name.to_string(), value.to_string()));
        };
        for op in &up.headers {
            match op {
                HeaderOp::Add(n, v) => headers.push((n.clone(), v.clone())),
                HeaderOp::Set(n, v) => set(&mut headers, n, v),
                HeaderOp::Remove(n) => headers.retain(|(x, _)| !x.eq_ignore_ascii_case(n)),
            }
        }
        let mut passthrough = None;
        match &up.auth {
            Some(BackendAuth::Key { header, value }) => {
                set(&mut headers, header, &String::from_utf8_lossy(&value.0))
            }
            Some(p @ BackendAuth::Passthrough { header, .. }) => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(header));
                passthrough = Some(p.clone());
            }
            None => {}
        }
        LinkPolicy {
            tls: up.tls,
            headers,
            passthrough,
            timeout: self.backend_timeout,
            retry: self.retry.clone(),
        }
    }
}

impl BackendAuth {
    /// The header a client's `Authorization` value becomes under passthrough.
    pub fn pass(&self, client: &str) -> Option<(String, String)> {
        let BackendAuth::Passthrough {
            header,
            prefix,
            verbatim,
        } = self
        else {
            return None;
        };
        if *verbatim {
            return Some((header.clone(), client.to_string()));
        }
        let token = match client.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => client.trim(),
        };
        let value = format!("{}{token}", prefix.as_deref().unwrap_or(""));
        Some((header.clone(), value))
    }
}

/// One entry of a route's `matches`: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// (lower-cased name, exact value)
    pub headers: Vec<(String, String)>,
    /// (name, exact value)
    pub query: Vec<(String, String)>,
    pub method: Option<String>,
}

/// The CORS policy of a route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cors {
    /// Origins (`scheme://host[:port]`), or `*`.
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub allow_methods: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` may use the route.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// A route's `backendTLS` policy, with its rustls configuration built at load time.
#[derive(Debug)]
pub struct BackendTls {
    pub options: TlsOptions,
    pub config: Arc<rustls::ClientConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
        }
    }
}

/// What a route match looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    pub query: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl Route {
    /// Whether this route takes a request for `path` (no matches = every path).
    pub fn matches_path(&self, path: &str) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.path.as_ref().is_none_or(|p| p.matches(path)))
    }

    /// Whether this route takes the request: any one match entry holds in full.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty()
            || self.matches.iter().any(|m| {
                m.path.as_ref().is_none_or(|p| p.matches(req.path))
                    && m.method
                        .as_deref()
                        .is_none_or(|x| x.eq_ignore_ascii_case(req.method))
                    && m.headers
                        .iter()
                        .all(|(n, v)| (req.header)(n) == Some(v.as_str()))
                    && m.query
                        .iter()
                        .all(|(n, v)| (req.query)(n) == Some(v.as_str()))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMode {
    /// Prefix names only when the backend has two or more targets (agentgateway's default).
    Conditional,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// A session fails if any target fails to start (the default).
    FailClosed,
    /// A session goes on without the targets that failed.
    FailOpen,
}

#[derive(Debug, Clone)]
pub struct McpBackend {
    pub name: String,
    pub targets: Vec<Target>,
    pub prefix_mode: PrefixMode,
    pub failure_mode: FailureMode,
    /// `dnsRebindingProtection` on the backend: over `config.dnsRebindingProtection` for the
    /// routes serving it.
    pub dns_rebinding: Option<bool>,
    /// Most pools (sets of links, one per target) serving this backend's stateless requests
    /// at once (`pool: {max: N}`, an mcplex field).
    pub pool_max: usize,
}

/// The largest `pool.max`.
pub const MAX_POOL: usize = 64;

impl McpBackend {
    /// Whether stateless requests of different principals may share this backend's links:
    /// only when every target is marked `shareable`.
    pub fn shareable(&self) -> bool {
        self.targets.iter().all(|t| t.shareable)
    }

    /// Whether names of this backend's targets carry the `<target>_` prefix.
    pub fn prefixed(&self) -> bool {
        match self.prefix_mode {
            PrefixMode::Always => true,
            PrefixMode::Never => false,
            PrefixMode::Conditional => self.targets.len() > 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Which MCP revision the target speaks (`era:`, an mcplex field): found out once when
    /// `Auto`, else taken as said.
    pub era: Era,
    /// The target's own `policies` (HTTP targets only), over the route's.
    pub policies: UpstreamPolicy,
    /// `shareable: true` (an mcplex field): the server keeps nothing between requests, so
    /// authenticated principals may share its links (see `McpBackend::shareable`).
    pub shareable: bool,
}

/// A target's protocol era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Probe with `server/discover`; fall back to `initialize`.
    Auto,
    /// 2025-11-25 and earlier: `initialize`, sessions, server-to-client requests.
    Legacy,
    /// 2026-07-28: stateless requests, each with its `_meta` envelope.
    Modern,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    Stdio(StdioTarget),
    /// Streamable HTTP (`mcp: {host: URL}`).
    Mcp(Url),
    /// Legacy HTTP+SSE (`sse: {host: URL}`).
    Sse(Url),
}

/// An upstream URL, with its host resolved at load time (so the loop never waits on DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    pub addrs: Vec<SocketAddr>,
}

impl Url {
    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Parses `http(s)://host[:port][/path]` (without resolving).
    pub fn parse(s: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{s:?}: expected an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(format!("{s:?}: credentials in URLs are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: bad IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: missing host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))?,
            None if https => 443,
            None => 80,
        };
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path,
            addrs: Vec::new(),
        })
    }

    /// Resolves the host (IP literals need no lookup).
    fn resolve(&mut self) -> Result<(), String> {
        use std::net::ToSocketAddrs;
        self.addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .collect();
        if self.addrs.is_empty() {
            return Err(format!("{} has no addresses", self.host));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct StdioTarget {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment instead of the gateway's own (then add `env`).
    pub clear_env: bool,
}

/// One problem found in a configuration, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All the problems found in one configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Every address the gateway listens on: the binds', then `statsAddr`.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut a: Vec<_> = self.binds.iter().map(|b| b.addr).collect();
        a.extend(self.limits.stats_addr);
        a
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &str) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {path}: {e}"),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("invalid YAML: {e}"),
            }])
        })?;
        let mut cx = Checker::default();
        let mut cfg = cx.root(&root);
        if let (Some(c), Ok(id)) = (cfg.as_mut(), std::env::var("MCPLEX_INSTANCE_ID")) {
            // The environment wins, so one config file can serve every instance.
            if valid_instance_id(&id) {
                c.limits.instance_id = Some(id);
            } else {
                cx.err("MCPLEX_INSTANCE_ID", INSTANCE_ID_RULE);
            }
        }
        if cx.errors.is_empty() {
            if let Some(cfg) = cfg {
                return Ok(cfg);
            }
            cx.err("", "empty configuration");
        }
        Err(ConfigErrors(cx.errors))
    }
}

/// Walks the YAML tree, collecting errors.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
    /// Named `host` backends (`backends: [{name, host, policies}]`), for targets naming them.
    hosts: Vec<(String, String, UpstreamPolicy)>,
    /// JWKS URLs met so far.
    jwks: Vec<Jwks>,
}

/// A named `mcp` backend and the `policies` it was given.
type Named = (String, Rc<McpBackend>, UpstreamPolicy);

/// A mapping being read: remembers which keys were used so the rest can be reported.
struct Obj<'a> {
    map: &'a Mapping,
    path: String,
    used: Vec<&'static str>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn obj<'a>(&mut self, v: &'a Value, path: &str) -> Option<Obj<'a>> {
        match v {
            Value::Mapping(map) => Some(Obj {
                map,
                path: path.to_string(),
                used: Vec::new(),
            }),
            _ => {
                self.err(path, "expected a mapping");
                None
            }
        }
    }

    /// Reports keys of `o` that no reader asked for.
    fn finish(&mut self, o: Obj<'_>) {
        for k in o.map.keys() {
            let name = match k {
                Value::String(s) => s.as_str(),
                _ => {
                    self.err(&o.path, "keys must be strings");
                    continue;
                }
            };
            if !o.used.contains(&name) {
                self.err(&join(&o.path, name), "unknown field");
            }
        }
    }

    fn get<'a>(&mut self, o: &mut Obj<'a>, key: &'static str) -> Option<&'a Value> {
        o.used.push(key);
        match o.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn string(&mut self, o: &mut Obj<'_>, key: &'static str) -> Option<String> {
        let path = join(&o.path, key);
        match self.get(o, key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.err(&path, "expected a string");
                None
            }
        }
    }

    fn required_string(&mut self, o: &mut Obj<'_>, key: &'static str) -> Option<String> {
        let s = self.string(o, key);
        if s.is_none() && !self.errors.iter().any(|e| e.path == join(&o.path, key)) {
            self.err(&join(&o.path, key), "missing");
        }
        s
    }

    fn uint(&mut self, o: &mut Obj<'_>, key: &'static str) -> Option<u64> {
        let path = join(&o.path, key);
        match self.get(o, key)? {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
            _ => {
                self.err(&path, "expected a non-negative integer");
                None
            }
        }
    }

    fn seq<'a>(&mut self, o: &mut Obj<'a>, key: &'static str) -> Vec<(String, &'a Value)> {
        let path = join(&o.path, key);
        match self.get(o, key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            Some(_) => {
                self.err(&path, "expected a list");
                Vec::new()
            }
        }
    }

    fn strings(&mut self, o: &mut Obj<'_>, key: &'static str) -> Vec<String> {
        let mut out = Vec::new();
        for (path, v) in self.seq(o, key) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Number(n) => out.push(n.to_string()),
                Value::Bool(b) => out.push(b.to_string()),
                _ => self.err(&path, "expected a string"),
            }
        }
        out
    }

    /// A key that is recognised but belongs to a later release.
    fn unsupported(&mut self, o: &mut Obj<'_>, key: &'static str) {
        if self.get(o, key).is_some() {
            self.err(&join(&o.path, key), "not supported yet");
        }
    }

    fn duration(&mut self, o: &mut Obj<'_>, key: &'static str) -> Option<Duration> {
        let path = join(&o.path, key);
        let v = self.get(o, key)?;
        let parsed = match v {
            Value::Number(n) => n.as_u64().map(Duration::from_secs),
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        if parsed.is_none() {
            self.err(&path, "expected a duration such as 30s, 500ms, 10m or 1h");
        }
        parsed
    }

    fn root(&mut self, v: &Value) -> Option<Config> {
        if v.is_null() {
            return None;
        }
        let mut o = self.obj(v, "")?;
        let mut limits = Limits::default();
        if let Some(c) = self.get(&mut o, "config") {
            self.settings(c, "config", &mut limits);
        }
        let mut named: Vec<Named> = Vec::new();
        let backends = self.seq(&mut o, "backends");
        // `host` backends first: an `mcp` backend's targets may name them.
        for (path, b) in &backends {
            if let Some(host) = b.get("host").filter(|_| b.get("mcp").is_none()) {
                self.host_backend(b, host, path);
            }
        }
        for (path, b) in &backends {
            if b.get("host").is_some() && b.get("mcp").is_none() {
                continue;
            }
            if let Some(mut bo) = self.obj(b, path) {
                let name = self.required_string(&mut bo, "name");
                let backend = match self.get(&mut bo, "mcp") {
                    Some(m) => self.mcp_backend(m, &join(path, "mcp"), name.clone()),
                    None => {
                        for key in ["ai", "aws", "internal"] {
                            self.unsupported(&mut bo, key);
                        }
                        if !self
                            .errors
                            .iter()
                            .any(|e| e.path.starts_with(path.as_str()))
                        {
                            self.err(path, "a named backend needs `mcp` or `host`");
                        }
                        None
                    }
                };
                let policies = self.backend_policies(&mut bo, path);
                self.finish(bo);
                if let (Some(name), Some(b)) = (name, backend) {
                    let taken = named.iter().any(|(n, _, _)| *n == name)
                        || self.hosts.iter().any(|(n, _, _)| *n == name);
                    if taken {
                        self.err(
                            &join(path, "name"),
                            format!("duplicate backend name {name:?}"),
                        );
                    }
                    named.push((name, Rc::new(b), policies));
                }
            }
        }
        let mut binds = Vec::new();
        for (path, b) in self.seq(&mut o, "binds") {
            if let Some(bind) = self.bind(b, &path, &named) {
                binds.push(bind);
            }
        }
        if let Some(m) = self.get(&mut o, "mcp") {
            if let Some(bind) = self.shorthand(m, "mcp") {
                binds.push(bind);
            }
        }
        for key in TOP_UNSUPPORTED {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        if binds.is_empty() && self.errors.is_empty() {
            self.err("", "nothing to serve: give `binds` or `mcp`");
        }
        let mut seen = HashSet::new();
        for (i, b) in binds.iter().enumerate() {
            if b.addr.port() != 0 && !seen.insert(b.addr) {
                self.err(
                    &format!("binds[{i}].port"),
                    format!("{} is bound twice", b.addr),
                );
            }
        }
        let jwks = std::mem::take(&mut self.jwks);
        Some(Config {
            binds,
            limits,
            jwks,
        })
    }

    /// mcplex's own settings under the top-level `config:` key.
    fn settings(&mut self, v: &Value, path: &str, l: &mut Limits) {
        let Some(mut o) = self.obj(v, path) else {
            return;
        };
        let sizes: [(&'static str, &mut usize); 7] = [
            ("maxHeaderBytes", &mut l.max_header_bytes),
            ("maxHeaders", &mut l.max_headers),
            ("maxBodyBytes", &mut l.max_body_bytes),
            ("maxStdioLineBytes", &mut l.max_stdio_line),
            ("maxConnections", &mut l.max_connections),
            ("maxSessions", &mut l.max_sessions),
            ("maxInflightPerSession", &mut l.max_inflight),
        ];
        for (key, slot) in sizes {
            if let Some(n) = self.uint(&mut o, key) {
                if n == 0 {
                    self.err(&join(path, key), "must be at least 1");
                } else {
                    *slot = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
        }
        let times: [(&'static str, &mut Duration); 6] = [
            ("headerTimeout", &mut l.header_timeout),
            ("requestTimeout", &mut l.request_timeout),
            ("initTimeout", &mut l.init_timeout),
            ("sessionTtl", &mut l.session_ttl),
            ("drainTimeout", &mut l.drain_timeout),
            ("targetBackoff", &mut l.target_backoff),
        ];
        for (key, slot) in times {
            if let Some(d) = self.duration(&mut o, key) {
                *slot = d;
            }
        }
        if let Some(m) = self.get(&mut o, "mcp") {
            // agentgateway's place for it (`config.mcp.sessionTtl`).
            if let Some(mut mo) = self.obj(m, &join(path, "mcp")) {
                if let Some(d) = self.duration(&mut mo, "sessionTtl") {
                    l.session_ttl = d;
                }
                self.finish(mo);
            }
        }
        for key in CONFIG_UNSUPPORTED {
            self.unsupported(&mut o, key);
        }
        if o.map.contains_key("dnsRebindingProtection") {
            l.dns_rebinding_protection = self.boolean(&mut o, "dnsRebindingProtection");
        }
        l.allowed_hosts = self.strings(&mut o, "allowedHosts");
        if let Some(id) = self.string(&mut o, "instanceId") {
            if valid_instance_id(&id) {
                l.instance_id = Some(id);
            } else {
                self.err(&join(path, "instanceId"), INSTANCE_ID_RULE);
            }
        }
        if let Some(v) = self.get(&mut o, "requestStateKey") {
            let kpath = join(path, "requestStateKey");
            match secret(v) {
                Ok(k) if k.len() >= MIN_STATE_KEY => l.state_key = Some(Secret(k)),
                Ok(_) => self.err(
                    &kpath,
                    format!("the key must be at least {MIN_STATE_KEY} bytes"),
                ),
                Err(why) => self.err(&kpath, &why),
            }
        }
        if let Some(a) = self.string(&mut o, "statsAddr") {
            match a.parse::<SocketAddr>() {
                Ok(addr) => l.stats_addr = Some(addr),
                Err(_) => self.err(
                    &join(path, "statsAddr"),
                    "expected ip:port, e.g. 127.0.0.1:9091",
                ),
            }
        }
        match self.string(&mut o, "accessLog").as_deref() {
            None | Some("off") | Some("false") => {}
            Some("text") | Some("true") => l.access_log = crate::log::AccessLog::Text,
            Some("json") => l.access_log = crate::log::AccessLog::Json,
            Some(other) => self.err(
                &join(path, "accessLog"),
                format!("{other:?}: expected off, text or json"),
            ),
        }
        match self.string(&mut o, "logLevel").as_deref() {
            None | Some("info") => {}
            Some("error") => l.log_level = crate::log::ERROR,
            Some("warn") => l.log_level = crate::log::WARN,
            Some("debug") => l.log_level = crate::log::DEBUG,
            Some(other) => self.err(
                &join(path, "logLevel"),
                format!("{other:?}: expected error, warn, info or debug"),
            ),
        }
        self.finish(o);
    }

    /// The shorthand's address when it names no port.
    fn bind_addr_at(&mut self, o: &mut Obj<'_>, port: u16) -> Option<SocketAddr> {
        self.bind_ip(o).map(|ip| SocketAddr::new(ip, port))
    }

    fn bind_addr(&mut self, o: &mut Obj<'_>) -> Option<SocketAddr> {
        let port = match self.uint(o, "port") {
            Some(p) if p <= u64::from(u16::MAX) => p as u16,
            Some(_) => {
                self.err(&join(&o.path, "port"), "must be 0..=65535");
                return None;
            }
            None => {
                if !self.errors.iter().any(|e| e.path == join(&o.path, "port")) {
                    self.err(&join(&o.path, "port"), "missing");
                }
                return None;
            }
        };
        Some(SocketAddr::new(self.bind_ip(o)?, port))
    }

    fn bind_ip(&mut self, o: &mut Obj<'_>) -> Option<IpAddr> {
        // Loopback unless the config names an address: an MCP gateway reachable from the network
        // by accident is a DNS-rebinding and exposure risk (MCP spec, transports/security).
        match self.string(o, "address") {
            None => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.err(&join(&o.path, "address"), "expected an IP address");
                    None
                }
            },
        }
    }

    fn bind(&mut self, v: &Value, path: &str, named: &[Named]) -> Option<Bind> {
        let mut o = self.obj(v, path)?;
        let addr = self.bind_addr(&mut o);
        let mut listeners = Vec::new();
        for (lpath, l) in self.seq(&mut o, "listeners") {
            if let Some(l) = self.listener(l, &lpath, named) {
                listeners.push(l);
            }
        }
        self.unsupported(&mut o, "tunnelProtocol");
        self.finish(o);
        let tls = self.bind_tls(&listeners, path);
        Some(Bind {
            addr: addr?,
            listeners,
            tls,
        })
    }

    /// The server TLS of a port whose listeners are HTTPS (all of them, or none: one port
    /// speaks one protocol). The files are read now, and again on every reload.
    fn bind_tls(
        &mut self,
        listeners: &[Listener],
        path: &str,
    ) -> Option<Arc<rustls::ServerConfig>> {
        let https = listeners.iter().filter(|l| l.tls.is_some()).count();
        if https == 0 {
            return None;
        }
        if https != listeners.len() {
            self.err(
                &join(path, "listeners"),
                "listeners on one port must all be HTTP or all HTTPS",
            );
            return None;
        }
        let certs: Vec<crate::tls::ListenerCert> = (listeners.iter())
            .filter_map(|l| l.tls.as_ref().map(|t| t.cert.clone()))
            .collect();
        let roots: Vec<&String> = listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().and_then(|t| t.root.as_ref()))
            .collect();
        if roots.iter().any(|r| *r != roots[0]) || (!roots.is_empty() && roots.len() != https) {
            self.err(
                &join(path, "listeners"),
                "client certificates (`tls.root`) differing between listeners of one port are not supported yet",
            );
            return None;
        }
        match crate::tls::server_config(&certs, roots.first().map(|r| r.as_str())) {
            Ok(c) => Some(c),
            Err((i, why)) => {
                let at = match i {
                    Some(i) => format!("{path}.listeners[{i}].tls"),
                    None => format!("{path}.listeners[0].tls.root"),
                };
                self.err(&at, why);
                None
            }
        }
    }

    fn listener(&mut self, v: &Value, path: &str, named: &[Named]) -> Option<Listener> {
        let mut o = self.obj(v, path)?;
        let name = self.string(&mut o, "name");
        let hostname = self.string(&mut o, "hostname");
        let https = match self.string(&mut o, "protocol") {
            None => false,
            Some(p) if p.eq_ignore_ascii_case("http") => false,
            Some(p) if p.eq_ignore_ascii_case("https") => true,
            Some(p) => {
                self.err(
                    &join(path, "protocol"),
                    format!("{p} is not supported yet (only HTTP and HTTPS)"),
                );
                false
            }
        };
        let tls = match self.get(&mut o, "tls") {
            Some(t) if https => self.listener_tls(t, &join(path, "tls"), hostname.clone()),
            Some(_) => {
                self.err(&join(path, "tls"), "needs `protocol: HTTPS`");
                None
            }
            None if https => {
                self.err(&join(path, "tls"), "missing (HTTPS needs `cert` and `key`)");
                None
            }
            None => None,
        };
        self.unsupported(&mut o, "policies");
        let mut routes = Vec::new();
        for (rpath, r) in self.seq(&mut o, "routes") {
            if let Some(r) = self.route(r, &rpath, named) {
                routes.push(r);
            }
        }
        self.finish(o);
        Some(Listener {
            name,
            hostname,
            routes,
            tls,
        })
    }

    /// `tls: {cert, key, root}`: PEM files; `root` asks clients for a certificate it signed.
    fn listener_tls(
        &mut self,
        v: &Value,
        path: &str,
        hostname: Option<String>,
    ) -> Option<ListenerTls> {
        let mut o = self.obj(v, path)?;
        let cert = self.required_string(&mut o, "cert");
        let key = self.required_string(&mut o, "key");
        let root = self.string(&mut o, "root");
        for key in [
            "cipherSuites",
            "minTLSVersion",
            "maxTLSVersion",
            "alpn",
            "mtlsMode",
        ] {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        Some(ListenerTls {
            cert: crate::tls::ListenerCert {
                hostname,
                cert: cert?,
                key: key?,
            },
            root,
        })
    }

    fn route(&mut self, v: &Value, path: &str, named: &[Named]) -> Option<Route> {
        let mut o = self.obj(v, path)?;
        let name = self.string(&mut o, "name");
        let _rule = self.string(&mut o, "ruleName");
        let hostnames = self.strings(&mut o, "hostnames");
        let mut matches = Vec::new();
        for (mpath, m) in self.seq(&mut o, "matches") {
            if let Some(m) = self.route_match(m, &mpath) {
                matches.push(m);
            }
        }
        let (mut policy, mut cors) = (RoutePolicy::default(), None);
        if let Some(p) = self.get(&mut o, "policies") {
            (policy, cors) = self.policies(p, &join(path, "policies"));
        }
        let mut backends = Vec::new();
        for (bpath, b) in self.seq(&mut o, "backends") {
            if let Some(b) = self.route_backend(b, &bpath, named) {
                backends.push(b);
            }
        }
        self.unsupported(&mut o, "namespace");
        self.finish(o);
        if backends.len() > 1 {
            self.err(
                &join(path, "backends"),
                "more than one backend per route is not supported yet",
            );
        }
        let backend = backends.into_iter().next();
        if backend.is_none() && !self.errors.iter().any(|e| e.path.starts_with(path)) {
            self.err(&join(path, "backends"), "missing");
        }
        let (backend, own) = backend?;
        policy.upstream = policy.upstream.under(&own);
        Some(Route {
            name,
            hostnames,
            matches,
            policy: Rc::new(policy.finish(&backend)),
            backend,
            cors,
        })
    }

    /// Route policies: the upstream ones, `timeout`, `retry` and `cors`.
    fn policies(&mut self, v: &Value, path: &str) -> (RoutePolicy, Option<Rc<Cors>>) {
        let mut policy = RoutePolicy::default();
        let Some(mut o) = self.obj(v, path) else {
            return (policy, None);
        };
        policy.upstream = self.upstream_fields(&mut o);
        let mut cors = None;
        if let Some(c) = self.get(&mut o, "cors") {
            cors = self.cors(c, &join(path, "cors")).map(Rc::new);
        }
        if let Some(t) = self.get(&mut o, "timeout") {
            let tpath = join(path, "timeout");
            if let Some(mut to) = self.obj(t, &tpath) {
                policy.request_timeout = self.duration(&mut to, "requestTimeout");
                policy.backend_timeout = self.duration(&mut to, "backendRequestTimeout");
                self.finish(to);
            }
        }
        if let Some(r) = self.get(&mut o, "retry") {
            policy.retry = self.retry(r, &join(path, "retry"));
        }
        policy.door = self.door(&mut o);
        for key in ROUTE_UNSUPPORTED {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        (policy, cors)
    }

    /// `backendTLS`, `backendAuth` and `requestHeaderModifier`: the policies of a route, a
    /// backend and a target alike.
    fn upstream_fields(&mut self, o: &mut Obj<'_>) -> UpstreamPolicy {
        let path = o.path.clone();
        let mut up = UpstreamPolicy::default();
        if let Some(t) = self.get(o, "backendTLS") {
            up.tls = self.backend_tls(t, &join(&path, "backendTLS"));
        }
        if let Some(a) = self.get(o, "backendAuth") {
            up.auth = self.backend_auth(a, &join(&path, "backendAuth"));
        }
        if let Some(h) = self.get(o, "requestHeaderModifier") {
            up.headers = self.header_modifier(h, &join(&path, "requestHeaderModifier"));
        }
        for key in ["transformations", "http", "tcp", "backendTunnel"] {
            self.unsupported(o, key);
        }
        up
    }

    /// A backend's `policies` (a named backend's, or a route's backend entry's).
    fn backend_policies(&mut self, o: &mut Obj<'_>, path: &str) -> UpstreamPolicy {
        let Some(p) = self.get(o, "policies") else {
            return UpstreamPolicy::default();
        };
        let Some(mut po) = self.obj(p, &join(path, "policies")) else {
            return UpstreamPolicy::default();
        };
        let up = self.upstream_fields(&mut po);
        for key in BACKEND_UNSUPPORTED {
            self.unsupported(&mut po, key);
        }
        self.finish(po);
        up
    }

    /// `{name, host: "host:port", policies}`: an HTTP upstream that MCP targets name with
    /// `mcp: {backend: name, path: ...}`.
    fn host_backend(&mut self, v: &Value, host: &Value, path: &str) {
        let Some(mut o) = self.obj(v, path) else {
            return;
        };
        let name = self.required_string(&mut o, "name");
        let _ = self.get(&mut o, "host");
        let host = match host {
            Value::String(h) if !h.is_empty() => Some(h.clone()),
            _ => {
                self.err(&join(path, "host"), "expected host:port");
                None
            }
        };
        let policies = self.backend_policies(&mut o, path);
        self.finish(o);
        if let (Some(name), Some(host)) = (name, host) {
            if self.hosts.iter().any(|(n, _, _)| *n == name) {
                self.err(
                    &join(path, "name"),
                    format!("duplicate backend name {name:?}"),
                );
            }
            self.hosts.push((name, host, policies));
        }
    }

    /// `backendAuth`: `key` (a secret, or `{value, location}`) or `passthrough`.
    fn backend_auth(&mut self, v: &Value, path: &str) -> Option<BackendAuth> {
        let mut o = self.obj(v, path)?;
        let mut auth = None;
        if let Some(k) = self.get(&mut o, "key") {
            let kpath = join(path, "key");
            let (secret_value, location) = match k {
                Value::Mapping(m) if m.contains_key("value") => {
                    let mut ko = self.obj(k, &kpath)?;
                    let value = self.get(&mut ko, "value").cloned();
                    let location = self.get(&mut ko, "location").cloned();
                    self.finish(ko);
                    (value.unwrap_or(Value::Null), location)
                }
                other => (other.clone(), None),
            };
            let (header, prefix) = match &location {
                Some(l) => self.auth_location(l, &join(&kpath, "location"))?,
                None => ("Authorization".to_string(), Some("Bearer ".to_string())),
            };
            match secret(&secret_value) {
                Ok(raw) => {
                    let mut value = prefix.unwrap_or_default().into_bytes();
                    value.extend(raw);
                    if value.iter().any(|b| b.is_ascii_control()) || value.is_empty() {
                        self.err(&kpath, "the key must be one line of text");
                    } else {
                        auth = Some(BackendAuth::Key {
                            header,
                            value: Secret(value),
                        });
                    }
                }
                Err(why) => self.err(&kpath, why),
            }
        }
        if let Some(p) = self.get(&mut o, "passthrough") {
            let ppath = join(path, "passthrough");
            if auth.is_some() {
                self.err(path, "give one of `key` and `passthrough`");
            }
            if let Some(mut po) = self.obj(p, &ppath) {
                let location = self.get(&mut po, "location").cloned();
                self.finish(po);
                auth = match location {
                    None => Some(BackendAuth::Passthrough {
                        header: "Authorization".into(),
                        prefix: None,
                        verbatim: true,
                    }),
                    Some(l) => {
                        let (header, prefix) = self.auth_location(&l, &join(&ppath, "location"))?;
                        Some(BackendAuth::Passthrough {
                            header,
                            prefix,
                            verbatim: false,
                        })
                    }
                };
            }
        }
        for key in AUTH_UNSUPPORTED {
            self.unsupported(&mut o, key);
        }
        let had_errors = self.errors.iter().any(|e| e.path.starts_with(path));
        self.finish(o);
        if auth.is_none() && !had_errors {
            self.err(path, "expected `key` or `passthrough`");
        }
        auth
    }

    /// `location: {header: {name, prefix}}`: where a credential goes.
    fn auth_location(&mut self, v: &Value, path: &str) -> Option<(String, Option<String>)> {
        let mut o = self.obj(v, path)?;
        let mut out = None;
        if let Some(h) = self.get(&mut o, "header") {
            let hpath = join(path, "header");
            if let Some(mut ho) = self.obj(h, &hpath) {
                let name = self.required_string(&mut ho, "name");
                let prefix = self.string(&mut ho, "prefix");
                self.finish(ho);
                if let Some(name) = name {
                    if self.header_name_ok(&name, &join(&hpath, "name")) {
                        out = Some((name, prefix));
                    }
                }
            }
        }
        for key in ["queryParameter", "cookie", "expression"] {
            self.unsupported(&mut o, key);
        }
        let had_errors = self.errors.iter().any(|e| e.path.starts_with(path));
        self.finish(o);
        if out.is_none() && !had_errors {
            self.err(path, "expected `header: {name, prefix}`");
        }
        out
    }

    /// Whether `name` is a header a policy may write; reports why not.
    fn header_name_ok(&mut self, name: &str, path: &str) -> bool {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let lower = name.to_ascii_lowercase();
        if !token {
            self.err(path, format!("{name:?} is not a valid header name"));
            false
        } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("mcp-param-") {
            self.err(
                path,
                format!("{name} cannot be changed: the gateway writes it (HTTP framing or the MCP transport)"),
            );
            false
        } else {
            true
        }
    }

    /// `requestHeaderModifier: {add: {name: value}, set: {...}, remove: [name]}`.
    fn header_modifier(&mut self, v: &Value, path: &str) -> Vec<HeaderOp> {
        let mut ops = Vec::new();
        let Some(mut o) = self.obj(v, path) else {
            return ops;
        };
        for key in ["add", "set"] {
            let kpath = join(path, key);
            let pairs = match self.get(&mut o, key) {
                None => continue,
                Some(Value::Mapping(m)) => m.clone(),
                Some(_) => {
                    self.err(&kpath, "expected a mapping of header names to values");
                    continue;
                }
            };
            for (k, val) in pairs {
                let (Some(name), Some(value)) = (k.as_str(), scalar(&val)) else {
                    self.err(&kpath, "expected header names mapped to string values");
                    continue;
                };
                let npath = join(&kpath, name);
                if !self.header_name_ok(name, &npath) {
                    continue;
                }
                if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                    self.err(&npath, "a header value must be one line of text");
                    continue;
                }
                ops.push(match key {
                    "add" => HeaderOp::Add(name.to_string(), value),
                    _ => HeaderOp::Set(name.to_string(), value),
                });
            }
        }
        let rpath = join(path, "remove");
        for name in self.strings(&mut o, "remove") {
            if self.header_name_ok(&name, &rpath) {
                ops.push(HeaderOp::Remove(name));
            }
        }
        self.finish(o);
        ops
    }

    /// `retry: {attempts, backoff, codes}`.
    fn retry(&mut self, v: &Value, path: &str) -> Option<Retry> {
        let mut o = self.obj(v, path)?;
        let attempts = match self.uint(&mut o, "attempts") {
            None => 1,
            Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => n as u8,
            Some(_) => {
                self.err(
                    &join(path, "attempts"),
                    format!("must be 1 to {MAX_ATTEMPTS}"),
                );
                1
            }
        };
        let backoff = self.duration(&mut o, "backoff").unwrap_or_default();
        let mut codes = Vec::new();
        for (cpath, c) in self.seq(&mut o, "codes") {
            match c.as_u64() {
                Some(n @ 100..=599) => codes.push(n as u16),
                _ => self.err(&cpath, "expected an HTTP status code"),
            }
        }
        for key in ["precondition", "condition"] {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        Some(Retry {
            attempts,
            backoff,
            codes,
        })
    }

    fn cors(&mut self, v: &Value, path: &str) -> Option<Cors> {
        let mut o = self.obj(v, path)?;
        let allow_origins = self.strings(&mut o, "allowOrigins");
        let allow_headers = self.strings(&mut o, "allowHeaders");
        let allow_methods = self.strings(&mut o, "allowMethods");
        let expose_headers = self.strings(&mut o, "exposeHeaders");
        let max_age = self.duration(&mut o, "maxAge").map(|d| d.as_secs());
        let allow_credentials = self.boolean(&mut o, "allowCredentials");
        self.finish(o);
        for origin in &allow_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                self.err(
                    &join(path, "allowOrigins"),
                    format!("{origin:?}: expected `*` or scheme://host[:port]"),
                );
            }
        }
        if allow_credentials && allow_origins.iter().any(|o| o == "*") {
            // The CORS spec forbids a wildcard origin with credentials.
            self.err(
                path,
                "allowCredentials cannot be combined with allowOrigins `*`",
            );
        }
        Some(Cors {
            allow_origins,
            allow_headers,
            allow_methods,
            expose_headers,
            max_age,
            allow_credentials,
        })
    }

    fn boolean(&mut self, o: &mut Obj<'_>, key: &'static str) -> bool {
        let path = join(&o.path, key);
        match self.get(o, key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(&path, "expected true or false");
                false
            }
        }
    }

    fn route_match(&mut self, v: &Value, mpath: &str) -> Option<RouteMatch> {
        let mut mo = self.obj(v, mpath)?;
        let mut m = RouteMatch::default();
        if let Some(p) = self.get(&mut mo, "path") {
            if let Some(mut po) = self.obj(p, &join(mpath, "path")) {
                if let Some(s) = self.string(&mut po, "exact") {
                    m.path = Some(PathMatch::Exact(s));
                }
                if let Some(s) = self.string(&mut po, "pathPrefix") {
                    m.path = Some(PathMatch::Prefix(s));
                }
                self.unsupported(&mut po, "regex");
                self.finish(po);
            }
        }
        m.headers = self.name_values(&mut mo, "headers");
        for (n, _) in m.headers.iter_mut() {
            *n = n.to_ascii_lowercase();
        }
        m.query = self.name_values(&mut mo, "query");
        m.method = self.string(&mut mo, "method");
        self.finish(mo);
        Some(m)
    }

    /// `[{name: N, value: {exact: V}}]` (header and query matches).
    fn name_values(&mut self, o: &mut Obj<'_>, key: &'static str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (hpath, h) in self.seq(o, key) {
            let Some(mut ho) = self.obj(h, &hpath) else {
                continue;
            };
            let name = self.required_string(&mut ho, "name");
            let mut value = None;
            if let Some(v) = self.get(&mut ho, "value") {
                if let Some(mut vo) = self.obj(v, &join(&hpath, "value")) {
                    value = self.required_string(&mut vo, "exact");
                    self.unsupported(&mut vo, "regex");
                    self.finish(vo);
                }
            } else {
                self.err(&join(&hpath, "value"), "missing");
            }
            self.finish(ho);
            if let (Some(n), Some(v)) = (name, value) {
                out.push((n, v));
            }
        }
        out
    }

    fn backend_tls(&mut self, v: &Value, path: &str) -> Option<Rc<BackendTls>> {
        let mut o = self.obj(v, path)?;
        let root = self.string(&mut o, "root");
        let hostname = self.string(&mut o, "hostname");
        let insecure = match self.get(&mut o, "insecure") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(&join(path, "insecure"), "expected true or false");
                false
            }
        };
        for key in ["cert", "key", "insecureHost", "alpn", "subjectAltNames"] {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        let options = TlsOptions {
            root,
            hostname,
            insecure,
        };
        match crate::tls::client_config(&options) {
            Ok(config) => Some(Rc::new(BackendTls { options, config })),
            Err(e) => {
                let at = if options.root.is_some() {
                    join(path, "root")
                } else {
                    path.to_string()
                };
                self.err(&at, e);
                None
            }
        }
    }

    fn route_backend(
        &mut self,
        v: &Value,
        path: &str,
        named: &[Named],
    ) -> Option<(Rc<McpBackend>, UpstreamPolicy)> {
        let mut o = self.obj(v, path)?;
        let _weight = self.uint(&mut o, "weight");
        let mut out = None;
        if let Some(m) = self.get(&mut o, "mcp") {
            out = self
                .mcp_backend(m, &join(path, "mcp"), None)
                .map(|b| (Rc::new(b), UpstreamPolicy::default()));
        }
        if let Some(name) = self.string(&mut o, "backend") {
            match named.iter().find(|(n, _, _)| *n == name) {
                Some((_, b, p)) => out = Some((b.clone(), p.clone())),
                None if self.hosts.iter().any(|(n, _, _)| *n == name) => self.err(
                    &join(path, "backend"),
                    format!("{name:?} is a host backend: name it in an MCP target (`mcp: {{backend: {name}, path: /mcp}}`)"),
                ),
                None => self.err(&join(path, "backend"), format!("no backend named {name:?}")),
            }
        }
        for key in [
            "host",
            "service",
            "ai",
            "aws",
            "dynamic",
            "internal",
            "routeGroup",
        ] {
            self.unsupported(&mut o, key);
        }
        // The entry's own policies apply over the named backend's.
        let own = self.backend_policies(&mut o, path);
        let had_errors = self.errors.iter().any(|e| e.path.starts_with(path));
        self.finish(o);
        if out.is_none() && !had_errors {
            self.err(path, "expected `mcp` or `backend`");
        }
        out.map(|(b, p)| (b, p.under(&own)))
    }

    fn mcp_backend(&mut self, v: &Value, path: &str, name: Option<String>) -> Option<McpBackend> {
        let mut o = self.obj(v, path)?;
        let backend = self.mcp_body(&mut o, name);
        self.finish(o);
        backend
    }

    /// The fields an `mcp` backend and the shorthand top-level `mcp:` share.
    fn mcp_body(&mut self, o: &mut Obj<'_>, name: Option<String>) -> Option<McpBackend> {
        let path = o.path.clone();
        let prefix_mode = match self.string(o, "prefixMode").as_deref() {
            None | Some("conditional") | Some("Conditional") => PrefixMode::Conditional,
            Some("always") | Some("Always") => PrefixMode::Always,
            Some("never") | Some("Never") => PrefixMode::Never,
            Some(other) => {
                self.err(
                    &join(&path, "prefixMode"),
                    format!("{other:?}: expected conditional, always or never"),
                );
                PrefixMode::Conditional
            }
        };
        let failure_mode = match self.string(o, "failureMode").as_deref() {
            None | Some("failClosed") | Some("FailClosed") => FailureMode::FailClosed,
            Some("failOpen") | Some("FailOpen") => FailureMode::FailOpen,
            Some(other) => {
                self.err(
                    &join(&path, "failureMode"),
                    format!("{other:?}: expected failClosed or failOpen"),
                );
                FailureMode::FailClosed
            }
        };
        let dns_rebinding = o
            .map
            .contains_key("dnsRebindingProtection")
            .then(|| self.boolean(o, "dnsRebindingProtection"));
        if let Some(m) = self.string(o, "statefulMode") {
            if !m.eq_ignore_ascii_case("stateful") {
                self.err(
                    &join(&path, "statefulMode"),
                    format!("{m:?} is not supported yet (only stateful)"),
                );
            }
        }
        let mut pool_max = 1;
        if let Some(p) = self.get(o, "pool") {
            let ppath = join(&path, "pool");
            if let Some(mut po) = self.obj(p, &ppath) {
                match self.uint(&mut po, "max") {
                    Some(n) if (1..=MAX_POOL as u64).contains(&n) => pool_max = n as usize,
                    Some(_) => self.err(&join(&ppath, "max"), format!("must be 1 to {MAX_POOL}")),
                    None => {}
                }
                self.finish(po);
            }
        }
        let mut targets = Vec::new();
        let mut names = HashSet::new();
        let tpaths = self.seq(o, "targets");
        if tpaths.is_empty()
            && !self
                .errors
                .iter()
                .any(|e| e.path.starts_with(&join(&path, "targets")))
        {
            self.err(&join(&path, "targets"), "missing (at least one target)");
        }
        for (tpath, t) in tpaths {
            if let Some(t) = self.target(t, &tpath) {
                if !names.insert(t.name.clone()) {
                    self.err(
                        &join(&tpath, "name"),
                        format!("duplicate target name {:?}", t.name),
                    );
                }
                targets.push(t);
            }
        }
        Some(McpBackend {
            name: name.unwrap_or_else(|| "mcp".to_string()),
            targets,
            pool_max,
            prefix_mode,
            failure_mode,
            dns_rebinding,
        })
    }

    fn target(&mut self, v: &Value, path: &str) -> Option<Target> {
        let mut o = self.obj(v, path)?;
        let name = self.required_string(&mut o, "name");
        if let Some(n) = &name {
            let npath = join(path, "name");
            if n.is_empty() {
                self.err(&npath, "must not be empty");
            } else if n.contains('_') {
                self.err(
                    &npath,
                    "must not contain `_` (it separates the target from tool names)",
                );
            } else if n.contains('+') {
                self.err(
                    &npath,
                    "must not contain `+` (it separates the target from resource URIs)",
                );
            }
        }
        let mut kind = None;
        // A target naming a host backend gets that backend's policies.
        let mut named_policies = None;
        if let Some(s) = self.get(&mut o, "stdio") {
            kind = self.stdio(s, &join(path, "stdio")).map(TargetKind::Stdio);
        }
        if let Some(m) = self.get(&mut o, "mcp") {
            if let Some((url, p)) = self.http_target(m, &join(path, "mcp"), "/mcp") {
                kind = Some(TargetKind::Mcp(url));
                named_policies = p;
            }
        }
        if let Some(m) = self.get(&mut o, "sse") {
            if let Some((url, p)) = self.http_target(m, &join(path, "sse"), "/sse") {
                kind = Some(TargetKind::Sse(url));
                named_policies = p;
            }
        }
        let kinds = ["stdio", "mcp", "sse"]
            .iter()
            .filter(|k| o.map.contains_key(**k))
            .count();
        if kinds > 1 {
            self.err(path, "a target has exactly one of `stdio`, `mcp`, `sse`");
        }
        let era = match self.string(&mut o, "era").as_deref() {
            None | Some("auto") => Era::Auto,
            Some("legacy") => Era::Legacy,
            Some("modern") => Era::Modern,
            Some(other) => {
                let why = format!("unknown era {other:?} (expected auto, legacy or modern)");
                self.err(&join(path, "era"), &why);
                Era::Auto
            }
        };
        if era == Era::Modern && matches!(kind, Some(TargetKind::Sse(_))) {
            self.err(&join(path, "era"), "a legacy SSE target cannot be modern");
        }
        self.unsupported(&mut o, "openapi");
        let shareable = self.boolean(&mut o, "shareable");
        let mut policies = UpstreamPolicy::default();
        if let Some(p) = self.get(&mut o, "policies") {
            let ppath = join(path, "policies");
            if o.map.contains_key("stdio") {
                self.err(
                    &ppath,
                    "a stdio target has no HTTP connection: policies apply to mcp and sse targets",
                );
            } else if named_policies.is_some() {
                self.err(
                    &ppath,
                    "a target that names a backend takes that backend's policies: put them there",
                );
            } else if let Some(mut po) = self.obj(p, &ppath) {
                policies = self.upstream_fields(&mut po);
                for key in ["mcpAuthorization", "mcpGuardrails"] {
                    if po.map.contains_key(key) {
                        let why = "belongs on the route or `mcp.policies` (it applies to every target); not supported yet";
                        self.err(&join(&ppath, key), why);
                        po.used.push(key);
                    }
                }
                self.finish(po);
            }
        }
        let had_errors = self.errors.iter().any(|e| e.path.starts_with(path));
        self.finish(o);
        if kind.is_none() && !had_errors {
            self.err(path, "a target needs `stdio`, `mcp` or `sse`");
        }
        Some(Target {
            name: name?,
            kind: kind?,
            era,
            policies: named_policies.unwrap_or(policies),
            shareable,
        })
    }

    /// `{host: "http://h:p/path"}`, `{host: "h:p"}`, `{host: h, port: p, path: /x}` (plain
    /// HTTP unless a backendTLS policy says otherwise), or `{backend: name, path: /x}` naming a
    /// host backend (whose policies come back too).
    fn http_target(
        &mut self,
        v: &Value,
        path: &str,
        default_path: &str,
    ) -> Option<(Url, Option<UpstreamPolicy>)> {
        let mut o = self.obj(v, path)?;
        let backend = self.string(&mut o, "backend");
        let host = match backend {
            Some(_) => self.string(&mut o, "host"),
            None => self.required_string(&mut o, "host"),
        };
        let port = self.uint(&mut o, "port");
        let upath = self.string(&mut o, "path");
        self.finish(o);
        if let Some(b) = backend {
            if host.is_some() || port.is_some() {
                self.err(
                    path,
                    "give either `backend` or `host` (with `port`), not both",
                );
                return None;
            }
            let Some((_, h, p)) = self.hosts.iter().find(|(n, _, _)| *n == b).cloned() else {
                self.err(
                    &join(path, "backend"),
                    format!("no host backend named {b:?}"),
                );
                return None;
            };
            let p_tls = p.tls.is_some();
            let (url, _) = self.http_url(&h, None, upath, default_path, &join(path, "backend"))?;
            // A backendTLS policy on the backend makes it https (as agentgateway).
            let url = Url {
                https: url.https || p_tls,
                ..url
            };
            return Some((url, Some(p)));
        }
        let host = host?;
        self.http_url(&host, port, upath, default_path, path)
    }

    /// The URL of an HTTP target given as `host` (a URL or `host[:port]`), `port` and `path`.
    fn http_url(
        &mut self,
        host: &str,
        port: Option<u64>,
        upath: Option<String>,
        default_path: &str,
        path: &str,
    ) -> Option<(Url, Option<UpstreamPolicy>)> {
        let host = host.to_string();
        // `host: "localhost:3001"`: an authority without a scheme (plain HTTP, as agentgateway).
        let (host, port) = match (host.contains("://"), port, split_authority(&host)) {
            (false, None, Some((h, Some(p)))) => (h, Some(u64::from(p))),
            _ => (host, port),
        };
        let text = if host.contains("://") {
            if port.is_some() || upath.is_some() {
                self.err(
                    path,
                    "give either a full URL in `host`, or `host` with `port` and `path`",
                );
                return None;
            }
            host
        } else {
            let port = match port {
                Some(p) if p > 0 && p <= u64::from(u16::MAX) => p,
                Some(_) => {
                    self.err(&join(path, "port"), "must be 1..=65535");
                    return None;
                }
                None => 80,
            };
            let p = upath.unwrap_or_else(|| default_path.to_string());
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            format!("http://{host}:{port}{p}")
        };
        let mut url = match Url::parse(&text) {
            Ok(u) => u,
            Err(e) => {
                self.err(&join(path, "host"), e);
                return None;
            }
        };
        if let Err(e) = url.resolve() {
            self.err(&join(path, "host"), e);
            return None;
        }
        Some((url, None))
    }

    fn stdio(&mut self, v: &Value, path: &str) -> Option<StdioTarget> {
        let mut o = self.obj(v, path)?;
        let cmd = self.required_string(&mut o, "cmd");
        if cmd.as_deref() == Some("") {
            self.err(&join(path, "cmd"), "must not be empty");
        }
        let args = self.strings(&mut o, "args");
        let mut env = BTreeMap::new();
        if let Some(e) = self.get(&mut o, "env") {
            let epath = join(path, "env");
            match e {
                Value::Mapping(m) => {
                    for (k, v) in m {
                        let key = match k {
                            Value::String(s) => s.clone(),
                            _ => {
                                self.err(&epath, "keys must be strings");
                                continue;
                            }
                        };
                        let val = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => {
                                self.err(&join(&epath, &key), "expected a string");
                                continue;
                            }
                        };
                        env.insert(key, val);
                    }
                }
                _ => self.err(&epath, "expected a mapping"),
            }
        }
        let mut clear_env = false;
        for key in ["clearEnv", "clear_env"] {
            if o.map.contains_key(key) {
                clear_env |= self.boolean(&mut o, key);
            }
        }
        self.finish(o);
        Some(StdioTarget {
            clear_env,
            cmd: cmd?,
            args,
            env,
        })
    }

    /// `mcp: {port, targets, policies, ...}` at the top level: one bind serving one backend.
    fn shorthand(&mut self, v: &Value, path: &str) -> Option<Bind> {
        let mut o = self.obj(v, path)?;
        // No port: agentgateway's default for the shorthand.
        let addr = match o.map.contains_key("port") {
            true => self.bind_addr(&mut o),
            false => {
                let addr = self.bind_addr_at(&mut o, SHORTHAND_PORT);
                o.used.push("port");
                addr
            }
        };
        let (mut policy, mut cors) = (RoutePolicy::default(), None);
        if let Some(p) = self.get(&mut o, "policies") {
            (policy, cors) = self.policies(p, &join(path, "policies"));
        }
        self.unsupported(&mut o, "gateways");
        let backend = Rc::new(self.mcp_body(&mut o, None)?);
        self.finish(o);
        Some(Bind {
            addr: addr?,
            listeners: vec![Listener {
                name: None,
                hostname: None,
                tls: None,
                routes: vec![Route {
                    name: None,
                    hostnames: Vec::new(),
                    // The MCP endpoints; anything else is a 404.
                    matches: ["/mcp", "/sse", "/message", "/messages"]
                        .into_iter()
                        .map(|p| RouteMatch {
                            path: Some(PathMatch::Exact(p.to_string())),
                            ..RouteMatch::default()
                        })
                        .collect(),
                    policy: Rc::new(policy.finish(&backend)),
                    backend,
                    cors,
                }],
            }],
            tls: None,
        })
    }
}

/// The port of the top-level `mcp:` shorthand when it names none (agentgateway's).
pub const SHORTHAND_PORT: u16 = 3000;

/// Top-level agentgateway fields mcplex does not implement.
const TOP_UNSUPPORTED: [&str; 12] = [
    "frontendPolicies",
    "policies",
    "workloads",
    "services",
    "routeGroups",
    "gateways",
    "routes",
    "tcpRoutes",
    "llm",
    "ui",
    "modelCatalog",
    "a2a",
];

/// agentgateway's `config:` settings that mcplex does not implement.
const CONFIG_UNSUPPORTED: [&str; 27] = [
    "enableIpv6",
    "dns",
    "localXdsPath",
    "caAddress",
    "caAuthToken",
    "xdsAddress",
    "xdsAuthToken",
    "namespace",
    "gateway",
    "trustDomain",
    "additionalTrustDomains",
    "skipValidateTrustDomain",
    "serviceAccount",
    "clusterId",
    "network",
    "adminAddr",
    "readinessAddr",
    "session",
    "connectionTerminationDeadline",
    "connectionMinTerminationDeadline",
    "workerThreads",
    "tracing",
    "logging",
    "metrics",
    "backend",
    "hbone",
    "modelCatalog",
];

/// agentgateway's route policies that mcplex does not implement (yet).
const ROUTE_UNSUPPORTED: [&str; 18] = [
    "mcpGuardrails",
    "extMcp",
    "basicAuth",
    "oidc",
    "authorization",
    "extAuthz",
    "extProc",
    "remoteRateLimit",
    "responseHeaderModifier",
    "requestRedirect",
    "urlRewrite",
    "requestMirror",
    "directResponse",
    "csrf",
    "buffer",
    "delay",
    "a2a",
    "ai",
];

/// agentgateway's backend policies (beyond the upstream ones) that mcplex does not implement.
const BACKEND_UNSUPPORTED: [&str; 11] = [
    "responseHeaderModifier",
    "requestRedirect",
    "health",
    "extAuthz",
    "authorization",
    "mcpAuthorization",
    "mcpGuardrails",
    "a2a",
    "inferenceRouting",
    "sessionAffinity",
    "ai",
];

/// agentgateway's `backendAuth` kinds that mcplex does not implement.
const AUTH_UNSUPPORTED: [&str; 8] = [
    "gcp",
    "aws",
    "azure",
    "copilot",
    "jwtSign",
    "oauthTokenExchange",
    "crossAppAccess",
    "credentials",
];

impl RoutePolicy {
    /// Notes what the route's targets need (see `passthrough`).
    fn finish(mut self, backend: &McpBackend) -> RoutePolicy {
        self.passthrough = backend.targets.iter().any(|t| {
            !matches!(t.kind, TargetKind::Stdio(_))
                && matches!(
                    self.upstream.under(&t.policies).auth,
                    Some(BackendAuth::Passthrough { .. })
                )
        });
        self
    }
}

/// A YAML scalar as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address: (host, port).
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        return Some((h.to_string(), port));
    }
    match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => Some((h.to_string(), Some(p.parse().ok()?))),
        Some(_) => Some((s.to_string(), None)),
        None => Some((s.to_string(), None)),
    }
}

const INSTANCE_ID_RULE: &str = "must be 1 to 32 characters of A-Z a-z 0-9 - _ (URL-safe, no dots)";

/// An instance id fits in a header, a query string and a URL path unescaped.
/// A secret given as a string, `{env: NAME}` or `{file: PATH}` (read at load time; a trailing
/// newline of a file is dropped).
fn secret(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, val) = m
                .iter()
                .next()
                .ok_or("expected {env: NAME} or {file: PATH}")?;
            let val = val.as_str().ok_or("expected a string")?;
            match k.as_str() {
                Some("env") => std::env::var(val)
                    .map(String::into_bytes)
                    .map_err(|_| format!("environment variable {val} is not set")),
                Some("file") => std::fs::read(val)
                    .map(|mut b| {
                        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                            b.pop();
                        }
                        b
                    })
                    .map_err(|e| format!("cannot read {val}: {e}")),
                _ => Err("expected {env: NAME} or {file: PATH}".into()),
            }
        }
        _ => Err("expected a string, {env: NAME} or {file: PATH}".into()),
    }
}

/// Whether `host` is `pattern`, or one label under a `*.suffix` pattern.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

pub fn valid_instance_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `250ms`, `30s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn https_listeners_need_tls_and_agree_per_port() {
        let one = |l: &str| {
            format!(
                "binds:\n- port: 3000\n  listeners:\n{l}    routes:\n    - backends:\n      - mcp:\n          targets:\n          - name: a\n            stdio: {{cmd: x}}\n"
            )
        };
        let e = errors(&one("  - tls: {cert: c.pem, key: k.pem}\n"));
        assert!(
            e.iter()
                .any(|e| e.contains("listeners[0].tls") && e.contains("protocol: HTTPS")),
            "{e:?}"
        );
        let e = errors(&one("  - protocol: HTTPS\n"));
        assert!(
            e.iter()
                .any(|e| e.contains("listeners[0].tls") && e.contains("missing")),
            "{e:?}"
        );
        let e = errors(&one(
            "  - protocol: HTTPS\n    tls: {cert: /nonexistent/c.pem}\n",
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("listeners[0].tls") && e.contains("key")),
            "{e:?}"
        );
        let e = errors(&one(
            "  - protocol: HTTPS\n    tls: {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\n",
        ));
        assert!(e.iter().any(|e| e.contains("/nonexistent/c.pem")), "{e:?}");
        let e = errors(&one("  - protocol: TCP\n"));
        assert!(
            e.iter().any(|e| e.contains("TCP is not supported yet")),
            "{e:?}"
        );
        let two = "  - name: a\n    protocol: HTTPS\n    tls: {cert: c.pem, key: k.pem}\n    routes: []\n  - name: b\n";
        let e = errors(&one(two));
        assert!(
            e.iter().any(|e| e.contains("all be HTTP or all HTTPS")),
            "{e:?}"
        );
    }

    #[test]
    fn shorthand_form() {
        let c = Config::parse(
            "mcp:\n  port: 3000\n  targets:\n  - name: demo\n    stdio: {cmd: mcplex-demo}\n",
        )
        .expect("valid");
        assert_eq!(c.binds.len(), 1);
        assert_eq!(c.binds[0].addr.to_string(), "127.0.0.1:3000");
        let b = &c.binds[0].listeners[0].routes[0].backend;
        assert_eq!(b.targets[0].name, "demo");
        assert!(!b.prefixed());
    }

    #[test]
    fn agentgateway_shapes_load_unchanged() {
        // The shorthand without a port, a host without a scheme, the backend's
        // dnsRebindingProtection, config.mcp.sessionTtl.
        let c = Config::parse(
            "config: {mcp: {sessionTtl: 90s}}\nmcp:\n  dnsRebindingProtection: false\n  targets:\n  - name: remote\n    mcp: {host: \"localhost:3001\"}\n",
        )
        .expect("valid");
        assert_eq!(c.binds[0].addr.port(), SHORTHAND_PORT);
        assert_eq!(c.limits.session_ttl, Duration::from_secs(90));
        let b = &c.binds[0].listeners[0].routes[0].backend;
        assert_eq!(b.dns_rebinding, Some(false));
        let TargetKind::Mcp(u) = &b.targets[0].kind else {
            panic!("not an mcp target");
        };
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 3001, "/mcp")
        );
        assert!(!u.https);

        // A target naming a host backend, which carries the policies.
        let text = r#"
backends:
- name: remote
  host: 127.0.0.1:8443
  policies:
    backendAuth: {key: s3cret}
    requestHeaderModifier: {set: {X-Team: a}}
binds:
- port: 3000
  listeners:
  - routes:
    - backends:
      - mcp:
          targets:
          - name: r
            mcp: {backend: remote, path: /v1/mcp}
"#;
        let c = Config::parse(text).expect("valid");
        let r = &c.binds[0].listeners[0].routes[0];
        let t = &r.backend.targets[0];
        let TargetKind::Mcp(u) = &t.kind else {
            panic!("not an mcp target");
        };
        assert_eq!((u.port, u.path.as_str()), (8443, "/v1/mcp"));
        let lp = r.policy.for_target(t);
        assert_eq!(
            lp.headers,
            vec![
                ("X-Team".to_string(), "a".to_string()),
                ("Authorization".to_string(), "Bearer s3cret".to_string())
            ]
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "a secret in Debug output"
        );
    }

    #[test]
    fn backend_auth_and_headers_merge_by_level() {
        std::env::set_var("MCPLEX_TEST_TOKEN", "from-env");
        let text = r#"
binds:
- port: 3000
  listeners:
  - routes:
    - policies:
        backendAuth: {key: {env: MCPLEX_TEST_TOKEN}}
        requestHeaderModifier: {add: {X-A: "1"}, set: {X-B: "2"}}
        timeout: {requestTimeout: 5s, backendRequestTimeout: 2s}
        retry: {attempts: 3, backoff: 250ms, codes: [503]}
      backends:
      - mcp:
          targets:
          - name: a
            mcp: {host: "http://127.0.0.1:9/mcp"}
          - name: b
            mcp: {host: "http://127.0.0.1:9/mcp"}
            policies:
              backendAuth: {passthrough: {}}
              requestHeaderModifier: {remove: [X-A], set: {X-B: "3"}}
          - name: c
            mcp: {host: "http://127.0.0.1:9/mcp"}
            policies:
              backendAuth:
                key: {value: raw-token, location: {header: {name: X-Api-Key}}}
"#;
        let c = Config::parse(text).expect("valid");
        let r = &c.binds[0].listeners[0].routes[0];
        assert!(r.policy.passthrough);
        assert_eq!(r.policy.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(r.policy.backend_timeout, Some(Duration::from_secs(2)));
        let retry = r.policy.retry.clone().expect("retry");
        assert_eq!((retry.attempts, retry.codes), (3, vec![503]));
        let h = |t: usize| r.policy.for_target(&r.backend.targets[t]);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            h(0).headers,
            vec![
                pair("X-A", "1"),
                pair("X-B", "2"),
                pair("Authorization", "Bearer from-env")
            ]
        );
        assert!(h(0).passthrough.is_none());
        assert_eq!(h(1).headers, vec![pair("X-B", "3")]);
        let pass = h(1).passthrough.expect("passthrough");
        assert_eq!(
            pass.pass("Bearer abc"),
            Some(pair("Authorization", "Bearer abc"))
        );
        assert_eq!(
            h(2).headers,
            vec![
                pair("X-A", "1"),
                pair("X-B", "2"),
                pair("X-Api-Key", "raw-token")
            ]
        );
    }

    #[test]
    fn bad_policies_are_refused_with_paths() {
        let text = r#"
mcp:
  port: 3000
  policies:
    requestHeaderModifier: {set: {Content-Length: "1", "bad name": x}, remove: [Mcp-Session-Id]}
    backendAuth: {gcp: {}}
    retry: {attempts: 0}
    jwtAuth: {issuer: x}
  targets:
  - name: s
    stdio: {cmd: x}
    policies: {backendAuth: {key: k}}
  - name: h
    mcp: {host: "http://127.0.0.1:9/mcp"}
    policies: {backendAuth: {key: {env: MCPLEX_TEST_UNSET_VAR}}}
config: {tracing: {otlpEndpoint: x}, adminAddr: "localhost:15000"}
frontendPolicies: {}
"#;
        let errs = errors(text);
        let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
        for needle in [
            "mcp.policies.requestHeaderModifier.set.Content-Length: Content-Length cannot be changed",
            "mcp.policies.requestHeaderModifier.set.bad name: \"bad name\" is not a valid header name",
            "mcp.policies.requestHeaderModifier.remove: Mcp-Session-Id cannot be changed",
            "mcp.policies.backendAuth.gcp: not supported yet",
            "mcp.policies.retry.attempts: must be 1 to 10",
            "mcp.policies.jwtAuth.jwks: missing",
            "mcp.targets[0].policies: a stdio target has no HTTP connection",
            "mcp.targets[1].policies.backendAuth.key: environment variable MCPLEX_TEST_UNSET_VAR is not set",
            "config.tracing: not supported yet",
            "config.adminAddr: not supported yet",
            "frontendPolicies: not supported yet",
        ] {
            assert!(has(needle), "missing {needle:?} in {errs:#?}");
        }
    }

    #[test]
    fn full_form_with_named_backend() {
        let text = r#"
binds:
- port: 3000
  listeners:
  - routes:
    - matches: [{path: {pathPrefix: /}}]
      backends: [{backend: tools}]
backends:
- name: tools
  mcp:
    prefixMode: always
    targets:
    - name: a
      stdio: {cmd: a, args: [x, 1], env: {K: v}}
"#;
        let c = Config::parse(text).expect("valid");
        let r = &c.binds[0].listeners[0].routes[0];
        assert!(r.backend.prefixed());
        assert!(r.matches_path("/mcp"));
        let TargetKind::Stdio(s) = &r.backend.targets[0].kind else {
            panic!("not a stdio target");
        };
        assert_eq!(s.args, vec!["x", "1"]);
        assert_eq!(s.env.get("K").map(String::as_str), Some("v"));
    }

    #[test]
    fn errors_name_paths_and_are_all_reported() {
        let text = r#"
binds:
- port: 3000
  listeners:
  - routes:
    - backends:
      - mcp:
          targets:
          - name: ok
            stdio: {cmd: x}
          - name: bad_name
            stdio: {args: []}
          - name: ok
            stdio: {cmd: y}
            bogus: 1
"#;
        let errs = errors(text);
        let p = "binds[0].listeners[0].routes[0].backends[0].mcp.targets";
        assert!(
            errs.contains(&format!("{p}[1].stdio.cmd: missing")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{p}[1].name: must not contain"))),
            "{errs:?}"
        );
        assert!(
            errs.contains(&format!("{p}[2].bogus: unknown field")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{p}[2].name: duplicate"))),
            "{errs:?}"
        );
    }

    #[test]
    fn later_features_are_rejected_not_ignored() {
        let text = "mcp:\n  port: 1\n  policies: {mcpGuardrails: {}}\n  targets:\n  - name: r\n    openapi: {host: 'http://x/mcp'}\n";
        let errs = errors(text);
        assert!(
            errs.contains(&"mcp.policies.mcpGuardrails: not supported yet".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"mcp.targets[0].openapi: not supported yet".to_string()),
            "{errs:?}"
        );
    }

    #[test]
    fn route_matches_and_cors() {
        let text = r#"
binds:
- port: 0
  listeners:
  - routes:
    - matches:
      - path: {pathPrefix: /a}
        method: POST
        headers: [{name: X-Tenant, value: {exact: blue}}]
        query: [{name: k, value: {exact: v}}]
      policies:
        cors: {allowOrigins: ["http://app.example"], maxAge: 60, allowCredentials: true}
      backends: [{mcp: {targets: [{name: a, stdio: {cmd: a}}]}}]
"#;
        let c = Config::parse(text).expect("valid");
        let r = &c.binds[0].listeners[0].routes[0];
        let view = |method: &'static str, tenant: Option<&'static str>| {
            let header = move |n: &str| (n == "x-tenant").then_some(tenant).flatten();
            let query = |n: &str| (n == "k").then_some("v");
            r.matches(&RequestView {
                method,
                path: "/a/mcp",
                header: &header,
                query: &query,
            })
        };
        assert!(view("POST", Some("blue")));
        assert!(!view("GET", Some("blue")));
        assert!(!view("POST", Some("red")));
        assert!(!view("POST", None));
        let cors = r.cors.as_ref().expect("cors");
        assert!(cors.allows("http://app.example") && !cors.allows("http://evil.example"));
        assert_eq!(cors.max_age, Some(60));
        let errs = errors("mcp:\n  port: 0\n  policies: {cors: {allowOrigins: ['*', 'ftp:x'], allowCredentials: true}}\n  targets: [{name: a, stdio: {cmd: a}}]\n");
        assert!(
            errs.iter().any(|e| e.contains("allowCredentials cannot")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("\"ftp:x\"")), "{errs:?}");
    }

    #[test]
    fn http_targets_and_tls() {
        let text = r#"
mcp:
  port: 0
  policies: {backendTLS: {insecure: true}}
  targets:
  - name: a
    mcp: {host: "http://127.0.0.1:8080/mcp"}
  - name: b
    sse: {host: 127.0.0.1, port: 3001}
  - name: c
    mcp: {host: "https://[::1]/x?y=1"}
"#;
        let c = Config::parse(text).expect("valid");
        let r = &c.binds[0].listeners[0].routes[0];
        assert!(r
            .policy
            .upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.options.insecure));
        let kinds: Vec<String> = r
            .backend
            .targets
            .iter()
            .map(|t| match &t.kind {
                TargetKind::Mcp(u) => format!("mcp {} {} {}", u.authority(), u.path, u.addrs[0]),
                TargetKind::Sse(u) => format!("sse {} {} {}", u.authority(), u.path, u.addrs[0]),
                TargetKind::Stdio(_) => "stdio".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "mcp 127.0.0.1:8080 /mcp 127.0.0.1:8080",
                "sse 127.0.0.1:3001 /sse 127.0.0.1:3001",
                "mcp [::1] /x?y=1 [::1]:443"
            ]
        );
        let errs = errors("mcp:\n  port: 0\n  policies: {backendTLS: {root: /nope.pem}}\n  targets:\n  - {name: a, mcp: {host: 'ftp://x'}}\n");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("mcp.policies.backendTLS.root: cannot read /nope.pem")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("mcp.targets[0].mcp.host: ")),
            "{errs:?}"
        );
    }

    #[test]
    fn settings_and_durations() {
        let c = Config::parse(
            "config: {sessionTtl: 5m, maxBodyBytes: 100, requestTimeout: 1500ms}\nmcp:\n  port: 0\n  targets: [{name: a, stdio: {cmd: a}}]\n",
        )
        .expect("valid");
        assert_eq!(c.limits.session_ttl, Duration::from_secs(300));
        assert_eq!(c.limits.max_body_bytes, 100);
        assert_eq!(c.limits.request_timeout, Duration::from_millis(1500));
        assert!(parse_duration("10x").is_none());
    }

    #[test]
    fn request_state_keys_and_eras() {
        let cfg = |extra: &str| {
            Config::parse(&format!(
                "config: {{{extra}}}\nmcp:\n  port: 0\n  targets: [{{name: a, stdio: {{cmd: a}}, era: modern}}, {{name: b, mcp: {{host: \"http://127.0.0.1:1/mcp\"}}}}]\n"
            ))
        };
        let key = "k".repeat(MIN_STATE_KEY);
        let c = cfg(&format!("requestStateKey: {key}")).expect("valid");
        assert_eq!(c.limits.state_key, Some(Secret(key.into_bytes())));
        assert!(!format!("{:?}", c.limits).contains("kkkk"), "never printed");
        let t = &c.binds[0].listeners[0].routes[0].backend.targets;
        assert_eq!((t[0].era, t[1].era), (Era::Modern, Era::Auto));
        let short = cfg("requestStateKey: short").map(|_| ()).unwrap_err();
        assert!(short.0[0].message.contains("at least"), "{:?}", short.0);
        let unset = cfg("requestStateKey: {env: MCPLEX_TEST_UNSET_KEY_VAR}")
            .map(|_| ())
            .unwrap_err();
        assert!(unset.0[0].message.contains("not set"), "{:?}", unset.0);
        let bad_era = Config::parse(
            "mcp:\n  port: 0\n  targets: [{name: a, stdio: {cmd: a}, era: future}]\n",
        );
        assert!(bad_era.is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "- 1",
            "binds: 3",
            "mcp: {port: -1}",
            "binds: [{port: 99999}]",
            ":\n:",
        ] {
            assert!(Config::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn readme_lists_every_unsupported_field() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("### agentgateway compatibility")
            .expect("README has the compatibility section");
        let section = &readme[start..];
        let section = &section[..section.find("\n### Settings").unwrap_or(section.len())];
        let lists: [&[&str]; 5] = [
            &TOP_UNSUPPORTED,
            &CONFIG_UNSUPPORTED,
            &ROUTE_UNSUPPORTED,
            &BACKEND_UNSUPPORTED,
            &AUTH_UNSUPPORTED,
        ];
        for field in lists.iter().flat_map(|l| l.iter()) {
            assert!(
                section.contains(&format!("`{field}`")),
                "README's list of unsupported agentgateway fields lacks `{field}`"
            );
        }
    }
}
