//! HTTP upstreams (issue #4): the gateway against a fake streamable-HTTP upstream written here
//! (std `TcpListener` + a thread per connection), which misbehaves on demand per tool name, and
//! against `mcplex-demo --http`.
//!
//! The fake speaks just enough MCP: `initialize` → JSON with an `Mcp-Session-Id`; notifications
//! → 202; `tools/list`; `tools/call` of `ok` (answers `ok <message>`) and of the misbehaving
//! tools, each of which first waits until a concurrent `ok` call has been answered (so the test
//! proves that a sibling call on the same session goes through while the bad one is pending),
//! then misbehaves. It counts TCP connections, records every request, serves an optional GET
//! stream the test can push events on, answers DELETE, and can "forget" its sessions (→ 404).
//!
//! Every wait is bounded; every fake and child process is stopped on drop.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a misbehaving tool waits for the concurrent `ok` call before misbehaving anyway.
const BARRIER: Duration = Duration::from_secs(5);

// ---- the fake upstream -----------------------------------------------------------------------

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Lower-cased header names.
    headers: HashMap<String, String>,
    /// The JSON-RPC method (POSTs), and the tool name for tools/call.
    rpc: Option<String>,
    tool: Option<String>,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    /// GET on /mcp opens a server-to-client stream (else 405).
    get_stream: bool,
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// `ok` calls answered, for the misbehaving tools' barrier.
    ok_served: Mutex<usize>,
    ok_cv: Condvar,
    barrier_timeouts: AtomicUsize,
    /// Answer 404 to every request that names a session.
    forget: AtomicBool,
    sessions: AtomicUsize,
    /// Open GET streams (clones of their sockets) the test can push events on.
    streams: Mutex<Vec<TcpStream>>,
    /// Every accepted socket, shut down when the fake stops.
    sockets: Mutex<Vec<TcpStream>>,
}

struct Fake {
    port: u16,
    st: Arc<State>,
}

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Fake {
    fn start(get_stream: bool) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        let port = listener.local_addr().expect("local addr").port();
        let st = Arc::new(State {
            get_stream,
            ..State::default()
        });
        let st2 = Arc::clone(&st);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                st2.connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = conn.try_clone() {
                    st2.sockets.lock().unwrap().push(c);
                }
                let st3 = Arc::clone(&st2);
                std::thread::spawn(move || {
                    let _ = serve(&st3, conn);
                });
            }
        });
        Fake { port, st }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    fn connections(&self) -> usize {
        self.st.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().unwrap().clone()
    }

    /// Whether a tools/call of `tool` has arrived.
    fn saw_call(&self, tool: &str) -> bool {
        self.seen().iter().any(|s| s.tool.as_deref() == Some(tool))
    }

    /// Writes one SSE event to every open GET stream; returns how many took it.
    fn push(&self, id: Option<&str>, msg: &Value) -> usize {
        let mut ev = String::from("event: message\n");
        if let Some(id) = id {
            ev.push_str(&format!("id: {id}\n"));
        }
        ev.push_str(&format!("data: {msg}\n\n"));
        let mut streams = self.st.streams.lock().unwrap();
        streams.retain_mut(|s| write_chunk(s, ev.as_bytes()).is_ok());
        streams.len()
    }

    /// Ends every open GET stream (last chunk; the connection stays up).
    fn end_streams(&self) {
        let mut streams = self.st.streams.lock().unwrap();
        for s in streams.iter_mut() {
            let _ = s.write_all(b"0\r\n\r\n");
        }
        streams.clear();
    }

    fn open_streams(&self) -> usize {
        self.st.streams.lock().unwrap().len()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.st.stop.store(true, Ordering::SeqCst);
        for s in self.st.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Req>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(Req {
        method,
        path,
        headers,
        body,
    }))
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)
}

