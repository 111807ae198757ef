//! Reliability and security (issue #6), over raw HTTP against the real `mcplex` binary with
//! `mcplex-demo` children: configuration reload (SIGHUP, `--watch`), draining on SIGTERM, accept
//! backpressure, the session and request limits, `/healthz` and target backoff, session-id
//! hygiene, isolation between sessions, the children's environment, and request smuggling.
//!
//! Every test starts its own gateway on an OS-chosen port, so the tests run in parallel.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A command that cannot be started.
const MISSING_CMD: &str = "/nonexistent/mcplex-no-such-server";

// ---- helpers -----------------------------------------------------------------------------------

/// One demo target called `name`, prefixed always (so tool names show which config a session
/// got), on `port` (0: OS-chosen), with top-level `extra`.
fn named_config(name: &str, port: u16, extra: &str) -> String {
    format!(
        "{extra}\nmcp:\n  port: {port}\n  prefixMode: always\n  targets:\n  - name: {name}\n    stdio: {{cmd: {:?}}}\n",
        demo_bin()
    )
}

/// A live demo target and one whose command does not exist, with failOpen.
fn live_and_ghost(extra: &str) -> String {
    format!(
        "{extra}\nmcp:\n  port: 0\n  failureMode: failOpen\n  targets:\n  - name: live\n    stdio: {{cmd: {:?}}}\n  - name: ghost\n    stdio: {{cmd: {MISSING_CMD:?}}}\n",
        demo_bin()
    )
}

/// The session's tool names.
#[track_caller]
fn tool_names(s: &Session) -> Vec<String> {
    let r = s.call("tools/list", json!({}));
    assert_rpc_ok(&r)["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

/// The target prefix of the session's `*_echo` tool.
#[track_caller]
fn echo_prefix(s: &Session) -> String {
    let names = tool_names(s);
    names
        .iter()
        .find_map(|n| n.strip_suffix("_echo").map(String::from))
        .unwrap_or_else(|| panic!("no <target>_echo tool in {names:?}"))
}

/// Echoes through `<prefix>_echo` and asserts the answer.
#[track_caller]
fn assert_echo(s: &Session, prefix: &str) {
    let msg = format!("via {prefix} {}", next_id());
    let r = s.tool(&format!("{prefix}_echo"), json!({"message": msg}));
    assert_eq!(tool_text(&r), msg, "{r}");
}

/// A `slow` call with progress running on its own connection.
struct Slow {
    conn: Client,
    head: Head,
    id: Value,
    token: String,
}

impl Slow {
    /// Sends `tools/call slow` and reads the response head (an SSE stream, as progress comes).
    #[track_caller]
    fn start(gw: &Gateway, s: &Session, steps: u64, delay_ms: u64) -> Slow {
        let id = next_id();
        let token = format!("tok-{id}");
        let body = rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": steps, "delayMs": delay_ms},
                   "_meta": {"progressToken": token}}),
        );
        let mut conn = gw.connect();
        conn.send(&s.post_bytes(&body)).expect("send slow call");
        let head = conn.read_head().expect("slow call: response head");
        assert_eq!(head.status, 200, "{head:?}");
        Slow {
            conn,
            head,
            id,
            token,
        }
    }

    /// Reads the first progress notification, so the call is known to run upstream.
    #[track_caller]
    fn first_progress(&mut self) {
        let ev = self
            .conn
            .next_event(&self.head)
            .expect("read the slow call's stream")
            .expect("the slow call's stream ended before any progress");
        let m = ev.json();
        assert_eq!(m["method"], "notifications/progress", "{m}");
        assert_eq!(m["params"]["progressToken"], json!(self.token), "{m}");
    }

    /// Reads the rest of the stream: the progress seen, and the answer (None if the stream
    /// ended without one).
    #[track_caller]
    fn finish(&mut self) -> (usize, Option<Value>) {
        let mut progress = 0;
        loop {
            let ev = match self.conn.next_event(&self.head) {
                Ok(Some(ev)) => ev,
                Ok(None) => return (progress, None),
                Err(e) => panic!("reading the slow call {}: {e}", self.id),
            };
            let m = ev.json();
            if m["method"] == "notifications/progress" {
                assert_eq!(
                    m["params"]["progressToken"],
                    json!(self.token),
                    "foreign progress: {m}"
                );
                progress += 1;
            } else if m.get("id") == Some(&self.id) {
                return (progress, Some(m));
            } else {
                panic!("unexpected message on the slow call's stream: {m}");
            }
        }
    }
}

