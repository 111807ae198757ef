//! Pure checks on a parsed request: which route takes it, Host/Origin (DNS rebinding), CORS
//! (actual requests and preflights), and what it accepts and sends.

use super::Reply;
use crate::config::{host_matches, Bind, Cors, Limits, RequestView, Route};
use crate::http::parse::Request;
use std::net::SocketAddr;

/// The route for a request on a bind: first match in config order.
pub fn find_route<'a>(bind: &'a Bind, req: &Request) -> Option<&'a Route> {
    let host = req.header("host").map(strip_port).unwrap_or("");
    let header = |n: &str| req.header(n);
    let query = |n: &str| req.query_param(n);
    let view = RequestView {
        method: &req.method,
        path: &req.path,
        header: &header,
        query: &query,
    };
    bind.listeners
        .iter()
        .filter(|l| l.hostname.as_deref().is_none_or(|h| host_matches(h, host)))
        .flat_map(|l| l.routes.iter())
        .find(|r| {
            (r.hostnames.is_empty() || r.hostnames.iter().any(|h| host_matches(h, host)))
                && r.matches(&view)
        })
}

/// The CORS headers for an allowed origin's actual (non-preflight) request.
pub fn cors_headers(cors: &Cors, origin: &str) -> Vec<(&'static str, String)> {
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    let mut h = vec![(
        "Access-Control-Allow-Origin",
        if wildcard {
            "*".to_string()
        } else {
            origin.to_string()
        },
    )];
    if !wildcard {
        h.push(("Vary", "Origin".to_string()));
    }
    // Browsers may read only exposed headers; a client needs the session id, and an OAuth
    // client the challenge of a 401 (it names the protected-resource metadata).
    let mut expose = cors.expose_headers.clone();
    for needed in ["Mcp-Session-Id", "MCP-Protocol-Version", "WWW-Authenticate"] {
        if !expose
            .iter()
            .any(|e| e.eq_ignore_ascii_case(needed) || e == "*")
        {
            expose.push(needed.to_string());
        }
    }
    h.push(("Access-Control-Expose-Headers", expose.join(", ")));
    if cors.allow_credentials {
        h.push(("Access-Control-Allow-Credentials", "true".to_string()));
    }
    h
}

/// Request headers of the MCP HTTP transports (both eras) a browser client must be allowed to
/// send.
const MCP_HEADERS: [&str; 6] = [
    "Content-Type",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Last-Event-ID",
    "Mcp-Method",
    "Mcp-Name",
];

/// A CORS preflight (`OPTIONS`), answered by the gateway. `cors_extra`: the CORS headers of
/// an allowed origin, which an allowed preflight carries too.
pub fn preflight(
    req: &Request,
    cors: Option<&Cors>,
    cors_extra: Vec<(&'static str, String)>,
) -> Reply {
    let origin = req.header("origin").unwrap_or("");
    let Some(cors) =
        cors.filter(|p| req.header("access-control-request-method").is_some() && p.allows(origin))
    else {
        return Reply::new(204, "").header("Allow", "GET, POST, DELETE, OPTIONS");
    };
    let methods = if cors.allow_methods.is_empty() {
        "GET, POST, DELETE, OPTIONS".to_string()
    } else {
        cors.allow_methods.join(", ")
    };
    let headers = if cors.allow_headers.iter().any(|h| h == "*") || cors.allow_headers.is_empty() {
        // Echo what the browser asked for: `*` does not cover credentialed requests.
        req.header("access-control-request-headers")
            .unwrap_or("")
            .to_string()
    } else {
        // A configured list still lets through what the MCP transports send: the session
        // and version headers, 2026-07-28's Mcp-Method / Mcp-Name, and its Mcp-Param-* ones.
        let mut allowed = cors.allow_headers.clone();
        let asked = req.header("access-control-request-headers").unwrap_or("");
        let params = asked
            .split(',')
            .map(str::trim)
            .filter(|h| h.len() > 10 && h.as_bytes()[..10].eq_ignore_ascii_case(b"mcp-param-"));
        for h in MCP_HEADERS.iter().copied().chain(params) {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(h)) {
                allowed.push(h.to_string());
            }
        }
        allowed.join(", ")
    };
    let mut r = Reply::new(204, "").header("Access-Control-Allow-Methods", &methods);
    if !headers.is_empty() {
        r = r.header("Access-Control-Allow-Headers", &headers);
    }
    if let Some(m) = cors.max_age {
        r = r.header("Access-Control-Max-Age", &m.to_string());
    }
    r.cors = cors_extra;
    r
}

