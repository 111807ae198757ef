//! Helpers for the integration tests: run the real `mcplex` binary against the real
//! `mcplex-demo` child, talk to it over raw HTTP/1.1, and assert on what a client sees.
//!
//! Std only. Every blocking operation has a timeout so that a hung gateway fails a test
//! instead of blocking the whole run.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default timeout for one read or write on a test connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gateway may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The protocol revision the tests negotiate.
pub const VERSION: &str = "2025-06-18";

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcplex")
}

pub fn demo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcplex-demo")
}

// ---- temp dirs -------------------------------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mcplex-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- configs ---------------------------------------------------------------------------------

/// The one-target shorthand config on an OS-chosen port; `extra` is added at the top level
/// (for example `config: {maxBodyBytes: 1000}`).
pub fn demo_config(extra: &str) -> String {
    stdio_config(extra, demo_bin())
}

/// Like [`demo_config`] with another command for the target.
pub fn stdio_config(extra: &str, cmd: &str) -> String {
    format!("{extra}\nmcp:\n  port: 0\n  targets:\n  - name: demo\n    stdio: {{cmd: {cmd:?}}}\n")
}

// ---- the gateway process ---------------------------------------------------------------------

/// A running gateway, stopped on drop.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
    _dir: TempDir,
}

impl Gateway {
    /// Starts a gateway on the demo target with `extra` top-level config.
    #[track_caller]
    pub fn demo(extra: &str) -> Gateway {
        Gateway::start(&demo_config(extra))
    }

    /// Starts a gateway with this config (which should use `port: 0`) and waits until it
    /// listens. Port 0 lets the OS choose, so parallel tests never collide.
    #[track_caller]
    pub fn start(config: &str) -> Gateway {
        Gateway::start_with(config, &[], &[])
    }

    fn listening_port(&self) -> Option<u16> {
        let log = self.log.lock().ok()?;
        log.iter().find_map(|l| {
            let addr = l.split("listening on ").nth(1)?;
            addr.trim().rsplit_once(':')?.1.parse().ok()
        })
    }

    /// Everything the gateway logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The exit status, if the gateway has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits up to `limit` for the gateway to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panics (with the log) if the gateway is no longer running.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!("mcplex died ({st}); log:\n{}", self.log_text());
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) to the gateway.
    pub fn signal(&self, sig: &str) {
        kill(self.pid, sig);
    }

    /// The gateway's live child processes.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// Starts an MCP session (initialize + notifications/initialized).
    #[track_caller]
    pub fn session(&self) -> Session {
        Session::initialize(self.port)
    }

    /// Opens a session's GET stream on a new connection; asserts it was accepted.
    #[track_caller]
    pub fn open_get(&self, s: &Session) -> (Client, Head) {
        let mut c = self.connect();
        c.send(&request(
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", &s.id),
                ("MCP-Protocol-Version", VERSION),
            ],
            b"",
        ))
        .expect("send GET");
        let head = c.read_head().expect("GET head");
        assert_eq!(head.status, 200, "GET stream refused: {head:?}");
        (c, head)
    }
}

/// `mcplex-demo --http` (plus `args`) on a free port, killed on drop.
pub struct DemoHttp {
    child: Child,
    pub port: u16,
}

