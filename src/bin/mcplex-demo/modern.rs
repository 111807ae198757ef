//! `--dual-era`: the demo also serves MCP 2026-07-28, the stateless revision, beside the
//! legacy one (on one endpoint, on one stdio process).
//!
//! A request whose `params._meta` names a protocol version (or, over HTTP, whose
//! `MCP-Protocol-Version` header names 2026-07-28) is modern. It is checked (the envelope,
//! then the headers against the body, then the version) and served on a session of its
//! own that ends with it: the client's capabilities and log level come from the envelope,
//! nothing is kept between requests. The fixtures are written as a legacy server writes
//! them (they ask their client and wait); for a modern request each question is recorded
//! instead, and the request is answered with an `input_required` result whose sealed
//! `requestState` carries the answers gathered so far. The retry runs the handler again
//! from the start, and questions already answered get their answers at once.

use super::{
    classify, dispatch, error_response, list_options, notification, progress_token, read_resource,
    response, server_capabilities, server_info, write_chunk, Ctx, HttpRequest, Incoming, Outlet,
    Reply, RpcError, Session, SseOutlet, SseState, StdoutOutlet, INSTRUCTIONS, INVALID_PARAMS,
    INVALID_REQUEST, LOG_LEVELS, METHOD_NOT_FOUND, POLL_INTERVAL, RESOURCE_NOT_FOUND,
    SSE_KEEPALIVE, SUPPORTED_VERSIONS,
};
use ring::{digest, hmac, rand::SecureRandom};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

pub const MODERN_VERSION: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
const HEADER_MISMATCH: i64 = -32020;
const MISSING_CAPABILITY: i64 = -32021;
const UNSUPPORTED_VERSION: i64 = -32022;
/// How long a `requestState` the demo sealed stays valid.
const STATE_TTL_SECS: u64 = 600;
/// The lists never change, so clients may keep them a minute.
const LIST_TTL_MS: u64 = 60_000;
const STATE_PREFIX: &str = "demo1.";

/// Whether a decoded message is served statelessly. `initialize` stays legacy unless it
/// carries the envelope and no `protocolVersion` of its own (a modern client calling a
/// method its revision removed).
pub fn is_modern(header_version: Option<&str>, message: &Value) -> bool {
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return false;
    };
    let enveloped = message
        .pointer("/params/_meta")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key(META_VERSION));
    if method == "initialize" {
        return enveloped && message.pointer("/params/protocolVersion").is_none();
    }
    enveloped || header_version == Some(MODERN_VERSION)
}

/// What a modern request says of its client.
struct Envelope {
    capabilities: Value,
    /// Index into `LOG_LEVELS`; `usize::MAX` (no level asked) sends no log notifications.
    log_level: usize,
}

fn refusal(code: i64, message: impl Into<String>, data: Option<Value>) -> (u16, RpcError) {
    let status = if code == METHOD_NOT_FOUND { 404 } else { 400 };
    (
        status,
        RpcError {
            code,
            message: message.into(),
            data,
        },
    )
}

