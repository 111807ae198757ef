//! The front: one HTTP request in, one decision out. Which bind and route take it, the Host and
//! Origin checks, CORS, which page or MCP transport it is for (streamable HTTP POST/GET/DELETE,
//! or the legacy HTTP+SSE stream and its POST endpoint), and whether its body is JSON-RPC at
//! all. `decide` and `post_body` are pure over a parsed request; `serve` applies a decision to
//! the connection's buffers and the relay, and never touches a socket.

pub mod checks;
pub mod door;
pub mod envelope;
pub mod modern;
pub mod serve;

use crate::config::{Config, Route};
use crate::http::parse::Request;
use crate::jsonrpc;
use checks::{accepts, check_origin, cors_headers, find_route, media_type_is, preflight};
use serde_json::Value;

/// A complete response the front answers with by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The route's CORS headers, when the request's origin is allowed.
    pub cors: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            cors: Vec::new(),
        }
    }

    /// A plain-text reply.
    pub fn text(status: u16, text: &str) -> Reply {
        Reply::new(status, text).header("Content-Type", "text/plain; charset=utf-8")
    }

    /// A JSON reply (a JSON-RPC error, mostly).
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::new(status, &serde_json::to_string(body).unwrap_or_default())
            .header("Content-Type", "application/json")
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// What an MCP route is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Streamable HTTP: JSON-RPC message(s) POSTed.
    Post,
    /// Streamable HTTP: open the session's GET stream.
    Get,
    /// Streamable HTTP: end the session.
    Delete,
    /// Legacy HTTP+SSE: open a session and its stream (`GET .../sse`).
    LegacyOpen,
    /// Legacy HTTP+SSE: a message POSTed to the session's endpoint.
    LegacyPost,
}

#[derive(Debug)]
pub enum Decision<'a> {
    /// `GET /healthz` (every bind).
    Health,
    /// `GET /metrics` (the stats listener only).
    Metrics,
    /// Refused by the Host/Origin check (403; the reason is logged).
    Forbidden(&'static str),
    /// Answered by the front alone.
    Reply(Reply),
    /// For the MCP backend of `route`; its responses carry `cors`.
    Mcp {
        route: &'a Route,
        op: Op,
        cors: Vec<(&'static str, String)>,
    },
}

/// Decides what a request on bind `bind` (the stats listener is `cfg.binds.len()`) is for.
pub fn decide<'a>(cfg: &'a Config, bind: usize, req: &Request) -> Decision<'a> {
    let admin = bind >= cfg.binds.len();
    if req.method == "GET" && req.path == "/healthz" {
        return Decision::Health;
    }
    if admin {
        return match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/metrics") => Decision::Metrics,
            _ => Decision::Reply(Reply::text(
                404,
                "the stats listener serves /metrics and /healthz\n",
            )),
        };
    }
    let b = &cfg.binds[bind];
    // Protected-resource metadata is public: served before routing and origin checks.
    if req.path.starts_with(door::METADATA_PREFIX) {
        if let Some(r) = door::metadata_page(b, req, b.tls.is_some()) {
            return Decision::Reply(r);
        }
    }
    let route = find_route(b, req);
    let cors = route.and_then(|r| r.cors.as_deref());
    // The backend's own `dnsRebindingProtection` wins over the gateway-wide setting.
    let protect = route
        .and_then(|r| r.backend.dns_rebinding)
        .unwrap_or(cfg.limits.dns_rebinding_protection);
    if let Err(why) = check_origin(req, b.addr, &cfg.limits, protect, cors) {
        return Decision::Forbidden(why);
    }
    let Some(route) = route else {
        return Decision::Reply(Reply::text(404, "no route\n"));
    };
    let extra = match (cors, req.header("origin")) {
        (Some(c), Some(origin)) if c.allows(origin) => cors_headers(c, origin),
        _ => Vec::new(),
    };
    let p = req.path.as_str();
    let legacy_stream = p.ends_with("/sse");
    let endpoint = p.ends_with("/message") || p.ends_with("/messages");
    let legacy_post = legacy_stream || endpoint;
    let op = match req.method.as_str() {
        "OPTIONS" => return Decision::Reply(preflight(req, cors, extra)),
        "GET" if legacy_stream => Op::LegacyOpen,
        "POST" if legacy_post && req.query_param("sessionId").is_some() => Op::LegacyPost,
        "POST" if endpoint => Op::LegacyPost,
        "POST" => Op::Post,
        "GET" if !legacy_post => Op::Get,
        "DELETE" if !legacy_post => Op::Delete,
        _ => {
            let mut r = Reply::new(405, "method not allowed\n")
                .header("Allow", "GET, POST, DELETE, OPTIONS")
                .header("Content-Type", "text/plain");
            r.cors = extra;
            return Decision::Reply(r);
        }
    };
    Decision::Mcp {
        route,
        op,
        cors: extra,
    }
}

