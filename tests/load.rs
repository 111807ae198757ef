//! Fault and load (issue #6): many concurrent clients over both transports (streamable HTTP on
//! `/mcp`, legacy HTTP+SSE on `/sse`) against one real `mcplex` with `mcplex-demo` children,
//! mixing fast calls, slow calls with progress, cancellations, clients that vanish mid-stream,
//! malformed requests and a child killed mid-call. Afterwards the gateway must be back where it
//! started: no descriptors, children or zombies left over, and memory near its warm baseline.
//!
//! Every request is checked: a well-formed request that was not cancelled gets exactly one
//! answer, under its own id, with the right result (or, in the session whose child was killed,
//! a JSON-RPC error naming the target).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Concurrent clients; even ones speak streamable HTTP, odd ones legacy HTTP+SSE.
const CLIENTS: usize = 24;
/// Operations per client in the measured run.
const CALLS: usize = 20;
/// Operations per client in the warm-up run.
const WARM_CALLS: usize = 6;
/// Allowed growth of the gateway's descriptors and resident memory over the warm baseline.
const FD_TOLERANCE: usize = 2;
const RSS_TOLERANCE_KIB: u64 = 8 * 1024;

/// What one client did; every count is of checked outcomes.
#[derive(Debug, Default, Clone, Copy)]
struct Report {
    /// Well-formed requests answered once, under their id, with the right result.
    answered: usize,
    /// Requests in the killed child's session answered with the expected JSON-RPC error.
    failed_as_expected: usize,
    cancelled: usize,
    abandoned: usize,
    malformed: usize,
    progress: usize,
}

impl Report {
    fn add(&mut self, o: &Report) {
        self.answered += o.answered;
        self.failed_as_expected += o.failed_as_expected;
        self.cancelled += o.cancelled;
        self.abandoned += o.abandoned;
        self.malformed += o.malformed;
        self.progress += o.progress;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Echo,
    Batch,
    Slow,
    Cancel,
    Abandon,
    BadJson,
    Garbage,
}

fn pick(rng: &mut Rng) -> Op {
    match rng.below(100) {
        0..=34 => Op::Add,
        35..=44 => Op::Echo,
        45..=51 => Op::Batch,
        52..=64 => Op::Slow,
        65..=74 => Op::Cancel,
        75..=84 => Op::Abandon,
        85..=94 => Op::BadJson,
        _ => Op::Garbage,
    }
}

fn add_call(id: &Value, a: i64, b: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "add", "arguments": {"a": a, "b": b}}})
}

fn slow_call(id: &Value, token: &str, steps: u64, delay_ms: u64) -> String {
    rpc_request(
        id,
        "tools/call",
        json!({"name": "slow", "arguments": {"steps": steps, "delayMs": delay_ms},
               "_meta": {"progressToken": token}}),
    )
}

/// A random printable payload of up to 2 KiB.
fn payload(rng: &mut Rng) -> String {
    let n = rng.below(2048) as usize;
    (0..n)
        .map(|_| char::from(b' ' + rng.below(95) as u8))
        .collect()
}

/// The single response to `id` among `msgs`; panics on none, several, or foreign responses.
#[track_caller]
fn only_answer(msgs: &[Value], id: &Value, ctx: &str) -> Value {
    let responses: Vec<&Value> = msgs
        .iter()
        .filter(|m| m.get("result").is_some() || m.get("error").is_some())
        .collect();
    assert!(
        responses.len() == 1 && responses[0].get("id") == Some(id),
        "{ctx}: expected exactly one answer with id {id}, got {msgs:?}"
    );
    responses[0].clone()
}

#[track_caller]
fn assert_parse_error(r: &Response, ctx: &str) {
    assert_eq!(
        r.status(),
        400,
        "{ctx}: bad JSON: {:?} {}",
        r.head,
        r.text()
    );
    let m = r.json();
    assert_eq!(m["error"]["code"], -32700, "{ctx}: {m}");
    assert_eq!(m["id"], Value::Null, "{ctx}: {m}");
}