fn json_reply(s: &mut TcpStream, sid: Option<&str>, msg: &Value) -> io::Result<()> {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(sid) = sid {
        h.push(("Mcp-Session-Id", sid));
    }
    respond(s, "200 OK", &h, msg.to_string().as_bytes())
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn write_chunk(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    s.write_all(&out)?;
    s.flush()
}

fn tool_result(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

/// Serves one connection, request after request (keep-alive).
fn serve(st: &State, conn: TcpStream) -> io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r)? {
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let msg: Option<Value> = serde_json::from_slice(&req.body).ok();
        let rpc = msg
            .as_ref()
            .and_then(|m| m.get("method"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let tool = msg
            .as_ref()
            .filter(|_| rpc.as_deref() == Some("tools/call"))
            .and_then(|m| m.pointer("/params/name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        st.seen.lock().unwrap().push(Seen {
            method: req.method.clone(),
            headers: req.headers.clone(),
            rpc: rpc.clone(),
            tool: tool.clone(),
        });
        if req.path != "/mcp" {
            respond(&mut w, "404 Not Found", &[], b"no such path")?;
            continue;
        }
        let sid = req.headers.get("mcp-session-id").cloned();
        if sid.is_some() && st.forget.load(Ordering::SeqCst) {
            respond(&mut w, "404 Not Found", &[], b"unknown session")?;
            continue;
        }
        match req.method.as_str() {
            "DELETE" => respond(&mut w, "200 OK", &[], b"")?,
            "GET" if st.get_stream && sid.is_some() => {
                w.write_all(SSE_HEAD)?;
                w.flush()?;
                st.streams.lock().unwrap().push(w.try_clone()?);
                // The stream owns this connection from now on: wait for the gateway to go.
                let mut sink = [0u8; 1024];
                while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
                return Ok(());
            }
            "GET" => respond(&mut w, "405 Method Not Allowed", &[("Allow", "POST")], b"")?,
            "POST" => {
                let Some(msg) = msg else {
                    respond(&mut w, "400 Bad Request", &[], b"not JSON")?;
                    continue;
                };
                let Some(id) = msg.get("id").cloned() else {
                    respond(&mut w, "202 Accepted", &[], b"")?;
                    continue;
                };
                if msg.get("method").is_none() {
                    // A response from the client.
                    respond(&mut w, "202 Accepted", &[], b"")?;
                    continue;
                }
                let answer = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result});
                match rpc.as_deref().unwrap_or("") {
                    "initialize" => {
                        let n = st.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                        let version = msg
                            .pointer("/params/protocolVersion")
                            .cloned()
                            .unwrap_or(json!(VERSION));
                        let result = json!({
                            "protocolVersion": version,
                            "capabilities": {"tools": {}, "logging": {}},
                            "serverInfo": {"name": "fake-upstream", "version": "0"},
                        });
                        json_reply(&mut w, Some(&format!("fake-session-{n}")), &answer(result))?;
                    }
                    "tools/list" => {
                        let tools: Vec<Value> = [
                            "ok",
                            "hang",
                            "http500",
                            "truncated_sse",
                            "truncated_sse_eof",
                            "close_mid",
                            "malformed_sse",
                            "malformed_sse_text",
                            "ok_then_close",
                        ]
                        .iter()
                        .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
                        .collect();
                        json_reply(&mut w, None, &answer(json!({"tools": tools})))?;
                    }
                    "tools/call" => {
                        let text = msg
                            .pointer("/params/arguments/message")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if !misbehave(st, &mut w, tool.as_deref().unwrap_or(""), &id, text)? {
                            return Ok(());
                        }
                    }
                    _ => json_reply(&mut w, None, &answer(json!({})))?,
                }
            }
            _ => respond(&mut w, "405 Method Not Allowed", &[], b"")?,
        }
    }
    Ok(())
}

