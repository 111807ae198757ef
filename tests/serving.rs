//! Serving (issue #5), over raw HTTP against the real `mcplex` binary with `mcplex-demo` children:
//! routing across binds, listeners and route matches; the legacy HTTP+SSE transport; the CORS
//! route policy; DNS-rebinding protection (Host and Origin checks).
//!
//! Backends are told apart by name: each is one demo target with `prefixMode: always`, so its
//! tools are `<target>_echo`, ... and `tools/list` says which backend a request reached.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// ---- helpers -----------------------------------------------------------------------------------

/// Every port the gateway logged as listening, in config order (one per bind).
#[track_caller]
fn ports(gw: &Gateway, binds: usize) -> Vec<u16> {
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        found = gw
            .log_text()
            .lines()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|a| a.trim().rsplit_once(':')?.1.parse().ok())
            .collect();
        found.len() >= binds
    });
    assert!(
        ok,
        "expected {binds} binds listening; log:\n{}",
        gw.log_text()
    );
    found
}

/// A named backend with one demo target of the same name, prefixed always.
fn named_backend(name: &str) -> String {
    format!(
        "- name: {name}\n  mcp:\n    prefixMode: always\n    targets:\n    - name: {name}\n      stdio: {{cmd: {:?}}}\n",
        demo_bin()
    )
}

/// The one-target shorthand (serves /mcp, /sse, /message, /messages) with `policies` and
/// top-level `extra`.
fn shorthand(policies: &str, extra: &str) -> String {
    format!(
        "{extra}\nmcp:\n  port: 0\n  policies: {policies}\n  targets:\n  - name: demo\n    stdio: {{cmd: {:?}}}\n",
        demo_bin()
    )
}

/// POST headers plus `extra`.
fn post_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h: Vec<(&str, &str)> = POST_HEADERS.to_vec();
    h.extend_from_slice(extra);
    h
}

/// An `initialize` POSTed to `path` with `headers` on a fresh connection.
fn initialize_at(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let id = next_id();
    send_once(
        port,
        &request(
            "POST",
            path,
            &post_headers(headers),
            initialize_body(&id).as_bytes(),
        ),
    )
}