/// The checks in the revision's order; `request` is the HTTP request (None on stdio).
fn envelope(
    method: &str,
    params: &Value,
    request: Option<&HttpRequest>,
) -> Result<Envelope, (u16, RpcError)> {
    let meta = params.get("_meta").and_then(Value::as_object);
    let missing: Vec<&str> = [META_VERSION, META_CAPABILITIES]
        .into_iter()
        .filter(|k| !meta.is_some_and(|m| m.contains_key(*k)))
        .collect();
    let Some(meta) = meta.filter(|_| missing.is_empty()) else {
        let why = format!("params._meta lacks {}", missing.join(" and "));
        return Err(refusal(INVALID_PARAMS, why, None));
    };
    let version = meta.get(META_VERSION).and_then(Value::as_str);
    let capabilities = meta.get(META_CAPABILITIES).filter(|c| c.is_object());
    let (Some(version), Some(capabilities)) = (version, capabilities) else {
        let why = "params._meta: the protocol version must be a string, the capabilities an object";
        return Err(refusal(INVALID_PARAMS, why, None));
    };
    if let Some(request) = request {
        let mismatch = |name: &str| {
            let why = format!("the {name} header does not match the body");
            Err(refusal(HEADER_MISMATCH, why, None))
        };
        if request.header("mcp-protocol-version") != Some(version) {
            return mismatch("MCP-Protocol-Version");
        }
        if request.header("mcp-method") != Some(method) {
            return mismatch("Mcp-Method");
        }
        let named = match method {
            "tools/call" | "prompts/get" => params.get("name"),
            "resources/read" => params.get("uri"),
            _ => None,
        };
        if let Some(Value::String(name)) = named {
            let header = request.header("mcp-name").map(decode_header_value);
            if header.as_deref() != Some(name.as_str()) {
                return mismatch("Mcp-Name");
            }
            if method == "tools/call" {
                if let Some(header) = param_mismatch(name, params.get("arguments"), request) {
                    return mismatch(&header);
                }
            }
        }
    }
    if version != MODERN_VERSION {
        let mut supported = vec![MODERN_VERSION];
        supported.extend(SUPPORTED_VERSIONS.iter().rev());
        let data = json!({ "supported": supported, "requested": version });
        return Err(refusal(
            UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            Some(data),
        ));
    }
    let log_level = match meta.get(META_LOG_LEVEL) {
        None | Some(Value::Null) => usize::MAX,
        Some(level) => level
            .as_str()
            .and_then(|l| LOG_LEVELS.iter().position(|x| *x == l))
            .ok_or_else(|| refusal(INVALID_PARAMS, "unknown log level in params._meta", None))?,
    };
    Ok(Envelope {
        capabilities: capabilities.clone(),
        log_level,
    })
}

/// The `x-mcp-header` marks on the catalog's top-level tool properties, read once:
/// (tool, property, header name).
fn marks() -> &'static [(String, String, String)] {
    static MARKS: OnceLock<Vec<(String, String, String)>> = OnceLock::new();
    MARKS.get_or_init(|| {
        let mut out = Vec::new();
        for tool in super::tool_catalog() {
            let name = tool["name"].as_str().unwrap_or("");
            let properties = tool["inputSchema"]["properties"].as_object();
            for (property, spec) in properties.into_iter().flatten() {
                if let Some(mark) = spec["x-mcp-header"].as_str() {
                    out.push((name.to_string(), property.clone(), mark.to_string()));
                }
            }
        }
        out
    })
}

/// The first `Mcp-Param-*` header of a call to `tool` that disagrees with its arguments, by
/// its marks: present with a value the argument does not have, or missing while the
/// argument is given.
fn param_mismatch(tool: &str, args: Option<&Value>, request: &HttpRequest) -> Option<String> {
    for (_, property, mark) in marks().iter().filter(|(t, _, _)| t == tool) {
        let header = format!("Mcp-Param-{mark}");
        let want = match args.and_then(|a| a.get(property)) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        let given = request.header(&header).map(decode_header_value);
        if given.as_deref() != Some(want.as_str()) {
            return Some(header);
        }
    }
    None
}

/// What 2026-07-28 serves; `initialize`, `ping`, `logging/setLevel` and the resource
/// subscription methods are gone from it (404, "method not found").
fn served(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "subscriptions/listen"
            | "tools/list"
            | "tools/call"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete"
    )
}

/// The session one modern request runs on: nothing in it outlives the request.
fn stateless_session(envelope: &Envelope) -> Session {
    let session = Session::new();
    {
        let mut state = session.lock();
        state.protocol_version = MODERN_VERSION.to_string();
        state.client_capabilities = envelope.capabilities.clone();
        state.log_level = envelope.log_level;
        state.stateless = true;
    }
    session
}