/// Waits (bounded) until an `ok` call that arrived after this point has been answered.
fn barrier(st: &State) {
    let guard = st.ok_served.lock().unwrap();
    let start = *guard;
    let (_g, res) = st
        .ok_cv
        .wait_timeout_while(guard, BARRIER, |n| *n == start)
        .unwrap();
    if res.timed_out() {
        st.barrier_timeouts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Answers a tools/call; Ok(false) when the connection is to be given up.
fn misbehave(
    st: &State,
    w: &mut TcpStream,
    tool: &str,
    id: &Value,
    text: &str,
) -> io::Result<bool> {
    let ok = |t: &str| json!({"jsonrpc": "2.0", "id": id, "result": tool_result(t)});
    match tool {
        "ok" => {
            json_reply(w, None, &ok(&format!("ok {text}")))?;
            *st.ok_served.lock().unwrap() += 1;
            st.ok_cv.notify_all();
            Ok(true)
        }
        "hang" => {
            // Never answer; keep the socket open (it is in `sockets`) and stop reading.
            Ok(false)
        }
        "http500" => {
            barrier(st);
            respond(
                w,
                "500 Internal Server Error",
                &[("Content-Type", "text/plain")],
                b"internal failure: boom",
            )?;
            Ok(true)
        }
        "truncated_sse" => {
            barrier(st);
            w.write_all(SSE_HEAD)?;
            let answer = ok("never complete").to_string();
            let half = &answer[..answer.len() / 2];
            write_chunk(w, format!("event: message\ndata: {half}").as_bytes())?;
            let _ = w.shutdown(Shutdown::Both);
            Ok(false)
        }
        "truncated_sse_eof" => {
            // Close-delimited body (no length, not chunked): the close ends the body, but
            // the event in it is unfinished.
            barrier(st);
            let answer = ok("never complete").to_string();
            let half = &answer[..answer.len() / 2];
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
            w.write_all(format!("{head}event: message\ndata: {half}").as_bytes())?;
            let _ = w.shutdown(Shutdown::Both);
            Ok(false)
        }
        "close_mid" => {
            barrier(st);
            w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n",
            )?;
            w.flush()?;
            let _ = w.shutdown(Shutdown::Both);
            Ok(false)
        }
        "malformed_sse" => {
            barrier(st);
            w.write_all(SSE_HEAD)?;
            write_chunk(w, b"\xff\xfe\x00garbage without a colon\n\n")?;
            write_chunk(
                w,
                b"data: {this is not json\n\nretry: soon\nevent: \x01\x02\n\n",
            )?;
            write_chunk(w, b"event: message\ndata: [1, 2, \n\n")?;
            w.write_all(b"0\r\n\r\n")?;
            Ok(true)
        }
        "malformed_sse_text" => {
            // Valid UTF-8 this time: fields without colons, unknown fields, data that is not
            // JSON, an unfinished batch; then the stream ends without the answer.
            barrier(st);
            w.write_all(SSE_HEAD)?;
            write_chunk(
                w,
                b"garbage without a colon
more garbage

",
            )?;
            write_chunk(
                w,
                b"data: {this is not json

retry: soon
bogus: field

",
            )?;
            write_chunk(
                w,
                b"event: message
data: [1, 2, 

",
            )?;
            w.write_all(
                b"0

",
            )?;
            Ok(true)
        }
        "ok_then_close" => {
            // A kept-alive answer, then the server drops the idle connection (as servers with
            // short idle timeouts do).
            json_reply(w, None, &ok(&format!("ok {text}")))?;
            let _ = w.shutdown(Shutdown::Both);
            Ok(false)
        }
        "ok_then_close_unread" => {
            // A kept-alive answer; the next request arrives on the connection, and the server
            // closes it unread (the race of a server's idle timeout against a reuse).
            json_reply(w, None, &ok(&format!("ok {text}")))?;
            w.set_read_timeout(Some(BARRIER))?;
            let _ = w.peek(&mut [0u8; 1]);
            let _ = w.shutdown(Shutdown::Both);
            Ok(false)
        }
        _ => {
            let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": format!("unknown tool {tool}")}});
            json_reply(w, None, &err)?;
            Ok(true)
        }
    }
}

// ---- helpers ---------------------------------------------------------------------------------

/// The shorthand config with one `mcp` target named `fake` at `url`.
fn http_config(extra: &str, url: &str) -> String {
    format!("{extra}\nmcp:\n  port: 0\n  targets:\n  - name: fake\n    mcp: {{host: {url:?}}}\n")
}

fn ok_call(s: &Session, message: &str) {
    let r = s.tool("ok", json!({"message": message}));
    assert_eq!(
        tool_text(&r),
        format!("ok {message}"),
        "ok call failed: {r}"
    );
}

/// A misbehaving call, a concurrent `ok` while it is pending, then a fresh `ok`: only the
/// misbehaving call fails, with an error naming the target and containing every `want`.
fn misbehaving_call_fails_alone(tool: &str, want: &[&str]) -> (String, Duration) {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("config: {requestTimeout: 2s}", &fake.url()));
    let s = gw.session();
    ok_call(&s, "before");
    let (bad, took) = std::thread::scope(|scope| {
        let bad = scope.spawn(|| {
            let t0 = Instant::now();
            let r = s.tool(tool, json!({}));
            (r, t0.elapsed())
        });
        assert!(
            wait_until(Duration::from_secs(5), || fake.saw_call(tool)),
            "the fake never received the {tool} call; log:\n{}",
            gw.log_text()
        );
        ok_call(&s, "concurrent");
        bad.join().expect("bad call thread")
    });
    let msg = assert_rpc_error(&bad, None);
    assert!(
        msg.contains("fake"),
        "{tool}: the error does not name the target: {msg:?}"
    );
    for w in want {
        assert!(
            msg.to_lowercase().contains(&w.to_lowercase()),
            "{tool}: the error lacks {w:?}: {msg:?}"
        );
    }
    assert_eq!(
        fake.st.barrier_timeouts.load(Ordering::SeqCst),
        0,
        "{tool}: the concurrent ok call did not reach the upstream while {tool} was pending"
    );
    // The session goes on: the next requests reconnect as needed and work.
    ok_call(&s, "after");
    ok_call(&s, "after again");
    let mut gw = gw;
    gw.assert_alive();
    (msg, took)
}

// ---- misbehaving upstream --------------------------------------------------------------------

#[test]
fn ok_calls_work_through_the_fake() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    let r = s.call("tools/list", json!({}));
    let names: Vec<&str> = assert_rpc_ok(&r)["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"ok") && names.contains(&"hang"),
        "{names:?}"
    );
    ok_call(&s, "hello");
    // The fake saw the session id and the negotiated version on later requests.
    let seen = fake.seen();
    let call = seen
        .iter()
        .find(|x| x.tool.as_deref() == Some("ok"))
        .expect("ok call");
    assert_eq!(
        call.headers.get("mcp-session-id").map(String::as_str),
        Some("fake-session-1")
    );
    assert_eq!(
        call.headers.get("mcp-protocol-version").map(String::as_str),
        Some(VERSION)
    );
    assert!(seen
        .iter()
        .any(|x| x.rpc.as_deref() == Some("notifications/initialized")));
}

