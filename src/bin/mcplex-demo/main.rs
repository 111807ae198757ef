//! `mcplex-demo`: a small, self-contained MCP server that serves as the demo
//! upstream for the mcplex gateway and as a fixture for its tests.
//!
//! Two transports share one MCP core:
//! * stdio (default): newline-delimited JSON-RPC 2.0 on stdin/stdout, logs on stderr;
//! * `--http`: MCP "streamable HTTP" on `/mcp`, one thread per connection.
//!
//! Besides a few human-friendly tools (`echo`, `add`, `slow`, `fail`) it carries
//! every fixture the official MCP conformance suite's server scenarios ask for
//! (`test_*` tools, `test://` resources and `test_*` prompts).
//!
//! Unlike the gateway this binary may use threads freely: requests run
//! concurrently so that a slow tool never blocks the rest of a session.

#![forbid(unsafe_code)]

mod modern;

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

const SERVER_NAME: &str = "mcplex-demo";
const SUPPORTED_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const LATEST_VERSION: &str = "2025-11-25";
/// First protocol version whose clients understand SSE priming events.
const PRIMING_VERSION: &str = "2025-11-25";
/// Log levels in increasing severity (RFC 5424 names, as MCP uses them).
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];
const DEFAULT_LOG_LEVEL: usize = 1; // info

/// A 1x1 red pixel PNG.
const RED_PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// Eight samples of silence, 8 kHz mono 16-bit PCM WAV.
const SILENT_WAV: &str =
    "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";

const README_TEXT: &str = "# mcplex-demo\n\n\
    The demo upstream MCP server shipped with mcplex.\n\n\
    Tools: echo, add, slow (progress + cancellation), fail, plus the test_* fixtures \
    of the MCP conformance suite.\n\
    Resources: demo://readme, demo://notes/{name}, test://... fixtures.\n\
    Prompts: greet, plus the test_* fixtures.\n";

/// How long a tool waits for the client to answer a sampling/elicitation request.
const CLIENT_REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Granularity at which waiting handlers notice cancellation.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Idle keep-alive connections are dropped after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Reconnection delay advertised to clients in SSE priming events.
const SSE_RETRY_MS: u64 = 500;
/// Interval of SSE comments on a resumed stream, so a vanished client is noticed.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Unclaimed finished SSE streams are forgotten after this long.
const STREAM_LOG_TTL: Duration = Duration::from_secs(300);

const USAGE: &str = "usage: mcplex-demo [stdio] [LIST OPTIONS]\n       \
    mcplex-demo --http [--host HOST] [--port PORT] [LIST OPTIONS]\n\n\
    stdio (default)    MCP over stdin/stdout, one JSON-RPC message per line\n\
    --http             MCP streamable HTTP on http://HOST:PORT/mcp\n\
    --host HOST        address to bind (default 127.0.0.1)\n\
    --port PORT        port to bind (default 3001; 0 picks a free port)\n\
    --no-streams       refuse GET streams (405) and close every connection after its\n\
                       response, so that no connection outlives a request\n\
    --dual-era         also serve MCP 2026-07-28 (stateless) requests, on both transports\n\n\
    list options (for testing clients and gateways that page through lists):\n\
    --page-size N      answer every */list N items at a time, with nextCursor\n\
    --extra-tools N    also offer tools extra_1 .. extra_N (each returns its own name)\n";

/// Options that shape the lists the demo offers.
#[derive(Debug, Default, Clone, Copy)]
struct ListOptions {
    page_size: Option<usize>,
    extra_tools: usize,
}

static LIST_OPTIONS: std::sync::OnceLock<ListOptions> = std::sync::OnceLock::new();
/// `--dual-era`: requests of the 2026-07-28 revision are served too (see `modern`).
static DUAL_ERA: AtomicBool = AtomicBool::new(false);

fn dual_era() -> bool {
    DUAL_ERA.load(Ordering::Relaxed)
}

fn list_options() -> ListOptions {
    LIST_OPTIONS.get().copied().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

enum Mode {
    Stdio,
    Http {
        host: String,
        port: u16,
        no_streams: bool,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match parse_args(&args) {
        Ok(Mode::Stdio) => run_stdio(),
        Ok(Mode::Http {
            host,
            port,
            no_streams,
        }) => run_http(&host, port, no_streams),
        Err(msg) => {
            eprintln!("mcplex-demo: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut stdio = false;
    let mut http = false;
    let mut host = None;
    let mut port = None;
    let mut no_streams = false;
    let mut lists = ListOptions::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        // Accept both `--port 3001` and `--port=3001`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| match inline.clone() {
            Some(v) => Ok(v),
            None => rest.next().cloned().ok_or(format!("{name} needs a value")),
        };
        match flag {
            "stdio" | "--stdio" => stdio = true,
            "--http" => http = true,
            "--no-streams" => no_streams = true,
            "--dual-era" => DUAL_ERA.store(true, Ordering::Relaxed),
            "--host" => host = Some(value("--host")?),
            "--port" => {
                let v = value("--port")?;
                port = Some(v.parse::<u16>().map_err(|_| format!("invalid port: {v}"))?);
            }
            "--page-size" => {
                let v = value("--page-size")?;
                let n = v.parse::<usize>().ok().filter(|n| *n > 0);
                lists.page_size = Some(n.ok_or(format!("invalid page size: {v}"))?);
            }
            "--extra-tools" => {
                let v = value("--extra-tools")?;
                lists.extra_tools = v.parse().map_err(|_| format!("invalid count: {v}"))?;
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    let _ = LIST_OPTIONS.set(lists);
    match (stdio, http) {
        (true, true) => Err("choose either stdio or --http".into()),
        (_, false) if host.is_some() || port.is_some() || no_streams => {
            Err("--host, --port and --no-streams only apply with --http".into())
        }
        (_, false) => Ok(Mode::Stdio),
        (false, true) => Ok(Mode::Http {
            host: host.unwrap_or_else(|| "127.0.0.1".into()),
            port: port.unwrap_or(3001),
            no_streams,
        }),
    }
}

// ---------------------------------------------------------------------------
// JSON-RPC
// ---------------------------------------------------------------------------

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
const RESOURCE_NOT_FOUND: i64 = -32002;
const REQUEST_CANCELLED: i64 = -32800;

#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    fn cancelled() -> Self {
        Self::new(REQUEST_CANCELLED, "request cancelled")
    }
}

fn response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn error_response(id: &Value, err: &RpcError) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": match &err.data {
            Some(data) => json!({ "code": err.code, "message": err.message, "data": data }),
            None => json!({ "code": err.code, "message": err.message }),
        },
    })
}

fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// One decoded JSON-RPC message, as seen by the server.
enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// The client's answer to a request this server sent (sampling, elicitation).
    Response {
        id: Value,
        message: Value,
    },
    Invalid {
        id: Value,
        reason: &'static str,
    },
}

fn classify(message: Value) -> Incoming {
    let Value::Object(obj) = message else {
        return Incoming::Invalid {
            id: Value::Null,
            reason: "a JSON-RPC message must be an object (batches are not supported)",
        };
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Incoming::Invalid {
            id: id.unwrap_or(Value::Null),
            reason: "\"jsonrpc\" must be \"2.0\"",
        };
    }
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    match (obj.get("method"), id) {
        (Some(Value::String(method)), Some(id)) if id.is_string() || id.is_number() => {
            Incoming::Request {
                id,
                method: method.clone(),
                params,
            }
        }
        (Some(Value::String(_)), Some(_)) => Incoming::Invalid {
            id: Value::Null,
            reason: "\"id\" must be a string or a number",
        },
        (Some(Value::String(method)), None) => Incoming::Notification {
            method: method.clone(),
            params,
        },
        (Some(_), id) => Incoming::Invalid {
            id: id.unwrap_or(Value::Null),
            reason: "\"method\" must be a string",
        },
        (None, Some(id)) if obj.contains_key("result") || obj.contains_key("error") => {
            Incoming::Response {
                id,
                message: Value::Object(obj),
            }
        }
        (None, id) => Incoming::Invalid {
            id: id.unwrap_or(Value::Null),
            reason: "not a JSON-RPC request, notification or response",
        },
    }
}

/// Key under which a JSON-RPC id is tracked; keeps `1` and `"1"` apart.
fn id_key(id: &Value) -> String {
    id.to_string()
}

// ---------------------------------------------------------------------------
// Sessions and request contexts (shared by both transports)
// ---------------------------------------------------------------------------

/// Per-client state. stdio has exactly one; HTTP has one per `Mcp-Session-Id`.
struct Session {
    state: Mutex<SessionState>,
    next_outgoing_id: AtomicU64,
    closed: AtomicBool,
}

struct SessionState {
    protocol_version: String,
    client_capabilities: Value,
    log_level: usize,
    subscriptions: HashSet<String>,
    /// Cancellation flags of requests being handled, by id key.
    in_flight: HashMap<String, Arc<AtomicBool>>,
    /// Server→client requests waiting for the client's answer, by id key.
    pending: HashMap<String, mpsc::Sender<Value>>,
    /// HTTP only: SSE streams that a client may still resume, by stream id.
    streams: HashMap<u64, Arc<StreamLog>>,
    next_stream_id: u64,
    /// A 2026-07-28 request's own session: no resumable streams, nothing outlives the request.
    stateless: bool,
}