/// Bytes that are not HTTP: 400 and the connection closes.
#[track_caller]
fn garbage(port: u16, ctx: &str) {
    let mut c = Client::connect(port);
    c.send(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        .expect("send");
    let r = c.read_response().expect("an answer to garbage");
    assert_eq!(r.status(), 400, "{ctx}: garbage got {:?}", r.head);
    assert!(
        c.closed_within(Duration::from_secs(5)).is_ok(),
        "{ctx}: connection open after garbage"
    );
}

// ---- streamable HTTP clients -------------------------------------------------------------------

/// One streamable-HTTP client: its session, a keep-alive connection for quick calls, and its
/// random choices. Slow calls use their own connections.
struct Streamable {
    port: u16,
    s: Session,
    keep: Client,
    rng: Rng,
    name: String,
    r: Report,
}

impl Streamable {
    fn new(s: Session, seed: u64, name: String) -> Streamable {
        Streamable {
            port: s.port,
            keep: Client::connect(s.port),
            s,
            rng: Rng::new(seed),
            name,
            r: Report::default(),
        }
    }

    /// POSTs on the keep-alive connection.
    #[track_caller]
    fn post_keep(&mut self, body: &str) -> Response {
        let req = self.s.post_bytes(body);
        self.keep
            .roundtrip(&req)
            .unwrap_or_else(|e| panic!("{}: keep-alive POST failed: {e}", self.name))
    }

    fn add(&mut self) -> (Value, Value, String) {
        let (a, b) = (self.rng.signed(1 << 40), self.rng.signed(1 << 40));
        let id = next_id();
        let r = self.post_keep(&add_call(&id, a, b).to_string());
        assert_status(&r, 200);
        let ans = only_answer(&r.messages(), &id, &self.name);
        (id, ans, (a + b).to_string())
    }

    /// Sends a slow call with progress and returns its stream after the first progress.
    fn start_slow(&mut self, steps: u64, delay_ms: u64) -> (Client, Head, Value, String) {
        let id = next_id();
        let token = format!("{}-{id}", self.name);
        let mut c = Client::connect(self.port);
        c.send(&self.s.post_bytes(&slow_call(&id, &token, steps, delay_ms)))
            .expect("send slow");
        let head = c.read_head().expect("slow: head");
        assert_eq!(head.status, 200, "{}: {head:?}", self.name);
        let first = c
            .next_event(&head)
            .expect("slow: read")
            .expect("slow: stream ended before progress")
            .json();
        assert_eq!(first["method"], "notifications/progress", "{first}");
        assert_eq!(first["params"]["progressToken"], json!(token), "{first}");
        self.r.progress += 1;
        (c, head, id, token)
    }

    /// Reads a slow call's stream to its end: the progress count and every response.
    fn drain_slow(&mut self, c: &mut Client, head: &Head, token: &str) -> (usize, Vec<Value>) {
        let mut progress = 0;
        let mut answers = Vec::new();
        loop {
            match c.next_event(head) {
                Ok(Some(ev)) => {
                    let m = ev.json();
                    if m["method"] == "notifications/progress" {
                        assert_eq!(
                            m["params"]["progressToken"],
                            json!(token),
                            "{}: foreign progress {m}",
                            self.name
                        );
                        progress += 1;
                    } else {
                        answers.push(m);
                    }
                }
                Ok(None) => return (progress, answers),
                Err(e) => panic!("{}: reading a slow call: {e}", self.name),
            }
        }
    }

    /// One healthy operation.
    fn op(&mut self, op: Op) {
        let name = self.name.clone();
        match op {
            Op::Add => {
                let (_, ans, sum) = self.add();
                assert_eq!(tool_text(&ans), sum, "{name}: wrong sum");
                self.r.answered += 1;
            }
            Op::Echo => {
                let msg = payload(&mut self.rng);
                let id = next_id();
                let r = self.post_keep(&rpc_request(
                    &id,
                    "tools/call",
                    json!({"name": "echo", "arguments": {"message": msg}}),
                ));
                let ans = only_answer(&r.messages(), &id, &name);
                assert_eq!(tool_text(&ans), msg, "{name}: echo");
                self.r.answered += 1;
            }
            Op::Batch => {
                let ids: Vec<Value> = (0..3).map(|_| next_id()).collect();
                let nums: Vec<(i64, i64)> = (0..3)
                    .map(|_| (self.rng.signed(1000), self.rng.signed(1000)))
                    .collect();
                let body: Vec<Value> = ids
                    .iter()
                    .zip(&nums)
                    .map(|(id, (a, b))| add_call(id, *a, *b))
                    .collect();
                let r = self.post_keep(&Value::Array(body).to_string());
                assert_status(&r, 200);
                let msgs = r.messages();
                assert_eq!(msgs.len(), 3, "{name}: batch answers {msgs:?}");
                for (id, (a, b)) in ids.iter().zip(&nums) {
                    let hits: Vec<&Value> = msgs.iter().filter(|m| m["id"] == *id).collect();
                    assert_eq!(hits.len(), 1, "{name}: batch id {id}: {msgs:?}");
                    assert_eq!(tool_text(hits[0]), (a + b).to_string());
                    self.r.answered += 1;
                }
            }
            Op::Slow => {
                let steps = 2 + self.rng.below(3);
                let (mut c, head, id, token) = self.start_slow(steps, 10);
                let (progress, answers) = self.drain_slow(&mut c, &head, &token);
                assert_eq!(progress as u64 + 1, steps, "{name}: progress count");
                self.r.progress += progress;
                let ans = only_answer(&answers, &id, &name);
                assert_eq!(tool_text(&ans), format!("done after {steps} steps"));
                self.r.answered += 1;
            }
            Op::Cancel => {
                let (mut c, head, id, token) = self.start_slow(200, 10);
                let n = self.s.notify(
                    "notifications/cancelled",
                    json!({"requestId": id, "reason": "load test"}),
                );
                assert_status(&n, 202);
                let (_, answers) = self.drain_slow(&mut c, &head, &token);
                assert!(
                    answers.is_empty(),
                    "{name}: a cancelled call was answered: {answers:?}"
                );
                self.r.cancelled += 1;
            }
            Op::Abandon => {
                let (c, _, _, _) = self.start_slow(200, 10);
                drop(c);
                self.r.abandoned += 1;
            }
            Op::BadJson => {
                let r = self.post_keep(r#"{"jsonrpc": "2.0", "id": 1, "method": "#);
                assert_parse_error(&r, &name);
                self.r.malformed += 1;
            }
            Op::Garbage => {
                garbage(self.port, &name);
                self.r.malformed += 1;
            }
        }
    }

    fn delete(&mut self) {
        let req = request(
            "DELETE",
            "/mcp",
            &[
                ("Mcp-Session-Id", &self.s.id),
                ("MCP-Protocol-Version", VERSION),
            ],
            b"",
        );
        let r = self.keep.roundtrip(&req).expect("DELETE");
        assert_status(&r, 200);
    }
}

fn streamable_client(port: u16, idx: usize, calls: usize) -> Report {
    let s = Session::initialize(port);
    let mut c = Streamable::new(s, idx as u64 + 1, format!("mcp{idx}"));
    for _ in 0..calls {
        let op = pick(&mut c.rng);
        c.op(op);
    }
    c.delete();
    c.r
}

/// The client whose child is killed mid-call: afterwards every request it makes gets exactly one
/// JSON-RPC error naming the target, except `ping`, which the gateway answers itself.
fn victim_client(s: Session, child: u32, calls: usize) -> Report {
    let mut c = Streamable::new(s, 999, "victim".into());
    let before = calls / 4;
    for _ in 0..before {
        c.op(Op::Add);
    }
    let (mut conn, head, id, token) = c.start_slow(200, 10);
    kill(child, "KILL");
    let (_, answers) = c.drain_slow(&mut conn, &head, &token);
    let ans = only_answer(&answers, &id, "victim");
    let why = assert_rpc_error(&ans, None);
    assert!(
        why.contains("demo"),
        "the error should name the target: {why}"
    );
    c.r.failed_as_expected += 1;
    for n in 0..calls - before - 1 {
        match n % 3 {
            0 => {
                let (_, ans, _) = c.add();
                let why = assert_rpc_error(&ans, None);
                assert!(why.contains("demo"), "victim: {why}");
                c.r.failed_as_expected += 1;
            }
            1 => {
                let id = next_id();
                let r = c.post_keep(&rpc_request(&id, "ping", json!({})));
                assert_rpc_ok(&only_answer(&r.messages(), &id, "victim ping"));
                c.r.answered += 1;
            }
            _ => c.op(Op::BadJson),
        }
    }
    c.delete();
    c.r
}

// ---- legacy HTTP+SSE clients ---------------------------------------------------------------------

/// One legacy client: its `GET /sse` stream carries every answer and notification.
struct Legacy {
    port: u16,
    stream: Client,
    head: Head,
    endpoint: String,
    rng: Rng,
    name: String,
    /// Progress tokens of calls in flight, and how many progress notifications each got.
    tokens: HashMap<String, usize>,
    r: Report,
}

impl Legacy {
    fn open(port: u16, seed: u64, name: String) -> Legacy {
        let mut stream = Client::connect(port);
        stream
            .send(&request(
                "GET",
                "/sse",
                &[("Accept", "text/event-stream")],
                b"",
            ))
            .expect("GET /sse");
        let head = stream.read_head().expect("/sse head");
        assert_eq!(head.status, 200, "{name}: {head:?}");
        let ev = stream
            .next_event(&head)
            .expect("endpoint event")
            .expect("stream ended before the endpoint");
        assert_eq!(ev.event, "endpoint", "{ev:?}");
        let mut l = Legacy {
            port,
            stream,
            head,
            endpoint: ev.data,
            rng: Rng::new(seed),
            name,
            tokens: HashMap::new(),
            r: Report::default(),
        };
        let init = l.call(&rpc_request(
            &next_id(),
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {},
                   "clientInfo": {"name": "mcplex-load", "version": "0"}}),
        ));
        assert_rpc_ok(&init);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
        assert_status(&l.post(&note), 202);
        l
    }

    fn post(&self, body: &str) -> Response {
        send_once(
            self.port,
            &request(
                "POST",
                &self.endpoint,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
        )
    }

    /// The next message on the stream.
    fn next_message(&mut self) -> Value {
        loop {
            let ev = self
                .stream
                .next_event(&self.head)
                .unwrap_or_else(|e| panic!("{}: reading the stream: {e}", self.name))
                .unwrap_or_else(|| panic!("{}: the stream ended", self.name));
            if ev.event == "message" {
                return ev.json();
            }
        }
    }

    /// Reads until the answer to `id`. Progress must carry a token of this client's; any other
    /// answer (a second one, a cancelled call's, someone else's) fails the test.
    fn answer(&mut self, id: &Value) -> Value {
        loop {
            let m = self.next_message();
            if m["method"] == "notifications/progress" {
                let tok = m["params"]["progressToken"].as_str().unwrap_or("");
                match self.tokens.get_mut(tok) {
                    Some(n) => *n += 1,
                    None => panic!("{}: foreign progress {m}", self.name),
                }
                self.r.progress += 1;
                continue;
            }
            if m.get("result").is_some() || m.get("error").is_some() {
                assert_eq!(m["id"], *id, "{}: unexpected answer {m}", self.name);
                return m;
            }
        }
    }

    fn call(&mut self, body: &str) -> Value {
        let id: Value = serde_json::from_str::<Value>(body).expect("json")["id"].clone();
        let r = self.post(body);
        assert_status(&r, 202);
        self.answer(&id)
    }

    /// Starts a slow call and reads up to its first progress notification.
    fn start_slow(&mut self, steps: u64) -> (Value, String) {
        let id = next_id();
        let token = format!("{}-{id}", self.name);
        self.tokens.insert(token.clone(), 0);
        assert_status(&self.post(&slow_call(&id, &token, steps, 10)), 202);
        loop {
            let m = self.next_message();
            assert!(
                m.get("result").is_none() && m.get("error").is_none(),
                "{}: unexpected answer {m}",
                self.name
            );
            if m["params"]["progressToken"] == json!(token) {
                self.r.progress += 1;
                return (id, token);
            }
        }
    }

    fn op(&mut self, op: Op) {
        let name = self.name.clone();
        match op {
            Op::Add => {
                let (a, b) = (self.rng.signed(1 << 40), self.rng.signed(1 << 40));
                let ans = self.call(&add_call(&next_id(), a, b).to_string());
                assert_eq!(tool_text(&ans), (a + b).to_string(), "{name}");
                self.r.answered += 1;
            }
            Op::Echo => {
                let msg = payload(&mut self.rng);
                let ans = self.call(&rpc_request(
                    &next_id(),
                    "tools/call",
                    json!({"name": "echo", "arguments": {"message": msg}}),
                ));
                assert_eq!(tool_text(&ans), msg, "{name}");
                self.r.answered += 1;
            }
            Op::Batch => {
                let ids: Vec<Value> = (0..3).map(|_| next_id()).collect();
                let body: Vec<Value> = ids.iter().map(|id| add_call(id, 2, 3)).collect();
                assert_status(&self.post(&Value::Array(body).to_string()), 202);
                let mut seen: Vec<Value> = Vec::new();
                while seen.len() < 3 {
                    let m = self.next_message();
                    if m.get("result").is_some() || m.get("error").is_some() {
                        assert!(
                            ids.contains(&m["id"]) && !seen.contains(&m["id"]),
                            "{name}: unexpected or repeated answer {m}"
                        );
                        assert_eq!(tool_text(&m), "5");
                        seen.push(m["id"].clone());
                        self.r.answered += 1;
                    }
                }
            }
            Op::Slow | Op::Abandon => {
                let steps = 2 + self.rng.below(3);
                let (id, token) = self.start_slow(steps);
                let ans = self.answer(&id);
                assert_eq!(tool_text(&ans), format!("done after {steps} steps"));
                assert_eq!(self.tokens[&token] as u64 + 1, steps, "{name}: progress");
                self.r.answered += 1;
            }
            Op::Cancel => {
                let (id, _) = self.start_slow(200);
                let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                    "params": {"requestId": id, "reason": "load test"}});
                assert_status(&self.post(&cancel.to_string()), 202);
                // Any answer to the cancelled call would fail the next `answer`.
                self.r.cancelled += 1;
            }
            Op::BadJson => {
                let r = self.post(r#"{"jsonrpc": "2.0", "id": 1, "method": "#);
                assert_parse_error(&r, &name);
                self.r.malformed += 1;
            }
            Op::Garbage => {
                garbage(self.port, &name);
                self.r.malformed += 1;
            }
        }
    }
}