#[test]
fn hanging_call_times_out_alone() {
    let (msg, took) = misbehaving_call_fails_alone("hang", &[]);
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(4),
        "requestTimeout 2s: the hanging call was answered after {took:?} ({msg})"
    );
}

#[test]
fn hanging_call_is_cancelled_upstream() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("config: {requestTimeout: 2s}", &fake.url()));
    let s = gw.session();
    let r = s.tool("hang", json!({}));
    assert_rpc_error(&r, None);
    assert!(
        wait_until(Duration::from_secs(5), || fake
            .seen()
            .iter()
            .any(|x| x.rpc.as_deref() == Some("notifications/cancelled"))),
        "no notifications/cancelled reached the upstream; log:\n{}",
        gw.log_text()
    );
    ok_call(&s, "after");
}

#[test]
fn http_500_fails_the_call_alone() {
    misbehaving_call_fails_alone("http500", &["500"]);
}

#[test]
fn truncated_sse_fails_the_call_alone() {
    misbehaving_call_fails_alone("truncated_sse", &[]);
}

#[test]
fn close_delimited_sse_cut_mid_event_fails_the_call_alone() {
    misbehaving_call_fails_alone("truncated_sse_eof", &[]);
}

#[test]
fn close_after_the_head_fails_the_call_alone() {
    misbehaving_call_fails_alone("close_mid", &[]);
}

#[test]
fn malformed_sse_fails_the_call_alone() {
    misbehaving_call_fails_alone("malformed_sse", &[]);
}

#[test]
fn malformed_text_sse_fails_the_call_alone() {
    misbehaving_call_fails_alone("malformed_sse_text", &[]);
}

// ---- connections -----------------------------------------------------------------------------

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn failed_initialize(gw: &Gateway) -> String {
    let id = next_id();
    let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
    assert_rpc_error(&r.rpc(&id), None)
}

#[test]
fn connection_refused_fails_initialize_naming_the_target() {
    let url = format!("http://127.0.0.1:{}/mcp", closed_port());
    let gw = Gateway::start(&http_config("", &url));
    let msg = failed_initialize(&gw);
    assert!(
        msg.contains("fake"),
        "the error does not name the target: {msg:?}"
    );
    assert!(
        msg.to_lowercase().contains("refused"),
        "the error does not say the connection was refused: {msg:?}"
    );
}