/// Which backend a streamable-HTTP session started at `path` (with `headers`) reaches: the
/// prefix of its `*_echo` tool. The session is deleted afterwards.
#[track_caller]
fn backend_at(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let r = initialize_at(port, path, headers);
    assert_status(&r, 200);
    let sid = r
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id from {path}: {:?}", r.head))
        .to_string();
    let mut h = post_headers(headers);
    h.push(("Mcp-Session-Id", &sid));
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    assert_status(
        &send_once(port, &request("POST", path, &h, note.as_bytes())),
        202,
    );
    let id = next_id();
    let list = send_once(
        port,
        &request(
            "POST",
            path,
            &h,
            rpc_request(&id, "tools/list", json!({})).as_bytes(),
        ),
    );
    assert_status(&list, 200);
    let msg = list.rpc(&id);
    let names: Vec<String> = assert_rpc_ok(&msg)["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let owner = names
        .iter()
        .find_map(|n| n.strip_suffix("_echo"))
        .unwrap_or_else(|| panic!("no <target>_echo tool at {path}: {names:?}"))
        .to_string();
    let del: Vec<(&str, &str)> = headers
        .iter()
        .copied()
        .chain([("Mcp-Session-Id", sid.as_str())])
        .collect();
    assert_status(&send_once(port, &request("DELETE", path, &del, b"")), 200);
    owner
}

/// A legacy HTTP+SSE session: the open `GET .../sse` stream and the endpoint it announced.
struct Legacy {
    port: u16,
    stream: Client,
    head: Head,
    /// The `endpoint` event's data, e.g. `/sse?sessionId=<id>`.
    endpoint: String,
    /// Headers sent with every POST (e.g. an Origin).
    headers: Vec<(String, String)>,
    /// Messages that arrived while waiting for an answer (notifications, requests).
    seen: Vec<Value>,
}

impl Legacy {
    #[track_caller]
    fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Legacy {
        let mut stream = Client::connect(port);
        let mut h = vec![("Accept", "text/event-stream")];
        h.extend_from_slice(headers);
        stream
            .send(&request("GET", path, &h, b""))
            .expect("send GET");
        let head = stream.read_head().expect("GET stream head");
        assert_eq!(head.status, 200, "GET {path}: {head:?}");
        assert!(
            head.content_type().starts_with("text/event-stream"),
            "GET {path}: {head:?}"
        );
        let ev = stream
            .next_event(&head)
            .expect("read endpoint event")
            .expect("stream ended before the endpoint event");
        assert_eq!(ev.event, "endpoint", "first event: {ev:?}");
        Legacy {
            port,
            stream,
            head,
            endpoint: ev.data,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            seen: Vec::new(),
        }
    }

    fn session_id(&self) -> &str {
        self.endpoint
            .split("sessionId=")
            .nth(1)
            .unwrap_or("")
            .split('&')
            .next()
            .unwrap_or("")
    }

    /// POSTs a body to `target` (the endpoint, or another path with the same query).
    fn post_to(&self, target: &str, body: &str) -> Response {
        let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        h.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        send_once(self.port, &request("POST", target, &h, body.as_bytes()))
    }

    #[track_caller]
    fn post(&self, body: &str) -> Response {
        self.post_to(&self.endpoint, body)
    }

    /// The next `event: message` on the stream.
    #[track_caller]
    fn next_message(&mut self) -> Value {
        loop {
            let ev = self
                .stream
                .next_event(&self.head)
                .expect("read the legacy stream")
                .expect("the legacy stream ended");
            if ev.event == "message" {
                return ev.json();
            }
            assert_eq!(ev.event, "", "unexpected event on the stream: {ev:?}");
        }
    }

    /// Sends a request (202) and waits for its answer on the stream.
    #[track_caller]
    fn call_via(&mut self, target: &str, method: &str, params: Value) -> Value {
        let id = next_id();
        let r = self.post_to(target, &rpc_request(&id, method, params));
        assert_status(&r, 202);
        self.answer(&id)
    }

    #[track_caller]
    fn call(&mut self, method: &str, params: Value) -> Value {
        let target = self.endpoint.clone();
        self.call_via(&target, method, params)
    }

    #[track_caller]
    fn answer(&mut self, id: &Value) -> Value {
        loop {
            let m = self.next_message();
            if m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some()) {
                return m;
            }
            self.seen.push(m);
        }
    }

    #[track_caller]
    fn initialize(&mut self) -> Value {
        let init = self.call(
            "initialize",
            json!({
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "mcplex-serving-tests", "version": "0"},
            }),
        );
        assert_rpc_ok(&init);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
        assert_status(&self.post(&note), 202);
        init
    }

    /// The prefix of this session's `*_echo` tool (with `prefixMode: always`).
    #[track_caller]
    fn backend(&mut self) -> String {
        let list = self.call("tools/list", json!({}));
        let tools = assert_rpc_ok(&list)["tools"].clone();
        tools
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str())
            .find_map(|n| n.strip_suffix("_echo").map(String::from))
            .unwrap_or_else(|| panic!("no <target>_echo in {list}"))
    }
}

#[track_caller]
fn assert_no_cors(r: &Response) {
    for (name, value) in &r.head.headers {
        assert!(
            !name.starts_with("access-control-"),
            "unexpected CORS header {name}: {value} in {} {:?}",
            r.status(),
            r.head.headers
        );
    }
}

#[track_caller]
fn assert_cors(head: &Head, origin: &str) {
    assert_eq!(
        head.header("access-control-allow-origin"),
        Some(origin),
        "Access-Control-Allow-Origin: {head:?}"
    );
    let expose = head
        .header("access-control-expose-headers")
        .unwrap_or_else(|| panic!("no Access-Control-Expose-Headers: {head:?}"))
        .to_ascii_lowercase();
    assert!(
        expose.split(',').any(|h| h.trim() == "mcp-session-id"),
        "Mcp-Session-Id not exposed: {head:?}"
    );
}

// ---- routing -----------------------------------------------------------------------------------

mod routing {
    use super::*;

