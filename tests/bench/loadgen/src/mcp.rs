//! MCP client sessions over streamable HTTP, legacy HTTP+SSE and stdio (a server spawned as a
//! child: the direct path a gateway's stdio relay is compared with), blocking, one request at
//! a time. Every failure is returned as a message, never a panic: the benchmark counts it.

use crate::http::{self, Body, Conn, Url};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio as Piped};
use std::time::Duration;

const PROTOCOL_VERSION: &str = "2025-06-18";
const MODERN_VERSION: &str = "2026-07-28";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Streamable,
    LegacySse,
    /// 2026-07-28: no session; each request carries its envelope and headers.
    Modern,
}

pub enum Session {
    Streamable(Streamable),
    Legacy(Legacy),
    Stdio(StdioServer),
}

impl Session {
    /// Spawns `cmd` as a stdio MCP server and opens a session with it.
    pub fn spawn(cmd: &[String]) -> Result<Session, String> {
        let (prog, args) = cmd.split_first().ok_or("no command given")?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Piped::piped())
            .stdout(Piped::piped())
            .stderr(Piped::null())
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the child has no pipes".into());
        };
        let server = StdioServer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            line: String::new(),
            next_id: 0,
        };
        Session::Stdio(server).handshake()
    }

    /// Opens a session: `initialize`, then `notifications/initialized`.
    pub fn open(url: &Url, transport: Transport, timeout: Duration) -> Result<Session, String> {
        let session = match transport {
            Transport::Streamable | Transport::Modern => Session::Streamable(Streamable {
                url: url.clone(),
                conn: None,
                stream: None,
                session_id: None,
                protocol: None,
                next_id: 0,
                timeout,
                modern: None,
            }),
            Transport::LegacySse => Session::Legacy(Legacy::connect(url, timeout)?),
        };
        match (session, transport) {
            // Nothing to set up: the first request is the first message.
            (Session::Streamable(mut s), Transport::Modern) => {
                s.modern = Some((String::new(), String::new()));
                Ok(Session::Streamable(s))
            }
            (session, _) => session.handshake(),
        }
    }

    fn handshake(mut self) -> Result<Session, String> {
        let session = &mut self;
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcplex-loadgen", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = session.request("initialize", params)?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Session::Streamable(s) = session {
            if s.session_id.is_none() {
                return Err("initialize answered without an Mcp-Session-Id".into());
            }
            s.protocol = version;
        }
        session.notify("notifications/initialized")?;
        Ok(self)
    }

    /// Sends a request and returns its `result`; a JSON-RPC error becomes `Err`.
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = match self {
            Session::Streamable(s) => s.bump_id(),
            Session::Legacy(s) => s.bump_id(),
            Session::Stdio(s) => s.bump_id(),
        };
        let mut params = params;
        if let Session::Streamable(Streamable {
            modern: Some(m), ..
        }) = self
        {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            *m = (method.to_string(), name.to_string());
        }
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let body = msg.to_string();
        let answer = match self {
            Session::Streamable(s) => s.post(body.as_bytes(), Some(id))?,
            Session::Legacy(s) => s.post_and_wait(body.as_bytes(), Some(id))?,
            Session::Stdio(s) => s.exchange(&body, Some(id))?,
        };
        let answer = answer.ok_or_else(|| format!("{method}: no answer"))?;
        if let Some(err) = answer.get("error") {
            return Err(format!("{method}: JSON-RPC error {err}"));
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| format!("{method}: answer without result"))
    }

    pub fn notify(&mut self, method: &str) -> Result<(), String> {
        let body = json!({"jsonrpc": "2.0", "method": method}).to_string();
        match self {
            Session::Streamable(s) => s.post(body.as_bytes(), None).map(|_| ()),
            Session::Legacy(s) => s.post_and_wait(body.as_bytes(), None).map(|_| ()),
            Session::Stdio(s) => s.exchange(&body, None).map(|_| ()),
        }
    }

    /// Opens the session's GET stream (streamable HTTP only) and keeps it open, unread.
    pub fn open_stream(&mut self) -> Result<(), String> {
        match self {
            Session::Streamable(s) => s.open_stream(),
            _ => Err("GET streams are a streamable HTTP feature".into()),
        }
    }

    /// Ends the session the way a polite client does (DELETE, or closing the SSE stream).
    pub fn close(self) -> Result<(), String> {
        match self {
            Session::Streamable(s) if s.modern.is_some() => Ok(()),
            Session::Streamable(mut s) => s.delete(),
            Session::Legacy(_) => Ok(()),
            // Closing stdin is how a stdio client ends the session.
            Session::Stdio(StdioServer {
                mut child, stdin, ..
            }) => {
                drop(stdin);
                child
                    .wait()
                    .map(|_| ())
                    .map_err(|e| io_err("waiting for the server", e))
            }
        }
    }
}