/// README (failureMode): the error names the target once, `target ghost: <reason>`.
#[test]
fn initialize_error_names_the_target_once() {
    let url = format!("http://127.0.0.1:{}/mcp", closed_port());
    let gw = Gateway::start(&http_config("", &url));
    let msg = failed_initialize(&gw);
    assert_eq!(
        msg.matches("target fake").count(),
        1,
        "the target is named more than once: {msg:?}"
    );
}

/// Rounds of a call to `tool` (the fake answers it, then closes the connection its way) and
/// an `ok` call right after, which may go out on that connection: every call is answered,
/// and each reached the server exactly once.
fn calls_survive_a_closed_connection(tool: &str, rounds: usize) {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    for i in 0..rounds {
        let r = s.tool(tool, json!({"message": format!("round {i}")}));
        assert_eq!(tool_text(&r), format!("ok round {i}"), "{r}");
        ok_call(&s, &format!("next {i}"));
    }
    let seen = fake.seen();
    let count = |name: &str| {
        (seen.iter())
            .filter(|x| x.tool.as_deref() == Some(name))
            .count()
    };
    assert_eq!(
        count(tool),
        rounds,
        "a {tool} call was sent more than once upstream"
    );
    assert_eq!(count("ok"), rounds, "each call reached the server once");
}

#[test]
fn connection_closed_while_idle_is_replaced() {
    // The server drops the idle connection; just after, it may not look closed yet.
    calls_survive_a_closed_connection("ok_then_close", 5);
}

#[test]
fn request_on_a_connection_closed_under_it_is_sent_again() {
    // The next request arrives on the connection, which the fake closes unread.
    calls_survive_a_closed_connection("ok_then_close_unread", 3);
}

#[test]
fn sequential_calls_reuse_kept_alive_connections() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    ok_call(&s, "warm-up");
    let before = fake.connections();
    const N: usize = 20;
    for i in 0..N {
        ok_call(&s, &format!("call {i}"));
    }
    let used = fake.connections() - before;
    assert!(
        used <= 2,
        "{N} sequential calls opened {used} new upstream connections (keep-alive not reused)"
    );
}

// ---- session lifecycle -----------------------------------------------------------------------

#[test]
fn client_delete_deletes_the_upstream_session() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    ok_call(&s, "x");
    let r = send_once(
        gw.port,
        &request("DELETE", "/mcp", &[("Mcp-Session-Id", &s.id)], b""),
    );
    assert_status(&r, 200);
    let deleted = || {
        fake.seen().iter().any(|x| {
            x.method == "DELETE"
                && x.headers.get("mcp-session-id").map(String::as_str) == Some("fake-session-1")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), deleted),
        "no DELETE with the upstream session id reached the upstream; seen: {:?}",
        fake.seen()
            .iter()
            .map(|x| (x.method.clone(), x.rpc.clone()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn idle_session_expiry_deletes_the_upstream_session() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("config: {sessionTtl: 1s}", &fake.url()));
    let s = gw.session();
    ok_call(&s, "x");
    let deleted = || {
        fake.seen().iter().any(|x| {
            x.method == "DELETE"
                && x.headers.get("mcp-session-id").map(String::as_str) == Some("fake-session-1")
        })
    };
    assert!(
        wait_until(Duration::from_secs(6), deleted),
        "the expired session was not DELETEd upstream; log:\n{}",
        gw.log_text()
    );
}

#[test]
fn gateway_shutdown_deletes_the_upstream_session() {
    let fake = Fake::start(false);
    let mut gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    ok_call(&s, "x");
    gw.signal("TERM");
    let st = gw.wait_exit(Duration::from_secs(5));
    assert!(
        st.is_some_and(|st| st.success()),
        "exit after SIGTERM: {st:?}"
    );
    assert!(
        fake.seen().iter().any(|x| x.method == "DELETE"
            && x.headers.get("mcp-session-id").map(String::as_str) == Some("fake-session-1")),
        "SIGTERM ended the session without a DELETE to the upstream; log:\n{}",
        gw.log_text()
    );
}

#[test]
fn upstream_forgetting_the_session_fails_the_next_call() {
    let fake = Fake::start(false);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    ok_call(&s, "known");
    fake.st.forget.store(true, Ordering::SeqCst);
    let r = s.tool("ok", json!({"message": "forgotten"}));
    let msg = assert_rpc_error(&r, None);
    assert!(
        msg.contains("no longer knows"),
        "the error does not say the upstream lost the session: {msg:?}"
    );
    assert!(
        msg.contains("fake"),
        "the error does not name the target: {msg:?}"
    );
    // Later calls keep failing with a reason (the target is gone for this session).
    let r = s.tool("ok", json!({"message": "still forgotten"}));
    assert_rpc_error(&r, None);
    let mut gw = gw;
    gw.assert_alive();
}

// ---- the GET stream --------------------------------------------------------------------------

/// Reads events until one satisfies `pred` (bounded by the client's read timeout).
fn wait_event(c: &mut Client, head: &Head, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match c.next_event(head) {
            Ok(Some(ev)) => {
                let v = ev.json();
                if pred(&v) {
                    return v;
                }
                got.push(v);
            }
            Ok(None) => panic!("GET stream ended; events: {got:?}"),
            Err(e) => panic!("GET stream: {e}; events: {got:?}"),
        }
    }
    panic!("no matching event within 10 s; events: {got:?}")
}

