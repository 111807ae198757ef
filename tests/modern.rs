//! The stateless revision (2026-07-28) on `/mcp`, over real sockets, with the demo as a legacy
//! stdio upstream: no session, each request carrying its own version and capabilities, the
//! gateway's pool of links serving them.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const MODERN: &str = "2026-07-28";

fn envelope(extra: Value) -> Value {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut meta, extra) {
        m.extend(x);
    }
    meta
}

/// A modern POST with the headers the revision asks for (`name` goes in `Mcp-Name`).
fn modern_post(method: &str, name: Option<&str>, id: &Value, params: Value) -> Vec<u8> {
    modern_post_with(method, name, id, params, &[])
}

/// The same, with `extra` headers (`Mcp-Param-*`, say).
fn modern_post_with(
    method: &str,
    name: Option<&str>,
    id: &Value,
    mut params: Value,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let meta = params.get("_meta").cloned().unwrap_or_else(|| json!({}));
    params["_meta"] = envelope(meta);
    let body = rpc_request(id, method, params);
    let mut h: Vec<(&str, &str)> = POST_HEADERS.to_vec();
    h.push(("MCP-Protocol-Version", MODERN));
    h.push(("Mcp-Method", method));
    if let Some(n) = name {
        h.push(("Mcp-Name", n));
    }
    h.extend_from_slice(extra);
    request("POST", "/mcp", &h, body.as_bytes())
}

/// A stateless `tools/call` of the demo's `echo_region` (its `region` is marked
/// `x-mcp-header: Region`) with `headers`: the HTTP status and the answer.
fn region_call(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, Value) {
    let id = next_id();
    let params = json!({"name": "echo_region", "arguments": {"region": "Hello"}});
    let req = modern_post_with("tools/call", Some("echo_region"), &id, params, headers);
    let r = send_once(gw.port, &req);
    (r.status(), r.rpc(&id))
}