/// A stdio MCP server the load client spawned itself: one line of JSON per message.
pub struct StdioServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
    next_id: u64,
}

impl StdioServer {
    fn bump_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Writes one message; with an id, reads lines until its answer.
    fn exchange(&mut self, body: &str, id: Option<u64>) -> Result<Option<Value>, String> {
        let mut out = Vec::with_capacity(body.len() + 1);
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
        self.stdin
            .write_all(&out)
            .map_err(|e| io_err("writing to the server", e))?;
        let Some(id) = id else { return Ok(None) };
        loop {
            self.line.clear();
            match self.stdout.read_line(&mut self.line) {
                Ok(0) => return Err("the server closed its stdout".into()),
                Ok(_) => {
                    if let Some(a) = answer_for(parse_json(self.line.trim().as_bytes())?, id) {
                        return Ok(Some(a));
                    }
                }
                Err(e) => return Err(io_err("reading from the server", e)),
            }
        }
    }
}

/// Finds the answer to request `id` in a JSON-RPC message or batch.
fn answer_for(msg: Value, id: u64) -> Option<Value> {
    match msg {
        Value::Array(items) => items.into_iter().find_map(|m| answer_for(m, id)),
        m if m.get("id").and_then(Value::as_u64) == Some(id)
            && (m.get("result").is_some() || m.get("error").is_some()) =>
        {
            Some(m)
        }
        _ => None,
    }
}

/// What the load client reads of a message: the whole text is checked to be JSON, but only
/// these fields are kept (a big `tools/list` answer costs a scan, not a tree of values; the
/// cost is the same for every system measured).
#[derive(serde::Deserialize)]
struct Skeleton {
    id: Option<Value>,
    method: Option<String>,
    result: Option<ResultSkeleton>,
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ResultSkeleton {
    tools: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(rename = "isError")]
    is_error: Option<bool>,
    #[serde(rename = "protocolVersion")]
    protocol_version: Option<String>,
}

fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    let m: Skeleton = serde_json::from_slice(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        format!("bad JSON in answer ({e}): {text:?}")
    })?;
    let mut v = json!({"jsonrpc": "2.0"});
    if let Some(id) = m.id {
        v["id"] = id;
    }
    if let Some(method) = m.method {
        v["method"] = method.into();
    }
    if let Some(e) = m.error {
        v["error"] = e;
    }
    if let Some(r) = m.result {
        let mut out = json!({});
        if let Some(tools) = r.tools {
            // Only the count is looked at (a list with no tools is an error).
            out["tools"] = Value::Array(vec![Value::Null; tools.len()]);
        }
        if let Some(e) = r.is_error {
            out["isError"] = e.into();
        }
        if let Some(pv) = r.protocol_version {
            out["protocolVersion"] = pv.into();
        }
        v["result"] = out;
    }
    Ok(v)
}

fn io_err(what: &str, e: io::Error) -> String {
    format!("{what}: {e}")
}