/// A GET stream for a session.
fn get_stream(sid: &str) -> Vec<u8> {
    request(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", sid),
            ("MCP-Protocol-Version", VERSION),
        ],
        b"",
    )
}

/// A DELETE for a session.
fn delete_session(sid: &str) -> Vec<u8> {
    request(
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", sid), ("MCP-Protocol-Version", VERSION)],
        b"",
    )
}

/// The health entry of `target`.
#[track_caller]
fn health_of(h: &Value, target: &str) -> Value {
    h["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["target"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("no target {target} in /healthz: {h}"))
}

// ---- configuration reload ------------------------------------------------------------------------

mod reload {
    use super::*;

    #[test]
    fn sighup_new_sessions_use_the_new_config_old_sessions_keep_theirs() {
        let mut gw = Gateway::start(&named_config("a", 0, ""));
        let old = gw.session();
        assert_eq!(echo_prefix(&old), "a");
        let file = gw.config_file();

        // A valid new file: applied to new sessions only.
        std::fs::write(&file, named_config("b", 0, "")).expect("rewrite config");
        let n = gw.log_count("configuration reloaded");
        gw.signal("HUP");
        assert!(
            gw.wait_log("configuration reloaded", n, Duration::from_secs(5)),
            "no reload logged after SIGHUP; log:\n{}",
            gw.log_text()
        );
        assert_eq!(echo_prefix(&old), "a", "the old session changed config");
        assert_echo(&old, "a");
        let why = assert_rpc_error(&old.tool("b_echo", json!({"message": "x"})), Some(-32602));
        assert!(why.contains('b'), "{why}");
        let new = gw.session();
        assert_eq!(echo_prefix(&new), "b", "a new session kept the old config");
        assert_echo(&new, "b");
        assert_eq!(gw.healthz()["configReloads"], 1);

        // An invalid file is refused, with its errors logged; the last good config stays.
        std::fs::write(
            &file,
            "mcp:\n  port: 0\n  bogusField: 1\n  targets:\n  - name: c\n    stdio: {}\n",
        )
        .expect("rewrite config");
        let n = gw.log_count("not reloaded");
        gw.signal("HUP");
        assert!(
            gw.wait_log("not reloaded", n, Duration::from_secs(5)),
            "an invalid config was not refused in the log:\n{}",
            gw.log_text()
        );
        // The errors follow the refusal line.
        assert!(
            wait_until(Duration::from_secs(2), || gw.log_count("bogusField") > 0),
            "the refusal should name the bad field:\n{}",
            gw.log_text()
        );
        let log = gw.log_text();
        assert_eq!(
            gw.log_count("configuration reloaded"),
            1,
            "an invalid config was applied:\n{log}"
        );
        gw.assert_alive();
        let third = gw.session();
        assert_eq!(
            echo_prefix(&third),
            "b",
            "new sessions lost the last good config"
        );
        assert_echo(&third, "b");
        assert_echo(&old, "a");
        assert_eq!(gw.healthz()["configReloads"], 1);

        // A file that changes the port is refused as well (it would need a new listener).
        std::fs::write(&file, named_config("c", 1, "")).expect("rewrite config");
        let n = gw.log_count("binds differ");
        gw.signal("HUP");
        assert!(
            gw.wait_log("binds differ", n, Duration::from_secs(5)),
            "a port change was not refused in the log:\n{}",
            gw.log_text()
        );
        let fourth = gw.session();
        assert_eq!(
            echo_prefix(&fourth),
            "b",
            "a port-changing reload was applied"
        );
        assert_eq!(gw.healthz()["configReloads"], 1);
        assert_echo(&new, "b");
    }

    #[test]
    fn watch_reloads_when_the_file_changes() {
        let gw = Gateway::start_with(&named_config("a", 0, ""), &["--watch"], &[]);
        let before = gw.session();
        assert_eq!(echo_prefix(&before), "a");
        // Make sure the new modification time differs from the one read at startup.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(gw.config_file(), named_config("b", 0, "")).expect("rewrite config");
        let changed = Instant::now();
        assert!(
            gw.wait_log("configuration reloaded", 0, Duration::from_secs(5)),
            "--watch did not reload a changed file; log:\n{}",
            gw.log_text()
        );
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "reload took {:?}",
            changed.elapsed()
        );
        let after = gw.session();
        assert_eq!(echo_prefix(&after), "b");
        assert_echo(&before, "a");

        // A broken edit is refused like on SIGHUP.
        std::thread::sleep(Duration::from_millis(50));
        let n = gw.log_count("not reloaded");
        std::fs::write(gw.config_file(), "mcp: [this is not a config").expect("rewrite");
        assert!(
            gw.wait_log("not reloaded", n, Duration::from_secs(5)),
            "--watch did not refuse a broken file; log:\n{}",
            gw.log_text()
        );
        assert_eq!(echo_prefix(&gw.session()), "b");
    }
}