    /// Two binds. Bind 0: an exact path, a header match, a query match and its fallback, a
    /// path prefix. Bind 1: a listener for one host name, then route hostnames, a method match
    /// and a catch-all.
    fn config() -> String {
        let mut backends = String::new();
        for n in [
            "alpha", "beta", "blue", "quince", "green", "delta", "ipv4", "getter", "gamma",
        ] {
            backends.push_str(&named_backend(n));
        }
        format!(
            r#"
config:
  allowedHosts: [tools.internal]
binds:
- port: 0
  listeners:
  - routes:
    - name: exact
      matches: [{{path: {{exact: /a/mcp}}}}]
      backends: [{{backend: alpha}}]
    - name: header
      matches:
      - path: {{exact: /h/mcp}}
        headers: [{{name: X-Tenant, value: {{exact: blue}}}}]
      backends: [{{backend: blue}}]
    - name: query
      matches:
      - path: {{exact: /h/mcp}}
        query: [{{name: tenant, value: {{exact: q}}}}]
      backends: [{{backend: quince}}]
    - name: fallback
      matches: [{{path: {{exact: /h/mcp}}}}]
      backends: [{{backend: green}}]
    - name: prefix
      matches: [{{path: {{pathPrefix: /p}}}}]
      backends: [{{backend: beta}}]
- port: 0
  listeners:
  - hostname: tools.internal
    routes:
    - backends: [{{backend: delta}}]
  - routes:
    - hostnames: [127.0.0.1]
      matches: [{{path: {{exact: /ip/mcp}}}}]
      backends: [{{backend: ipv4}}]
    - name: get
      matches: [{{path: {{pathPrefix: /}}, method: GET}}]
      backends: [{{backend: getter}}]
    - name: rest
      backends: [{{backend: gamma}}]
backends:
{backends}"#
        )
    }

    #[test]
    fn matches_pick_their_backends_and_unmatched_is_404() {
        let gw = Gateway::start(&config());
        let p = ports(&gw, 2);
        let (a, b) = (p[0], p[1]);
        assert_ne!(a, b);

        // Exact path.
        assert_eq!(backend_at(a, "/a/mcp", &[]), "alpha");
        // Path prefix: the prefix itself and paths below it, not /px.
        assert_eq!(backend_at(a, "/p", &[]), "beta");
        assert_eq!(backend_at(a, "/p/mcp", &[]), "beta");
        assert_eq!(backend_at(a, "/p/deep/mcp", &[]), "beta");
        // Header match (names case-insensitive, values exact), else the next route in order.
        assert_eq!(backend_at(a, "/h/mcp", &[("X-Tenant", "blue")]), "blue");
        assert_eq!(backend_at(a, "/h/mcp", &[("x-tenant", "blue")]), "blue");
        assert_eq!(backend_at(a, "/h/mcp", &[("X-Tenant", "red")]), "green");
        assert_eq!(backend_at(a, "/h/mcp", &[]), "green");
        // Query match.
        assert_eq!(backend_at(a, "/h/mcp?tenant=q", &[]), "quince");
        assert_eq!(backend_at(a, "/h/mcp?tenant=z", &[]), "green");
        // First match wins: a header and a query match both hold, the header route comes first.
        assert_eq!(
            backend_at(a, "/h/mcp?tenant=q", &[("X-Tenant", "blue")]),
            "blue"
        );

        // Unmatched on bind 0: 404 "no route".
        for path in ["/", "/mcp", "/a/mcp/x", "/a", "/px", "/px/mcp", "/sse"] {
            let r = initialize_at(a, path, &[]);
            assert_status(&r, 404);
            assert!(r.text().contains("no route"), "{path}: {}", r.text());
        }
        let r = send_once(
            a,
            &request(
                "GET",
                "/nothing/sse",
                &[("Accept", "text/event-stream")],
                b"",
            ),
        );
        assert_status(&r, 404);

        // Bind 1 has its own routes: bind 0's paths are the catch-all there.
        assert_eq!(backend_at(b, "/a/mcp", &[]), "gamma");
        assert_eq!(backend_at(b, "/mcp", &[]), "gamma");
        // A listener's hostname (an allowedHosts name) comes first for its host.
        assert_eq!(
            backend_at(b, "/mcp", &[("Host", "tools.internal")]),
            "delta"
        );
        assert_eq!(
            backend_at(b, "/anything", &[("Host", "tools.internal:8080")]),
            "delta"
        );
        // Route hostnames.
        let ip_host = format!("127.0.0.1:{b}");
        assert_eq!(
            backend_at(b, "/ip/mcp", &[("Host", ip_host.as_str())]),
            "ipv4"
        );
        assert_eq!(backend_at(b, "/ip/mcp", &[("Host", "localhost")]), "gamma");
    }

