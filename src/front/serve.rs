//! Serving one request: the front's decision applied to the connection (its response buffers
//! and state) and to the relay (sessions and their messages). Only buffers are filled here;
//! the loop writes them out and carries out what the relay queued.
//!
//! The client context served here is the legacy, stateful one: an `Mcp-Session-Id` (or the
//! legacy `sessionId`), a POST whose answers gather into one reply, and the session's stream.

use super::envelope::Lifted;
use super::{check_post_accept, decide, door, modern, post_body, Decision, Op, Reply};
use crate::auth::Principal;
use crate::config::{Config, Route};
use crate::downstream::{AccessEntry, Conn, ConnState, Exchange};
use crate::http::parse::Request;
use crate::jsonrpc::Path;
use crate::jsonrpc::{self, Kind};
use crate::log::{self, short_id};
use crate::mcp;
use crate::mcp::relay::{ConnId, Relay};
use crate::mcp::session::Modern;
use crate::warn;
use serde_json::{json, Value};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A page the loop renders from its own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Health,
    Metrics,
}

/// What `/healthz` says of the loop itself.
pub struct State {
    pub draining: bool,
    pub uptime: Duration,
    pub connections: usize,
    pub reloads: u64,
}

/// `GET /healthz`: the gateway's status, counts, and every started target's health, as JSON.
pub fn healthz(relay: &Relay, state: &State) -> Vec<u8> {
    let status = match (state.draining, relay.health.any_failing()) {
        (true, _) => "draining",
        (false, true) => "degraded",
        (false, false) => "ok",
    };
    let page = json!({
        "status": status,
        "uptimeSeconds": state.uptime.as_secs(),
        "sessions": relay.session_count(),
        "connections": state.connections,
        "configReloads": state.reloads,
        "targets": relay.health.to_json(),
    });
    serde_json::to_vec(&page).unwrap_or_default()
}

/// Serves request `req` on connection `id`. Returns the page to answer with when the request
/// is for `/healthz` or `/metrics`.
pub fn request(
    cfg: &Config,
    relay: &mut Relay,
    c: &mut Conn,
    id: ConnId,
    req: Request,
) -> Option<Page> {
    let keep_alive = req.keep_alive();
    c.extra.clear();
    if log::access_log() != log::AccessLog::Off {
        c.access = Some(AccessEntry {
            method: req.method.clone(),
            path: req.path.clone(),
            start: Instant::now(),
            session: req
                .header("mcp-session-id")
                .or(req.query_param("sessionId"))
                .map(|s| short_id(s).to_string())
                .unwrap_or_default(),
            mcp_method: String::new(),
            target: String::new(),
        });
    }
    let (route, op, cors) = match decide(cfg, c.bind, &req) {
        Decision::Health => return Some(Page::Health),
        Decision::Metrics => return Some(Page::Metrics),
        Decision::Forbidden(why) => {
            warn!("refused {} {}: {why}", req.method, req.path);
            // A JSON-RPC error, as for any request the gateway cannot accept (the SDKs' own
            // servers answer a rebinding attempt the same way).
            let e = jsonrpc::error(Value::Null, jsonrpc::REFUSED, why);
            c.respond_json(403, &[], &e, keep_alive);
            return None;
        }
        Decision::Reply(r) => {
            c.extra = r.cors.clone();
            respond(c, r, keep_alive);
            return None;
        }
        Decision::Mcp { route, op, cors } => (route, op, cors),
    };
    c.extra = cors;
    let tls = c.stream.is_tls();
    let who = match door::admit(route, &req, tls, c.stream.cert_principal()) {
        Ok(who) => who,
        Err((reply, why)) => {
            warn!("refused {} {}: {why}", req.method, req.path);
            respond(c, reply, keep_alive);
            return None;
        }
    };
    match op {
        Op::Post => post(relay, c, id, req, Entry { route, who }, keep_alive),
        Op::Get => open_stream(relay, c, id, req, who, keep_alive),
        Op::Delete => delete(relay, c, req, who, keep_alive),
        Op::LegacyOpen => legacy_open(relay, c, id, req, Entry { route, who }, keep_alive),
        Op::LegacyPost => legacy_post(relay, c, req, who, keep_alive),
    }
    None
}

/// The route a request came in on and who sent it (when the route authenticates).
struct Entry<'a> {
    route: &'a Route,
    who: Option<Rc<Principal>>,
}

/// Queues a reply the front decided on.
pub fn respond(c: &mut Conn, r: Reply, keep_alive: bool) {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    c.respond(r.status, &headers, &r.body, keep_alive);
}