/// A legacy client. Odd-numbered ones end by closing the stream while a slow call runs; the
/// others after a last check that no stray answer is pending.
fn legacy_client(port: u16, idx: usize, calls: usize) -> Report {
    let mut l = Legacy::open(port, idx as u64 + 1, format!("sse{idx}"));
    for _ in 0..calls {
        let op = pick(&mut l.rng);
        l.op(op);
    }
    if idx % 4 == 1 {
        l.start_slow(200);
        l.r.abandoned += 1;
    } else {
        // A final ping flushes out anything that should not have come (e.g. a cancelled answer).
        let id = next_id();
        assert_rpc_ok(&l.call(&rpc_request(&id, "ping", json!({}))));
        l.r.answered += 1;
        l.stream.set_timeout(Duration::from_millis(100));
        match l.stream.next_event(&l.head) {
            Ok(Some(ev)) if ev.event == "message" => {
                panic!("{}: stray message after the last answer: {ev:?}", l.name)
            }
            Ok(_) => {}
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{}: {e}",
                l.name
            ),
        }
    }
    l.r
}

// ---- the run -------------------------------------------------------------------------------------

/// Runs `CLIENTS` clients with `calls` operations each (plus the victim, if any); returns the
/// summed report, or panics with every client's failure.
fn run_clients(port: u16, calls: usize, victim: Option<(Session, u32)>) -> Report {
    let results: Vec<(String, std::thread::Result<Report>)> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        if let Some((session, child)) = victim {
            handles.push((
                "victim".to_string(),
                scope.spawn(move || victim_client(session, child, calls)),
            ));
        }
        for idx in 0..CLIENTS {
            let name = format!("client {idx}");
            let h = if idx % 2 == 0 {
                scope.spawn(move || streamable_client(port, idx, calls))
            } else {
                scope.spawn(move || legacy_client(port, idx, calls))
            };
            handles.push((name, h));
        }
        handles.into_iter().map(|(n, h)| (n, h.join())).collect()
    });
    let mut total = Report::default();
    let mut failures = Vec::new();
    for (name, r) in results {
        match r {
            Ok(r) => total.add(&r),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "clients failed:\n{}",
        failures.join("\n")
    );
    total
}