impl Session {
    fn new() -> Self {
        Session {
            state: Mutex::new(SessionState {
                protocol_version: LATEST_VERSION.to_string(),
                client_capabilities: json!({}),
                log_level: DEFAULT_LOG_LEVEL,
                subscriptions: HashSet::new(),
                in_flight: HashMap::new(),
                pending: HashMap::new(),
                streams: HashMap::new(),
                next_stream_id: 0,
                stateless: false,
            }),
            next_outgoing_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panicking handler must not take the whole session down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin_request(&self, id: &Value) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.lock().in_flight.insert(id_key(id), Arc::clone(&flag));
        flag
    }

    fn end_request(&self, id: &Value) {
        self.lock().in_flight.remove(&id_key(id));
    }

    fn on_notification(&self, method: &str, params: &Value) {
        // With MCPLEX_DEMO_TRACE set, say which notifications arrive (tests watch for them).
        if std::env::var_os("MCPLEX_DEMO_TRACE").is_some() {
            eprintln!("mcplex-demo: got {method} {params}");
        }
        // `notifications/initialized` and anything unknown need no action.
        if method == "notifications/cancelled" {
            if let Some(id) = params.get("requestId") {
                if let Some(flag) = self.lock().in_flight.get(&id_key(id)) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    fn on_response(&self, id: &Value, message: Value) {
        match self.lock().pending.remove(&id_key(id)) {
            Some(waiter) => {
                let _ = waiter.send(message);
            }
            None => eprintln!("mcplex-demo: ignoring response to unknown request {id}"),
        }
    }

    /// Ends the session: waiting server→client requests fail at once, and with
    /// `cancel_running` the handlers still running are asked to stop as well.
    fn close(&self, cancel_running: bool) {
        self.closed.store(true, Ordering::SeqCst);
        let mut state = self.lock();
        state.pending.clear();
        if cancel_running {
            for flag in state.in_flight.values() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    fn client_supports(&self, capability: &str) -> bool {
        self.lock().client_capabilities.get(capability).is_some()
    }

    /// Whether SSE streams of this session start with a priming event, which
    /// is what lets a client resume a stream the server closed early.
    fn resumable(&self) -> bool {
        let state = self.lock();
        !state.stateless && state.protocol_version.as_str() >= PRIMING_VERSION
    }

    fn open_stream(&self) -> Arc<StreamLog> {
        let mut state = self.lock();
        state.streams.retain(|_, log| !log.expired());
        state.next_stream_id += 1;
        let log = Arc::new(StreamLog::new(state.next_stream_id));
        state.streams.insert(log.id, Arc::clone(&log));
        log
    }

    fn stream(&self, id: u64) -> Option<Arc<StreamLog>> {
        self.lock().streams.get(&id).cloned()
    }

    fn forget_stream(&self, id: u64) {
        self.lock().streams.remove(&id);
    }
}

/// Where a handler's notifications and server→client requests go: a stdout
/// line in stdio mode, the request's SSE stream in HTTP mode.
trait Outlet {
    fn send(&self, message: &Value);

    /// Several messages at once (stdio: in one write, so the reader sees them together).
    fn send_all(&self, messages: &[Value]) {
        for m in messages {
            self.send(m);
        }
    }

    /// HTTP only: end the request's SSE stream before the response is ready,
    /// so the client has to resume it with `Last-Event-ID` (SEP-1699 polling).
    fn close_stream(&self) {}
}

/// Everything a method handler needs to know about the request it serves.
struct Ctx<'a> {
    session: &'a Session,
    outlet: &'a dyn Outlet,
    cancelled: Arc<AtomicBool>,
    progress_token: Option<Value>,
    /// A 2026-07-28 request: questions to the client become an input_required round.
    rounds: Option<&'a modern::Rounds>,
}

impl Ctx<'_> {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn notify(&self, method: &str, params: Value) {
        self.outlet.send(&notification(method, params));
    }

    /// Sends `notifications/message` if `level` passes the client's filter.
    fn log(&self, level: &str, message: &str) {
        let wanted = LOG_LEVELS.iter().position(|l| *l == level).unwrap_or(0);
        if wanted >= self.session.lock().log_level {
            self.notify(
                "notifications/message",
                json!({ "level": level, "logger": SERVER_NAME, "data": message }),
            );
        }
    }

    /// Sends `notifications/progress`, but only if the client asked for it.
    fn progress(&self, progress: u64, total: u64, message: &str) {
        if let Some(token) = &self.progress_token {
            self.notify(
                "notifications/progress",
                json!({
                    "progressToken": token,
                    "progress": progress,
                    "total": total,
                    "message": message,
                }),
            );
        }
    }

    /// Sleeps in small slices; returns false as soon as the request is cancelled.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            if self.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Sends a request to the client and waits for its answer.
    fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        if let Some(rounds) = self.rounds {
            return rounds.question(self.session, None, method, params);
        }
        let asked = self.ask(None, method, params);
        self.wait(asked, method)
    }

    /// As `request`, with the request id `name` (unless a request by that name is already
    /// waiting): a gateway in front of a stateless client names the question after it.
    fn request_as(&self, name: &str, method: &str, params: Value) -> Result<Value, String> {
        if let Some(rounds) = self.rounds {
            return rounds.question(self.session, Some(name), method, params);
        }
        let asked = self.ask(Some(name), method, params);
        self.wait(asked, method)
    }

    /// Sends several named requests to the client at once, then waits for every answer.
    fn request_all(&self, requests: Vec<(&str, &str, Value)>) -> Vec<Result<Value, String>> {
        if let Some(rounds) = self.rounds {
            return requests
                .into_iter()
                .map(|(name, method, params)| {
                    rounds.question(self.session, Some(name), method, params)
                })
                .collect();
        }
        let mut messages = Vec::new();
        let asked: Vec<_> = requests
            .into_iter()
            .map(|(name, method, params)| {
                let (msg, asked) = self.prepare(Some(name), method, params);
                messages.push(msg);
                (method, asked)
            })
            .collect();
        self.outlet.send_all(&messages);
        asked
            .into_iter()
            .map(|(method, a)| self.wait(a, method))
            .collect()
    }

    /// Sends a request to the client: its id and where its answer will arrive.
    fn ask(
        &self,
        name: Option<&str>,
        method: &str,
        params: Value,
    ) -> (Value, mpsc::Receiver<Value>) {
        let (msg, asked) = self.prepare(name, method, params);
        self.outlet.send(&msg);
        asked
    }

    /// A request to the client, registered as waiting for its answer but not sent yet.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        name: Option<&str>,
        method: &str,
        params: Value,
    ) -> (Value, (Value, mpsc::Receiver<Value>)) {
        let (tx, rx) = mpsc::channel();
        let mut inner = self.session.lock();
        let id = match name.map(|n| Value::String(n.to_string())) {
            Some(named) if !inner.pending.contains_key(&id_key(&named)) => named,
            _ => {
                let n = self.session.next_outgoing_id.fetch_add(1, Ordering::SeqCst);
                Value::String(format!("{SERVER_NAME}-{n}"))
            }
        };
        inner.pending.insert(id_key(&id), tx);
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        (msg, (id, rx))
    }

    /// Waits for the answer to a request `ask` sent.
    fn wait(&self, asked: (Value, mpsc::Receiver<Value>), method: &str) -> Result<Value, String> {
        let (id, rx) = asked;
        let deadline = Instant::now() + CLIENT_REPLY_TIMEOUT;
        let outcome = loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(answer) => break Ok(answer),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err("the client went away".to_string())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.is_cancelled() {
                        break Err("request cancelled".to_string());
                    }
                    if self.session.closed.load(Ordering::SeqCst) {
                        break Err("the session was closed".to_string());
                    }
                    if Instant::now() >= deadline {
                        break Err(format!("no answer to {method} in time"));
                    }
                }
            }
        };
        self.session.lock().pending.remove(&id_key(&id));
        let answer = outcome?;
        if let Some(err) = answer.get("error") {
            let message = err.get("message").and_then(Value::as_str).unwrap_or("");
            return Err(format!("client answered with an error: {message}"));
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }
}

/// Runs one request and builds its response; `None` means the request was
/// cancelled, in which case no response must be sent at all.
fn respond(ctx: &Ctx, id: &Value, method: &str, params: &Value) -> Option<Value> {
    let outcome = dispatch(ctx, method, params);
    if ctx.is_cancelled() {
        return None;
    }
    Some(match outcome {
        Ok(result) => response(id, result),
        Err(err) => error_response(id, &err),
    })
}

fn progress_token(params: &Value) -> Option<Value> {
    params
        .get("_meta")
        .and_then(|meta| meta.get("progressToken"))
        .filter(|token| token.is_string() || token.is_number())
        .cloned()
}

// ---------------------------------------------------------------------------
// MCP methods
// ---------------------------------------------------------------------------