/// Runs a checked modern request (not `subscriptions/listen`): the HTTP status and the
/// answer, or None if it was cancelled.
fn serve(
    session: &Session,
    outlet: &dyn Outlet,
    cancelled: Arc<AtomicBool>,
    id: &Value,
    method: &str,
    params: &Value,
) -> Option<(u16, Value)> {
    if !served(method) {
        let (status, err) = refusal(
            METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
            None,
        );
        return Some((status, error_response(id, &err)));
    }
    if method == "server/discover" {
        let mut supported = vec![MODERN_VERSION];
        supported.extend(SUPPORTED_VERSIONS.iter().rev());
        let result = json!({
            "supportedVersions": supported,
            "capabilities": server_capabilities(),
            "instructions": INSTRUCTIONS,
        });
        return Some((200, response(id, complete(method, result))));
    }
    let rounds = match Rounds::for_request(method, params) {
        Ok(rounds) => rounds,
        Err(err) => return Some((400, error_response(id, &err))),
    };
    let ctx = Ctx {
        session,
        outlet,
        cancelled,
        progress_token: progress_token(params),
        rounds: Some(&rounds),
    };
    let outcome = dispatch(&ctx, method, params);
    if ctx.is_cancelled() {
        return None;
    }
    Some(rounds.finish(id, method, params, outcome))
}

/// A complete result as 2026-07-28 shapes it.
fn complete(method: &str, mut result: Value) -> Value {
    let Some(obj) = result.as_object_mut() else {
        return result;
    };
    obj.insert("resultType".into(), json!("complete"));
    let cacheable = matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    );
    if cacheable {
        // With --extra-tools the lists are test fixtures: no caching there.
        let ttl = if list_options().extra_tools > 0 || method == "resources/read" {
            0
        } else {
            LIST_TTL_MS
        };
        obj.insert("ttlMs".into(), json!(ttl));
        obj.insert("cacheScope".into(), json!("public"));
    }
    with_server_info(obj);
    result
}

fn with_server_info(obj: &mut Map<String, Value>) {
    let meta = obj.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(META_SERVER_INFO.into(), server_info());
    }
}

/// The revision's codes and statuses for an error a handler returned.
fn modern_error(id: &Value, err: RpcError) -> (u16, Value) {
    let err = match err.code {
        // "Resource not found" is -32602 in 2026-07-28.
        RESOURCE_NOT_FOUND => RpcError {
            code: INVALID_PARAMS,
            ..err
        },
        _ => err,
    };
    let status = match err.code {
        METHOD_NOT_FOUND => 404,
        HEADER_MISMATCH | MISSING_CAPABILITY | UNSUPPORTED_VERSION => 400,
        _ => 200,
    };
    (status, error_response(id, &err))
}

// ---------------------------------------------------------------------------
// input_required rounds
// ---------------------------------------------------------------------------

/// The questions of one modern request: answers known from the sealed state and the
/// retry's `inputResponses`, and what the handler asked that is not answered yet.
pub struct Rounds {
    answers: Map<String, Value>,
    answered: Cell<usize>,
    unnamed: Cell<usize>,
    asked: RefCell<Vec<(String, Value)>>,
    missing: RefCell<Vec<&'static str>>,
}

impl Rounds {
    fn for_request(method: &str, params: &Value) -> Result<Rounds, RpcError> {
        let mut answers = Map::new();
        if matches!(method, "tools/call" | "prompts/get" | "resources/read") {
            match params.get("requestState") {
                None | Some(Value::Null) => {}
                Some(Value::String(state)) => answers = unseal(state, method, params)?,
                Some(_) => return Err(RpcError::invalid_params("requestState must be a string")),
            }
            match params.get("inputResponses") {
                None | Some(Value::Null) => {}
                Some(Value::Object(given)) => answers.extend(given.clone()),
                Some(_) => {
                    return Err(RpcError::invalid_params("inputResponses must be an object"))
                }
            }
        }
        Ok(Rounds {
            answers,
            answered: Cell::new(0),
            unnamed: Cell::new(0),
            asked: RefCell::new(Vec::new()),
            missing: RefCell::new(Vec::new()),
        })
    }