/// Waits until the gateway has no children (zombies included) and its descriptors fall to
/// `limit`; returns the last count seen.
fn settle(gw: &Gateway, limit: usize) -> usize {
    let ok = wait_until(Duration::from_secs(6), || {
        gw.children().is_empty() && fd_count(gw.pid).is_some_and(|n| n <= limit)
    });
    let left: Vec<(u32, Option<char>)> =
        gw.children().iter().map(|&p| (p, proc_state(p))).collect();
    assert!(
        left.is_empty(),
        "children left (pid, state; Z = zombie): {left:?}"
    );
    let n = fd_count(gw.pid).unwrap_or(usize::MAX);
    assert!(
        ok,
        "descriptor leak: {n} open, at most {limit} allowed:\n{}",
        fd_targets(gw.pid).join("\n")
    );
    n
}

#[test]
fn concurrent_clients_over_both_transports_with_faults() {
    let started = Instant::now();
    let mut gw = Gateway::demo("");
    let port = gw.port;
    let fd_start = fd_count(gw.pid).unwrap_or(0);
    let rss_start = vm_rss_kib(gw.pid).unwrap_or(0);

    // Warm up with the same concurrency so allocator pools and tables reach their working size.
    let warm = run_clients(port, WARM_CALLS, None);
    let fd_before = settle(&gw, usize::MAX);
    let rss_before = vm_rss_kib(gw.pid).expect("VmRSS");

    // The measured run. The victim's session is made first, so the only child is its own.
    let victim = Session::initialize(port);
    let children = gw.children();
    assert_eq!(children.len(), 1, "one child per session: {children:?}");
    let load_started = Instant::now();
    let report = run_clients(port, CALLS, Some((victim, children[0])));
    let load_time = load_started.elapsed();
    gw.assert_alive();

    let fd_after = settle(&gw, fd_before + FD_TOLERANCE);
    let h = gw.healthz();
    assert_eq!(h["sessions"], 0, "sessions left: {h}");
    assert!(
        h["connections"].as_u64().unwrap_or(99) <= 1,
        "connections left: {h}"
    );
    let rss_after = vm_rss_kib(gw.pid).expect("VmRSS");
    eprintln!(
        "load: {CLIENTS} clients + victim x {CALLS} ops in {load_time:?} (whole test {:?})\n  \
         warm-up {warm:?}\n  measured {report:?}\n  fds: start {fd_start}, warm {fd_before}, \
         after {fd_after}; VmRSS: start {rss_start} KiB, warm {rss_before} KiB, after {rss_after} KiB",
        started.elapsed()
    );
    assert!(
        rss_after <= rss_before + RSS_TOLERANCE_KIB,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let checked = report.answered + report.cancelled + report.abandoned + report.malformed;
    assert!(
        checked >= CLIENTS * CALLS,
        "fewer operations checked than made: {report:?}"
    );
    assert!(
        report.cancelled > 0 && report.abandoned > 0 && report.malformed > 0,
        "the mix lacks a fault kind: {report:?}"
    );
    assert!(report.failed_as_expected > 1, "{report:?}");
    // Still serving after all that.
    gw.session().assert_works();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the load test took {:?}",
        started.elapsed()
    );
}