    #[test]
    fn method_match_decides_between_routes() {
        let gw = Gateway::start(&config());
        let b = ports(&gw, 2)[1];
        // POST (streamable HTTP initialize) skips the GET-only route.
        assert_eq!(backend_at(b, "/mcp", &[]), "gamma");
        // GET /sse opens a legacy session: the GET-only route's backend serves it, even though
        // its later POSTs go to the endpoint by session id.
        let mut l = Legacy::open(b, "/sse", &[]);
        assert!(l.endpoint.starts_with("/sse?sessionId="), "{}", l.endpoint);
        l.initialize();
        assert_eq!(l.backend(), "getter");
        // The same on bind 0's prefix route: GET /p/sse.
        let a = ports(&gw, 2)[0];
        let mut l = Legacy::open(a, "/p/sse", &[]);
        assert!(
            l.endpoint.starts_with("/p/sse?sessionId="),
            "{}",
            l.endpoint
        );
        l.initialize();
        assert_eq!(l.backend(), "beta");
    }
}

// ---- legacy HTTP+SSE -----------------------------------------------------------------------------

mod legacy_sse {
    use super::*;

    #[test]
    fn endpoint_event_posts_answers_on_the_stream() {
        let gw = Gateway::demo("");
        let mut l = Legacy::open(gw.port, "/sse", &[]);
        assert!(
            l.head
                .header("cache-control")
                .is_some_and(|v| v.contains("no-cache")),
            "{:?}",
            l.head
        );
        // `event: endpoint` with `data: /sse?sessionId=<id>` (a relative URL clients resolve).
        let sid = l.session_id().to_string();
        assert_eq!(l.endpoint, format!("/sse?sessionId={sid}"));
        assert!(
            sid.len() >= 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()),
            "session id {sid:?}"
        );

        // POST initialize -> 202; the answer comes on the stream.
        let id = next_id();
        let r = l.post(&rpc_request(
            &id,
            "initialize",
            json!({
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            }),
        ));
        assert_status(&r, 202);
        let init = l.answer(&id);
        let result = assert_rpc_ok(&init);
        assert_eq!(result["protocolVersion"], "2024-11-05", "{init}");
        assert!(result["capabilities"]["tools"].is_object(), "{init}");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
        assert_status(&l.post(&note), 202);

        let echo = l.call(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "sse!"}}),
        );
        assert_eq!(tool_text(&echo), "sse!");

        // The other endpoint paths clients use take the same session id.
        for path in ["/message", "/messages"] {
            let target = format!("{path}?sessionId={sid}");
            let r = l.call_via(
                &target,
                "tools/call",
                json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
            );
            assert_eq!(tool_text(&r), "5", "via {path}");
        }

        // Progress travels on the stream before the answer.
        let r = l.call(
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 3, "delayMs": 20},
                   "_meta": {"progressToken": "tok-1"}}),
        );
        assert_rpc_ok(&r);
        let progress: Vec<&Value> = l
            .seen
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert!(progress.len() >= 3, "progress on the stream: {:?}", l.seen);
        assert!(
            progress
                .iter()
                .all(|m| m["params"]["progressToken"] == "tok-1"),
            "{progress:?}"
        );

        // A batch: every answer on the stream.
        let (i1, i2) = (next_id(), next_id());
        let batch = format!(
            "[{},{}]",
            rpc_request(&i1, "ping", json!({})),
            rpc_request(
                &i2,
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "b"}})
            )
        );
        assert_status(&l.post(&batch), 202);
        let mut got = [l.next_message(), l.next_message()];
        got.sort_by_key(|m| m["id"].as_u64());
        assert_eq!(got[0]["id"], i1, "{got:?}");
        assert_eq!(tool_text(&got[1]), "b");
    }

    #[test]
    fn unknown_or_missing_session_id() {
        let gw = Gateway::demo("");
        let body = rpc_request(&next_id(), "ping", json!({}));
        let json_ct = [("Content-Type", "application/json")];
        for path in [
            "/sse?sessionId=00000000000000000000000000000000",
            "/message?sessionId=nope",
            "/messages?sessionId=",
        ] {
            let r = send_once(gw.port, &request("POST", path, &json_ct, body.as_bytes()));
            assert_status(&r, 404);
        }
        for path in ["/message", "/messages"] {
            let r = send_once(gw.port, &request("POST", path, &json_ct, body.as_bytes()));
            assert_status(&r, 400);
            assert!(r.text().contains("sessionId"), "{}", r.text());
        }
        // A streamable-HTTP session id is not a legacy endpoint.
        let s = gw.session();
        let path = format!("/message?sessionId={}", s.id);
        let r = send_once(gw.port, &request("POST", &path, &json_ct, body.as_bytes()));
        assert_status(&r, 404);
    }

    #[test]
    fn closing_the_stream_ends_the_session_and_its_child() {
        let gw = Gateway::demo("");
        let mut l = Legacy::open(gw.port, "/sse", &[]);
        l.initialize();
        let echo = l.call(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "x"}}),
        );
        assert_eq!(tool_text(&echo), "x");
        let kids = gw.children();
        assert_eq!(kids.len(), 1, "one stdio child per session: {kids:?}");
        let endpoint = l.endpoint.clone();
        let port = l.port;
        drop(l);
        assert!(
            wait_until(Duration::from_secs(10), || gw.children().is_empty()),
            "the child outlived the closed stream: {:?}",
            gw.children()
        );
        let r = send_once(
            port,
            &request(
                "POST",
                &endpoint,
                &[("Content-Type", "application/json")],
                rpc_request(&next_id(), "ping", json!({})).as_bytes(),
            ),
        );
        assert_status(&r, 404);
    }

    #[test]
    fn idle_stream_gets_keep_alive_comments() {
        let gw = Gateway::demo("");
        let mut l = Legacy::open(gw.port, "/sse", &[]);
        l.stream.set_timeout(Duration::from_secs(25));
        let t0 = Instant::now();
        let chunk = l
            .stream
            .read_chunk()
            .expect("read the idle stream")
            .expect("the stream ended");
        let waited = t0.elapsed();
        let text = String::from_utf8_lossy(&chunk);
        assert!(
            text.starts_with(':'),
            "expected an SSE comment, got {text:?}"
        );
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
            "keep-alive after {waited:?} (expected about 15 s)"
        );
    }
}