fn dispatch(ctx: &Ctx, method: &str, params: &Value) -> Result<Value, RpcError> {
    if !(params.is_object() || params.is_null()) {
        return Err(RpcError::invalid_params("params must be an object"));
    }
    match method {
        "initialize" => Ok(initialize(ctx.session, params)),
        "ping" => Ok(json!({})),
        "tools/list" => page(tool_catalog(), "tools", params),
        "tools/call" => call_tool(ctx, params),
        "resources/list" => page(resource_catalog(), "resources", params),
        "resources/templates/list" => page(template_catalog(), "resourceTemplates", params),
        "resources/read" => {
            let uri = required_str(params, "uri")?;
            match read_resource(uri) {
                Some(contents) => Ok(json!({ "contents": [contents] })),
                None => Err(RpcError {
                    data: Some(json!({ "uri": uri })),
                    ..RpcError::new(RESOURCE_NOT_FOUND, format!("Resource not found: {uri}"))
                }),
            }
        }
        "resources/subscribe" => {
            let uri = required_str(params, "uri")?;
            if read_resource(uri).is_none() {
                return Err(RpcError::new(
                    RESOURCE_NOT_FOUND,
                    format!("Resource not found: {uri}"),
                ));
            }
            ctx.session.lock().subscriptions.insert(uri.to_string());
            Ok(json!({}))
        }
        "resources/unsubscribe" => {
            let uri = required_str(params, "uri")?;
            ctx.session.lock().subscriptions.remove(uri);
            Ok(json!({}))
        }
        "prompts/list" => page(prompt_catalog(), "prompts", params),
        "prompts/get" if params.get("name") == Some(&json!(INPUT_PROMPT)) => input_prompt(ctx),
        "prompts/get" => get_prompt(params),
        "completion/complete" => complete(params),
        "logging/setLevel" => {
            let level = required_str(params, "level")?;
            let index = LOG_LEVELS
                .iter()
                .position(|l| *l == level)
                .ok_or_else(|| RpcError::invalid_params(format!("unknown log level: {level}")))?;
            ctx.session.lock().log_level = index;
            Ok(json!({}))
        }
        _ => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}

fn initialize(session: &Session, params: &Value) -> Value {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let version = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST_VERSION);
    {
        let mut state = session.lock();
        state.protocol_version = version.to_string();
        state.client_capabilities = params.get("capabilities").cloned().unwrap_or(json!({}));
    }
    json!({
        "protocolVersion": version,
        "capabilities": server_capabilities(),
        "serverInfo": server_info(),
        "instructions": INSTRUCTIONS,
    })
}

const INSTRUCTIONS: &str = "Demo server for mcplex: try the echo, add, slow and fail tools.";

fn server_capabilities() -> Value {
    json!({
        "tools": { "listChanged": true },
        "resources": { "subscribe": true, "listChanged": true },
        "prompts": { "listChanged": true },
        "logging": {},
        "completions": {},
    })
}

fn server_info() -> Value {
    json!({
        "name": SERVER_NAME,
        "title": "mcplex demo server",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn required_str<'a>(params: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("missing string argument \"{key}\"")))
}

fn required_number<'a>(params: &'a Value, key: &str) -> Result<&'a serde_json::Number, RpcError> {
    match params.get(key) {
        Some(Value::Number(n)) => Ok(n),
        _ => Err(RpcError::invalid_params(format!(
            "missing number argument \"{key}\""
        ))),
    }
}

fn optional_u64(params: &Value, key: &str, default: u64, max: u64) -> Result<u64, RpcError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
            RpcError::invalid_params(format!("\"{key}\" must be an integer from 0 to {max}"))
        }),
    }
}

// --- tools -----------------------------------------------------------------

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({ "name": name, "description": description, "inputSchema": input_schema })
}

fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn string_argument(name: &str, description: &str) -> Value {
    json!({
        "type": "object",
        "properties": { name: { "type": "string", "description": description } },
        "required": [name],
    })
}

fn tool_catalog() -> Vec<Value> {
    let mut tools = vec![
        tool(
            "echo",
            "Echoes the given message back as text",
            string_argument("message", "Text to echo"),
        ),
        tool(
            "echo_region",
            "Echoes the region; a 2026-07-28 client sends it as the Mcp-Param-Region header too",
            json!({
                "type": "object",
                "properties": {
                    "region": { "type": "string", "x-mcp-header": "Region" },
                },
                "required": ["region"],
            }),
        ),
        tool(
            "add",
            "Adds two numbers",
            json!({
                "type": "object",
                "properties": {
                    "a": { "type": "number", "description": "First addend" },
                    "b": { "type": "number", "description": "Second addend" },
                },
                "required": ["a", "b"],
            }),
        ),
        tool(
            "slow",
            "Works for `steps` x `delayMs` milliseconds, reporting progress after each \
             step; can be cancelled",
            json!({
                "type": "object",
                "properties": {
                    "steps": { "type": "integer", "minimum": 0, "default": 5 },
                    "delayMs": { "type": "integer", "minimum": 0, "default": 100 },
                },
            }),
        ),
        tool(
            "fail",
            "Always returns a tool error (isError: true)",
            no_arguments(),
        ),
        tool(
            "test_simple_text",
            "Returns a simple text response",
            no_arguments(),
        ),
        tool(
            "test_image_content",
            "Returns a 1x1 PNG image",
            no_arguments(),
        ),
        tool(
            "test_audio_content",
            "Returns a short WAV clip",
            no_arguments(),
        ),
        tool(
            "test_embedded_resource",
            "Returns an embedded text resource",
            no_arguments(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and resource content together",
            no_arguments(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three log messages while it runs",
            no_arguments(),
        ),
        tool(
            "test_tool_with_progress",
            "Reports progress 0, 50 and 100 of 100",
            no_arguments(),
        ),
        tool(
            "test_error_handling",
            "Always returns a tool error",
            no_arguments(),
        ),
        tool(
            "test_sampling",
            "Asks the client's LLM to complete a prompt (sampling/createMessage)",
            string_argument("prompt", "The prompt to send to the LLM"),
        ),
        tool(
            "test_input_required_result_sampling",
            "Asks the client's LLM for the capital of France",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_elicitation",
            "Asks the user for a name",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_list_roots",
            "Asks the client for its roots",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_request_state",
            "Asks the user to confirm; says state-ok when the answer came back",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_multiple_inputs",
            "Asks for a name, a greeting and the roots at once",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_multi_round",
            "Asks for a name, then for a favourite colour",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_tampered_state",
            "Asks the user to confirm",
            no_arguments(),
        ),
        tool(
            "test_input_required_result_capabilities",
            "Asks for a completion and for a name at once, each only if the client can answer",
            no_arguments(),
        ),
        tool(
            "test_missing_capability",
            "Asks the client's LLM a question: needs the sampling capability",
            no_arguments(),
        ),
        tool(
            "test_streaming_elicitation",
            "Asks the user for a name while the call streams",
            no_arguments(),
        ),
        tool(
            "test_trigger_tool_change",
            "Tells the client that the tool list changed (notifications/tools/list_changed)",
            no_arguments(),
        ),
        tool(
            "test_trigger_prompt_change",
            "Tells the client that the prompt list changed (notifications/prompts/list_changed)",
            no_arguments(),
        ),
        tool(
            "test_logging_tool",
            "Sends log messages while it runs (seen only at a requested log level)",
            no_arguments(),
        ),
        tool(
            "test_elicitation",
            "Asks the user for a username and an email (elicitation/create)",
            string_argument("message", "The message to show the user"),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation whose fields all carry default values (SEP-1034)",
            no_arguments(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation with every enum schema variant (SEP-1330)",
            no_arguments(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "$anchor": "addressDef",
                        "type": "object",
                        "properties": {
                            "street": { "type": "string" },
                            "city": { "type": "string" },
                        },
                    },
                },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" },
                    "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                    "phone": { "type": "string" },
                    "email": { "type": "string" },
                },
                // One way to reach the person is required; the chosen method must be given.
                "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
                "if": {
                    "properties": { "contactMethod": { "const": "phone" } },
                    "required": ["contactMethod"],
                },
                "then": { "required": ["phone"] },
                "else": { "required": ["email"] },
                "additionalProperties": false,
            }),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream before answering, so the client must resume it (HTTP)",
            no_arguments(),
        ),
    ];
    tools.extend((1..=list_options().extra_tools).map(|n| {
        tool(
            &format!("extra_{n}"),
            "Returns its own name (from --extra-tools)",
            no_arguments(),
        )
    }));
    tools
}

fn text_content(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

fn tool_result(content: Vec<Value>) -> Value {
    json!({ "content": content })
}

fn tool_text(text: &str) -> Value {
    tool_result(vec![text_content(text)])
}

fn tool_error(text: &str) -> Value {
    json!({ "content": [text_content(text)], "isError": true })
}

fn call_tool(ctx: &Ctx, params: &Value) -> Result<Value, RpcError> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("tools/call needs a string \"name\""))?;
    let no_args = Value::Object(Map::new());
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &no_args,
        Some(args @ Value::Object(_)) => args,
        Some(_) => return Err(RpcError::invalid_params("\"arguments\" must be an object")),
    };
    // Arguments a tool cannot use are the tool's error (isError), which the model can read
    // and correct; only an unknown tool is a protocol error.
    match run_tool(ctx, name, args) {
        Err(err) if err.code == INVALID_PARAMS && err.data.is_none() => {
            Ok(tool_error(&err.message))
        }
        outcome => outcome,
    }
}

fn unknown_tool(name: &str) -> RpcError {
    RpcError {
        data: Some(json!({ "name": name })),
        ..RpcError::invalid_params(format!("Unknown tool: {name}"))
    }
}