/// `region_call` refused with 400 and `-32020`: its message.
#[track_caller]
fn region_refused(gw: &Gateway, headers: &[(&str, &str)]) -> String {
    let (status, e) = region_call(gw, headers);
    assert_eq!(
        (status, e["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "{headers:?}: {e}"
    );
    e["error"]["message"].as_str().unwrap_or("").to_string()
}

/// `region_call` answered.
#[track_caller]
fn region_passes(gw: &Gateway, headers: &[(&str, &str)]) {
    let (status, ok) = region_call(gw, headers);
    assert_eq!(status, 200, "{headers:?}: {ok}");
    assert_eq!(ok["result"]["content"][0]["text"], "region: Hello", "{ok}");
}

#[test]
fn mcp_param_headers_are_checked_against_the_tools_marks() {
    // A legacy upstream never sees the headers: the gateway checks them, by the marks in the
    // tool list its pool relayed.
    let gw = Gateway::demo("");
    call(&gw, "tools/list", None, json!({}));
    assert!(region_refused(&gw, &[]).contains("Mcp-Param-Region"));
    for wrong in ["Bye", "=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?="] {
        region_refused(&gw, &[("Mcp-Param-Region", wrong)]);
    }
    for right in ["Hello", "=?base64?SGVsbG8=?="] {
        region_passes(&gw, &[("mcp-param-region", right)]);
    }

    // A modern HTTP upstream checks them itself. Before the gateway has seen its list, the
    // client's own headers travel on: a right call passes, a wrong one is refused upstream.
    let demo = DemoHttp::start(&["--dual-era"]);
    let gw = Gateway::start(&format!(
        "mcp:\n  port: 0\n  targets:\n  - name: demo\n    mcp: {{host: \"http://127.0.0.1:{}/mcp\"}}\n",
        demo.port
    ));
    region_passes(&gw, &[("Mcp-Param-Region", "=?base64?SGVsbG8=?=")]);
    region_refused(&gw, &[]);
    // Once it has, the gateway refuses a wrong call itself and rebuilds a right one's headers.
    call(&gw, "tools/list", None, json!({}));
    assert!(
        region_refused(&gw, &[("Mcp-Param-Region", "Bye")]).contains("does not match the argument")
    );
    region_passes(&gw, &[("Mcp-Param-Region", "Hello")]);
}

#[track_caller]
fn call(gw: &Gateway, method: &str, name: Option<&str>, params: Value) -> Value {
    let id = next_id();
    let r = send_once(gw.port, &modern_post(method, name, &id, params));
    assert_status(&r, 200);
    assert!(
        r.header("mcp-session-id").is_none(),
        "no session is handed out"
    );
    r.rpc(&id)
}

#[test]
fn discover_list_and_call_need_no_session() {
    let gw = Gateway::demo("");
    let d = call(&gw, "server/discover", None, json!({}));
    let r = &d["result"];
    assert_eq!(r["resultType"], "complete", "{d}");
    assert_eq!(r["supportedVersions"][0], MODERN, "{d}");
    assert!(r["capabilities"]["tools"].is_object(), "{d}");
    assert_eq!(r["cacheScope"], "private");
    assert_eq!(r["ttlMs"], 0);
    assert_eq!(
        r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "mcplex"
    );

    let list = call(&gw, "tools/list", None, json!({}));
    assert_eq!(list["result"]["resultType"], "complete", "{list}");
    assert_eq!(list["result"]["ttlMs"], 0, "{list}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"echo"), "{names:?}");

    let echo = call(
        &gw,
        "tools/call",
        Some("echo"),
        json!({"name": "echo", "arguments": {"message": "stateless"}}),
    );
    assert_eq!(echo["result"]["resultType"], "complete", "{echo}");
    assert_eq!(echo["result"]["content"][0]["text"], "stateless", "{echo}");
    assert!(
        echo["result"].get("ttlMs").is_none(),
        "tools/call is not cacheable"
    );
    // Many requests, one pool: the demo was started once.
    assert_eq!(
        gw.children().len(),
        1,
        "one child serves every stateless request"
    );
    let health = send_once(gw.port, &request("GET", "/healthz", &[], b"")).json();
    assert_eq!(
        health["sessions"], 0,
        "a pool is no client session: {health}"
    );
}

#[test]
fn progress_travels_on_the_requests_own_stream() {
    let gw = Gateway::demo("");
    let id = next_id();
    let params = json!({"name": "slow", "arguments": {"steps": 3, "delayMs": 10},
                        "_meta": {"progressToken": "tok-1"}});
    let r = send_once(
        gw.port,
        &modern_post("tools/call", Some("slow"), &id, params),
    );
    assert_status(&r, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let messages = r.messages();
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{messages:?}");
    assert!(progress
        .iter()
        .all(|p| p["params"]["progressToken"] == "tok-1"));
    let answer = messages.last().cloned().unwrap_or_default();
    assert_eq!(answer["id"], id);
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
}

#[test]
fn a_closed_reply_stream_cancels_the_call_upstream() {
    let cfg = format!(
        "mcp:\n  port: 0\n  targets:\n  - name: demo\n    stdio: {{cmd: {:?}, env: {{MCPLEX_DEMO_TRACE: \"1\"}}}}\n",
        demo_bin()
    );
    let gw = Gateway::start(&cfg);
    let id = next_id();
    let params = json!({"name": "slow", "arguments": {"steps": 100, "delayMs": 100},
                        "_meta": {"progressToken": 1}});
    let mut c = gw.connect();
    c.send(&modern_post("tools/call", Some("slow"), &id, params))
        .expect("send");
    let head = c.read_head().expect("head");
    assert_eq!(head.status, 200);
    let first = c
        .next_event(&head)
        .expect("event")
        .expect("a progress event");
    assert_eq!(first.json()["method"], "notifications/progress");
    drop(c);
    let cancelled = wait_until(Duration::from_secs(5), || {
        gw.log_text().contains("got notifications/cancelled")
    });
    assert!(
        cancelled,
        "no cancellation reached the child:\n{}",
        gw.log_text()
    );
    // The pool goes on serving.
    let echo = call(
        &gw,
        "tools/call",
        Some("echo"),
        json!({"name": "echo", "arguments": {"message": "x"}}),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "x", "{echo}");
}

#[test]
fn bad_envelopes_headers_and_versions_are_400() {
    let gw = Gateway::demo("");
    let id = json!(41);
    let code = |req: Vec<u8>| {
        let r = send_once(gw.port, &req);
        assert_status(&r, 400);
        let e = r.json();
        assert_eq!(e["id"], 41, "{e}");
        (e["error"]["code"].as_i64().unwrap_or(0), e)
    };
    // The modern header without the envelope.
    let bare = rpc_request(&id, "tools/list", json!({}));
    let mut h: Vec<(&str, &str)> = POST_HEADERS.to_vec();
    h.extend([
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/list"),
    ]);
    assert_eq!(code(request("POST", "/mcp", &h, bare.as_bytes())).0, -32602);
    // Mcp-Name that does not match the body.
    let params = json!({"name": "echo", "arguments": {}});
    assert_eq!(
        code(modern_post("tools/call", Some("add"), &id, params)).0,
        -32020
    );
    // Mcp-Method that does not match the body.
    let mut wrong = modern_post("tools/list", None, &id, json!({}));
    let text = String::from_utf8_lossy(&wrong)
        .replace("Mcp-Method: tools/list", "Mcp-Method: prompts/list");
    wrong = text.into_bytes();
    assert_eq!(code(wrong).0, -32020);
    // A version the gateway does not speak, stated consistently.
    let body = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2027-01-01",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let mut h: Vec<(&str, &str)> = POST_HEADERS.to_vec();
    h.extend([
        ("MCP-Protocol-Version", "2027-01-01"),
        ("Mcp-Method", "tools/list"),
    ]);
    let (c, e) = code(request("POST", "/mcp", &h, body.as_bytes()));
    assert_eq!(c, -32022, "{e}");
    assert_eq!(e["error"]["data"]["requested"], "2027-01-01");
    assert_eq!(e["error"]["data"]["supported"][0], MODERN);
    // None of this started anything.
    assert!(gw.children().is_empty(), "refused requests start no child");
}

#[test]
fn get_and_delete_without_a_session_are_405() {
    let gw = Gateway::demo("");
    for method in ["GET", "DELETE"] {
        let r = send_once(
            gw.port,
            &request(method, "/mcp", &[("Accept", "text/event-stream")], b""),
        );
        assert_status(&r, 405);
    }
}

#[test]
fn initialize_with_an_object_id_or_no_version_is_refused() {
    let gw = Gateway::demo("");
    let bad_id = json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = send_once(gw.port, &mcp_post(None, &bad_id.to_string()));
    assert_status(&r, 400);
    assert_eq!(r.json()["id"], Value::Null, "{}", r.text());
    assert!(r.header("mcp-session-id").is_none());
    let no_version = json!({"jsonrpc": "2.0", "id": 2, "method": "initialize",
        "params": {"capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = send_once(gw.port, &mcp_post(None, &no_version.to_string()));
    assert_status(&r, 400);
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.text());
    assert!(r.header("mcp-session-id").is_none(), "no session for it");
    assert!(gw.children().is_empty());
}

#[test]
fn legacy_sessions_and_stateless_requests_share_one_endpoint() {
    let yaml = format!(
        "mcp:\n  port: 0\n  targets:\n  - name: alpha\n    stdio: {{cmd: {d:?}}}\n  - name: beta\n    stdio: {{cmd: {d:?}}}\n",
        d = demo_bin()
    );
    let gw = Gateway::start(&yaml);
    let legacy = gw.session();
    let echo = call(
        &gw,
        "tools/call",
        Some("beta_echo"),
        json!({"name": "beta_echo", "arguments": {"message": "modern"}}),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "modern", "{echo}");
    let r = legacy.tool("alpha_echo", json!({"message": "legacy"}));
    assert_eq!(tool_text(&r), "legacy");
    assert!(
        r["result"].get("resultType").is_none(),
        "legacy results stay legacy: {r}"
    );
    // The session's two children, and the pool's two.
    assert_eq!(gw.children().len(), 4);
    let health = send_once(gw.port, &request("GET", "/healthz", &[], b"")).json();
    assert_eq!(health["sessions"], 1, "{health}");
}

/// The demo's `test_sampling` asks its client for a completion. A stateless client is asked
/// through an `input_required` result, and its retry with `inputResponses` answers the demo.
#[test]
fn a_legacy_servers_request_becomes_an_input_round() {
    let gw = Gateway::demo("");
    let caps = json!({"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}});
    let args = json!({"prompt": "What is 6 x 7?"});
    let params = json!({"name": "test_sampling", "arguments": args, "_meta": caps});
    let first = call(&gw, "tools/call", Some("test_sampling"), params.clone());
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    let (key, ask) = r["inputRequests"]
        .as_object()
        .and_then(|m| m.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("one input request");
    assert_eq!(ask["method"], "sampling/createMessage", "{ask}");
    assert_eq!(
        ask["params"]["messages"][0]["content"]["text"],
        "What is 6 x 7?"
    );
    let token = r["requestState"]
        .as_str()
        .expect("a requestState")
        .to_string();

    // A forged or altered state is refused, and does not use up the real one.
    let mut forged = params.clone();
    forged["requestState"] = json!(token.replacen("mcplex1.", "mcplex1.x", 1));
    forged["inputResponses"] = json!({});
    let bad = call(&gw, "tools/call", Some("test_sampling"), forged);
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    // The same state on another tool is refused too.
    let mut elsewhere = json!({"name": "echo", "arguments": {"message": "x"}, "_meta": caps});
    elsewhere["requestState"] = json!(token);
    let bad = call(&gw, "tools/call", Some("echo"), elsewhere);
    assert_eq!(bad["error"]["code"], -32602, "{bad}");

    let mut retry = params.clone();
    retry["requestState"] = json!(token);
    retry["inputResponses"] = json!({key.clone(): {"role": "assistant",
        "content": {"type": "text", "text": "42"}, "model": "test-model"}});
    let done = call(&gw, "tools/call", Some("test_sampling"), retry.clone());
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(
        done["result"]["content"][0]["text"], "LLM response: 42",
        "{done}"
    );
    // Single use: the round is over.
    let again = call(&gw, "tools/call", Some("test_sampling"), retry);
    assert_eq!(again["error"]["code"], -32602, "{again}");
}

#[test]
fn a_client_without_the_capability_is_not_asked() {
    let gw = Gateway::demo("");
    // The demo's sampling tool asks sampling/createMessage; this client declared none.
    let id = next_id();
    let params = json!({"name": "test_sampling", "arguments": {"prompt": "hi"}});
    let post = modern_post("tools/call", Some("test_sampling"), &id, params);
    let r = send_once(gw.port, &post);
    assert_status(&r, 400);
    let e = r.rpc(&id);
    assert_eq!(
        e["error"]["code"], -32021,
        "MissingRequiredClientCapability: {e}"
    );
    assert!(
        e["error"]["data"]["requiredCapabilities"]["sampling"].is_object(),
        "{e}"
    );
    // The pool's child was told no and stopped: the next call is served at once.
    assert_adds(&gw, 1, 2);
}

/// The pool still serves: `add` answers at once.
#[track_caller]
fn assert_adds(gw: &Gateway, a: i64, b: i64) {
    let params = json!({"name": "add", "arguments": {"a": a, "b": b}});
    let r = call(gw, "tools/call", Some("add"), params);
    assert_eq!(
        r["result"]["content"][0]["text"],
        (a + b).to_string(),
        "{r}"
    );
}

#[test]
fn removed_and_unknown_methods_are_404() {
    let gw = Gateway::demo("");
    for method in [
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "initialize",
        "no/such",
    ] {
        let id = next_id();
        let r = send_once(gw.port, &modern_post(method, None, &id, json!({})));
        assert_status(&r, 404);
        assert_eq!(r.rpc(&id)["error"]["code"], -32601, "{method}");
    }
}

#[test]
fn a_listen_stream_carries_the_targets_list_changes() {
    let gw = Gateway::demo("");
    // discover tells what the pool can report.
    let d = call(&gw, "server/discover", None, json!({}));
    assert_eq!(
        d["result"]["capabilities"]["tools"]["listChanged"], true,
        "{d}"
    );
    let id = json!("listen-1");
    let want = json!({"notifications": {"toolsListChanged": true, "promptsListChanged": true,
        "resourcesListChanged": false}});
    let mut c = gw.connect();
    c.send(&modern_post("subscriptions/listen", None, &id, want))
        .expect("send");
    let head = c.read_head().expect("head");
    assert_eq!(head.status, 200);
    let ack = c.next_event(&head).expect("event").expect("the ack").json();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        id
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "promptsListChanged": true}),
        "only what was asked and can be told: {ack}"
    );
    // A call that makes the demo say its tool list changed: the listen stream hears it.
    let params = json!({"name": "test_trigger_tool_change", "arguments": {}});
    let r = call(&gw, "tools/call", Some("test_trigger_tool_change"), params);
    assert_eq!(
        r["result"]["content"][0]["text"], "the tool list changed",
        "{r}"
    );
    let note = c
        .next_event(&head)
        .expect("event")
        .expect("a change")
        .json();
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    assert_eq!(
        note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        id
    );
    // Closing the stream ends the listen; the pool goes on.
    drop(c);
    assert_adds(&gw, 1, 1);
}

/// Opens an input round for `prompt` on the demo's sampling tool: (retry params, input key).
#[track_caller]
fn open_round(gw: &Gateway, prompt: &str) -> Result<(Value, String), Value> {
    let caps = json!({"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}});
    let params = json!({"name": "test_sampling", "arguments": {"prompt": prompt}, "_meta": caps});
    let first = call(gw, "tools/call", Some("test_sampling"), params.clone());
    if first["result"]["resultType"] != "input_required" {
        return Err(first);
    }
    let key = first["result"]["inputRequests"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("one input request");
    let mut retry = params;
    retry["requestState"] = first["result"]["requestState"].clone();
    Ok((retry, key))
}

/// Retries an open round with a sampling answer `text`, and checks the tool's result.
#[track_caller]
fn finish_round(gw: &Gateway, retry: &Value, key: &str, text: &str) {
    let mut r = retry.clone();
    r["inputResponses"] = json!({key: {"role": "assistant",
        "content": {"type": "text", "text": text}, "model": "m"}});
    let done = call(gw, "tools/call", Some("test_sampling"), r);
    let want = format!("LLM response: {text}");
    assert_eq!(
        done["result"]["content"][0]["text"],
        want.as_str(),
        "{done}"
    );
}

/// Starts a long `slow` call on its own connection and waits for its first progress event:
/// while the connection is held, the call is in flight on the pool's child.
fn busy(gw: &Gateway) -> Client {
    let id = next_id();
    let params = json!({"name": "slow", "arguments": {"steps": 50, "delayMs": 100},
                        "_meta": {"progressToken": 1}});
    let mut c = gw.connect();
    c.send(&modern_post("tools/call", Some("slow"), &id, params))
        .expect("send");
    let head = c.read_head().expect("head");
    assert_eq!(head.status, 200);
    let first = c.next_event(&head).expect("event").expect("progress");
    assert_eq!(first.json()["method"], "notifications/progress");
    c
}

#[test]
fn several_pools_give_concurrent_interactive_calls_a_child_each() {
    let cfg = format!(
        "mcp:\n  port: 0\n  pool: {{max: 2}}\n  targets:\n  - name: demo\n    stdio: {{cmd: {:?}}}\n",
        demo_bin()
    );
    let gw = Gateway::start(&cfg);
    let _slow = busy(&gw);
    // The first pool's child is busy: the interactive call gets a second pool, alone there.
    let (b, kb) = open_round(&gw, "second").expect("a pool of its own, so a round");
    assert!(gw.log_text().contains("pool:mcp#2"), "{}", gw.log_text());
    // Another while that one waits for its retry: both pools hold a call, so it goes to
    // the least busy one, where the waiting call asks nothing: a round of its own too.
    let (a, ka) = open_round(&gw, "third").expect("a round");
    // Each retry goes back to the pool holding its round, in either order.
    finish_round(&gw, &a, &ka, "A");
    finish_round(&gw, &b, &kb, "B");
}

#[test]
fn one_pool_refuses_a_question_while_another_call_runs_on_its_child() {
    let gw = Gateway::demo("");
    let slow = busy(&gw);
    // The default single pool: two calls run on one child, the demo's question cannot be
    // told apart, so the server is told no and reports a tool error.
    let second = open_round(&gw, "second").expect_err("no round for the second call");
    assert_eq!(second["result"]["isError"], true, "{second}");
    // Once the other call is gone, the same question becomes a round.
    drop(slow);
    let ok = wait_until(Duration::from_secs(10), || open_round(&gw, "again").is_ok());
    assert!(ok, "no round once the child was free:\n{}", gw.log_text());
}