/// Sends one request on `conn` (or a new connection) and reads the response head. Failing to
/// write, or the peer closing before any response byte, is `Stale`: a kept-alive connection the
/// server had closed meanwhile, worth one retry.
fn send(
    conn: Option<Conn>,
    url: &Url,
    timeout: Duration,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(Conn, http::Head), Attempt> {
    let mut conn = match conn {
        Some(c) => c,
        None => http::connect(url, timeout).map_err(|e| Attempt::Failed(io_err("connect", e)))?,
    };
    if let Err(e) = http::write_request(&mut conn, method, url, headers, body) {
        return Err(Attempt::Stale(io_err("write", e)));
    }
    match http::read_head(&mut conn) {
        Ok(head) => Ok((conn, head)),
        Err(e)
            if e.kind() == io::ErrorKind::UnexpectedEof
                || e.kind() == io::ErrorKind::ConnectionReset =>
        {
            Err(Attempt::Stale(io_err("read", e)))
        }
        Err(e) => Err(Attempt::Failed(io_err("read", e))),
    }
}

pub struct Streamable {
    url: Url,
    /// The kept-alive connection, if the last response allowed reuse.
    conn: Option<Conn>,
    /// The GET stream, once opened (held, never read: the benchmark counts idle streams).
    stream: Option<Conn>,
    session_id: Option<String>,
    protocol: Option<String>,
    next_id: u64,
    timeout: Duration,
    /// A 2026-07-28 client: the method and name of the request being sent (its headers).
    modern: Option<(String, String)>,
}

impl Streamable {
    fn bump_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(sid) = &self.session_id {
            h.push(("Mcp-Session-Id", sid));
        }
        if let Some(v) = &self.protocol {
            h.push(("MCP-Protocol-Version", v));
        }
        if let Some((method, name)) = &self.modern {
            h.push(("MCP-Protocol-Version", MODERN_VERSION));
            h.push(("Mcp-Method", method));
            if !name.is_empty() {
                h.push(("Mcp-Name", name));
            }
        }
        h
    }

    /// GETs the server's stream on the kept-alive connection (a fresh one if that has gone
    /// stale) and keeps the connection once a 200 `text/event-stream` head arrived.
    fn open_stream(&mut self) -> Result<(), String> {
        let reused = self.conn.is_some();
        match self.try_open_stream() {
            Err(Attempt::Stale(e)) if reused => self.try_open_stream().map_err(|a| a.message(&e)),
            r => r.map_err(|a| a.message("")),
        }
    }

    fn try_open_stream(&mut self) -> Result<(), Attempt> {
        let conn = self.conn.take();
        let mut headers = self.headers();
        headers.retain(|(n, _)| *n != "Content-Type" && *n != "Accept");
        headers.push(("Accept", "text/event-stream"));
        let (conn, head) = send(conn, &self.url, self.timeout, "GET", &headers, b"")?;
        if head.status != 200 || !head.is_event_stream() {
            return Err(Attempt::Failed(format!(
                "GET stream: HTTP {} ({})",
                head.status,
                head.header("content-type").unwrap_or("no content type")
            )));
        }
        self.stream = Some(conn);
        Ok(())
    }

    /// POSTs one message. A kept-alive connection the server has closed meanwhile fails before
    /// any response byte; that case alone is retried once on a fresh connection.
    fn post(&mut self, body: &[u8], id: Option<u64>) -> Result<Option<Value>, String> {
        let reused = self.conn.is_some();
        match self.try_post(body, id) {
            Err(Attempt::Stale(e)) if reused => self.try_post(body, id).map_err(|a| a.message(&e)),
            r => r.map_err(|a| a.message("")),
        }
    }

    fn try_post(&mut self, body: &[u8], id: Option<u64>) -> Result<Option<Value>, Attempt> {
        let conn = self.conn.take();
        let headers = self.headers();
        let (mut conn, head) = send(conn, &self.url, self.timeout, "POST", &headers, body)?;
        if let Some(sid) = head.header("mcp-session-id") {
            if self.session_id.is_none() {
                self.session_id = Some(sid.to_string());
            }
        }
        let framing = head.framing().map_err(Attempt::Failed)?;
        let keep = head.keep_alive() && !matches!(framing, http::Framing::Close);
        let mut reader = Body::new(&mut conn, framing);
        let answer = if head.status == 202 || head.status == 204 {
            io::copy(&mut reader, &mut io::sink())
                .map_err(|e| Attempt::Failed(io_err("body", e)))?;
            None
        } else if head.status != 200 {
            let text = reader.read_all().unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
            return Err(Attempt::Failed(format!(
                "HTTP {}: {}",
                head.status,
                text.trim()
            )));
        } else if head.is_event_stream() {
            let mut events = BufReader::new(reader);
            let mut found = None;
            while let Some(ev) =
                http::next_event(&mut events).map_err(|e| Attempt::Failed(io_err("SSE", e)))?
            {
                if ev.data.is_empty() {
                    continue; // priming event (SSE polling) carries no message
                }
                let msg = parse_json(ev.data.as_bytes()).map_err(Attempt::Failed)?;
                if let Some(a) = id.and_then(|id| answer_for(msg, id)) {
                    found = Some(a);
                    break;
                }
            }
            // Read the stream to its end so the connection can carry the next request.
            io::copy(&mut events, &mut io::sink())
                .map_err(|e| Attempt::Failed(io_err("SSE", e)))?;
            if found.is_none() && id.is_some() {
                return Err(Attempt::Failed(
                    "SSE answer ended without the response".into(),
                ));
            }
            found
        } else {
            let bytes = reader
                .read_all()
                .map_err(|e| Attempt::Failed(io_err("body", e)))?;
            match id {
                Some(id) => Some(
                    answer_for(parse_json(&bytes).map_err(Attempt::Failed)?, id)
                        .ok_or_else(|| Attempt::Failed("JSON answer for another id".into()))?,
                ),
                None => None,
            }
        };
        if keep {
            self.conn = Some(conn);
        }
        Ok(answer)
    }

    fn delete(&mut self) -> Result<(), String> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => http::connect(&self.url, self.timeout).map_err(|e| io_err("connect", e))?,
        };
        let headers = self.headers();
        http::write_request(&mut conn, "DELETE", &self.url, &headers[1..], b"")
            .map_err(|e| io_err("DELETE", e))?;
        let head = http::read_head(&mut conn).map_err(|e| io_err("DELETE", e))?;
        // 405 means the server does not let clients end sessions; that is allowed by the spec.
        if !(head.status == 200 || head.status == 202 || head.status == 204 || head.status == 405) {
            return Err(format!("DELETE: HTTP {}", head.status));
        }
        Ok(())
    }
}