/// The JSON-RPC body of a POST, or None when a reply was queued for it instead. Notes the MCP
/// method for the access log.
fn json_body(c: &mut Conn, req: &Request, keep_alive: bool) -> Option<(jsonrpc::Body, Lifted)> {
    match post_body(req) {
        Ok((body, lifted)) => {
            if let Some(a) = c.access.as_mut() {
                a.mcp_method = match body.messages.as_slice() {
                    [one] => jsonrpc::method(one).to_string(),
                    many => format!("batch({})", many.len()),
                };
            }
            Some((body, lifted))
        }
        Err(r) => {
            respond(c, r, keep_alive);
            None
        }
    }
}

/// The request's session. Err: the HTTP status and message to answer with.
fn session_of(
    relay: &Relay,
    req: &Request,
    who: Option<&Principal>,
) -> Result<u64, (u16, &'static str)> {
    let Some(sid) = req.header("mcp-session-id") else {
        return Err((400, "Bad Request: Mcp-Session-Id header is required"));
    };
    let Some(sk) = relay.session_key(sid) else {
        return Err((404, "Session not found"));
    };
    // A session is its opener's: to anyone else it does not exist.
    if !relay.same_principal(sk, who) {
        return Err((404, "Session not found"));
    }
    // Only an unsupported version is refused (the spec's rule). A supported one that differs
    // from the negotiated version is tolerated: the official conformance suite sends
    // 2025-03-26 on sessions that negotiated a later revision.
    if let Some(v) = req.header("mcp-protocol-version") {
        if !mcp::is_supported(v) {
            return Err((400, "Bad Request: Unsupported MCP-Protocol-Version"));
        }
    }
    Ok(sk)
}

/// Splits a body into valid messages and the errors for invalid ones.
fn classify_all(messages: Vec<Value>) -> (Vec<(Kind, Value)>, Vec<Value>) {
    let mut valid = Vec::new();
    let mut errors = Vec::new();
    for m in messages {
        match jsonrpc::classify(&m) {
            Ok(kind) => valid.push((kind, m)),
            Err(why) => {
                let id = m
                    .get("id")
                    .filter(|i| i.is_string() || i.is_number())
                    .cloned();
                errors.push(jsonrpc::error(
                    id.unwrap_or(Value::Null),
                    jsonrpc::INVALID_REQUEST,
                    why,
                ));
            }
        }
    }
    (valid, errors)
}

/// Streamable HTTP POST: `initialize` starts a session; anything else needs one.
fn post(relay: &mut Relay, c: &mut Conn, id: ConnId, req: Request, to: Entry<'_>, keep: bool) {
    let Entry { route, who } = to;
    if let Err(r) = check_post_accept(&req) {
        return respond(c, r, keep);
    }
    let Some((mut body, lifted)) = json_body(c, &req, keep) else {
        return;
    };
    if let [one] = body.messages.as_mut_slice() {
        if modern::is_modern(&req, one, &lifted) {
            let msg = body.messages.pop().unwrap_or_default();
            return modern_post(
                relay,
                c,
                id,
                &req,
                (msg, lifted),
                Entry { route, who },
                keep,
            );
        }
        // A legacy message keeps its `_meta` as it came.
        lifted.restore(one);
    }
    let init = body
        .messages
        .iter()
        .position(|m| jsonrpc::method(m) == "initialize" && m.get("id").is_some());
    if let Some(i) = init {
        if body.messages.len() > 1 {
            let e = jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                "initialize must be sent alone",
            );
            return c.respond_json(400, &[], &e, keep);
        }
        let msg = body.messages.into_iter().nth(i).unwrap_or_default();
        return begin_session(relay, c, id, msg, &req, Entry { route, who }, keep);
    }
    let sk = match session_of(relay, &req, who.as_deref()) {
        Ok(sk) => sk,
        Err((status, why)) => {
            let e = jsonrpc::error(Value::Null, jsonrpc::INVALID_REQUEST, why);
            return c.respond_json(status, &[], &e, keep);
        }
    };
    relay.touch(sk);
    relay.credential(sk, req.header("authorization"));
    let (valid, mut errors) = classify_all(body.messages);
    let requests = valid.iter().filter(|(k, _)| *k == Kind::Request).count();
    if requests == 0 {
        for (kind, m) in valid {
            relay.client_message(sk, id, kind, m);
        }
        if errors.is_empty() {
            c.respond(202, &[], b"", keep);
        } else {
            let body = if body.batch {
                Value::Array(errors)
            } else {
                errors.remove(0)
            };
            c.respond_json(400, &[], &body, keep);
        }
        return;
    }
    c.state = ConnState::Exchange(Exchange {
        session: sk,
        remaining: requests,
        batch: body.batch,
        streaming: false,
        collected: errors.iter().map(Value::to_string).collect(),
        session_header: None,
        keep_alive: keep,
        modern: false,
    });
    c.chunked = req.minor_version > 0;
    for (kind, m) in valid {
        relay.client_message(sk, id, kind, m);
    }
}

