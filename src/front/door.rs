//! The front door applied to an HTTP request: authentication and rate limits before an MCP
//! route is served (401 with the challenge, 429 with `Retry-After`, each with a JSON-RPC
//! error body), and the protected-resource metadata documents (RFC 9728) of
//! `mcpAuthentication` routes at `/.well-known/oauth-protected-resource[/path]`. Pure.

use super::Reply;
use crate::auth::{self, Principal, Refusal, ResourceMetadata, Visitor};
use crate::config::{Bind, PathMatch, Route, Url};
use crate::http::parse::Request;
use crate::jsonrpc;
use serde_json::Value;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where RFC 9728 puts protected-resource metadata.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// The JSON-RPC error code of a request refused for its credentials or its rate.
pub const UNAUTHORIZED: i64 = -32001;

/// `scheme://host` of the request, as the client addressed it.
fn origin(req: &Request, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    // The Host goes into a quoted header parameter and a JSON document: only a host name,
    // an IP literal and a port are taken from it.
    let host = req.header("host").filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    format!("{scheme}://{}", host.unwrap_or("localhost"))
}

/// The path of the MCP endpoint a metadata document describes: the configured resource's,
/// else the route's first exact path (the MCP endpoint), else `/mcp`.
fn resource_path(route: &Route, m: &ResourceMetadata) -> String {
    if let Some(u) = m.resource.as_deref().and_then(|r| Url::parse(r).ok()) {
        return u.path;
    }
    let exact = route.matches.iter().find_map(|rm| match &rm.path {
        Some(PathMatch::Exact(p)) if !p.starts_with(METADATA_PREFIX) => Some(p.clone()),
        _ => None,
    });
    exact.unwrap_or_else(|| "/mcp".into())
}

fn metadata_of(route: &Route) -> Option<&ResourceMetadata> {
    route.policy.door.as_ref()?.jwt.as_ref()?.mcp.as_ref()
}

/// The absolute URL of the metadata document for `route`, as a 401 names it.
pub fn metadata_url(route: &Route, req: &Request, tls: bool) -> Option<String> {
    let m = metadata_of(route)?;
    let base = match m.resource.as_deref().and_then(|r| Url::parse(r).ok()) {
        Some(u) => format!(
            "{}://{}",
            if u.https { "https" } else { "http" },
            u.authority()
        ),
        None => origin(req, tls),
    };
    let path = resource_path(route, m);
    let path = if path == "/" { String::new() } else { path };
    Some(format!("{base}{METADATA_PREFIX}{path}"))
}

/// `GET /.well-known/oauth-protected-resource[/path]`: the document of the
/// `mcpAuthentication` route whose endpoint is `path` (or the only one, for the bare prefix).
/// None: no such route (the request goes on to routing as usual).
pub fn metadata_page(bind: &Bind, req: &Request, tls: bool) -> Option<Reply> {
    let suffix = req.path.strip_prefix(METADATA_PREFIX)?;
    if !(suffix.is_empty() || suffix.starts_with('/')) {
        return None;
    }
    let routes: Vec<(&Route, &ResourceMetadata)> = bind
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter_map(|r| metadata_of(r).map(|m| (r, m)))
        .collect();
    let wanted = if suffix.is_empty() { "/" } else { suffix };
    let found = routes
        .iter()
        .find(|(r, m)| resource_path(r, m) == wanted)
        .or_else(|| (suffix.is_empty() && routes.len() == 1).then(|| &routes[0]))?;
    let (route, m) = *found;
    let resource = format!("{}{}", origin(req, tls), resource_path(route, m));
    let doc = auth::metadata_document(m, &resource);
    // Public information, fetched by browser-based clients from other origins.
    let reply = match req.method.as_str() {
        "GET" | "HEAD" => Reply::json(200, &doc).header("Cache-Control", "max-age=300"),
        "OPTIONS" => Reply::new(204, "")
            .header("Access-Control-Allow-Methods", "GET, OPTIONS")
            .header("Access-Control-Allow-Headers", "*")
            .header("Access-Control-Max-Age", "600"),
        _ => Reply::text(405, "method not allowed\n").header("Allow", "GET, OPTIONS"),
    };
    Some(reply.header("Access-Control-Allow-Origin", "*"))
}

/// Seconds since the epoch (token times).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates and rate-limits a request for `route`. Ok: its principal, if any. Err: the
/// reply, and what to log (never the credential).
pub fn admit(
    route: &Route,
    req: &Request,
    tls: bool,
    cert: Option<&Rc<Principal>>,
) -> Result<Option<Rc<Principal>>, (Reply, String)> {
    let Some(door) = route.policy.door.as_ref() else {
        return Ok(cert.cloned());
    };
    let header = |n: &str| req.header(n);
    let visitor = Visitor {
        header: &header,
        cert,
        metadata_url: &|| metadata_url(route, req, tls),
    };
    match door.admit(&visitor, unix_now(), Instant::now()) {
        Ok(p) => Ok(p),
        Err(Refusal::Unauthorized { reason, challenge }) => {
            crate::metrics::with(|m| m.refusal("unauthorized"));
            let body = jsonrpc::error(
                Value::Null,
                UNAUTHORIZED,
                &format!("Unauthorized: {reason}"),
            );
            let reply = Reply::json(401, &body).header("WWW-Authenticate", &challenge);
            Err((reply, format!("401: {reason}")))
        }
        Err(Refusal::Limited { retry_after, limit }) => {
            crate::metrics::with(|m| m.refusal("rate_limited"));
            let body = jsonrpc::error(
                Value::Null,
                UNAUTHORIZED,
                &format!(
                    "Too Many Requests: rate limit of {limit} exceeded; retry in {retry_after} s"
                ),
            );
            let reply = Reply::json(429, &body).header("Retry-After", &retry_after.to_string());
            Err((reply, format!("429: rate limit ({limit}) exceeded")))
        }
    }
}