/// One try of a POST: `Stale` failures may be retried on a fresh connection.
enum Attempt {
    Stale(String),
    Failed(String),
}

impl Attempt {
    fn message(self, earlier: &str) -> String {
        let m = match self {
            Attempt::Stale(m) | Attempt::Failed(m) => m,
        };
        if earlier.is_empty() {
            m
        } else {
            format!("{m} (after retrying: {earlier})")
        }
    }
}

/// Legacy HTTP+SSE (2024-11-05): answers arrive on the GET stream, POSTs only get 202.
pub struct Legacy {
    stream: BufReader<Body<Conn>>,
    endpoint: Url,
    post: Streamless,
    next_id: u64,
}

/// The POST side of a legacy session: a kept-alive connection that only expects 2xx.
struct Streamless {
    conn: Option<Conn>,
    timeout: Duration,
}

impl Legacy {
    fn connect(url: &Url, timeout: Duration) -> Result<Legacy, String> {
        let mut conn = http::connect(url, timeout).map_err(|e| io_err("connect", e))?;
        http::write_request(
            &mut conn,
            "GET",
            url,
            &[("Accept", "text/event-stream")],
            b"",
        )
        .map_err(|e| io_err("GET", e))?;
        let head = http::read_head(&mut conn).map_err(|e| io_err("GET", e))?;
        if head.status != 200 || !head.is_event_stream() {
            return Err(format!(
                "GET {}: HTTP {}, not an event stream",
                url.path, head.status
            ));
        }
        let framing = head.framing()?;
        let mut stream = BufReader::new(Body::new(conn, framing));
        loop {
            match http::next_event(&mut stream).map_err(|e| io_err("SSE", e))? {
                Some(ev) if ev.event == "endpoint" => {
                    let endpoint = url.join(ev.data.trim())?;
                    let post = Streamless {
                        conn: None,
                        timeout,
                    };
                    return Ok(Legacy {
                        stream,
                        endpoint,
                        post,
                        next_id: 0,
                    });
                }
                Some(_) => continue,
                None => return Err("SSE stream ended before the endpoint event".into()),
            }
        }
    }

    fn bump_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn post_and_wait(&mut self, body: &[u8], id: Option<u64>) -> Result<Option<Value>, String> {
        self.post.send(&self.endpoint, body)?;
        let Some(id) = id else { return Ok(None) };
        loop {
            match http::next_event(&mut self.stream).map_err(|e| io_err("SSE", e))? {
                Some(ev) if ev.event.is_empty() || ev.event == "message" => {
                    if let Some(a) = answer_for(parse_json(ev.data.as_bytes())?, id) {
                        return Ok(Some(a));
                    }
                }
                Some(_) => continue,
                None => return Err("SSE stream ended while waiting for an answer".into()),
            }
        }
    }
}

impl Streamless {
    fn send(&mut self, url: &Url, body: &[u8]) -> Result<(), String> {
        let reused = self.conn.is_some();
        match self.try_send(url, body) {
            Err(Attempt::Stale(e)) if reused => self.try_send(url, body).map_err(|a| a.message(&e)),
            r => r.map_err(|a| a.message("")),
        }
    }

    fn try_send(&mut self, url: &Url, body: &[u8]) -> Result<(), Attempt> {
        let headers = [("Content-Type", "application/json")];
        let (mut conn, head) = send(self.conn.take(), url, self.timeout, "POST", &headers, body)?;
        let framing = head.framing().map_err(Attempt::Failed)?;
        let keep = head.keep_alive() && !matches!(framing, http::Framing::Close);
        let text = Body::new(&mut conn, framing)
            .read_all()
            .map_err(|e| Attempt::Failed(io_err("body", e)))?;
        if !(200..300).contains(&head.status) {
            let text = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
            return Err(Attempt::Failed(format!(
                "POST: HTTP {}: {}",
                head.status,
                text.trim()
            )));
        }
        if keep {
            self.conn = Some(conn);
        }
        Ok(())
    }
}