#[test]
fn memory_is_given_back_after_a_burst_of_sessions() {
    const SESSIONS: usize = 600;
    // No connection to the upstream outlives a request, so held sessions cost no upstream
    // sockets.
    let demo = DemoHttp::start(&["--no-streams"]);
    let gw = Gateway::start(&format!(
        "config: {{maxSessions: 2000, maxConnections: 4000}}\nmcp:\n  port: 0\n  targets:\n  \
         - name: demo\n    mcp: {{host: \"http://127.0.0.1:{}/mcp\"}}\n",
        demo.port
    ));
    let delete = |s: &Session| {
        let r = send_once(
            gw.port,
            &request("DELETE", "/mcp", &[("Mcp-Session-Id", &s.id)], b""),
        );
        assert!(r.status() < 300, "DELETE answered {}", r.status());
    };
    // A few sessions first, so the idle figure includes what any session touches once.
    for _ in 0..5 {
        delete(&gw.session());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let idle = vm_rss_kib(gw.pid).expect("VmRSS");

    // The burst: every session holds its GET stream, as an idle client would.
    let mut held = Vec::new();
    for _ in 0..SESSIONS {
        let s = gw.session();
        let (c, _) = gw.open_get(&s);
        held.push((s, c));
    }
    let peak = vm_rss_kib(gw.pid).expect("VmRSS");
    assert!(
        peak > idle + 4 * 1024,
        "{SESSIONS} sessions used too little memory to show anything: {idle} -> {peak} KiB"
    );

    for (s, c) in held {
        drop(c);
        delete(&s);
    }
    // The once-a-second sweep gives the memory back once the sessions are gone.
    let mut now = peak;
    let back = wait_until(Duration::from_secs(10), || {
        now = vm_rss_kib(gw.pid).unwrap_or(u64::MAX);
        now < idle + 2 * 1024
    });
    assert!(
        back,
        "RSS idle {idle} KiB, with {SESSIONS} sessions {peak} KiB, after they ended {now} KiB"
    );
    eprintln!("RSS idle {idle} KiB, with {SESSIONS} sessions {peak} KiB, after {now} KiB");
    assert_eq!(gw.healthz()["sessions"], 0);
}