// ---- SIGTERM drain ---------------------------------------------------------------------------------

mod drain {
    use super::*;

    /// Whether a connection made now is served: false when it is refused, reset or closed
    /// unanswered, or gets no answer within `limit`.
    fn served(port: u16, limit: Duration) -> bool {
        let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        sock.set_read_timeout(Some(limit)).ok();
        sock.set_write_timeout(Some(limit)).ok();
        if sock
            .write_all(&request("GET", "/healthz", &[], b""))
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 256];
        matches!(sock.read(&mut buf), Ok(n) if n > 0)
    }

    #[test]
    fn sigterm_lets_a_call_in_flight_finish_then_exits_0() {
        let mut gw = Gateway::demo("config: {drainTimeout: 2s}");
        let s = gw.session();
        let children = gw.children();
        assert_eq!(children.len(), 1, "{children:?}");
        let mut slow = Slow::start(&gw, &s, 5, 100);
        slow.first_progress();
        // An idle keep-alive connection and a GET stream: both are closed by the drain.
        let mut idle = gw.connect();
        assert_status(
            &idle
                .roundtrip(&request("GET", "/healthz", &[], b""))
                .expect("healthz"),
            200,
        );
        let mut get = gw.connect();
        get.send(&get_stream(&s.id)).expect("GET");
        let get_head = get.read_head().expect("GET head");
        assert_eq!(get_head.status, 200, "{get_head:?}");

        gw.signal("TERM");
        assert!(
            gw.wait_log("draining", 0, Duration::from_secs(2)),
            "no drain logged; log:\n{}",
            gw.log_text()
        );
        assert!(
            idle.closed_within(Duration::from_secs(1)).is_ok(),
            "an idle connection stayed open in the drain"
        );
        get.set_timeout(Duration::from_secs(1));
        match get.next_event(&get_head) {
            Ok(None) => {}
            Ok(Some(ev)) => panic!("the GET stream carried {ev:?}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the GET stream stayed open in the drain")
            }
            Err(_) => {}
        }
        // New connections are not served while draining.
        let port = gw.port;
        let probe = std::thread::spawn(move || served(port, Duration::from_secs(3)));

        let (progress, answer) = slow.finish();
        let answer = answer.unwrap_or_else(|| {
            panic!(
                "the call in flight lost its answer in the drain; log:\n{}",
                gw.log_text()
            )
        });
        assert_eq!(tool_text(&answer), "done after 5 steps");
        assert_eq!(progress, 4, "the remaining progress notifications");
        assert!(
            !probe.join().expect("probe thread"),
            "a connection made after SIGTERM was served"
        );

        let status = gw
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", gw.log_text()));
        assert!(status.success(), "exit {status}; log:\n{}", gw.log_text());
        let log = gw.log_text();
        assert!(
            log.contains("draining: 1 request(s) in flight"),
            "the drain should count the call in flight:\n{log}"
        );
        for pid in children {
            assert!(
                wait_until(Duration::from_secs(1), || proc_state(pid).is_none()),
                "child {pid} outlived the gateway (state {:?})",
                proc_state(pid)
            );
        }
    }

    #[test]
    fn a_call_longer_than_drain_timeout_gets_an_error_and_the_gateway_exits() {
        let mut gw = Gateway::demo("config: {drainTimeout: 300ms}");
        let s = gw.session();
        let children = gw.children();
        let mut slow = Slow::start(&gw, &s, 100, 100);
        slow.first_progress();
        let t = Instant::now();
        gw.signal("TERM");
        let (_, answer) = slow.finish();
        let status = gw
            .wait_exit(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", gw.log_text()));
        assert!(status.success(), "exit {status}; log:\n{}", gw.log_text());
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "exit took {:?}",
            t.elapsed()
        );
        // The cut-off call is told so rather than left hanging.
        let answer = answer.unwrap_or_else(|| {
            panic!(
                "the cut-off call's stream ended without an answer; log:\n{}",
                gw.log_text()
            )
        });
        assert_rpc_error(&answer, None);
        for pid in children {
            assert!(
                wait_until(Duration::from_secs(1), || proc_state(pid).is_none()),
                "child {pid} outlived the gateway"
            );
        }
    }
}