/// A stateless (2026-07-28) request: checked, then served by the backend's pool; the answer
/// (and the progress and log messages that belong to it) goes back on this POST alone.
fn modern_post(
    relay: &mut Relay,
    c: &mut Conn,
    id: ConnId,
    req: &Request,
    (msg, lifted): (Value, Lifted),
    Entry { route, who }: Entry<'_>,
    keep: bool,
) {
    // Looked up once: the checks, the pool and the call all need them.
    let method = jsonrpc::method(&msg);
    let params = msg.get("params").and_then(Value::as_object);
    let named = modern::name_param(method)
        .and_then(|k| params?.get(k))
        .and_then(Value::as_str);
    let mut stated = modern::stated(req);
    let envelope = match modern::take(&stated, &msg, (method, named), lifted) {
        Ok(e) => e,
        Err(r) => return respond(c, r, keep),
    };
    match jsonrpc::classify(&msg) {
        Ok(Kind::Request) => {}
        // Nothing to say back; a stateless client cancels by closing its reply stream.
        Ok(_) => return c.respond(202, &[], b"", keep),
        Err(why) => {
            let e = jsonrpc::error(Value::Null, jsonrpc::INVALID_REQUEST, why);
            return c.respond_json(400, &[], &e, keep);
        }
    }
    if modern::removed(method) {
        let why = format!("{method} is not a method of MCP 2026-07-28");
        let e = jsonrpc::error(msg["id"].clone(), jsonrpc::METHOD_NOT_FOUND, &why);
        return c.respond_json(404, &[], &e, keep);
    }
    let credential = req.header("authorization");
    let sk = relay.pool_for(&route.backend, &route.policy, credential, who.as_ref());
    c.state = ConnState::Exchange(Exchange {
        session: sk,
        remaining: 1,
        batch: false,
        streaming: false,
        collected: Vec::new(),
        session_header: None,
        keep_alive: keep,
        modern: true,
    });
    c.chunked = req.minor_version > 0;
    let param = |k: &str| params.and_then(|p| p.get(k));
    let modern = Modern {
        log_level: envelope.log_level,
        capabilities: envelope.capabilities,
        name: named.unwrap_or("").to_string(),
        input: Vec::new(),
        client_info: envelope.client_info,
        missing: Vec::new(),
        offered: param("inputResponses").cloned(),
        state: param("requestState")
            .and_then(Value::as_str)
            .map(str::to_string),
        param_headers: std::mem::take(&mut stated.params),
        principal: who,
    };
    relay.modern_request(sk, id, msg, modern);
}

/// Streamable HTTP `initialize`: a new session whose id goes back on this POST's answer.
fn begin_session(
    relay: &mut Relay,
    c: &mut Conn,
    id: ConnId,
    msg: Value,
    req: &Request,
    Entry { route, who }: Entry<'_>,
    keep: bool,
) {
    // Strict: no session for an `initialize` that is not a valid request or names no version.
    if jsonrpc::classify(&msg).is_err() {
        let e = jsonrpc::error(
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            "invalid initialize request",
        );
        return c.respond_json(400, &[], &e, keep);
    }
    let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
    if msg
        .at("/params/protocolVersion")
        .and_then(Value::as_str)
        .is_none()
    {
        let why = "initialize: params.protocolVersion is required";
        let e = jsonrpc::error(client_id, jsonrpc::INVALID_PARAMS, why);
        return c.respond_json(400, &[], &e, keep);
    }
    let created = {
        let policy = Rc::clone(&route.policy);
        let credential = req.header("authorization");
        relay.create_session(Rc::clone(&route.backend), policy, credential, who, false)
    };
    let (sk, sid) = match created {
        Ok(s) => s,
        Err((code, why)) => {
            return c.respond_json(200, &[], &jsonrpc::error(client_id, code, &why), keep);
        }
    };
    if let Some(a) = c.access.as_mut() {
        a.session = short_id(&sid).to_string();
    }
    c.state = ConnState::Exchange(Exchange {
        session: sk,
        remaining: 1,
        batch: false,
        streaming: false,
        collected: Vec::new(),
        session_header: Some(sid),
        keep_alive: keep,
        modern: false,
    });
    c.chunked = req.minor_version > 0;
    relay.initialize(sk, Some(id), msg);
}