fn run_tool(ctx: &Ctx, name: &str, args: &Value) -> Result<Value, RpcError> {
    match name {
        "echo" => Ok(tool_text(required_str(args, "message")?)),
        "echo_region" => Ok(tool_text(&format!(
            "region: {}",
            required_str(args, "region")?
        ))),
        "add" => add_tool(args),
        "slow" => slow_tool(ctx, args),
        "fail" => Ok(tool_error("the fail tool always fails")),
        "test_simple_text" => Ok(tool_text("This is a simple text response for testing.")),
        "test_image_content" => Ok(tool_result(vec![image_content()])),
        "test_audio_content" => Ok(tool_result(vec![
            json!({ "type": "audio", "data": SILENT_WAV, "mimeType": "audio/wav" }),
        ])),
        "test_embedded_resource" => Ok(tool_result(vec![embedded_text(
            "test://embedded-resource",
            "text/plain",
            "This is an embedded resource content.",
        )])),
        "test_multiple_content_types" => Ok(tool_result(vec![
            text_content("Multiple content types test:"),
            image_content(),
            embedded_text(
                "test://mixed-content-resource",
                "application/json",
                &json!({ "test": "data", "value": 123 }).to_string(),
            ),
        ])),
        "test_tool_with_logging" | "test_logging_tool" => logging_tool(ctx),
        "test_trigger_tool_change" | "test_trigger_prompt_change" => {
            let kind = name
                .trim_start_matches("test_trigger_")
                .trim_end_matches("_change");
            if ctx.rounds.is_some() {
                // 2026-07-28: list changes reach the client's subscriptions/listen streams.
                modern::broadcast_list_changed(kind);
            } else {
                ctx.notify(&format!("notifications/{kind}s/list_changed"), json!({}));
            }
            Ok(tool_text(&format!("the {kind} list changed")))
        }
        "test_missing_capability" | "test_streaming_elicitation" => input_fixture(ctx, name),
        "test_tool_with_progress" => progress_tool(ctx),
        "test_error_handling" => Ok(tool_error(
            "This tool intentionally returns an error for testing",
        )),
        "test_sampling" => sampling_tool(ctx, args),
        n if n.starts_with("test_input_required_result_") => input_fixture(ctx, n),
        "test_elicitation" => {
            let message = required_str(args, "message")?;
            let schema = json!({
                "type": "object",
                "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" },
                },
                "required": ["username", "email"],
            });
            elicit(ctx, message, schema, "User response")
        }
        "test_elicitation_sep1034_defaults" => elicit(
            ctx,
            "Please review these values; every field has a default",
            sep1034_schema(),
            "Elicitation completed",
        ),
        "test_elicitation_sep1330_enums" => elicit(
            ctx,
            "Please pick some options",
            sep1330_schema(),
            "Elicitation completed",
        ),
        "json_schema_2020_12_tool" => Ok(tool_text(&format!(
            "Received arguments: {}",
            Value::Object(args.as_object().cloned().unwrap_or_default())
        ))),
        "test_reconnection" => {
            ctx.outlet.close_stream();
            Ok(tool_text("Reconnection test completed successfully"))
        }
        _ => match extra_tool_number(name) {
            Some(_) => Ok(tool_text(name)),
            None => Err(unknown_tool(name)),
        },
    }
}

/// `extra_7` -> 7, when `--extra-tools` offers it.
fn extra_tool_number(name: &str) -> Option<usize> {
    let n: usize = name.strip_prefix("extra_")?.parse().ok()?;
    (1..=list_options().extra_tools).contains(&n).then_some(n)
}

/// One page of a list: with `--page-size`, the cursor is the offset of the page's first item.
fn page(items: Vec<Value>, key: &str, params: &Value) -> Result<Value, RpcError> {
    let start = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => c
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= items.len())
            .ok_or_else(|| RpcError::invalid_params(format!("invalid cursor: {c}")))?,
        Some(_) => return Err(RpcError::invalid_params("cursor must be a string")),
    };
    let end = list_options().page_size.map_or(items.len(), |size| {
        start.saturating_add(size).min(items.len())
    });
    let mut out = Map::new();
    out.insert(key.to_string(), Value::Array(items[start..end].to_vec()));
    if end < items.len() {
        out.insert("nextCursor".into(), Value::String(end.to_string()));
    }
    Ok(Value::Object(out))
}

fn image_content() -> Value {
    json!({ "type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png" })
}

fn embedded_text(uri: &str, mime_type: &str, text: &str) -> Value {
    json!({
        "type": "resource",
        "resource": { "uri": uri, "mimeType": mime_type, "text": text },
    })
}

fn add_tool(args: &Value) -> Result<Value, RpcError> {
    let a = required_number(args, "a")?;
    let b = required_number(args, "b")?;
    // Keep integer sums exact; fall back to floating point otherwise.
    let sum = match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => (x + y).to_string(),
        _ => (a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN)).to_string(),
    };
    Ok(tool_text(&sum))
}

fn slow_tool(ctx: &Ctx, args: &Value) -> Result<Value, RpcError> {
    let steps = optional_u64(args, "steps", 5, 10_000)?;
    let delay = Duration::from_millis(optional_u64(args, "delayMs", 100, 60_000)?);
    for step in 1..=steps {
        if !ctx.sleep(delay) {
            return Err(RpcError::cancelled());
        }
        ctx.progress(step, steps, &format!("step {step} of {steps}"));
    }
    Ok(tool_text(&format!("done after {steps} steps")))
}

fn logging_tool(ctx: &Ctx) -> Result<Value, RpcError> {
    ctx.log("info", "Tool execution started");
    if !ctx.sleep(Duration::from_millis(50)) {
        return Err(RpcError::cancelled());
    }
    ctx.log("info", "Tool processing data");
    if !ctx.sleep(Duration::from_millis(50)) {
        return Err(RpcError::cancelled());
    }
    ctx.log("info", "Tool execution completed");
    Ok(tool_text("Tool with logging executed successfully"))
}

fn progress_tool(ctx: &Ctx) -> Result<Value, RpcError> {
    for (i, progress) in [0, 50, 100].into_iter().enumerate() {
        if i > 0 && !ctx.sleep(Duration::from_millis(50)) {
            return Err(RpcError::cancelled());
        }
        ctx.progress(progress, 100, &format!("{progress}% done"));
    }
    Ok(tool_text("Tool with progress executed successfully"))
}

fn sampling_tool(ctx: &Ctx, args: &Value) -> Result<Value, RpcError> {
    let prompt = required_str(args, "prompt")?;
    if !ctx.session.client_supports("sampling") {
        return Ok(tool_error("the client does not support sampling"));
    }
    let params = json!({
        "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
        "maxTokens": 100,
    });
    match ctx.request("sampling/createMessage", params) {
        Ok(result) => Ok(tool_text(&format!(
            "LLM response: {}",
            sampled_text(&result)
        ))),
        Err(_) if ctx.is_cancelled() => Err(RpcError::cancelled()),
        Err(why) => Ok(tool_error(&format!("sampling failed: {why}"))),
    }
}

/// The text of a sampling result, whose `content` is one block or (since
/// 2025-11-25) a list of blocks.
fn sampled_text(result: &Value) -> String {
    let blocks: Vec<&Value> = match result.get("content") {
        Some(Value::Array(blocks)) => blocks.iter().collect(),
        Some(block) => vec![block],
        None => Vec::new(),
    };
    let texts: Vec<&str> = blocks
        .iter()
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect();
    if texts.is_empty() {
        result.to_string()
    } else {
        texts.join("\n")
    }
}

fn elicit(ctx: &Ctx, message: &str, schema: Value, label: &str) -> Result<Value, RpcError> {
    if !ctx.session.client_supports("elicitation") {
        return Ok(tool_error("the client does not support elicitation"));
    }
    let params = json!({ "message": message, "requestedSchema": schema });
    match ctx.request("elicitation/create", params) {
        Ok(result) => {
            let action = result
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let content = result.get("content").cloned().unwrap_or(json!({}));
            Ok(tool_text(&format!(
                "{label}: action={action}, content={content}"
            )))
        }
        Err(_) if ctx.is_cancelled() => Err(RpcError::cancelled()),
        Err(why) => Ok(tool_error(&format!("elicitation failed: {why}"))),
    }
}

fn sep1034_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "User name", "default": "John Doe" },
            "age": { "type": "integer", "description": "User age", "default": 30 },
            "score": { "type": "number", "description": "User score", "default": 95.5 },
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": { "type": "boolean", "description": "Verification status", "default": true },
        },
        "required": [],
    })
}

fn sep1330_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Untitled single-select",
                "enum": ["option1", "option2", "option3"],
            },
            "titledSingle": {
                "type": "string",
                "description": "Titled single-select",
                "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" },
                ],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": { "type": "string", "enum": ["option1", "option2", "option3"] },
            },
            "titledMulti": {
                "type": "array",
                "description": "Titled multi-select",
                "items": {
                    "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" },
                    ],
                },
            },
        },
        "required": [],
    })
}

// --- resources -------------------------------------------------------------

fn resource_catalog() -> Vec<Value> {
    let entry = |uri: &str, name: &str, description: &str, mime_type: &str| json!({ "uri": uri, "name": name, "description": description, "mimeType": mime_type });
    vec![
        entry(
            "demo://readme",
            "readme",
            "What this demo server offers",
            "text/markdown",
        ),
        entry(
            "test://static-text",
            "static-text",
            "A static text resource",
            "text/plain",
        ),
        entry(
            "test://static-binary",
            "static-binary",
            "A static binary resource (PNG)",
            "image/png",
        ),
        entry(
            "test://watched-resource",
            "watched-resource",
            "A resource clients may subscribe to",
            "text/plain",
        ),
    ]
}

fn template_catalog() -> Vec<Value> {
    vec![
        json!({
            "uriTemplate": "demo://notes/{name}",
            "name": "notes",
            "description": "A note about any name",
            "mimeType": "text/plain",
        }),
        json!({
            "uriTemplate": "test://template/{id}/data",
            "name": "template-data",
            "description": "JSON data for any id",
            "mimeType": "application/json",
        }),
    ]
}

/// The value of the single `{param}` of a `prefix{param}suffix` template.
fn template_param<'a>(uri: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    uri.strip_prefix(prefix)?
        .strip_suffix(suffix)
        .filter(|value| !value.is_empty() && !value.contains('/'))
}

fn text_contents(uri: &str, mime_type: &str, text: &str) -> Value {
    json!({ "uri": uri, "mimeType": mime_type, "text": text })
}