// ---- accept backpressure -----------------------------------------------------------------------

#[test]
fn connection_limit_pauses_accepting_and_resumes() {
    let gw = Gateway::demo("config: {maxConnections: 4}");
    let health = request("GET", "/healthz", &[], b"");
    let mut open: Vec<Client> = (0..4)
        .map(|i| {
            let mut c = gw.connect();
            let r = c
                .roundtrip(&health)
                .unwrap_or_else(|e| panic!("connection {i} under the limit not served: {e}"));
            assert_status(&r, 200);
            c
        })
        .collect();
    assert!(
        gw.wait_log("pausing accept", 0, Duration::from_secs(2)),
        "no pause logged at the limit; log:\n{}",
        gw.log_text()
    );

    // The fifth waits in the kernel's backlog: no answer while the four are open.
    let mut fifth = gw.connect();
    fifth.send(&health).expect("send on the fifth connection");
    fifth.set_timeout(Duration::from_millis(800));
    let mut waiting = true;
    match fifth.read_head() {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        // Refusing outright (503, or a reset) also honours the limit.
        Ok(h) if h.status == 503 => waiting = false,
        Err(_) => waiting = false,
        Ok(h) => panic!("a fifth connection was served over maxConnections 4: {h:?}"),
    }

    drop(open.pop());
    drop(open.pop());
    let r = if waiting {
        fifth.set_timeout(Duration::from_secs(5));
        fifth
            .read_response()
            .unwrap_or_else(|e| panic!("the waiting connection was not served: {e}"))
    } else {
        send_once(gw.port, &health)
    };
    assert_status(&r, 200);
    let h = r.json();
    assert!(
        h["connections"].as_u64().unwrap_or(99) <= 4,
        "more connections than the limit: {h}"
    );
    assert!(
        gw.wait_log("accepting connections again", 0, Duration::from_secs(2)),
        "no resume logged; log:\n{}",
        gw.log_text()
    );
    // The connections that stayed open still work.
    for c in open.iter_mut() {
        assert_status(&c.roundtrip(&health).expect("kept connection"), 200);
    }
    gw.session().assert_works();
}

// ---- limits ----------------------------------------------------------------------------------------

mod limits {
    use super::*;

    #[test]
    fn max_sessions_refuses_the_extra_initialize_only() {
        let gw = Gateway::demo("config: {maxSessions: 2}");
        let a = gw.session();
        let b = gw.session();
        let id = next_id();
        let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
        assert_status(&r, 200);
        let why = assert_rpc_error(&r.rpc(&id), Some(-32000));
        assert!(why.contains("too many sessions"), "{why}");
        assert!(
            r.header("mcp-session-id").is_none(),
            "a refused initialize got a session id: {:?}",
            r.head
        );
        assert_eq!(gw.children().len(), 2, "a refused session started a child");
        a.assert_works();
        b.assert_works();
        // A freed slot can be used again.
        assert_status(&send_once(gw.port, &delete_session(&a.id)), 200);
        gw.session().assert_works();
        b.assert_works();
    }

    #[test]
    fn max_inflight_refuses_the_extra_request_and_the_others_finish() {
        let gw = Gateway::demo("config: {maxInflightPerSession: 2}");
        let s = gw.session();
        let other = gw.session();
        let mut one = Slow::start(&gw, &s, 8, 100);
        let mut two = Slow::start(&gw, &s, 8, 100);
        one.first_progress();
        two.first_progress();

        let third = s.tool("slow", json!({"steps": 1, "delayMs": 1}));
        let why = assert_rpc_error(&third, Some(-32000));
        assert!(why.contains("too many requests in flight"), "{why}");
        // Other sessions have their own budget.
        other.assert_works();

        for slow in [&mut one, &mut two] {
            let (_, answer) = slow.finish();
            let answer = answer.expect("an admitted call lost its answer");
            assert_eq!(tool_text(&answer), "done after 8 steps");
        }
        s.assert_works();
    }