#[test]
fn upstream_get_stream_notifications_reach_the_client() {
    let fake = Fake::start(true);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    assert!(
        wait_until(Duration::from_secs(5), || fake.open_streams() == 1),
        "the gateway did not open the upstream GET stream; log:\n{}",
        gw.log_text()
    );
    let (mut c, head) = gw.open_get(&s);
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "from the upstream GET stream"}});
    assert_eq!(fake.push(Some("ev-1"), &note), 1);
    let got = wait_event(&mut c, &head, |v| v["method"] == "notifications/message");
    assert_eq!(
        got["params"]["data"], "from the upstream GET stream",
        "{got}"
    );

    let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    fake.push(Some("ev-2"), &changed);
    wait_event(&mut c, &head, |v| {
        v["method"] == "notifications/tools/list_changed"
    });
    // Calls still work alongside the stream.
    ok_call(&s, "with a stream open");
}

#[test]
fn upstream_get_stream_is_reopened_with_last_event_id() {
    let fake = Fake::start(true);
    let gw = Gateway::start(&http_config("", &fake.url()));
    let s = gw.session();
    assert!(
        wait_until(Duration::from_secs(5), || fake.open_streams() == 1),
        "the gateway did not open the upstream GET stream"
    );
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "first"}});
    fake.push(Some("ev-7"), &note);
    std::thread::sleep(Duration::from_millis(200));
    fake.end_streams();
    let resumed = || {
        fake.seen().iter().any(|x| {
            x.method == "GET" && x.headers.get("last-event-id").map(String::as_str) == Some("ev-7")
        })
    };
    assert!(
        wait_until(Duration::from_secs(8), resumed),
        "the GET stream was not reopened with Last-Event-ID: ev-7; GETs: {:?}",
        fake.seen()
            .iter()
            .filter(|x| x.method == "GET")
            .map(|x| x.headers.get("last-event-id").cloned())
            .collect::<Vec<_>>()
    );
    // Events on the reopened stream still reach the client.
    assert!(wait_until(Duration::from_secs(5), || fake.open_streams() == 1));
    let (mut c, head) = gw.open_get(&s);
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "after reopening"}});
    fake.push(Some("ev-8"), &note);
    wait_event(&mut c, &head, |v| v["params"]["data"] == "after reopening");
}

// ---- resuming a POST stream, against mcplex-demo --http --------------------------------------

#[test]
fn post_stream_closed_mid_call_is_resumed() {
    let demo = DemoHttp::start(&[]);
    let url = format!("http://127.0.0.1:{}/mcp", demo.port);
    let gw = Gateway::start(&http_config("config: {requestTimeout: 10s}", &url));
    let s = gw.session();
    let t0 = Instant::now();
    let r = s.tool("test_reconnection", json!({}));
    assert_eq!(
        tool_text(&r),
        "Reconnection test completed successfully",
        "log:\n{}",
        gw.log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    s.assert_works();
}