fn read_resource(uri: &str) -> Option<Value> {
    let contents = match uri {
        "demo://readme" => text_contents(uri, "text/markdown", README_TEXT),
        "test://static-text" => text_contents(
            uri,
            "text/plain",
            "This is the content of the static text resource.",
        ),
        "test://static-binary" => {
            json!({ "uri": uri, "mimeType": "image/png", "blob": RED_PIXEL_PNG })
        }
        "test://watched-resource" => text_contents(uri, "text/plain", "Watched resource content."),
        _ => {
            if let Some(name) = template_param(uri, "demo://notes/", "") {
                text_contents(uri, "text/plain", &format!("Notes about {name}."))
            } else if let Some(id) = template_param(uri, "test://template/", "/data") {
                let data =
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") });
                text_contents(uri, "application/json", &data.to_string())
            } else {
                return None;
            }
        }
    };
    Some(contents)
}

// --- prompts ---------------------------------------------------------------

fn prompt_catalog() -> Vec<Value> {
    let argument = |name: &str, description: &str| json!({ "name": name, "description": description, "required": true });
    vec![
        json!({
            "name": "greet",
            "description": "Greets someone by name",
            "arguments": [argument("name", "Who to greet")],
        }),
        json!({
            "name": "test_simple_prompt",
            "description": "A simple prompt without arguments",
        }),
        json!({
            "name": "test_prompt_with_arguments",
            "description": "A prompt with two required arguments",
            "arguments": [
                argument("arg1", "First test argument"),
                argument("arg2", "Second test argument"),
            ],
        }),
        json!({
            "name": "test_prompt_with_embedded_resource",
            "description": "A prompt that embeds a resource",
            "arguments": [argument("resourceUri", "URI of the resource to embed")],
        }),
        json!({
            "name": "test_prompt_with_image",
            "description": "A prompt that includes an image",
        }),
        json!({
            "name": INPUT_PROMPT,
            "description": "A prompt that asks the user for its context first",
        }),
    ]
}

/// The prompt that asks the user before it is built.
const INPUT_PROMPT: &str = "test_input_required_result_prompt";

fn input_prompt(ctx: &Ctx) -> Result<Value, RpcError> {
    let asked = ctx.request_as(
        "user_context",
        "elicitation/create",
        form("What context should the prompt use?", "context", "string"),
    );
    let context = asked
        .ok()
        .and_then(|r| r.pointer("/content/context").cloned())
        .and_then(|c| c.as_str().map(str::to_string))
        .ok_or_else(|| RpcError::new(INTERNAL_ERROR, "no context was given"))?;
    Ok(json!({
        "description": "A prompt built from the user's context",
        "messages": [user_message(text_content(&format!("Context: {context}")))],
    }))
}

/// An elicitation with one required field.
fn form(message: &str, field: &str, kind: &str) -> Value {
    json!({
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": { field: { "type": kind } },
            "required": [field],
        },
    })
}