impl DemoHttp {
    pub fn start(args: &[&str]) -> DemoHttp {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new(demo_bin())
                .args(["--http", "--port", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mcplex-demo --http");
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return DemoHttp { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mcplex-demo --http {args:?} did not start");
    }
}

impl Drop for DemoHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.status.is_none() && matches!(child.try_wait(), Ok(None)) {
            // SIGTERM first so the gateway reaps its own children; SIGKILL if it hangs.
            kill(self.pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Runs `kill -SIG pid`.
pub fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Child pids of `pid`, from /proc/<pid>/task/*/children.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The state letter of a process (`R`, `S`, `Z`, ...), None when it no longer exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a time limit; returns (exit code, stdout, stderr).
#[track_caller]
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    // Drain both pipes on threads so a chatty child cannot fill one and stall.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    (status.code(), stdout, stderr)
}

// ---- raw HTTP/1.1 ----------------------------------------------------------------------------

/// Builds a request. A `Content-Length` is added for a non-empty body unless `headers` already
/// frame the body themselves; `Host: localhost` is added unless `headers` name a Host.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        out.extend_from_slice(b"Host: localhost\r\n");
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !has("content-length") && !has("transfer-encoding") && (!body.is_empty() || method == "POST")
    {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The headers of a well-formed MCP POST (without session).
pub const POST_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

/// A well-formed MCP POST for a session (or none).
pub fn mcp_post(session: Option<&str>, body: &str) -> Vec<u8> {
    let mut h: Vec<(&str, &str)> = POST_HEADERS.to_vec();
    if let Some(s) = session {
        h.push(("Mcp-Session-Id", s));
        h.push(("MCP-Protocol-Version", VERSION));
    }
    request("POST", "/mcp", &h, body.as_bytes())
}

/// One response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {:?}\n{:?}", self.text(), self.head)
        })
    }

    /// The SSE events of a text/event-stream body.
    pub fn events(&self) -> Vec<Event> {
        let mut buf = self.body.clone();
        let mut out = Vec::new();
        while let Some(e) = take_event(&mut buf) {
            out.push(e);
        }
        out
    }

    /// Every JSON-RPC message in the response, whether it came as JSON (one or a batch) or as
    /// SSE events.
    #[track_caller]
    pub fn messages(&self) -> Vec<Value> {
        if self.head.content_type().starts_with("text/event-stream") {
            return self.events().iter().map(Event::json).collect();
        }
        match self.json() {
            Value::Array(a) => a,
            v => vec![v],
        }
    }

    /// The JSON-RPC response with this id (panics with the whole response if missing).
    #[track_caller]
    pub fn rpc(&self, id: &Value) -> Value {
        let found = self.messages().into_iter().find(|m| {
            m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
        });
        found.unwrap_or_else(|| {
            panic!(
                "no response with id {id} in {} {:?}",
                self.status(),
                self.text()
            )
        })
    }
}

/// One SSE event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

impl Event {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// Removes and parses the first complete event from `buf`; comment-only blocks are skipped.
/// Simple on purpose (LF line ends, as the gateway writes them): an independent oracle.
fn take_event(buf: &mut Vec<u8>) -> Option<Event> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let mut ev = Event::default();
        let mut data: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let v = v.strip_prefix(' ').unwrap_or(v);
            match k {
                "event" => ev.event = v.to_string(),
                "data" => data.push(v),
                _ => {}
            }
        }
        if !data.is_empty() {
            ev.data = data.join("\n");
            return Some(ev);
        }
    }
}

/// A client connection with timeouts; reads are buffered so pipelined responses work.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Decoded stream bytes not yet returned as SSE events.
    sse: Vec<u8>,
}

impl Client {
    #[track_caller]
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to mcplex");
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
        Client {
            stream,
            buf: Vec::new(),
            sse: Vec::new(),
        }
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).ok();
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Closes our sending side (the server sees EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                // Seen under heavy parallel runs: a signal to the test process is no failure.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn eof() -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the gateway",
        )
    }

    fn read_exact_buf(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(Client::eof());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill()? == 0 {
                return Err(Client::eof());
            }
        }
    }

    /// Reads a response head.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let (Some(v), Some(code)) = (parts.next(), parts.next()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        };
        if !v.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status = code.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status {status_line:?}"),
            )
        })?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        self.sse.clear();
        Ok(Head { status, headers })
    }

    /// Reads one chunk of a chunked body; None after the last chunk (and trailers).
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let line = self.read_line()?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            while !self.read_line()?.is_empty() {}
            return Ok(None);
        }
        let mut data = self.read_exact_buf(size + 2)?;
        if !data.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk without CRLF",
            ));
        }
        data.truncate(size);
        Ok(Some(data))
    }

    /// Reads the body that follows `head`.
    pub fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if matches!(head.status, 100..=199 | 204 | 304) {
            return Ok(Vec::new());
        }
        if head.is_chunked() {
            let mut body = Vec::new();
            while let Some(c) = self.read_chunk()? {
                body.extend_from_slice(&c);
            }
            return Ok(body);
        }
        if let Some(n) = head.header("content-length") {
            let n: usize = n
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
            return self.read_exact_buf(n);
        }
        // Close-delimited.
        while self.fill()? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads one whole response.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head()?;
        let body = self.read_body(&head)?;
        Ok(Response { head, body })
    }

    /// Sends a request and reads its response.
    pub fn roundtrip(&mut self, req: &[u8]) -> io::Result<Response> {
        self.send(req)?;
        self.read_response()
    }

    /// Reads the next SSE event of a streamed body that began with `head`; None when the
    /// stream ends.
    pub fn next_event(&mut self, head: &Head) -> io::Result<Option<Event>> {
        loop {
            if let Some(e) = take_event(&mut self.sse) {
                return Ok(Some(e));
            }
            if head.is_chunked() {
                match self.read_chunk()? {
                    Some(c) => self.sse.extend_from_slice(&c),
                    None => return Ok(None),
                }
            } else {
                if !self.buf.is_empty() {
                    let b = std::mem::take(&mut self.buf);
                    self.sse.extend_from_slice(&b);
                    continue;
                }
                if self.fill()? == 0 {
                    return Ok(None);
                }
            }
        }
    }

    /// Whether the gateway closes the connection within `limit` (EOF or reset), reading and
    /// discarding anything it sends first. Returns the bytes received before the close.
    pub fn closed_within(&mut self, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::mem::take(&mut self.buf));
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.fill() {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(std::mem::take(&mut self.buf));
                }
                // A reset is a close too.
                Err(_) => return Ok(std::mem::take(&mut self.buf)),
            }
        }
    }
}

/// A one-shot request on a fresh connection.
#[track_caller]
pub fn send_once(port: u16, req: &[u8]) -> Response {
    let mut c = Client::connect(port);
    c.roundtrip(req).unwrap_or_else(|e| {
        let shown = &req[..req.len().min(600)];
        panic!("no response to {:?}: {e}", String::from_utf8_lossy(shown))
    })
}

// ---- MCP sessions ----------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh JSON-RPC id, unique within the test binary.
pub fn next_id() -> Value {
    json!(NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

pub fn rpc_request(id: &Value, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

pub fn initialize_body(id: &Value) -> String {
    rpc_request(
        id,
        "initialize",
        json!({
            "protocolVersion": VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcplex-tests", "version": "0"},
        }),
    )
}

/// An initialized MCP session.
pub struct Session {
    pub port: u16,
    pub id: String,
    /// The initialize result.
    pub init: Value,
}

impl Session {
    #[track_caller]
    pub fn initialize(port: u16) -> Session {
        let id = next_id();
        let r = send_once(port, &mcp_post(None, &initialize_body(&id)));
        assert_status(&r, 200);
        let sid = r
            .header("mcp-session-id")
            .unwrap_or_else(|| {
                panic!(
                    "initialize gave no Mcp-Session-Id: {:?} {}",
                    r.head,
                    r.text()
                )
            })
            .to_string();
        let msg = r.rpc(&id);
        let init = assert_rpc_ok(&msg).clone();
        let s = Session {
            port,
            id: sid,
            init,
        };
        let n = s.notify("notifications/initialized", json!({}));
        assert_status(&n, 202);
        s
    }

    /// The POST for a body in this session.
    pub fn post_bytes(&self, body: &str) -> Vec<u8> {
        mcp_post(Some(&self.id), body)
    }

    /// POSTs a body on a fresh connection.
    #[track_caller]
    pub fn post(&self, body: &str) -> Response {
        send_once(self.port, &self.post_bytes(body))
    }

    /// Sends a request and returns its JSON-RPC response (result or error).
    #[track_caller]
    pub fn call(&self, method: &str, params: Value) -> Value {
        let id = next_id();
        let r = self.post(&rpc_request(&id, method, params));
        assert_status(&r, 200);
        r.rpc(&id)
    }

    /// Calls a tool and returns the JSON-RPC response.
    #[track_caller]
    pub fn tool(&self, name: &str, args: Value) -> Value {
        self.call("tools/call", json!({"name": name, "arguments": args}))
    }

    /// Sends a notification; returns the HTTP response.
    #[track_caller]
    pub fn notify(&self, method: &str, params: Value) -> Response {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string();
        self.post(&body)
    }

    /// Asserts the session still works end to end: echo through the target.
    #[track_caller]
    pub fn assert_works(&self) {
        let msg = format!("still here {}", next_id());
        let r = self.tool("echo", json!({"message": msg}));
        assert_eq!(
            tool_text(&r),
            msg,
            "session {} no longer works: {r}",
            self.id
        );
    }
}

/// The text of a tools/call response's first content item.
#[track_caller]
pub fn tool_text(resp: &Value) -> String {
    let result = assert_rpc_ok(resp);
    result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text content in {resp}"))
        .to_string()
}

// ---- asserts ---------------------------------------------------------------------------------

#[track_caller]
pub fn assert_status(r: &Response, status: u16) {
    assert_eq!(
        r.status(),
        status,
        "expected HTTP {status}, got {} with headers {:?} and body {:?}",
        r.status(),
        r.head.headers,
        r.text()
    );
}

/// Asserts a JSON-RPC success and returns its result.
#[track_caller]
pub fn assert_rpc_ok(msg: &Value) -> &Value {
    assert_eq!(
        msg.get("jsonrpc"),
        Some(&json!("2.0")),
        "not JSON-RPC 2.0: {msg}"
    );
    match (msg.get("result"), msg.get("error")) {
        (Some(r), None) => r,
        _ => panic!("expected a JSON-RPC result, got {msg}"),
    }
}

/// Asserts a JSON-RPC error (with `code`, if given) and returns its message.
#[track_caller]
pub fn assert_rpc_error(msg: &Value, code: Option<i64>) -> String {
    assert_eq!(
        msg.get("jsonrpc"),
        Some(&json!("2.0")),
        "not JSON-RPC 2.0: {msg}"
    );
    let Some(err) = msg.get("error") else {
        panic!("expected a JSON-RPC error, got {msg}");
    };
    assert!(msg.get("result").is_none(), "both result and error: {msg}");
    if let Some(code) = code {
        assert_eq!(
            err.get("code").and_then(Value::as_i64),
            Some(code),
            "wrong error code in {msg}"
        );
    }
    err.get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

// ---- reliability and load helpers (issue #6) -------------------------------------------------

impl Gateway {
    /// Like [`Gateway::start`], with extra command-line arguments (for example `--watch`) and
    /// extra environment variables for the gateway process.
    #[track_caller]
    pub fn start_with(config: &str, args: &[&str], envs: &[(&str, &str)]) -> Gateway {
        let dir = TempDir::new();
        let file = dir.write("mcplex.yaml", config);
        let mut child = Command::new(gateway_bin())
            .arg("-f")
            .arg(&file)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcplex");
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MCPLEX_TEST_LOG").is_some() {
                    eprintln!("[gateway {pid}] {line}");
                }
                sink.lock().map(|mut l| l.push(line)).ok();
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            port: 0,
            pid,
            log,
            status: None,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = gw.listening_port() {
                gw.port = port;
                return gw;
            }
            if let Some(st) = gw.try_wait() {
                panic!(
                    "mcplex exited ({st}) before listening; log:\n{}",
                    gw.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "mcplex did not listen within {START_TIMEOUT:?}; log:\n{}",
                    gw.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The configuration file the gateway was started with (rewrite it to test reloads).
    pub fn config_file(&self) -> PathBuf {
        self._dir.path().join("mcplex.yaml")
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .map(|l| l.iter().filter(|x| x.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Waits up to `limit` until more than `before` log lines contain `needle`.
    pub fn wait_log(&self, needle: &str, before: usize, limit: Duration) -> bool {
        wait_until(limit, || self.log_count(needle) > before)
    }

    /// `GET /healthz` as JSON.
    #[track_caller]
    pub fn healthz(&self) -> Value {
        let r = send_once(self.port, &request("GET", "/healthz", &[], b""));
        assert_status(&r, 200);
        r.json()
    }
}

/// The number of open file descriptors of `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The open file descriptors of `pid` with what they point at, for failure messages.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{}->{target}", e.file_name().to_string_lossy())
        })
        .collect();
    out.sort();
    out
}

/// A field (in kB) of /proc/<pid>/status, such as `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The resident set size of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// A small deterministic pseudo-random generator (xorshift64*), so load tests are repeatable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `-limit..=limit`.
    pub fn signed(&mut self, limit: i64) -> i64 {
        let span = (limit as u64) * 2 + 1;
        self.below(span) as i64 - limit
    }
}