    /// A question to the client: its answer if this round knows it; otherwise it is
    /// recorded for the input_required result (or, if the client cannot answer that
    /// kind, noted as a missing capability) and the handler sees it unanswered.
    pub fn question(
        &self,
        session: &Session,
        name: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let key = match name {
            Some(name) => name.to_string(),
            None => {
                // Replays ask in the same order, so the n-th unnamed question keeps its name.
                self.unnamed.set(self.unnamed.get() + 1);
                format!("input_{}", self.unnamed.get())
            }
        };
        // An answer of the wrong shape does not count: the question is asked again.
        if let Some(answer) = self.answers.get(&key).filter(|a| answers(method, a)) {
            self.answered.set(self.answered.get() + 1);
            return Ok(answer.clone());
        }
        let kind = match method {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            "roots/list" => "roots",
            _ => return Err(format!("{method} cannot be asked of a 2026-07-28 client")),
        };
        if !session.client_supports(kind) {
            self.missing.borrow_mut().push(kind);
            return Err(format!("the client did not declare the {kind} capability"));
        }
        let request = json!({ "method": method, "params": params });
        self.asked.borrow_mut().push((key, request));
        Err("waiting for the client's input".into())
    }

    /// The answer to the request: an input_required round while questions are open; the
    /// missing-capability error if the handler could do nothing without one; else its own.
    fn finish(
        self,
        id: &Value,
        method: &str,
        params: &Value,
        outcome: Result<Value, RpcError>,
    ) -> (u16, Value) {
        let asked = self.asked.into_inner();
        if !asked.is_empty() {
            let mut result = Map::new();
            result.insert("resultType".into(), json!("input_required"));
            result.insert(
                "inputRequests".into(),
                Value::Object(asked.into_iter().collect()),
            );
            let state = seal(method, params, &self.answers);
            result.insert("requestState".into(), Value::String(state));
            with_server_info(&mut result);
            return (200, response(id, Value::Object(result)));
        }
        let missing = self.missing.into_inner();
        if !missing.is_empty() && self.answered.get() == 0 {
            let required: Map<String, Value> =
                missing.iter().map(|k| (k.to_string(), json!({}))).collect();
            let err = RpcError {
                code: MISSING_CAPABILITY,
                message: format!("this request needs the client's {}", missing.join(", ")),
                data: Some(json!({ "requiredCapabilities": required })),
            };
            return (400, error_response(id, &err));
        }
        match outcome {
            Ok(result) => (200, response(id, complete(method, result))),
            Err(err) => modern_error(id, err),
        }
    }
}

/// Whether `answer` has the shape of a result of `method`.
fn answers(method: &str, answer: &Value) -> bool {
    match method {
        "elicitation/create" => answer.get("action").is_some_and(Value::is_string),
        "sampling/createMessage" => answer.get("content").is_some(),
        "roots/list" => answer.get("roots").is_some_and(Value::is_array),
        _ => false,
    }
}

fn state_key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // No system randomness: the process's hash seed still differs per run.
            use std::hash::{BuildHasher, Hasher};
            for (i, chunk) in bytes.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        hmac::Key::new(hmac::HMAC_SHA256, &bytes)
    })
}