/// The 2026-07-28 conformance suite's input-required fixtures, written the way a legacy server
/// writes them: it asks its client (sampling, elicitation, roots) and waits for the answers.
/// A gateway in front of a stateless client turns each question into an input_required round.
fn input_fixture(ctx: &Ctx, name: &str) -> Result<Value, RpcError> {
    let sample = |text: &str, max: u64| {
        let m = json!([{ "role": "user", "content": { "type": "text", "text": text } }]);
        json!({ "messages": m, "maxTokens": max })
    };
    let field = |r: &Result<Value, String>, f: &str| -> String {
        match r {
            Ok(v) => v
                .pointer(&format!("/content/{f}"))
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let failed = |r: &Result<Value, String>| r.as_ref().err().cloned();
    // One question under `key`, answered with a text (`Err`: the tool's error result).
    let sampled = |key: &str, prompt: &str, max: u64| match ctx.request_as(
        key,
        "sampling/createMessage",
        sample(prompt, max),
    ) {
        Ok(v) => Ok(format!("Sampled: {}", sampled_text(&v))),
        Err(e) => Err(tool_error(&format!("sampling failed: {e}"))),
    };
    let named = |key: &str| {
        let r = ctx.request_as(
            key,
            "elicitation/create",
            form("What is your name?", "name", "string"),
        );
        match failed(&r) {
            Some(e) => Err(tool_error(&format!("elicitation failed: {e}"))),
            None => Ok(format!("Hello, {}!", field(&r, "name"))),
        }
    };
    let text = match name.trim_start_matches("test_input_required_result_") {
        "test_missing_capability" => match sampled("needs_sampling", "Reply with one word", 10) {
            Ok(t) => t,
            Err(e) => return Ok(e),
        },
        "test_streaming_elicitation" => match named("streamed_name") {
            Ok(t) => t,
            Err(e) => return Ok(e),
        },
        "sampling" => match sampled("capital_question", "What is the capital of France?", 100) {
            Ok(t) => t,
            Err(e) => return Ok(e),
        },
        "elicitation" => match named("user_name") {
            Ok(t) => t,
            Err(e) => return Ok(e),
        },
        "list_roots" => match ctx.request_as("client_roots", "roots/list", json!({})) {
            Ok(v) => {
                let uris: Vec<String> = v["roots"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x["uri"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                format!("Roots: {}", uris.join(", "))
            }
            Err(e) => return Ok(tool_error(&format!("roots/list failed: {e}"))),
        },
        "request_state" | "tampered_state" => {
            let r = ctx.request_as(
                "confirm",
                "elicitation/create",
                form("Please confirm", "ok", "boolean"),
            );
            if let Some(e) = failed(&r) {
                return Ok(tool_error(&format!("elicitation failed: {e}")));
            }
            format!("state-ok: confirmed={}", field(&r, "ok"))
        }
        "multiple_inputs" => {
            let answers = ctx.request_all(vec![
                (
                    "user_name",
                    "elicitation/create",
                    form("What is your name?", "name", "string"),
                ),
                (
                    "greeting",
                    "sampling/createMessage",
                    sample("Generate a greeting", 50),
                ),
                ("client_roots", "roots/list", json!({})),
            ]);
            if let Some(e) = answers.iter().find_map(failed) {
                return Ok(tool_error(&format!("a question failed: {e}")));
            }
            let greeting = answers[1].as_ref().map(sampled_text).unwrap_or_default();
            format!("{greeting}, {}", field(&answers[0], "name"))
        }
        "multi_round" => {
            let first = ctx.request_as(
                "step1",
                "elicitation/create",
                form("Step 1: What is your name?", "name", "string"),
            );
            if let Some(e) = failed(&first) {
                return Ok(tool_error(&format!("step 1 failed: {e}")));
            }
            let second = ctx.request_as(
                "step2",
                "elicitation/create",
                form("Step 2: What is your favorite color?", "color", "string"),
            );
            if let Some(e) = failed(&second) {
                return Ok(tool_error(&format!("step 2 failed: {e}")));
            }
            format!(
                "{} likes {}",
                field(&first, "name"),
                field(&second, "color")
            )
        }
        "capabilities" => {
            // Asked together: a client that cannot answer one kind gets only the other.
            let answers = ctx.request_all(vec![
                (
                    "sampling",
                    "sampling/createMessage",
                    sample("Say hello", 20),
                ),
                (
                    "elicitation",
                    "elicitation/create",
                    form("What is your name?", "name", "string"),
                ),
            ]);
            let said: Vec<String> = answers
                .iter()
                .map(|a| match a {
                    Ok(_) => "answered".to_string(),
                    Err(e) => format!("not answered ({e})"),
                })
                .collect();
            format!("sampling {}, elicitation {}", said[0], said[1])
        }
        _ => return Err(unknown_tool(name)),
    };
    Ok(tool_text(&text))
}

fn user_message(content: Value) -> Value {
    json!({ "role": "user", "content": content })
}

fn get_prompt(params: &Value) -> Result<Value, RpcError> {
    let name = required_str(params, "name")?;
    let no_args = Value::Object(Map::new());
    let args = params.get("arguments").unwrap_or(&no_args);
    let arg = |key: &str| {
        args.get(key).and_then(Value::as_str).ok_or_else(|| {
            RpcError::invalid_params(format!("prompt {name} needs the argument \"{key}\""))
        })
    };
    let messages = match name {
        "greet" => vec![user_message(text_content(&format!(
            "Please greet {} warmly.",
            arg("name")?
        )))],
        "test_simple_prompt" => vec![user_message(text_content(
            "This is a simple prompt for testing.",
        ))],
        "test_prompt_with_arguments" => vec![user_message(text_content(&format!(
            "Prompt with arguments: arg1='{}', arg2='{}'",
            arg("arg1")?,
            arg("arg2")?
        )))],
        "test_prompt_with_embedded_resource" => vec![
            user_message(embedded_text(
                arg("resourceUri")?,
                "text/plain",
                "Embedded resource content for testing.",
            )),
            user_message(text_content("Please process the embedded resource above.")),
        ],
        "test_prompt_with_image" => vec![
            user_message(image_content()),
            user_message(text_content("Please analyze the image above.")),
        ],
        _ => return Err(RpcError::invalid_params(format!("Unknown prompt: {name}"))),
    };
    Ok(json!({ "messages": messages }))
}

// --- completions -----------------------------------------------------------

fn complete(params: &Value) -> Result<Value, RpcError> {
    let reference = params
        .get("ref")
        .ok_or_else(|| RpcError::invalid_params("completion/complete needs \"ref\""))?;
    let argument = params
        .get("argument")
        .ok_or_else(|| RpcError::invalid_params("completion/complete needs \"argument\""))?;
    let arg_name = required_str(argument, "name")?;
    let typed = argument.get("value").and_then(Value::as_str).unwrap_or("");
    let candidates: &[&str] = match required_str(reference, "type")? {
        "ref/prompt" => match (required_str(reference, "name")?, arg_name) {
            ("greet", "name") => &["Ada", "Alan", "Grace", "Linus", "Margaret"],
            ("test_prompt_with_arguments", _) => &["hello", "paris", "park", "test", "world"],
            ("test_prompt_with_embedded_resource", "resourceUri") => &[
                "demo://readme",
                "test://static-text",
                "test://watched-resource",
            ],
            (prompt, _) if prompt_catalog().iter().any(|p| p["name"] == prompt) => &[],
            (prompt, _) => {
                return Err(RpcError::invalid_params(format!(
                    "Unknown prompt: {prompt}"
                )))
            }
        },
        "ref/resource" => match (required_str(reference, "uri")?, arg_name) {
            ("demo://notes/{name}", "name") => &["groceries", "ideas", "todo"],
            ("test://template/{id}/data", "id") => &["1", "2", "3", "42", "123"],
            (uri, _) if template_catalog().iter().any(|t| t["uriTemplate"] == uri) => &[],
            (uri, _) => {
                return Err(RpcError::invalid_params(format!(
                    "Unknown resource template: {uri}"
                )))
            }
        },
        other => {
            return Err(RpcError::invalid_params(format!(
                "unknown reference type: {other}"
            )))
        }
    };
    let typed = typed.to_lowercase();
    let values: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.to_lowercase().starts_with(&typed))
        .collect();
    Ok(json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }))
}

// ---------------------------------------------------------------------------
// stdio transport
// ---------------------------------------------------------------------------

/// Writes whole lines to stdout; stdout's own lock keeps concurrent workers
/// from interleaving.
struct StdoutOutlet;

impl Outlet for StdoutOutlet {
    fn send(&self, message: &Value) {
        let mut out = io::stdout().lock();
        // A closed stdout only means the client is gone; stdin EOF ends us soon.
        let _ = writeln!(out, "{message}").and_then(|()| out.flush());
    }

    fn send_all(&self, messages: &[Value]) {
        let text: String = messages.iter().map(|m| format!("{m}\n")).collect();
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

fn run_stdio() -> ExitCode {
    eprintln!("mcplex-demo: serving MCP on stdio");
    let session = Arc::new(Session::new());
    let mut workers: Vec<thread::JoinHandle<()>> = Vec::new();
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("mcplex-demo: reading stdin failed: {e}");
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = match serde_json::from_slice::<Value>(&line) {
            Ok(message) => message,
            Err(e) => {
                let err = RpcError::new(PARSE_ERROR, format!("Parse error: {e}"));
                StdoutOutlet.send(&error_response(&Value::Null, &err));
                continue;
            }
        };
        if dual_era() && modern::is_modern(None, &message) {
            if let Some(worker) = modern::stdio_request(&session, message) {
                workers.push(worker);
            }
            workers.retain(|worker| !worker.is_finished());
            continue;
        }
        match classify(message) {
            Incoming::Request { id, method, params } => {
                if let Some(worker) = stdio_request(&session, id, method, params) {
                    workers.push(worker);
                }
            }
            Incoming::Notification { method, params } => session.on_notification(&method, &params),
            Incoming::Response { id, message } => session.on_response(&id, message),
            Incoming::Invalid { id, reason } => StdoutOutlet.send(&error_response(
                &id,
                &RpcError::new(INVALID_REQUEST, reason),
            )),
        }
        workers.retain(|worker| !worker.is_finished());
    }
    // The client cannot answer any more questions, but requests already
    // received still get their answers before we exit.
    session.close(false);
    for worker in workers {
        let _ = worker.join();
    }
    ExitCode::SUCCESS
}

/// Handles one stdio request. Tool calls run on their own thread so that slow
/// tools and tools waiting for the client never block the reader; everything
/// else is instantaneous and answered inline, which keeps answers in order.
fn stdio_request(
    session: &Arc<Session>,
    id: Value,
    method: String,
    params: Value,
) -> Option<thread::JoinHandle<()>> {
    let cancelled = session.begin_request(&id);
    // The closure takes the id; keep a copy to report a failed spawn.
    let id_copy = id.clone();
    // Tools that answer at once (no sleeping, no questions to the client) run
    // inline too: a thread per call would make the demo, not the gateway in front
    // of it, the cost a benchmark measures.
    let asks = method == "prompts/get" && params.get("name") == Some(&json!(INPUT_PROMPT));
    let inline = (method != "tools/call" && !asks) || is_instant_tool(&params);
    let run = {
        let session = Arc::clone(session);
        move || {
            let ctx = Ctx {
                session: &session,
                outlet: &StdoutOutlet,
                cancelled,
                progress_token: progress_token(&params),
                rounds: None,
            };
            let answer = respond(&ctx, &id, &method, &params);
            session.end_request(&id);
            if let Some(answer) = answer {
                StdoutOutlet.send(&answer);
            }
        }
    };
    if inline {
        run();
        return None;
    }
    match thread::Builder::new().name("tool-call".into()).spawn(run) {
        Ok(worker) => Some(worker),
        Err(e) => {
            session.end_request(&id_copy);
            let err = RpcError::new(INTERNAL_ERROR, format!("cannot start a worker: {e}"));
            StdoutOutlet.send(&error_response(&id_copy, &err));
            None
        }
    }
}

/// Whether a `tools/call` names a tool that neither waits nor asks the client.
fn is_instant_tool(params: &Value) -> bool {
    matches!(
        params.get("name").and_then(Value::as_str),
        Some("echo" | "add" | "fail" | "test_simple_text" | "test_error_handling")
    )
}

// ---------------------------------------------------------------------------
// HTTP transport
// ---------------------------------------------------------------------------

fn run_http(host: &str, port: u16, no_streams: bool) -> ExitCode {
    let listener = match TcpListener::bind((host, port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mcplex-demo: cannot listen on {host}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("mcplex-demo: listening on http://{addr}/mcp"),
        Err(_) => eprintln!("mcplex-demo: listening on http://{host}:{port}/mcp"),
    }
    let server = Arc::new(HttpServer::new(host, no_streams));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let server = Arc::clone(&server);
                let spawned = thread::Builder::new()
                    .name("http-conn".into())
                    .spawn(move || server.serve_connection(stream));
                if let Err(e) = spawned {
                    eprintln!("mcplex-demo: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("mcplex-demo: accept failed: {e}");
                // Typically out of file descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    ExitCode::SUCCESS
}

struct HttpServer {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// A non-loopback `--host` the user bound to explicitly is trusted too.
    bound_host: Option<String>,
    /// `--no-streams`: GET is refused and no connection is kept alive.
    no_streams: bool,
}

/// Why a request could not be read; `Status` is answered before closing.
enum HttpFail {
    Io,
    Status(u16, &'static str),
}

struct HttpRequest {
    method: String,
    path: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn keep_alive(&self) -> bool {
        // Responses are always HTTP/1.1 with chunked SSE, so 1.0 clients get
        // one exchange per connection.
        let close = self
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        self.minor_version == 1 && !close
    }
}

/// A client connection with its read buffer (which may hold the start of
/// the next pipelined request).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn fill(&mut self) -> Result<usize, HttpFail> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(HttpFail::Io),
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, HttpFail> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(HttpFail::Io);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without the terminator (for chunked bodies).
    fn take_line(&mut self) -> Result<Vec<u8>, HttpFail> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..end + 2).take(end).collect();
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(HttpFail::Status(400, "chunk header line too long"));
            }
            if self.fill()? == 0 {
                return Err(HttpFail::Io);
            }
        }
    }

    /// Reads the next request; `Ok(None)` when the client closed the connection.
    fn read_request(&mut self) -> Result<Option<HttpRequest>, HttpFail> {
        let mut request = loop {
            if !self.buf.is_empty() {
                if let Some((request, head_len)) = parse_head(&self.buf)? {
                    self.buf.drain(..head_len);
                    break request;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(HttpFail::Status(431, "request head too large"));
                }
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(HttpFail::Io)
                };
            }
        };
        let chunked = request
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = match request.header("content-length") {
            Some(v) if !chunked => v
                .trim()
                .parse::<usize>()
                .map_err(|_| HttpFail::Status(400, "invalid Content-Length"))?,
            _ => 0,
        };
        if length > MAX_BODY_BYTES {
            return Err(HttpFail::Status(413, "request body too large"));
        }
        let expects_continue = request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue && (chunked || length > 0) {
            (&self.stream)
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| HttpFail::Io)?;
        }
        request.body = if chunked {
            self.read_chunked_body()?
        } else {
            self.take(length)?
        };
        Ok(Some(request))
    }

    fn read_chunked_body(&mut self) -> Result<Vec<u8>, HttpFail> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line()?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split(';').next())
                .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                .ok_or(HttpFail::Status(400, "invalid chunk size"))?;
            if size == 0 {
                // Skip any trailer fields up to the final empty line.
                while !self.take_line()?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(HttpFail::Status(413, "request body too large"));
            }
            body.extend(self.take(size)?);
            if !self.take_line()?.is_empty() {
                return Err(HttpFail::Status(400, "malformed chunk"));
            }
        }
    }
}