// ---- CORS --------------------------------------------------------------------------------------

mod cors {
    use super::*;

    const APP: &str = "http://app.example";
    /// A loopback origin the policy does not allow: passes the DNS-rebinding check, gets no
    /// CORS grant.
    const OTHER_LOCAL: &str = "http://localhost:5173";

    fn policy() -> String {
        format!(
            "{{cors: {{allowOrigins: [\"{APP}\"], allowHeaders: [content-type, mcp-session-id, mcp-protocol-version], allowMethods: [GET, POST, DELETE], exposeHeaders: [X-Trace], maxAge: 600}}}}"
        )
    }

    fn preflight(port: u16, origin: &str, method: &str, headers: &str) -> Response {
        send_once(
            port,
            &request(
                "OPTIONS",
                "/mcp",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", method),
                    ("Access-Control-Request-Headers", headers),
                ],
                b"",
            ),
        )
    }

    #[test]
    fn preflight_for_allowed_and_disallowed_origins() {
        let gw = Gateway::start(&shorthand(&policy(), ""));
        let r = preflight(gw.port, APP, "POST", "content-type,mcp-session-id");
        assert!(
            r.status() == 204 || r.status() == 200,
            "preflight: {} {:?}",
            r.status(),
            r.head
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "a preflight without Access-Control-Allow-Origin fails in every browser: {:?}",
            r.head
        );
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        for m in ["GET", "POST", "DELETE"] {
            assert!(methods.contains(m), "Allow-Methods {methods:?}");
        }
        let allowed = r
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        for h in ["content-type", "mcp-session-id", "mcp-protocol-version"] {
            assert!(allowed.contains(h), "Allow-Headers {allowed:?}");
        }
        assert_eq!(
            r.header("access-control-max-age"),
            Some("600"),
            "{:?}",
            r.head
        );
        assert!(r.body.is_empty());

        // Allowed on the legacy paths too.
        let r = send_once(
            gw.port,
            &request(
                "OPTIONS",
                "/sse",
                &[("Origin", APP), ("Access-Control-Request-Method", "GET")],
                b"",
            ),
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{:?}",
            r.head
        );

        // A loopback origin the policy does not list: answered, without any CORS grant.
        let r = preflight(gw.port, OTHER_LOCAL, "POST", "content-type");
        assert!(r.status() < 300, "{} {:?}", r.status(), r.head);
        assert_no_cors(&r);
        // A foreign origin the policy does not list: refused outright.
        let r = preflight(gw.port, "http://evil.example", "POST", "content-type");
        assert_status(&r, 403);
        assert_no_cors(&r);
    }

    #[test]
    fn actual_responses_carry_the_grant_only_for_allowed_origins() {
        let gw = Gateway::start(&shorthand(&policy(), ""));
        // initialize from the allowed origin: the grant and the exposed session id.
        let r = initialize_at(gw.port, "/mcp", &[("Origin", APP)]);
        assert_status(&r, 200);
        assert_cors(&r.head, APP);
        let expose = r
            .header("access-control-expose-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            expose.contains("x-trace"),
            "configured exposeHeaders: {expose:?}"
        );
        assert!(
            r.header("vary")
                .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
            "Vary: Origin for a per-origin grant: {:?}",
            r.head
        );
        let sid = r.header("mcp-session-id").expect("session id").to_string();

        // Errors carry it too (the browser must be able to read them).
        let r = send_once(
            gw.port,
            &request(
                "POST",
                "/mcp",
                &post_headers(&[("Origin", APP)]),
                rpc_request(&next_id(), "ping", json!({})).as_bytes(),
            ),
        );
        assert_status(&r, 400);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{:?}",
            r.head
        );

        // A POST whose answer is an SSE stream (progress first).
        let id = next_id();
        let body = rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 2, "delayMs": 10},
                   "_meta": {"progressToken": 7}}),
        );
        let h = post_headers(&[("Origin", APP), ("Mcp-Session-Id", &sid)]);
        let r = send_once(gw.port, &request("POST", "/mcp", &h, body.as_bytes()));
        assert_status(&r, 200);
        assert!(
            r.head.content_type().starts_with("text/event-stream"),
            "{:?}",
            r.head
        );
        assert_cors(&r.head, APP);
        assert_rpc_ok(&r.rpc(&id));

        // The GET stream.
        let mut c = Client::connect(gw.port);
        c.send(&request(
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                ("Origin", APP),
                ("Mcp-Session-Id", &sid),
            ],
            b"",
        ))
        .expect("send GET");
        let head = c.read_head().expect("GET stream head");
        assert_eq!(head.status, 200, "{head:?}");
        assert_cors(&head, APP);
        drop(c);

        // The legacy stream.
        let l = Legacy::open(gw.port, "/sse", &[("Origin", APP)]);
        assert_cors(&l.head, APP);
        let r = l.post(&rpc_request(&next_id(), "ping", json!({})));
        assert_status(&r, 202);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{:?}",
            r.head
        );
        drop(l);

        // DELETE.
        let r = send_once(
            gw.port,
            &request(
                "DELETE",
                "/mcp",
                &[("Origin", APP), ("Mcp-Session-Id", &sid)],
                b"",
            ),
        );
        assert_status(&r, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{:?}",
            r.head
        );

        // A loopback origin that is not allowed: served (not a rebinding attack), no grant.
        let r = initialize_at(gw.port, "/mcp", &[("Origin", OTHER_LOCAL)]);
        assert_status(&r, 200);
        assert_no_cors(&r);
        let l = Legacy::open(gw.port, "/sse", &[("Origin", OTHER_LOCAL)]);
        assert!(
            l.head.header("access-control-allow-origin").is_none(),
            "{:?}",
            l.head
        );
        // No Origin at all (not a browser): no grant either.
        let r = initialize_at(gw.port, "/mcp", &[]);
        assert_status(&r, 200);
        assert_no_cors(&r);
    }

    #[test]
    fn wildcard_and_credentials() {
        let gw = Gateway::start(&shorthand("{cors: {allowOrigins: ['*']}}", ""));
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "http://anything.example")]);
        assert_status(&r, 200);
        assert_cors(&r.head, "*");
        assert!(
            r.header("access-control-allow-credentials").is_none(),
            "{:?}",
            r.head
        );

        let gw = Gateway::start(&shorthand(
            &format!("{{cors: {{allowOrigins: ['{APP}'], allowCredentials: true}}}}"),
            "",
        ));
        let r = initialize_at(gw.port, "/mcp", &[("Origin", APP)]);
        assert_status(&r, 200);
        assert_cors(&r.head, APP);
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{:?}",
            r.head
        );
        let r = preflight(gw.port, APP, "DELETE", "mcp-session-id");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{:?}",
            r.head
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{:?}",
            r.head
        );
    }
}