    #[test]
    fn idle_session_ends_after_session_ttl_and_its_child_stops() {
        let gw = Gateway::demo("config: {sessionTtl: 1s}");
        let idle = gw.session();
        idle.assert_works();
        let idle_children = gw.children();
        assert_eq!(idle_children.len(), 1, "{idle_children:?}");
        // A session with an open GET stream is not idle.
        let streaming = gw.session();
        let mut stream = gw.connect();
        stream.send(&get_stream(&streaming.id)).expect("GET");
        assert_eq!(stream.read_head().expect("stream head").status, 200);

        let ended = wait_until(Duration::from_secs(6), || {
            gw.log_count("idle for longer than sessionTtl") > 0
                && idle_children.iter().all(|&p| proc_state(p).is_none())
        });
        assert!(
            ended,
            "the idle session or its child lived on (child states {:?}); log:\n{}",
            idle_children
                .iter()
                .map(|&p| proc_state(p))
                .collect::<Vec<_>>(),
            gw.log_text()
        );
        let r = idle.post(&rpc_request(&next_id(), "ping", json!({})));
        assert_status(&r, 404);
        let r = send_once(gw.port, &get_stream(&idle.id));
        assert_status(&r, 404);

        // Well past the TTL, the streaming session is still alive.
        std::thread::sleep(Duration::from_millis(1500));
        streaming.assert_works();
        assert_eq!(
            gw.log_count("idle for longer than sessionTtl"),
            1,
            "the session with a stream was expired; log:\n{}",
            gw.log_text()
        );
    }
}

// ---- /healthz and target backoff -------------------------------------------------------------

mod health {
    use super::*;

    #[test]
    fn healthz_reports_each_target_and_the_failing_ones_with_their_error() {
        let gw = Gateway::start(&live_and_ghost(""));
        let h = gw.healthz();
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["sessions"], 0, "{h}");
        assert_eq!(h["configReloads"], 0, "{h}");
        // Only targets that have been started are listed.
        assert_eq!(h["targets"], json!([]), "{h}");

        let s = gw.session();
        let h = gw.healthz();
        assert_eq!(h["status"], "degraded", "{h}");
        assert_eq!(h["sessions"], 1, "{h}");
        let live = health_of(&h, "live");
        assert_eq!(live["state"], "ok", "{h}");
        assert_eq!(live["kind"], "stdio", "{h}");
        let ghost = health_of(&h, "ghost");
        assert_eq!(ghost["state"], "failing", "{h}");
        assert_eq!(ghost["failures"], 1, "{h}");
        let err = ghost["lastError"].as_str().unwrap_or("");
        assert!(err.contains(MISSING_CMD), "lastError should say why: {h}");
        assert_eq!(
            tool_text(&s.tool("live_echo", json!({"message": "ok"}))),
            "ok"
        );
    }

    #[test]
    fn target_backoff_skips_a_failing_target_for_the_next_session() {
        let gw = Gateway::start(&live_and_ghost("config: {targetBackoff: 30s}"));
        let first = gw.session();
        let why = assert_rpc_error(&first.tool("ghost_x", json!({})), None);
        assert!(why.contains(MISSING_CMD), "{why}");

        // Straight after the failure the target is in its backoff: not started again.
        let second = gw.session();
        let why = assert_rpc_error(&second.tool("ghost_x", json!({})), None);
        assert!(
            why.contains("backing off"),
            "the second session should not have started ghost: {why}"
        );
        // (The line is written by the gateway's stderr; give the file a moment.)
        assert!(
            wait_until(Duration::from_secs(2), || gw.log_count("backing off") > 0),
            "the log should say the target was skipped:\n{}",
            gw.log_text()
        );
        let ghost = health_of(&gw.healthz(), "ghost");
        assert_eq!(ghost["failures"], 1, "ghost was started again: {ghost}");
        assert_eq!(
            tool_text(&second.tool("live_add", json!({"a": 20, "b": 22}))),
            "42"
        );

        // Without targetBackoff every session tries again.
        let plain = Gateway::start(&live_and_ghost(""));
        plain.session();
        plain.session();
        let ghost = health_of(&plain.healthz(), "ghost");
        assert_eq!(ghost["failures"], 2, "{ghost}");
        assert_eq!(plain.log_count("backing off"), 0);
    }
}