/// `host:port` or `[v6]:port` -> host.
pub fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

fn is_local_host(h: &str) -> bool {
    matches!(strip_port(h), "localhost" | "127.0.0.1" | "::1")
}

/// DNS-rebinding protection (MCP spec, transports). With it on (the default):
/// - on a loopback bind, `Host` must be a loopback name or one of `allowedHosts`; on other
///   binds it must be one of `allowedHosts` when that list is given;
/// - a browser's `Origin`, when sent, must be allowed by the route's CORS policy, be a
///   loopback origin on a loopback bind, or match `Host` (same origin).
pub fn check_origin(
    req: &Request,
    addr: SocketAddr,
    limits: &Limits,
    protect: bool,
    cors: Option<&Cors>,
) -> Result<(), &'static str> {
    if !protect {
        return Ok(());
    }
    let loopback = addr.ip().is_loopback();
    let allowed_host = |h: &str| {
        let name = strip_port(h);
        limits.allowed_hosts.iter().any(|a| host_matches(a, name))
    };
    if let Some(h) = req.header("host") {
        let ok = if loopback {
            is_local_host(h) || allowed_host(h)
        } else {
            limits.allowed_hosts.is_empty() || allowed_host(h)
        };
        if !ok {
            return Err("Host is not allowed");
        }
    }
    if let Some(o) = req.header("origin") {
        let hostport = o.split_once("://").map_or("", |(_, rest)| rest);
        let same_origin = req
            .header("host")
            .is_some_and(|h| h.eq_ignore_ascii_case(hostport));
        let ok = o == "null"
            || cors.is_some_and(|c| c.allows(o))
            || (loopback && is_local_host(hostport))
            || same_origin;
        if !ok {
            return Err("Origin is not allowed");
        }
    }
    Ok(())
}

/// Whether a Content-Type names `want` (parameters such as charset allowed).
pub fn media_type_is(value: &str, want: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

/// Whether the Accept header allows `want` (`*/*` and `type/*` count).
pub fn accepts(req: &Request, want: &str) -> bool {
    let major = want.split('/').next().unwrap_or("");
    req.header_values("accept").any(|v| {
        let t = v.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case(want)
            || t == "*/*"
            || t.strip_suffix("/*")
                .is_some_and(|m| m.eq_ignore_ascii_case(major))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_helpers() {
        assert_eq!(strip_port("localhost:3000"), "localhost");
        assert_eq!(strip_port("[::1]:3000"), "::1");
        assert!(is_local_host("127.0.0.1:80") && !is_local_host("evil.example.com"));
        assert!(
            host_matches("*.example.com", "a.example.com")
                && !host_matches("*.example.com", "example.com")
        );
    }

    #[test]
    fn media_types_and_accept() {
        assert!(media_type_is(
            "application/json; charset=utf-8",
            "application/json"
        ));
        assert!(!media_type_is("text/plain", "application/json"));
        let req = super::super::tests::parse(
            "POST /mcp HTTP/1.1\r\nAccept: application/*;q=0.9, text/event-stream\r\n\r\n",
        );
        assert!(accepts(&req, "application/json") && accepts(&req, "text/event-stream"));
        assert!(!accepts(&req, "image/png"));
    }
}