// ---- DNS-rebinding protection --------------------------------------------------------------------

mod dns_rebinding {
    use super::*;

    #[test]
    fn foreign_host_is_refused_loopback_hosts_are_served() {
        let gw = Gateway::demo("");
        let port = gw.port.to_string();
        for host in [
            "evil.example.com",
            "evil.example.com:80",
            "localhost.evil.example",
        ] {
            let r = initialize_at(gw.port, "/mcp", &[("Host", host)]);
            assert_status(&r, 403);
        }
        // The legacy stream and unrouted paths are guarded too.
        let r = send_once(
            gw.port,
            &request(
                "GET",
                "/sse",
                &[
                    ("Host", "evil.example.com"),
                    ("Accept", "text/event-stream"),
                ],
                b"",
            ),
        );
        assert_status(&r, 403);
        for host in [
            "localhost".to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ] {
            let r = initialize_at(gw.port, "/mcp", &[("Host", host.as_str())]);
            assert_status(&r, 200);
        }
    }

    #[test]
    fn foreign_origin_is_refused_unless_cors_allows_it() {
        let gw = Gateway::demo("");
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "http://evil.example")]);
        assert_status(&r, 403);
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "https://evil.example.com")]);
        assert_status(&r, 403);
        let l_req = request(
            "GET",
            "/sse",
            &[
                ("Origin", "http://evil.example"),
                ("Accept", "text/event-stream"),
            ],
            b"",
        );
        assert_status(&send_once(gw.port, &l_req), 403);
        // Loopback origins are fine on a loopback bind.
        for origin in [
            "http://localhost:6274",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
        ] {
            let r = initialize_at(gw.port, "/mcp", &[("Origin", origin)]);
            assert_status(&r, 200);
        }

        // The same origin allowed by the route's cors policy.
        let gw = Gateway::start(&shorthand(
            "{cors: {allowOrigins: ['http://evil.example']}}",
            "",
        ));
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "http://evil.example")]);
        assert_status(&r, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://evil.example"),
            "{:?}",
            r.head
        );
        // ... but only that one.
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "http://evil.example:8080")]);
        assert_status(&r, 403);
        // cors does not make a foreign Host acceptable.
        let r = initialize_at(
            gw.port,
            "/mcp",
            &[("Origin", "http://evil.example"), ("Host", "evil.example")],
        );
        assert_status(&r, 403);
    }

    #[test]
    fn protection_off_serves_any_host_and_origin() {
        let gw = Gateway::demo("config: {dnsRebindingProtection: false}");
        let r = initialize_at(gw.port, "/mcp", &[("Host", "evil.example.com")]);
        assert_status(&r, 200);
        let r = initialize_at(gw.port, "/mcp", &[("Origin", "http://evil.example")]);
        assert_status(&r, 200);
        // Still no CORS grant without a policy.
        assert_no_cors(&r);
        let l = Legacy::open(
            gw.port,
            "/sse",
            &[
                ("Host", "evil.example.com"),
                ("Origin", "http://evil.example"),
            ],
        );
        assert!(l.endpoint.starts_with("/sse?sessionId="), "{}", l.endpoint);
    }

    #[test]
    fn allowed_hosts_extend_the_loopback_names() {
        let gw = Gateway::demo("config: {allowedHosts: [mcp.example.com, '*.tools.example']}");
        for host in [
            "mcp.example.com",
            "mcp.example.com:443",
            "a.tools.example",
            "localhost",
        ] {
            let r = initialize_at(gw.port, "/mcp", &[("Host", host)]);
            assert_status(&r, 200);
        }
        for host in ["evil.example.com", "tools.example", "mcp.example.com.evil"] {
            let r = initialize_at(gw.port, "/mcp", &[("Host", host)]);
            assert_status(&r, 403);
        }
        // Same origin as an allowed Host.
        let r = initialize_at(
            gw.port,
            "/mcp",
            &[
                ("Host", "mcp.example.com"),
                ("Origin", "http://mcp.example.com"),
            ],
        );
        assert_status(&r, 200);
        let r = initialize_at(
            gw.port,
            "/mcp",
            &[
                ("Host", "mcp.example.com"),
                ("Origin", "http://other.example.com"),
            ],
        );
        assert_status(&r, 403);
    }
}