/// GET or DELETE without `Mcp-Session-Id`: there is no stream or session to offer (the
/// stateless revision has neither; legacy clients always name their session).
fn no_session(c: &mut Conn, keep: bool) {
    let h = [("Allow", "POST, OPTIONS"), ("Content-Type", "text/plain")];
    c.respond(405, &h, b"GET and DELETE need an Mcp-Session-Id\n", keep);
}

/// Streamable HTTP GET: the session's server-to-client stream; one at a time.
fn open_stream(
    relay: &mut Relay,
    c: &mut Conn,
    id: ConnId,
    req: Request,
    who: Option<Rc<Principal>>,
    keep: bool,
) {
    if req.header("mcp-session-id").is_none() {
        return no_session(c, keep);
    }
    let sk = match session_of(relay, &req, who.as_deref()) {
        Ok(sk) => sk,
        Err((status, why)) => return c.respond_text(status, &format!("{why}\n"), keep),
    };
    if !super::checks::accepts(&req, "text/event-stream") {
        return c.respond_text(406, "Accept must include text/event-stream\n", keep);
    }
    let Some(backlog) = relay.open_stream(sk, id) else {
        return c.respond_text(409, "this session already has a GET stream\n", keep);
    };
    c.state = ConnState::Stream { session: sk };
    c.start_sse(&[], req.minor_version > 0);
    for m in &backlog {
        c.sse_message(m);
    }
    c.last_write = Instant::now();
}

/// Streamable HTTP DELETE: ends the session.
fn delete(relay: &mut Relay, c: &mut Conn, req: Request, who: Option<Rc<Principal>>, keep: bool) {
    if req.header("mcp-session-id").is_none() {
        return no_session(c, keep);
    }
    match session_of(relay, &req, who.as_deref()) {
        Ok(sk) => {
            relay.end_session(sk, "deleted by the client");
            c.respond(200, &[], b"", keep);
        }
        Err((status, why)) => c.respond_text(status, &format!("{why}\n"), keep),
    }
}

/// Legacy HTTP+SSE (2024-11-05): `GET /sse` opens a session whose every message travels on
/// this stream; the `endpoint` event tells the client where to POST.
fn legacy_open(
    relay: &mut Relay,
    c: &mut Conn,
    id: ConnId,
    req: Request,
    to: Entry<'_>,
    keep: bool,
) {
    let Entry { route, who } = to;
    let policy = Rc::clone(&route.policy);
    let credential = req.header("authorization");
    let backend = Rc::clone(&route.backend);
    let (sk, sid) = match relay.create_session(backend, policy, credential, who, true) {
        Ok(s) => s,
        Err((_, why)) => return c.respond_text(503, &format!("{why}\n"), keep),
    };
    let _ = relay.open_stream(sk, id);
    c.state = ConnState::Stream { session: sk };
    c.start_sse(&[], req.minor_version > 0);
    c.sse_event("endpoint", &format!("{}?sessionId={sid}", req.path));
    c.last_write = Instant::now();
}

/// Legacy HTTP+SSE: a message POSTed to the endpoint. Accepted with 202; every answer goes
/// out on the session's stream.
fn legacy_post(
    relay: &mut Relay,
    c: &mut Conn,
    req: Request,
    who: Option<Rc<Principal>>,
    keep: bool,
) {
    let found = req
        .query_param("sessionId")
        .and_then(|sid| relay.legacy_stream(sid))
        .filter(|(sk, _)| relay.same_principal(*sk, who.as_deref()));
    let Some((sk, stream)) = found else {
        let (status, why) = match req.query_param("sessionId") {
            None => (400, "sessionId query parameter is required\n"),
            Some(_) => (404, "Session not found\n"),
        };
        return c.respond_text(status, why, keep);
    };
    let Some((mut body, lifted)) = json_body(c, &req, keep) else {
        return;
    };
    // The legacy endpoint serves no stateless requests: the envelope goes back where it was.
    if let [one] = body.messages.as_mut_slice() {
        lifted.restore(one);
    }
    c.respond(202, &[("Content-Type", "text/plain")], b"Accepted", keep);
    relay.touch(sk);
    relay.credential(sk, req.header("authorization"));
    let (valid, errors) = classify_all(body.messages);
    for e in errors {
        relay.answer(stream, &e);
    }
    for (kind, m) in valid {
        match kind {
            Kind::Request if jsonrpc::method(&m) == "initialize" => {
                relay.initialize(sk, Some(stream), m)
            }
            _ => relay.client_message(sk, stream, kind, m),
        }
    }
}