// ---- security --------------------------------------------------------------------------------------

mod security {
    use super::*;

    /// A legacy HTTP+SSE session that made one call: its stream and its session id.
    fn legacy_session(port: u16) -> (Client, String) {
        let mut c = Client::connect(port);
        c.send(&request(
            "GET",
            "/sse",
            &[("Accept", "text/event-stream")],
            b"",
        ))
        .expect("GET /sse");
        let head = c.read_head().expect("/sse head");
        assert_eq!(head.status, 200, "{head:?}");
        let ev = c.next_event(&head).expect("read").expect("endpoint event");
        assert_eq!(ev.event, "endpoint", "{ev:?}");
        let endpoint = ev.data;
        let sid = endpoint
            .split("sessionId=")
            .nth(1)
            .expect("sessionId in the endpoint")
            .to_string();
        let post = |body: String| {
            let r = send_once(
                port,
                &request(
                    "POST",
                    &endpoint,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                ),
            );
            assert_status(&r, 202);
        };
        let id = next_id();
        post(rpc_request(
            &id,
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}}),
        ));
        let init = c
            .next_event(&head)
            .expect("read")
            .expect("init answer")
            .json();
        assert_eq!(init["id"], id, "{init}");
        post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        let id = next_id();
        post(rpc_request(
            &id,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "legacy"}}),
        ));
        let ans = c
            .next_event(&head)
            .expect("read")
            .expect("echo answer")
            .json();
        assert_eq!(tool_text(&ans), "legacy");
        (c, sid)
    }

    /// Opens `streamable` + `legacy` sessions with the access log and debug logging on, ends
    /// them, and checks the ids' shape and that none ever appears in full in the log.
    fn ids_stay_out_of_the_log(gw: &Gateway, prefix: &str, streamable: usize, legacy: usize) {
        let sessions: Vec<Session> = (0..streamable).map(|_| gw.session()).collect();
        let mut ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
        for _ in 0..legacy {
            let (stream, sid) = legacy_session(gw.port);
            ids.push(sid);
            drop(stream);
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "session ids repeat");
        for id in &ids {
            let random = id
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("session id {id:?} lacks the prefix {prefix:?}"));
            assert!(
                random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
                "session id is not {prefix:?} + 32 hex chars: {id:?}"
            );
        }
        for s in &sessions {
            assert!(
                s.post(&rpc_request(&next_id(), "ping", json!({}))).status() == 200,
                "ping"
            );
            assert_status(&send_once(gw.port, &delete_session(&s.id)), 200);
        }
        assert!(
            wait_until(Duration::from_secs(5), || gw.children().is_empty()),
            "children left after the sessions ended: {:?}",
            gw.children()
        );
        let log = gw.log_text();
        assert!(
            log.contains("access POST /mcp 200") || log.contains(r#""access":true"#),
            "the access log is not on:\n{log}"
        );
        for id in &ids {
            // Long enough to be a credential: anything past the 8 shown characters.
            let secret = &id[..prefix.len() + 12];
            assert!(
                !log.contains(secret),
                "session id {id} appears in the log beyond its 8-char prefix:\n{log}"
            );
            assert!(
                log.contains(&id[..prefix.len() + 8]),
                "the 8-char prefix of {id} should identify it in the log"
            );
        }
    }

    #[test]
    fn session_ids_are_random_hex_and_never_logged_in_full() {
        let gw = Gateway::demo("config: {accessLog: text, logLevel: debug}");
        ids_stay_out_of_the_log(&gw, "", 40, 10);
    }

    #[test]
    fn instance_prefixed_session_ids_are_not_logged_in_full_either() {
        let gw = Gateway::demo("config: {instanceId: gw7, accessLog: json, logLevel: debug}");
        ids_stay_out_of_the_log(&gw, "gw7.", 4, 2);
        // The environment variable wins over the config.
        let gw = Gateway::start_with(
            &demo_config("config: {instanceId: gw7, accessLog: text}"),
            &[],
            &[("MCPLEX_INSTANCE_ID", "fromenv")],
        );
        ids_stay_out_of_the_log(&gw, "fromenv.", 2, 1);
    }

    #[test]
    fn a_deleted_session_id_is_dead() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let mut stream = gw.connect();
        stream.send(&get_stream(&s.id)).expect("GET");
        let head = stream.read_head().expect("stream head");
        assert_eq!(head.status, 200);

        assert_status(&send_once(gw.port, &delete_session(&s.id)), 200);
        // The open stream ends and carries nothing.
        stream.set_timeout(Duration::from_secs(3));
        match stream.next_event(&head) {
            Ok(None) => {}
            Ok(Some(ev)) => panic!("a deleted session's stream carried {ev:?}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the deleted session's stream stayed open")
            }
            // A reset is an end too.
            Err(_) => {}
        }
        assert_status(&send_once(gw.port, &get_stream(&s.id)), 404);
        let r = s.post(&rpc_request(&next_id(), "tools/list", json!({})));
        assert_status(&r, 404);
        assert!(
            !r.text().contains("echo"),
            "a dead id got data: {}",
            r.text()
        );
        assert_status(&send_once(gw.port, &delete_session(&s.id)), 404);
        // A session id is not guessable from a neighbour: the next one shares no prefix.
        let t = gw.session();
        assert_ne!(&t.id[..8], &s.id[..8]);
    }

    #[test]
    fn concurrent_sessions_never_see_each_others_messages() {
        let gw = Gateway::demo("");
        let sessions = [("A", gw.session(), 3u64), ("B", gw.session(), 4u64)];
        // Each session also has its GET stream open: nothing foreign may show up there.
        let mut streams: Vec<(Client, Head)> = sessions
            .iter()
            .map(|(_, s, _)| {
                let mut c = gw.connect();
                c.send(&get_stream(&s.id)).expect("GET");
                let h = c.read_head().expect("stream head");
                assert_eq!(h.status, 200);
                (c, h)
            })
            .collect();

        std::thread::scope(|scope| {
            for (who, s, steps) in &sessions {
                let gw = &gw;
                scope.spawn(move || {
                    for round in 0..6u64 {
                        // The same request id in both sessions, distinct tokens and payloads.
                        let id = json!(9000 + round);
                        let token = format!("{who}-{round}");
                        let body = rpc_request(
                            &id,
                            "tools/call",
                            json!({"name": "slow", "arguments": {"steps": steps, "delayMs": 15},
                                   "_meta": {"progressToken": token}}),
                        );
                        let mut c = gw.connect();
                        c.send(&s.post_bytes(&body)).expect("send");
                        let head = c.read_head().expect("head");
                        assert_eq!(head.status, 200, "{head:?}");
                        let mut progress = 0;
                        let mut answers = 0;
                        while let Some(ev) = c.next_event(&head).expect("read stream") {
                            let m = ev.json();
                            if m["method"] == "notifications/progress" {
                                assert_eq!(
                                    m["params"]["progressToken"],
                                    json!(token),
                                    "session {who} got foreign progress: {m}"
                                );
                                progress += 1;
                            } else {
                                assert_eq!(m["id"], id, "session {who}: {m}");
                                assert_eq!(tool_text(&m), format!("done after {steps} steps"));
                                answers += 1;
                            }
                        }
                        assert_eq!((progress, answers), (*steps, 1), "session {who}");

                        let msg = format!("{who} says {round}");
                        let r = s.post(&rpc_request(
                            &id,
                            "tools/call",
                            json!({"name": "echo", "arguments": {"message": msg}}),
                        ));
                        assert_eq!(tool_text(&r.rpc(&id)), msg, "session {who}");
                    }
                });
            }
        });

        for (c, head) in streams.iter_mut() {
            c.set_timeout(Duration::from_millis(300));
            if let Ok(Some(ev)) = c.next_event(head) {
                panic!("a GET stream carried a message that belongs to a POST: {ev:?}");
            }
        }
    }

    /// The environment a stdio child sees, written by `sh` before it execs the demo.
    fn child_env(clear: bool) -> BTreeMap<String, String> {
        let dir = TempDir::new();
        let out = dir.path().join("child-env.txt");
        let script = format!("env > \"$OUT\"; exec '{}'", demo_bin());
        let config = format!(
            "mcp:\n  port: 0\n  targets:\n  - name: demo\n    stdio:\n      cmd: /bin/sh\n      args: {}\n      env: {{OUT: {:?}, MCPLEX_CHILD_ONLY: child-value}}\n{}",
            json!(["-c", script]),
            out.display().to_string(),
            if clear { "      clearEnv: true\n" } else { "" }
        );
        let gw = Gateway::start_with(
            &config,
            &[],
            &[("MCPLEX_TEST_PARENT_SECRET", "parent-value")],
        );
        gw.session().assert_works();
        let text = std::fs::read_to_string(&out).expect("the child wrote its environment");
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stdio_children_inherit_the_environment_plus_env() {
        let env = child_env(false);
        assert_eq!(
            env.get("MCPLEX_TEST_PARENT_SECRET").map(String::as_str),
            Some("parent-value"),
            "{env:?}"
        );
        assert_eq!(
            env.get("MCPLEX_CHILD_ONLY").map(String::as_str),
            Some("child-value")
        );
        assert!(env.contains_key("OUT"));
        if std::env::var_os("PATH").is_some() {
            assert!(env.contains_key("PATH"), "PATH not inherited: {env:?}");
        }
    }

    #[test]
    fn clear_env_passes_only_the_configured_variables() {
        let env = child_env(true);
        assert_eq!(
            env.get("MCPLEX_CHILD_ONLY").map(String::as_str),
            Some("child-value"),
            "{env:?}"
        );
        assert!(
            !env.contains_key("MCPLEX_TEST_PARENT_SECRET"),
            "the gateway's environment leaked: {env:?}"
        );
        // The shell itself may add PWD, SHLVL and `_`; nothing else may appear.
        let foreign: Vec<&String> = env
            .keys()
            .filter(|k| {
                !["OUT", "MCPLEX_CHILD_ONLY", "PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str())
            })
            .collect();
        assert!(foreign.is_empty(), "inherited variables: {foreign:?}");
    }

    /// Sends `bytes` (a bad request followed by a smuggled one) and expects one error answer
    /// with `status`, then the connection closed, and the smuggled request never served.
    #[track_caller]
    fn refused(gw: &Gateway, what: &str, bytes: &[u8], statuses: &[u16]) {
        let mut c = gw.connect();
        c.send(bytes).expect("send");
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert!(
            statuses.contains(&r.status()),
            "{what}: expected {statuses:?}, got {} {:?}",
            r.status(),
            r.text()
        );
        match c.closed_within(Duration::from_secs(3)) {
            Ok(rest) => assert!(
                rest.is_empty(),
                "{what}: the smuggled request was answered: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(rest) => panic!(
                "{what}: connection left open after a bad request (then got {:?})",
                String::from_utf8_lossy(&rest)
            ),
        }
    }

    #[test]
    fn smuggling_shapes_are_400_and_close_the_connection() {
        let gw = Gateway::demo("");
        let w = gw.session();
        let smuggled = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let json_head =
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
        let sid = format!("Mcp-Session-Id: {}\r\n", w.id);
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let n = ping.len();
        let cases: Vec<(&str, String, &[u16])> = vec![
            (
                "Content-Length with Transfer-Encoding",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
                &[400],
            ),
            (
                "Transfer-Encoding with Content-Length",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
                &[400],
            ),
            (
                "duplicate equal Content-Length",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "duplicate different Content-Length",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length: {n}\r\nContent-Length: 0\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "obs-fold",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}X-Folded: a\r\n b\r\nContent-Length: {n}\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "obs-fold in Content-Length",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length:\r\n {n}\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "whitespace before the colon",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length : {n}\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "a non-digit Content-Length",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Content-Length: +{n}\r\n\r\n{ping}{smuggled}"),
                &[400],
            ),
            (
                "a bare LF in chunked framing",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Transfer-Encoding: chunked\r\n\r\n{n:x}\n{ping}\r\n0\r\n\r\n{smuggled}"),
                &[400],
            ),
            (
                "a transfer coding other than chunked",
                format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{json_head}{sid}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
                &[501],
            ),
        ];
        for (what, bytes, statuses) in &cases {
            refused(&gw, what, bytes.as_bytes(), statuses);
        }
        let h = gw.healthz();
        assert_eq!(h["status"], "ok", "{h}");
        w.assert_works();
    }
}