/// Parses a request head with httparse; `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(HttpRequest, usize)>, HttpFail> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let request = HttpRequest {
                method: parsed.method.unwrap_or("").to_string(),
                path: parsed.path.unwrap_or("").to_string(),
                minor_version: parsed.version.unwrap_or(1),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        (h.name.to_string(), value)
                    })
                    .collect(),
                body: Vec::new(),
            };
            Ok(Some((request, head_len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpFail::Status(431, "too many headers")),
        Err(_) => Err(HttpFail::Status(400, "malformed request head")),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// How to answer the request at hand: which connection, whether it stays
/// open, and which session id to echo.
#[derive(Clone, Copy)]
struct Reply<'a> {
    stream: &'a TcpStream,
    keep_alive: bool,
    session_id: Option<&'a str>,
}

impl<'a> Reply<'a> {
    fn head(&self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
        let session = self.session_id.map(|id| ("Mcp-Session-Id", id));
        let close = (!self.keep_alive).then_some(("Connection", "close"));
        for (name, value) in headers.iter().copied().chain(session).chain(close) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = self.stream;
        stream.write_all(head.as_bytes())
    }

    /// Sends a complete response; the result says whether the connection
    /// may serve another request.
    fn send(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<bool> {
        let length = body.len().to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(content_type) = content_type {
            all.push(("Content-Type", content_type));
        }
        all.push(("Content-Length", &length));
        self.head(status, &all)?;
        let mut stream = self.stream;
        stream.write_all(body)?;
        Ok(self.keep_alive)
    }

    fn json(&self, status: u16, body: &Value) -> io::Result<bool> {
        self.send(
            status,
            &[],
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    }

    fn empty(&self, status: u16, headers: &[(&str, &str)]) -> io::Result<bool> {
        self.send(status, headers, None, b"")
    }

    /// An HTTP-level error, with a JSON-RPC error body as the MCP SDKs send.
    fn error(&self, status: u16, message: &str) -> io::Result<bool> {
        let code = if status == 400 {
            INVALID_REQUEST
        } else {
            -32000
        };
        self.json(
            status,
            &error_response(&Value::Null, &RpcError::new(code, message)),
        )
    }

    fn start_sse(&self) -> io::Result<()> {
        self.head(
            200,
            &[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
    }
}

fn write_chunk(stream: &TcpStream, data: &str) -> io::Result<()> {
    let mut stream = stream;
    stream.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
}

fn end_chunks(stream: &TcpStream) -> io::Result<()> {
    let mut stream = stream;
    stream.write_all(b"0\r\n\r\n")
}

fn write_event(stream: &TcpStream, stream_id: u64, seq: usize, data: &str) -> io::Result<()> {
    write_chunk(
        stream,
        &format!("id: {stream_id}-{seq}\nevent: message\ndata: {data}\n\n"),
    )
}

/// Parses an SSE event id of the form `<stream>-<seq>`.
fn parse_event_id(id: &str) -> Option<(u64, usize)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

fn media_types(header: Option<&str>) -> Vec<String> {
    header
        .unwrap_or("")
        .split(',')
        .filter_map(|part| part.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .collect()
}

fn accepts(header: Option<&str>, wanted: &str) -> bool {
    media_types(header)
        .iter()
        .any(|media| media == wanted || media == "*/*")
}

/// The host part of an authority (`host[:port]`), lower-cased; IPv6
/// literals keep their brackets.
fn hostname_of(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    let authority = authority.split('/').next().unwrap_or("");
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => authority[..=end].to_string(),
            None => authority.to_string(),
        }
    } else {
        authority.split(':').next().unwrap_or("").to_string()
    }
}

/// A fresh, unguessable-enough session id (128 bits from std's randomly
/// keyed SipHash, which is all the randomness std offers).
fn new_session_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (0..2u8)
        .map(|half| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u128(nanos);
            hasher.write_u8(half);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

impl HttpServer {
    fn new(host: &str, no_streams: bool) -> Self {
        let host = host.trim().to_ascii_lowercase();
        let bound_host = match host.as_str() {
            "0.0.0.0" | "::" | "[::]" => None,
            _ if host.contains(':') && !host.starts_with('[') => Some(format!("[{host}]")),
            _ => Some(host),
        };
        HttpServer {
            sessions: Mutex::new(HashMap::new()),
            bound_host,
            no_streams,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn serve_connection(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        loop {
            let request = match conn.read_request() {
                Ok(Some(request)) => request,
                Ok(None) | Err(HttpFail::Io) => return,
                Err(HttpFail::Status(status, why)) => {
                    let reply = Reply {
                        stream: &conn.stream,
                        keep_alive: false,
                        session_id: None,
                    };
                    let _ = reply.error(status, why);
                    return;
                }
            };
            let reply = Reply {
                stream: &conn.stream,
                keep_alive: request.keep_alive() && !self.no_streams,
                session_id: None,
            };
            match self.route(reply, &request) {
                Ok(true) => continue,
                _ => return,
            }
        }
    }

    /// DNS-rebinding protection: a browser tricked into talking to us still
    /// sends the attacker's host name in `Host` and its page's `Origin`.
    fn origin_allowed(&self, request: &HttpRequest) -> bool {
        let is_local = |name: String| {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
                || self.bound_host.as_deref() == Some(name.as_str())
        };
        if let Some(host) = request.header("host") {
            if !is_local(hostname_of(host)) {
                return false;
            }
        }
        match request.header("origin") {
            None => true,
            Some(origin) => match origin.split_once("://") {
                Some((_, authority)) => is_local(hostname_of(authority)),
                None => false, // e.g. "null" from sandboxed pages
            },
        }
    }

    fn route(&self, reply: Reply, request: &HttpRequest) -> io::Result<bool> {
        if !self.origin_allowed(request) {
            return reply.error(403, "Forbidden: Host/Origin is not a localhost address");
        }
        let path = request.path.split('?').next().unwrap_or("");
        if path != "/mcp" {
            return reply.error(404, "Not Found: the MCP endpoint is /mcp");
        }
        // In dual-era mode a POST's version header is checked against its body (`modern`).
        let post_in_dual_era = dual_era() && request.method == "POST";
        if let Some(version) = request.header("mcp-protocol-version") {
            if !SUPPORTED_VERSIONS.contains(&version) && !post_in_dual_era {
                return reply.error(400, "Bad Request: unsupported MCP-Protocol-Version");
            }
        }
        let sessionless = request.header("mcp-session-id").is_none();
        match request.method.as_str() {
            // 2026-07-28 has no GET stream and no session to delete.
            "GET" | "DELETE" if dual_era() && sessionless => reply.send(
                405,
                &[("Allow", "POST")],
                Some("text/plain"),
                b"Method Not Allowed: without a session, MCP is served by POST\n",
            ),
            "POST" => self.handle_post(reply, request),
            "GET" if self.no_streams => reply.send(
                405,
                &[("Allow", "POST, DELETE")],
                Some("text/plain"),
                b"Method Not Allowed: this server offers no GET stream\n",
            ),
            "GET" => self.handle_get(reply, request),
            "DELETE" => self.handle_delete(reply, request),
            _ => reply.send(
                405,
                &[("Allow", "GET, POST, DELETE")],
                Some("text/plain"),
                b"Method Not Allowed\n",
            ),
        }
    }

    /// The session named by `Mcp-Session-Id`, or the HTTP error to answer.
    fn session_for(&self, request: &HttpRequest) -> Result<Arc<Session>, (u16, &'static str)> {
        let id = request
            .header("mcp-session-id")
            .ok_or((400, "Bad Request: missing Mcp-Session-Id header"))?;
        self.sessions()
            .get(id)
            .cloned()
            .ok_or((404, "Not Found: unknown or expired session"))
    }

    fn handle_post(&self, reply: Reply, request: &HttpRequest) -> io::Result<bool> {
        let accept = request.header("accept");
        if !(accepts(accept, "application/json") && accepts(accept, "text/event-stream")) {
            return reply.error(
                406,
                "Not Acceptable: Accept must list application/json and text/event-stream",
            );
        }
        let content_type = media_types(request.header("content-type"));
        if content_type.first().map(String::as_str) != Some("application/json") {
            return reply.error(415, "Unsupported Media Type: send application/json");
        }
        let message = match serde_json::from_slice::<Value>(&request.body) {
            Ok(message) => message,
            Err(e) => {
                let err = RpcError::new(PARSE_ERROR, format!("Parse error: {e}"));
                return reply.json(400, &error_response(&Value::Null, &err));
            }
        };
        if dual_era() {
            if modern::is_modern(request.header("mcp-protocol-version"), &message) {
                return modern::http_post(reply, request, message);
            }
            if let Some(version) = request.header("mcp-protocol-version") {
                if !SUPPORTED_VERSIONS.contains(&version) {
                    return reply.error(400, "Bad Request: unsupported MCP-Protocol-Version");
                }
            }
        }
        let incoming = classify(message);
        if let Incoming::Request { id, method, params } = &incoming {
            if method == "initialize" {
                return self.start_session(reply, id, params);
            }
        }
        let session = match self.session_for(request) {
            Ok(session) => session,
            Err((status, why)) => return reply.error(status, why),
        };
        let reply = Reply {
            session_id: request.header("mcp-session-id"),
            ..reply
        };
        match incoming {
            Incoming::Notification { method, params } => {
                session.on_notification(&method, &params);
                reply.empty(202, &[])
            }
            Incoming::Response { id, message } => {
                session.on_response(&id, message);
                reply.empty(202, &[])
            }
            Incoming::Invalid { id, reason } => reply.json(
                400,
                &error_response(&id, &RpcError::new(INVALID_REQUEST, reason)),
            ),
            Incoming::Request { id, method, params } => {
                let outlet = SseOutlet {
                    reply,
                    session: &session,
                    state: RefCell::new(SseState::Idle),
                    broken: Cell::new(false),
                };
                let ctx = Ctx {
                    session: &session,
                    outlet: &outlet,
                    cancelled: session.begin_request(&id),
                    progress_token: progress_token(&params),
                    rounds: None,
                };
                let answer = respond(&ctx, &id, &method, &params);
                session.end_request(&id);
                outlet.finish(200, answer)
            }
        }
    }

    fn start_session(&self, reply: Reply, id: &Value, params: &Value) -> io::Result<bool> {
        if !(params.is_object() || params.is_null()) {
            let err = RpcError::invalid_params("params must be an object");
            return reply.json(200, &error_response(id, &err));
        }
        let session = Arc::new(Session::new());
        let result = initialize(&session, params);
        let session_id = new_session_id();
        self.sessions().insert(session_id.clone(), session);
        let reply = Reply {
            session_id: Some(&session_id),
            ..reply
        };
        reply.json(200, &response(id, result))
    }

    fn handle_delete(&self, reply: Reply, request: &HttpRequest) -> io::Result<bool> {
        let session = match self.session_for(request) {
            Ok(session) => session,
            Err((status, why)) => return reply.error(status, why),
        };
        if let Some(id) = request.header("mcp-session-id") {
            self.sessions().remove(id);
        }
        session.close(true);
        reply.empty(200, &[])
    }

    /// GET only resumes a POST stream (`Last-Event-ID`); there is no
    /// standalone server→client stream, since this server has nothing to say
    /// outside of requests.
    fn handle_get(&self, reply: Reply, request: &HttpRequest) -> io::Result<bool> {
        if !accepts(request.header("accept"), "text/event-stream") {
            return reply.error(406, "Not Acceptable: Accept must list text/event-stream");
        }
        let session = match self.session_for(request) {
            Ok(session) => session,
            Err((status, why)) => return reply.error(status, why),
        };
        let reply = Reply {
            session_id: request.header("mcp-session-id"),
            ..reply
        };
        let Some(last_event_id) = request.header("last-event-id") else {
            return reply.send(
                405,
                &[("Allow", "POST, DELETE")],
                Some("text/plain"),
                b"no standalone SSE stream; GET only resumes streams via Last-Event-ID\n",
            );
        };
        let found = parse_event_id(last_event_id)
            .and_then(|(stream_id, seen)| Some((session.stream(stream_id)?, seen)));
        let Some((log, mut seen)) = found else {
            return reply.error(404, "Not Found: unknown Last-Event-ID");
        };
        reply.start_sse()?;
        loop {
            let (events, done) = log.wait_after(seen, SSE_KEEPALIVE);
            if events.is_empty() && !done {
                write_chunk(reply.stream, ": keep-alive\n\n")?;
                continue;
            }
            for (seq, data) in events {
                write_event(reply.stream, log.id, seq, &data)?;
                seen = seq;
            }
            if done {
                session.forget_stream(log.id);
                end_chunks(reply.stream)?;
                return Ok(reply.keep_alive);
            }
        }
    }
}

/// Everything sent on one SSE stream, kept so that a client can resume the
/// stream with `Last-Event-ID` after losing it. Event `n` has id
/// `<stream id>-<n>`; the priming event is `-0`.
struct StreamLog {
    id: u64,
    inner: Mutex<LogInner>,
    changed: Condvar,
}

struct LogInner {
    events: Vec<String>,
    finished_at: Option<Instant>,
}

impl StreamLog {
    fn new(id: u64) -> Self {
        StreamLog {
            id,
            inner: Mutex::new(LogInner {
                events: Vec::new(),
                finished_at: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event and returns its sequence number.
    fn push(&self, data: String) -> usize {
        let mut inner = self.lock();
        inner.events.push(data);
        self.changed.notify_all();
        inner.events.len()
    }

    fn finish(&self) {
        self.lock().finished_at = Some(Instant::now());
        self.changed.notify_all();
    }

    fn expired(&self) -> bool {
        self.lock()
            .finished_at
            .is_some_and(|at| at.elapsed() > STREAM_LOG_TTL)
    }

    /// Waits up to `timeout` for events after `seen`; also says whether the
    /// stream is complete (its response, if any, is among the events).
    fn wait_after(&self, seen: usize, timeout: Duration) -> (Vec<(usize, String)>, bool) {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                i.events.len() <= seen && i.finished_at.is_none()
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = inner
            .events
            .iter()
            .enumerate()
            .skip(seen)
            .map(|(index, data)| (index + 1, data.clone()))
            .collect();
        (fresh, inner.finished_at.is_some())
    }
}

enum SseState {
    /// Nothing sent yet: the response may still go out as plain JSON.
    Idle,
    /// Streaming on the POST's connection.
    Live(Arc<StreamLog>),
    /// The POST's stream is gone; events wait in the log for a resuming GET.
    Parked(Arc<StreamLog>),
}

/// HTTP outlet of one POST request: switches the answer to an SSE stream as
/// soon as the handler emits anything besides its response.
struct SseOutlet<'a> {
    reply: Reply<'a>,
    session: &'a Session,
    state: RefCell<SseState>,
    /// The connection failed mid-stream and cannot be reused.
    broken: Cell<bool>,
}

impl SseOutlet<'_> {
    fn open(&self) -> SseState {
        let log = self.session.open_stream();
        let mut started = self.reply.start_sse();
        if started.is_ok() && self.session.resumable() {
            let priming = format!("id: {}-0\nretry: {SSE_RETRY_MS}\ndata: \n\n", log.id);
            started = write_chunk(self.reply.stream, &priming);
        }
        match started {
            Ok(()) => SseState::Live(log),
            Err(_) => {
                self.broken.set(true);
                SseState::Parked(log)
            }
        }
    }

    /// Delivers the response (if not cancelled) and ends the exchange; says
    /// whether the connection can serve another request.
    fn finish(self, status: u16, answer: Option<Value>) -> io::Result<bool> {
        let reusable = self.reply.keep_alive && !self.broken.get();
        match self.state.into_inner() {
            SseState::Idle => match answer {
                Some(answer) => self.reply.json(status, &answer),
                // Cancelled before anything was sent: an empty stream.
                None => self.reply.send(200, &[], Some("text/event-stream"), b""),
            },
            SseState::Live(log) => {
                if let Some(answer) = answer {
                    let data = answer.to_string();
                    let seq = log.push(data.clone());
                    if write_event(self.reply.stream, log.id, seq, &data).is_err() {
                        // Leave the answer in the log for a resuming client.
                        log.finish();
                        return Ok(false);
                    }
                }
                log.finish();
                self.session.forget_stream(log.id);
                end_chunks(self.reply.stream)?;
                Ok(reusable)
            }
            SseState::Parked(log) => {
                if let Some(answer) = answer {
                    log.push(answer.to_string());
                }
                log.finish();
                Ok(reusable)
            }
        }
    }
}

impl Outlet for SseOutlet<'_> {
    fn send(&self, message: &Value) {
        let mut state = self.state.borrow_mut();
        if matches!(*state, SseState::Idle) {
            *state = self.open();
        }
        let data = message.to_string();
        let lost = match &*state {
            SseState::Live(log) => {
                let seq = log.push(data.clone());
                write_event(self.reply.stream, log.id, seq, &data)
                    .err()
                    .map(|_| Arc::clone(log))
            }
            SseState::Parked(log) => {
                log.push(data);
                None
            }
            SseState::Idle => None,
        };
        if let Some(log) = lost {
            self.broken.set(true);
            *state = SseState::Parked(log);
        }
    }

    fn send_all(&self, messages: &[Value]) {
        let mut state = self.state.borrow_mut();
        if matches!(*state, SseState::Idle) {
            *state = self.open();
        }
        let lost = match &*state {
            SseState::Live(log) => {
                // One chunk for all of them: the client reads them together.
                let text: String = messages
                    .iter()
                    .map(|m| {
                        let data = m.to_string();
                        let seq = log.push(data.clone());
                        format!("id: {}-{seq}\nevent: message\ndata: {data}\n\n", log.id)
                    })
                    .collect();
                write_chunk(self.reply.stream, &text)
                    .err()
                    .map(|_| Arc::clone(log))
            }
            SseState::Parked(log) => {
                for m in messages {
                    log.push(m.to_string());
                }
                None
            }
            SseState::Idle => None,
        };
        if let Some(log) = lost {
            self.broken.set(true);
            *state = SseState::Parked(log);
        }
    }

    fn close_stream(&self) {
        // Without a priming event the client could not resume, so the
        // stream simply stays open for older protocol versions.
        if !self.session.resumable() {
            return;
        }
        let mut state = self.state.borrow_mut();
        if matches!(*state, SseState::Idle) {
            *state = self.open();
        }
        if let SseState::Live(log) = &*state {
            let log = Arc::clone(log);
            if end_chunks(self.reply.stream).is_err() {
                self.broken.set(true);
            }
            *state = SseState::Parked(log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_extracted_from_authorities() {
        assert_eq!(hostname_of("LocalHost:3001"), "localhost");
        assert_eq!(hostname_of("[::1]:8080"), "[::1]");
        assert_eq!(hostname_of("evil.example.com"), "evil.example.com");
        assert_eq!(hostname_of("127.0.0.1:1/path"), "127.0.0.1");
    }

    #[test]
    fn template_parameters_are_single_segments() {
        assert_eq!(
            template_param("test://template/123/data", "test://template/", "/data"),
            Some("123")
        );
        assert_eq!(template_param("demo://notes/", "demo://notes/", ""), None);
        assert_eq!(
            template_param("demo://notes/a/b", "demo://notes/", ""),
            None
        );
    }

    #[test]
    fn messages_are_classified() {
        let request = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
        assert!(matches!(classify(request), Incoming::Request { .. }));
        let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        assert!(matches!(classify(note), Incoming::Notification { .. }));
        let answer = json!({ "jsonrpc": "2.0", "id": "x", "result": {} });
        assert!(matches!(classify(answer), Incoming::Response { .. }));
        let bad = json!({ "jsonrpc": "1.0", "id": 1, "method": "ping" });
        assert!(matches!(classify(bad), Incoming::Invalid { .. }));
        assert!(matches!(classify(json!([1])), Incoming::Invalid { .. }));
    }

    #[test]
    fn event_ids_round_trip() {
        assert_eq!(parse_event_id("7-3"), Some((7, 3)));
        assert_eq!(parse_event_id("nope"), None);
    }
}