/// What a `requestState` is bound to: the request's params without the round's own fields.
fn request_digest(method: &str, params: &Value) -> String {
    let mut bound = params.as_object().cloned().unwrap_or_default();
    for key in ["_meta", "inputResponses", "requestState"] {
        bound.remove(key);
    }
    let text = format!("{method}\n{}", Value::Object(bound));
    let d = digest::digest(&digest::SHA256, text.as_bytes());
    base64_encode(d.as_ref(), URL_SAFE)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `demo1.<payload>.<mac>`: the answers so far, the request they belong to and an
/// expiry, under an HMAC with this process's key. The client only carries it back.
fn seal(method: &str, params: &Value, answers: &Map<String, Value>) -> String {
    let payload = json!({
        "d": request_digest(method, params),
        "e": now_secs() + STATE_TTL_SECS,
        "a": answers,
    });
    let payload = base64_encode(payload.to_string().as_bytes(), URL_SAFE);
    let tag = hmac::sign(state_key(), payload.as_bytes());
    format!(
        "{STATE_PREFIX}{payload}.{}",
        base64_encode(tag.as_ref(), URL_SAFE)
    )
}

/// The answers a `requestState` carries, if it is one this process sealed, for this
/// request, and not expired. Anything else is attacker input: -32602.
fn unseal(state: &str, method: &str, params: &Value) -> Result<Map<String, Value>, RpcError> {
    let bad = |why: &str| RpcError::invalid_params(format!("requestState rejected: {why}"));
    let (payload, tag) = state
        .strip_prefix(STATE_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .ok_or_else(|| bad("not a state this server issued"))?;
    let tag = base64_decode(tag, URL_SAFE).ok_or_else(|| bad("malformed"))?;
    hmac::verify(state_key(), payload.as_bytes(), &tag).map_err(|_| bad("integrity check"))?;
    let payload = base64_decode(payload, URL_SAFE)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| bad("malformed"))?;
    if payload["d"].as_str() != Some(request_digest(method, params).as_str()) {
        return Err(bad("issued for another request"));
    }
    if payload["e"].as_u64().is_none_or(|e| e < now_secs()) {
        return Err(bad("expired"));
    }
    Ok(payload["a"].as_object().cloned().unwrap_or_default())
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding.
fn base64_encode(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Base64 with or without padding; None for anything else.
fn base64_decode(text: &str, alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = alphabet.iter().position(|a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// A header value as 2026-07-28 encodes non-ASCII text (`=?base64?...?=`), decoded.
fn decode_header_value(value: &str) -> String {
    value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
        // Whole, padded quanta only; anything else is taken literally (and so mismatches).
        .filter(|b64| b64.len() % 4 == 0 && b64.len() - b64.trim_end_matches('=').len() <= 2)
        .and_then(|b64| base64_decode(b64, STANDARD))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| value.to_string())
}

// ---------------------------------------------------------------------------
// subscriptions/listen
// ---------------------------------------------------------------------------

struct Listener {
    key: u64,
    /// The listen request's id, which tags every message of its stream.
    id: Value,
    tools: bool,
    prompts: bool,
    tx: mpsc::Sender<Value>,
}

static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());
static NEXT_LISTENER: AtomicU64 = AtomicU64::new(1);

fn listeners() -> std::sync::MutexGuard<'static, Vec<Listener>> {
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn tagged(id: &Value, mut params: Value) -> Value {
    if let Some(obj) = params.as_object_mut() {
        obj.insert("_meta".into(), json!({ META_SUBSCRIPTION: id }));
    }
    params
}

/// Registers a listen stream: its key, the acknowledgement to send first (with the part
/// of the filter this server honours) and where its notifications will arrive.
fn listen(id: &Value, params: &Value) -> Result<(u64, Value, mpsc::Receiver<Value>), RpcError> {
    let filter = match params.get("notifications") {
        Some(Value::Object(filter)) => filter,
        _ => {
            return Err(RpcError::invalid_params(
                "subscriptions/listen needs a \"notifications\" filter object",
            ))
        }
    };
    let wants = |key: &str| filter.get(key) == Some(&json!(true));
    let mut accepted = Map::new();
    for key in [
        "toolsListChanged",
        "promptsListChanged",
        "resourcesListChanged",
    ] {
        if wants(key) {
            accepted.insert(key.into(), json!(true));
        }
    }
    if let Some(Value::Array(uris)) = filter.get("resourceSubscriptions") {
        // The demo's resources never change, but known ones may be watched.
        let known: Vec<Value> = uris
            .iter()
            .filter(|u| u.as_str().is_some_and(|u| read_resource(u).is_some()))
            .cloned()
            .collect();
        accepted.insert("resourceSubscriptions".into(), Value::Array(known));
    }
    let (tx, rx) = mpsc::channel();
    let key = NEXT_LISTENER.fetch_add(1, Ordering::Relaxed);
    listeners().push(Listener {
        key,
        id: id.clone(),
        tools: wants("toolsListChanged"),
        prompts: wants("promptsListChanged"),
        tx,
    });
    let ack = notification(
        "notifications/subscriptions/acknowledged",
        tagged(id, json!({ "notifications": accepted })),
    );
    Ok((key, ack, rx))
}

fn unlisten(key: u64) {
    listeners().retain(|l| l.key != key);
}

/// `kind` ("tool" or "prompt") changed: every listen stream that asked is told.
pub fn broadcast_list_changed(kind: &str) {
    let method = format!("notifications/{kind}s/list_changed");
    listeners().retain(|l| {
        let wanted = if kind == "tool" { l.tools } else { l.prompts };
        !wanted
            || l.tx
                .send(notification(&method, tagged(&l.id, json!({}))))
                .is_ok()
    });
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/// The POST outlet of a modern request: a write that fails means the client closed the
/// reply stream, which in 2026-07-28 cancels the request.
struct Watched<'a> {
    inner: &'a SseOutlet<'a>,
    cancelled: &'a AtomicBool,
}

impl Outlet for Watched<'_> {
    fn send(&self, message: &Value) {
        self.inner.send(message);
        if self.inner.broken.get() {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }

    fn send_all(&self, messages: &[Value]) {
        self.inner.send_all(messages);
        if self.inner.broken.get() {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// Serves one modern POST (its Accept and Content-Type were checked already).
pub fn http_post(reply: Reply, request: &HttpRequest, message: Value) -> io::Result<bool> {
    let (id, method, params) = match classify(message) {
        Incoming::Request { id, method, params } => (id, method, params),
        // Notifications need no session; a cancellation is a closed stream here.
        Incoming::Notification { .. } | Incoming::Response { .. } => return reply.empty(202, &[]),
        Incoming::Invalid { id, reason } => {
            let err = RpcError::new(INVALID_REQUEST, reason);
            return reply.json(400, &error_response(&id, &err));
        }
    };
    let envelope = match envelope(&method, &params, Some(request)) {
        Ok(envelope) => envelope,
        Err((status, err)) => return reply.json(status, &error_response(&id, &err)),
    };
    if method == "subscriptions/listen" {
        return http_listen(reply, &id, &params);
    }
    let session = stateless_session(&envelope);
    let cancelled = Arc::new(AtomicBool::new(false));
    let outlet = SseOutlet {
        reply,
        session: &session,
        state: RefCell::new(SseState::Idle),
        broken: Cell::new(false),
    };
    let watched = Watched {
        inner: &outlet,
        cancelled: &cancelled,
    };
    let answer = serve(
        &session,
        &watched,
        Arc::clone(&cancelled),
        &id,
        &method,
        &params,
    );
    match answer {
        Some((status, answer)) => outlet.finish(status, Some(answer)),
        None => outlet.finish(200, None),
    }
}

/// A listen stream on the POST's reply: the acknowledgement, then the notifications it
/// asked for, with keep-alive comments between; it lasts until the client closes it.
fn http_listen(reply: Reply, id: &Value, params: &Value) -> io::Result<bool> {
    let (key, ack, rx) = match listen(id, params) {
        Ok(listening) => listening,
        Err(err) => return reply.json(400, &error_response(id, &err)),
    };
    let sent = (|| {
        reply.start_sse()?;
        write_chunk(reply.stream, &format!("event: message\ndata: {ack}\n\n"))?;
        loop {
            match rx.recv_timeout(SSE_KEEPALIVE) {
                Ok(message) => write_chunk(
                    reply.stream,
                    &format!("event: message\ndata: {message}\n\n"),
                )?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    write_chunk(reply.stream, ": keep-alive\n\n")?
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })();
    unlisten(key);
    sent.map(|()| false)
}

/// Serves one modern stdio message; requests that may wait run on a thread of their own.
/// Their cancellation flags live in the process's session, where `notifications/cancelled`
/// finds them.
pub fn stdio_request(main: &Arc<Session>, message: Value) -> Option<thread::JoinHandle<()>> {
    let (id, method, params) = match classify(message) {
        Incoming::Request { id, method, params } => (id, method, params),
        Incoming::Notification { method, params } => {
            main.on_notification(&method, &params);
            return None;
        }
        Incoming::Response { .. } => return None,
        Incoming::Invalid { id, reason } => {
            StdoutOutlet.send(&error_response(
                &id,
                &RpcError::new(INVALID_REQUEST, reason),
            ));
            return None;
        }
    };
    let envelope = match envelope(&method, &params, None) {
        Ok(envelope) => envelope,
        Err((_, err)) => {
            StdoutOutlet.send(&error_response(&id, &err));
            return None;
        }
    };
    let cancelled = main.begin_request(&id);
    let waits = matches!(
        method.as_str(),
        "tools/call" | "prompts/get" | "subscriptions/listen"
    ) && !super::is_instant_tool(&params);
    let run = {
        let main = Arc::clone(main);
        move || {
            if method == "subscriptions/listen" {
                stdio_listen(&id, &params, &cancelled);
            } else {
                let session = stateless_session(&envelope);
                let answer = serve(&session, &StdoutOutlet, cancelled, &id, &method, &params);
                if let Some((_, answer)) = answer {
                    StdoutOutlet.send(&answer);
                }
            }
            main.end_request(&id);
        }
    };
    if !waits {
        run();
        return None;
    }
    match thread::Builder::new().name("modern-call".into()).spawn(run) {
        Ok(worker) => Some(worker),
        Err(e) => {
            eprintln!("mcplex-demo: cannot start a worker: {e}");
            None
        }
    }
}

/// A listen stream on stdout, until `notifications/cancelled` names it.
fn stdio_listen(id: &Value, params: &Value, cancelled: &AtomicBool) {
    let (key, ack, rx) = match listen(id, params) {
        Ok(listening) => listening,
        Err(err) => return StdoutOutlet.send(&error_response(id, &err)),
    };
    StdoutOutlet.send(&ack);
    let poll = POLL_INTERVAL * 10;
    while !cancelled.load(Ordering::SeqCst) {
        match rx.recv_timeout(poll) {
            Ok(message) => StdoutOutlet.send(&message),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    unlisten(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in ["", "a", "ab", "abc", "abcd", "héllo wörld"] {
            let enc = base64_encode(text.as_bytes(), STANDARD);
            assert_eq!(
                base64_decode(&enc, STANDARD).as_deref(),
                Some(text.as_bytes())
            );
        }
        assert_eq!(base64_encode(b"hello", STANDARD), "aGVsbG8");
        assert_eq!(decode_header_value("=?base64?aGVsbG8=?="), "hello");
        assert_eq!(decode_header_value("=?base64?!!?="), "=?base64?!!?=");
    }

    #[test]
    fn request_state_is_bound_and_sealed() {
        let params = json!({ "name": "t", "arguments": {} });
        let mut answers = Map::new();
        answers.insert("k".into(), json!({ "action": "accept" }));
        let state = seal("tools/call", &params, &answers);
        let back = unseal(&state, "tools/call", &params).expect("own state verifies");
        assert_eq!(back, answers);
        let other = json!({ "name": "u", "arguments": {} });
        assert!(unseal(&state, "tools/call", &other).is_err());
        assert!(unseal(&format!("{state}x"), "tools/call", &params).is_err());
        assert!(unseal("garbage", "tools/call", &params).is_err());
    }

    #[test]
    fn era_of_a_message() {
        let env = json!({ META_VERSION: MODERN_VERSION, META_CAPABILITIES: {} });
        let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "_meta": env } });
        assert!(is_modern(None, &call));
        let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": "2025-11-25", "_meta": env } });
        assert!(!is_modern(None, &init));
        let bare = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });
        assert!(!is_modern(None, &bare));
        assert!(is_modern(Some(MODERN_VERSION), &bare));
    }
}