/// The JSON-RPC body of a POST: 415 for another Content-Type, 400 with a JSON-RPC parse error
/// for bad JSON.
/// A single message's 2026-07-28 envelope comes lifted out (see `envelope`).
pub fn post_body(req: &Request) -> Result<(jsonrpc::Body, envelope::Lifted), Reply> {
    if !media_type_is(req.header("content-type").unwrap_or(""), "application/json") {
        return Err(Reply::text(415, "Content-Type must be application/json\n"));
    }
    envelope::parse_body(&req.body).map_err(|e| Reply::json(400, &e))
}

/// A streamable-HTTP POST must accept both JSON and SSE answers (406 otherwise).
pub fn check_post_accept(req: &Request) -> Result<(), Reply> {
    if accepts(req, "application/json") && accepts(req, "text/event-stream") {
        return Ok(());
    }
    Err(Reply::text(
        406,
        "Accept must include application/json and text/event-stream\n",
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::http::parse::{parse_request, Limits};
    use crate::http::Status;

    pub fn parse(raw: &str) -> Request {
        let limits = Limits {
            max_head: 16384,
            max_headers: 64,
            max_body: 1 << 20,
        };
        match parse_request(raw.as_bytes(), &limits) {
            Ok(Status::Complete(r, _)) => r,
            other => panic!("not a complete request: {other:?}"),
        }
    }

    fn config(yaml: &str) -> Config {
        Config::parse(yaml).unwrap_or_else(|e| panic!("{:?}", e.0))
    }

    const ONE: &str = "binds:\n- port: 3000\n  listeners:\n  - routes:\n    - matches: [{path: {exact: /mcp}}, {path: {exact: /sse}}, {path: {exact: /message}}]\n      policies:\n        cors: {allowOrigins: [\"https://app.example.com\"], allowHeaders: [\"*\"]}\n      backends: [{mcp: {targets: [{name: demo, stdio: {cmd: demo}}]}}]\nconfig: {statsAddr: \"127.0.0.1:9100\"}\n";

    fn decide_raw(cfg: &Config, bind: usize, raw: &str) -> String {
        let req = parse(raw);
        match decide(cfg, bind, &req) {
            Decision::Health => "health".into(),
            Decision::Metrics => "metrics".into(),
            Decision::Forbidden(why) => format!("403 {why}"),
            Decision::Reply(r) => format!("{} cors={}", r.status, !r.cors.is_empty()),
            Decision::Mcp { op, cors, .. } => format!("{op:?} cors={}", !cors.is_empty()),
        }
    }

    #[test]
    fn decides_transport_and_pages() {
        let cfg = config(ONE);
        let h = "Host: localhost:3000\r\n";
        let cases = [
            (0, format!("POST /mcp HTTP/1.1\r\n{h}\r\n"), "Post cors=false"),
            (0, format!("GET /mcp HTTP/1.1\r\n{h}\r\n"), "Get cors=false"),
            (0, format!("DELETE /mcp HTTP/1.1\r\n{h}\r\n"), "Delete cors=false"),
            (0, format!("GET /sse HTTP/1.1\r\n{h}\r\n"), "LegacyOpen cors=false"),
            (0, format!("POST /sse?sessionId=x HTTP/1.1\r\n{h}\r\n"), "LegacyPost cors=false"),
            (0, format!("POST /message?sessionId=x HTTP/1.1\r\n{h}\r\n"), "LegacyPost cors=false"),
            (0, format!("PUT /mcp HTTP/1.1\r\n{h}\r\n"), "405 cors=false"),
            (0, format!("DELETE /sse HTTP/1.1\r\n{h}\r\n"), "405 cors=false"),
            (0, format!("GET /other HTTP/1.1\r\n{h}\r\n"), "404 cors=false"),
            (0, format!("GET /healthz HTTP/1.1\r\n{h}\r\n"), "health"),
            (0, format!("GET /metrics HTTP/1.1\r\n{h}\r\n"), "404 cors=false"),
            (1, format!("GET /metrics HTTP/1.1\r\n{h}\r\n"), "metrics"),
            (1, format!("POST /mcp HTTP/1.1\r\n{h}\r\n"), "404 cors=false"),
            // DNS rebinding: a foreign Host or Origin on a loopback bind.
            (0, "POST /mcp HTTP/1.1\r\nHost: evil.example\r\n\r\n".into(), "403 Host is not allowed"),
            (
                0,
                format!("POST /mcp HTTP/1.1\r\n{h}Origin: https://evil.example\r\n\r\n"),
                "403 Origin is not allowed",
            ),
            // An origin the route's CORS policy allows gets CORS headers on everything.
            (
                0,
                format!("POST /mcp HTTP/1.1\r\n{h}Origin: https://app.example.com\r\n\r\n"),
                "Post cors=true",
            ),
            (
                0,
                format!("OPTIONS /mcp HTTP/1.1\r\n{h}Origin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\r\n"),
                "204 cors=true",
            ),
            (
                0,
                format!("OPTIONS /mcp HTTP/1.1\r\n{h}Origin: http://localhost:5173\r\nAccess-Control-Request-Method: POST\r\n\r\n"),
                "204 cors=false",
            ),
        ];
        for (bind, raw, want) in cases {
            assert_eq!(decide_raw(&cfg, bind, &raw), want, "{raw}");
        }
    }

    #[test]
    fn preflight_echoes_requested_headers() {
        let cfg = config(ONE);
        let req = parse("OPTIONS /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: mcp-session-id, content-type\r\n\r\n");
        let Decision::Reply(r) = decide(&cfg, 0, &req) else {
            panic!("not a reply");
        };
        let get = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("Access-Control-Allow-Headers"),
            Some("mcp-session-id, content-type")
        );
        assert_eq!(
            get("Access-Control-Allow-Methods"),
            Some("GET, POST, DELETE, OPTIONS")
        );
        let origin = r
            .cors
            .iter()
            .find(|(k, _)| *k == "Access-Control-Allow-Origin");
        assert_eq!(
            origin.map(|(_, v)| v.as_str()),
            Some("https://app.example.com")
        );
    }

    #[test]
    fn a_configured_header_list_still_allows_the_mcp_headers() {
        let yaml = "binds:\n- port: 3000\n  listeners:\n  - routes:\n    - policies:\n        cors:\n          allowOrigins: [\"https://app.example.com\"]\n          allowHeaders: [x-custom]\n      backends:\n      - mcp:\n          targets: [{name: a, stdio: {cmd: a}}]\n";
        let cfg = config(yaml);
        let req = parse("OPTIONS /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: mcp-method, mcp-name, mcp-param-region, x-custom\r\n\r\n");
        let Decision::Reply(r) = decide(&cfg, 0, &req) else {
            panic!("not a reply");
        };
        let allowed = r
            .headers
            .iter()
            .find(|(k, _)| *k == "Access-Control-Allow-Headers")
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default();
        for h in [
            "x-custom",
            "mcp-method",
            "mcp-name",
            "mcp-protocol-version",
            "mcp-session-id",
            "mcp-param-region",
        ] {
            assert!(
                allowed.split(", ").any(|a| a == h),
                "{h} missing from {allowed}"
            );
        }
    }

    #[test]
    fn post_bodies() {
        let ok = parse("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}   ");
        assert_eq!(post_body(&ok).map(|(b, _)| b.messages.len()), Ok(1));
        let bad = parse("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope");
        let r = post_body(&bad).err().map(|r| {
            (
                r.status,
                String::from_utf8_lossy(&r.body).contains("-32700"),
            )
        });
        assert_eq!(r, Some((400, true)));
        let text =
            parse("POST /mcp HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(post_body(&text).err().map(|r| r.status), Some(415));
        let accept = parse("POST /mcp HTTP/1.1\r\nAccept: application/json\r\n\r\n");
        assert_eq!(
            check_post_accept(&accept).err().map(|r| r.status),
            Some(406)
        );
        let both =
            parse("POST /mcp HTTP/1.1\r\nAccept: application/json, text/event-stream\r\n\r\n");
        assert!(check_post_accept(&both).is_ok());
    }
}
