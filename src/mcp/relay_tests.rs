//! The relay driven as the loop drives it, with no sockets and no processes: the test plays
//! the client (messages in, answers and pushes out) and every upstream (link events in, sends
//! out), and checks each action the relay queues.

use super::*;
use crate::config::Config;
use crate::jsonrpc::Kind;
use serde_json::value::RawValue;

/// The POST connection the tests' client talks on, and a second one.
const POST: ConnId = 7;
const POST2: ConnId = 8;

fn backend(targets: &[&str], failure: &str) -> Rc<McpBackend> {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{name: {t}, stdio: {{cmd: {t}-server}}}}"))
        .collect();
    let yaml = format!(
        "mcp:\n  port: 3000\n  failureMode: {failure}\n  targets: [{}]\n",
        list.join(", ")
    );
    let cfg = Config::parse(&yaml).unwrap_or_else(|e| panic!("{:?}", e.0));
    Rc::clone(&cfg.binds[0].listeners[0].routes[0].backend)
}

fn drain(r: &mut Relay) -> Vec<Action> {
    std::iter::from_fn(|| r.next_action()).collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// One relay with one session, initialized over `targets`, each served by the link in
/// `links` (same order).
struct Harness {
    relay: Relay,
    sk: u64,
    links: Vec<LinkId>,
}

impl Harness {
    /// Opens a session and initializes it: every link opens (or fails to, for the targets in
    /// `unopenable`), every opened target answers `initialize`, and the client confirms.
    /// Returns the harness, the client's `initialize` answer and the other actions queued
    /// with it.
    fn start(
        targets: &[&str],
        failure: &str,
        unopenable: &[&str],
    ) -> (Harness, Value, Vec<Action>) {
        let limits = Limits {
            request_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let mut relay = Relay::new(limits);
        let (sk, _sid) = relay
            .create_session(backend(targets, failure), Rc::default(), None, None, false)
            .expect("session");
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{"sampling":{}},
            "clientInfo":{"name":"test","version":"1"}}});
        relay.initialize(sk, Some(POST), init);
        let mut links = Vec::new();
        for (i, a) in drain(&mut relay).into_iter().enumerate() {
            let Action::Open { link, target, .. } = a else {
                panic!("expected Open, got {a:?}");
            };
            assert_eq!(target, i);
            links.push(link);
            let result = match unopenable.contains(&targets[i]) {
                true => Err(format!("cannot start command \"{}-server\"", targets[i])),
                false => Ok(()),
            };
            relay.link_opened(link, result);
        }
        assert_eq!(links.len(), targets.len());
        let mut h = Harness { relay, sk, links };
        // Each opened target is probed for its era first: as a legacy server, it does not
        // know server/discover. Then it gets `initialize` with a gateway id: answer it.
        for (link, msg) in h.sends() {
            assert_eq!(msg["method"], "server/discover");
            assert_eq!(
                msg["params"]["_meta"][crate::mcp::META_PROTOCOL_VERSION],
                "2026-07-28"
            );
            assert_eq!(
                msg["params"]["_meta"][crate::mcp::META_CLIENT_INFO]["name"],
                "test"
            );
            let e = json!({"code": -32601, "message": "Method not found"});
            h.upstream(link, json!({"jsonrpc":"2.0","id":msg["id"],"error":e}));
        }
        for (link, msg) in h.sends() {
            assert_eq!(msg["method"], "initialize");
            assert_eq!(msg["params"]["protocolVersion"], "2025-11-25");
            let name = targets[h.links.iter().position(|l| *l == link).unwrap_or(0)];
            let result = json!({"protocolVersion":"2025-11-25","capabilities":{"tools":{}},
                "serverInfo":{"name":name,"version":"1"}});
            h.upstream(
                link,
                json!({"jsonrpc":"2.0","id":msg["id"],"result":result}),
            );
        }
        let mut answer = None;
        let mut rest = Vec::new();
        for a in drain(&mut h.relay) {
            match a {
                Action::Answer {
                    conn: POST,
                    text: Some(t),
                } if answer.is_none() => answer = Some(parse(&t)),
                other => rest.push(other),
            }
        }
        (h, answer.expect("an initialize answer"), rest)
    }

    /// The client says `notifications/initialized`; every ready target gets it.
    fn confirm(&mut self) {
        let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        self.relay
            .client_message(self.sk, POST, Kind::Notification, n);
        for (_, msg) in self.sends() {
            assert_eq!(msg["method"], "notifications/initialized");
        }
    }

    fn request(&mut self, conn: ConnId, id: Value, method: &str, params: Value) {
        let m = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        self.relay.client_message(self.sk, conn, Kind::Request, m);
    }

    fn upstream(&mut self, link: LinkId, msg: Value) {
        self.relay.link_event(link, LinkEvent::Message(msg));
    }

    /// Every action queued so far, which must all be sends: (link, message).
    fn sends(&mut self) -> Vec<(LinkId, Value)> {
        drain(&mut self.relay)
            .into_iter()
            .map(|a| match a {
                Action::Send { link, msg, .. } => (link, msg),
                other => panic!("expected Send, got {other:?}"),
            })
            .collect()
    }

    /// Every action queued so far, which must all be answers on `conn`, parsed.
    fn answers(&mut self, conn: ConnId) -> Vec<Value> {
        drain(&mut self.relay)
            .into_iter()
            .map(|a| match a {
                Action::Answer {
                    conn: c,
                    text: Some(t),
                } if c == conn => parse(&t),
                other => panic!("expected an answer on {conn}, got {other:?}"),
            })
            .collect()
    }
}

#[test]
fn forwarded_call_swaps_ids_both_ways() {
    let (mut h, init, _) = Harness::start(&["a", "b"], "failClosed", &[]);
    assert_eq!(init["id"], 0);
    assert_eq!(init["result"]["serverInfo"]["name"], "mcplex");
    h.confirm();
    h.request(
        POST,
        json!("call-1"),
        "tools/call",
        json!({"name":"b_echo","arguments":{}}),
    );
    let sent = h.sends();
    let [(link, msg)] = sent.as_slice() else {
        panic!("one send expected: {sent:?}");
    };
    // The request reaches b only, under a gateway id, with its own (unprefixed) name.
    assert_eq!(*link, h.links[1]);
    assert_eq!(msg["params"]["name"], "echo");
    let uid = msg["id"].as_u64().expect("a numeric gateway id");
    // A (guessable) answer from the other target is not taken for b's.
    h.upstream(
        h.links[0],
        json!({"jsonrpc":"2.0","id":uid,"result":{"forged":true}}),
    );
    assert!(drain(&mut h.relay).is_empty());
    // b's answer, kept as text, goes back under the client's own id.
    let raw = RawValue::from_string(r#"{"content":[{"type":"text","text":"hi"}]}"#.into());
    h.relay
        .link_event(h.links[1], LinkEvent::Answer(uid, raw.expect("raw")));
    let answers = h.answers(POST);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["id"], "call-1");
    assert_eq!(answers[0]["result"]["content"][0]["text"], "hi");
    // A late duplicate is dropped.
    h.upstream(h.links[1], json!({"jsonrpc":"2.0","id":uid,"result":{}}));
    assert!(drain(&mut h.relay).is_empty());
}

#[test]
fn progress_tokens_are_mapped_both_ways() {
    let (mut h, _, _) = Harness::start(&["a"], "failClosed", &[]);
    h.confirm();
    let params = json!({"name":"slow","_meta":{"progressToken":"client-token"}});
    h.request(POST, json!(5), "tools/call", params);
    let (link, msg) = h.sends().pop().expect("a send");
    let uid = msg["id"].as_u64().expect("gateway id");
    // Upstream the token is the gateway's request id, never the client's own.
    assert_eq!(msg["params"]["_meta"]["progressToken"], uid);
    let progress = json!({"jsonrpc":"2.0","method":"notifications/progress",
        "params":{"progressToken":uid,"progress":1,"total":2}});
    h.upstream(link, progress);
    match drain(&mut h.relay).as_slice() {
        [Action::Push { conn, msg, .. }] => {
            assert_eq!(*conn, POST, "progress travels on the call's own POST");
            assert_eq!(msg["params"]["progressToken"], "client-token");
            assert_eq!(msg["params"]["progress"], 1);
        }
        other => panic!("expected one push, got {other:?}"),
    }
    // A token the session never handed out is dropped.
    let forged = json!({"jsonrpc":"2.0","method":"notifications/progress",
        "params":{"progressToken":9999,"progress":1}});
    h.upstream(link, forged);
    assert!(drain(&mut h.relay).is_empty());
}

/// tools/list over two targets where one answers with an error: the list holds the other's.
#[test]
fn fan_out_list_with_one_failing_target() {
    let (mut h, _, _) = Harness::start(&["a", "b"], "failClosed", &[]);
    h.confirm();
    h.request(POST, json!(1), "tools/list", json!({}));
    let sent = h.sends();
    assert_eq!(sent.len(), 2, "one tools/list per target");
    for (link, msg) in sent {
        assert_eq!(msg["method"], "tools/list");
        let reply = match link == h.links[0] {
            true => json!({"jsonrpc":"2.0","id":msg["id"],"result":{"tools":[
                {"name":"echo","inputSchema":{"type":"object"}}]}}),
            false => json!({"jsonrpc":"2.0","id":msg["id"],
                "error":{"code":-32603,"message":"b is broken"}}),
        };
        h.upstream(link, reply);
    }
    let list = h.answers(POST).pop().expect("the merged list");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["a_echo"]);
}

#[test]
fn fail_closed_initialize_fails_when_one_target_cannot_start() {
    let (h, init, actions) = Harness::start(&["a", "b"], "failClosed", &["b"]);
    let why = init["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("target b: cannot start command"), "{init}");
    // The answer must not hand out the session id, and the session ends: a's link closes.
    assert!(
        matches!(actions.as_slice(),
            [Action::NoSessionHeader { conn: POST }, Action::Close { link }] if *link == h.links[0]),
        "{actions:?}"
    );
    assert_eq!(h.relay.session_count(), 0);
}

#[test]
fn fail_open_goes_on_without_the_failed_target() {
    let (mut h, init, _) = Harness::start(&["a", "b"], "failOpen", &["b"]);
    assert_eq!(init["result"]["serverInfo"]["name"], "mcplex", "{init}");
    h.confirm();
    // Lists go to a alone.
    h.request(POST, json!(1), "tools/list", json!({}));
    let sent = h.sends();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, h.links[0]);
    // A call to b is refused at once, naming it.
    h.request(POST2, json!(2), "tools/call", json!({"name":"b_echo"}));
    let refused = h.answers(POST2).pop().expect("an error");
    assert_eq!(refused["error"]["code"], jsonrpc::UPSTREAM_ERROR);
    let why = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("target b is unavailable"), "{refused}");
}

#[test]
fn server_request_goes_to_the_client_and_its_answer_back() {
    let (mut h, _, _) = Harness::start(&["a", "b"], "failClosed", &[]);
    h.confirm();
    h.request(POST, json!("t"), "tools/call", json!({"name":"a_sample"}));
    let (link, _) = h.sends().pop().expect("a send");
    // a asks the client for a completion while the call is in flight, under its own id.
    let ask = json!({"jsonrpc":"2.0","id":"a-req-1","method":"sampling/createMessage",
        "params":{"messages":[],"maxTokens":10}});
    h.upstream(link, ask);
    let gid = match drain(&mut h.relay).as_slice() {
        [Action::Push { conn, msg, .. }] => {
            assert_eq!(*conn, POST, "on the POST of the call it belongs to");
            assert_eq!(msg["method"], "sampling/createMessage");
            msg["id"].clone()
        }
        other => panic!("expected one push, got {other:?}"),
    };
    assert_ne!(gid, "a-req-1", "the client sees a gateway id");
    let answer = json!({"jsonrpc":"2.0","id":gid,"result":{"role":"assistant",
        "content":{"type":"text","text":"42"}}});
    h.relay.client_message(h.sk, POST2, Kind::Response, answer);
    let back = h.sends();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, link, "back to the target that asked");
    assert_eq!(back[0].1["id"], "a-req-1");
    assert_eq!(back[0].1["result"]["content"]["text"], "42");
    // Answering the same id again goes nowhere.
    let again = json!({"jsonrpc":"2.0","id":gid,"result":{}});
    h.relay.client_message(h.sk, POST2, Kind::Response, again);
    assert!(drain(&mut h.relay).is_empty());
}

#[test]
fn cancellation_reaches_the_target_and_ends_the_request() {
    let (mut h, _, _) = Harness::start(&["a"], "failClosed", &[]);
    h.confirm();
    h.request(POST, json!(11), "tools/call", json!({"name":"slow"}));
    let (link, msg) = h.sends().pop().expect("a send");
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled",
        "params":{"requestId":11,"reason":"user gave up"}});
    h.relay
        .client_message(h.sk, POST2, Kind::Notification, cancel);
    match drain(&mut h.relay).as_slice() {
        [Action::Send {
            link: l, msg: n, ..
        }, Action::Answer { conn, text: None }] => {
            assert_eq!(*l, link);
            assert_eq!(n["method"], "notifications/cancelled");
            assert_eq!(
                n["params"]["requestId"], msg["id"],
                "under the gateway's id"
            );
            assert_eq!(n["params"]["reason"], "user gave up");
            assert_eq!(*conn, POST, "the POST ends without an answer");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The target's late answer is dropped.
    h.upstream(link, json!({"jsonrpc":"2.0","id":msg["id"],"result":{}}));
    assert!(drain(&mut h.relay).is_empty());
}

#[test]
fn a_call_past_its_deadline_fails_and_is_cancelled_upstream() {
    let (mut h, _, _) = Harness::start(&["a"], "failClosed", &[]);
    h.confirm();
    h.request(POST, json!("late"), "tools/call", json!({"name":"slow"}));
    let (link, msg) = h.sends().pop().expect("a send");
    h.relay.tick(Instant::now() + Duration::from_secs(5));
    assert!(drain(&mut h.relay).is_empty(), "not yet");
    h.relay.tick(Instant::now() + Duration::from_secs(11));
    match drain(&mut h.relay).as_slice() {
        [Action::Send {
            link: l, msg: n, ..
        }, Action::Answer {
            conn,
            text: Some(t),
        }] => {
            assert_eq!(*l, link);
            assert_eq!(n["method"], "notifications/cancelled");
            assert_eq!(n["params"]["requestId"], msg["id"]);
            assert_eq!(*conn, POST);
            let e = parse(t);
            assert_eq!(e["id"], "late");
            assert_eq!(e["error"]["code"], jsonrpc::REQUEST_TIMEOUT);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_dying_target_fails_exactly_its_calls() {
    let (mut h, _, _) = Harness::start(&["a", "b"], "failClosed", &[]);
    h.confirm();
    h.request(POST, json!(1), "tools/call", json!({"name":"a_slow"}));
    h.request(POST, json!(2), "tools/call", json!({"name":"a_slow"}));
    h.request(POST2, json!(3), "tools/call", json!({"name":"b_slow"}));
    let sent = h.sends();
    assert_eq!(sent.len(), 3);
    h.relay.link_event(
        h.links[0],
        LinkEvent::Fatal("exited (exit status: 1)".into()),
    );
    let actions = drain(&mut h.relay);
    let mut failed_ids = Vec::new();
    let mut closed = Vec::new();
    for a in actions {
        match a {
            Action::Close { link } => closed.push(link),
            Action::Answer {
                conn,
                text: Some(t),
            } => {
                assert_eq!(conn, POST, "only the dead target's calls fail");
                let e = parse(&t);
                let why = e["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(why.contains("target a failed: exited"), "{e}");
                failed_ids.push(e["id"].as_i64().unwrap_or(-1));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    failed_ids.sort();
    assert_eq!(failed_ids, [1, 2]);
    assert_eq!(closed, [h.links[0]]);
    // b's call still completes.
    let b_uid = sent
        .iter()
        .find(|(l, _)| *l == h.links[1])
        .map(|(_, m)| m["id"].clone());
    h.upstream(
        h.links[1],
        json!({"jsonrpc":"2.0","id":b_uid,"result":{"ok":1}}),
    );
    assert_eq!(h.answers(POST2)[0]["result"]["ok"], 1);
    // Later calls to a are refused at once; events from its old link reach no one.
    h.request(POST, json!(4), "tools/call", json!({"name":"a_slow"}));
    let refused = h.answers(POST).pop().expect("refused");
    assert!(refused["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("target a is unavailable")));
    h.upstream(
        h.links[0],
        json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}),
    );
    assert!(drain(&mut h.relay).is_empty());
}

#[test]
fn ending_a_session_answers_its_calls_and_closes_its_links() {
    let (mut h, _, _) = Harness::start(&["a", "b"], "failClosed", &[]);
    h.confirm();
    assert_eq!(h.relay.open_stream(h.sk, 20), Some(Vec::new()));
    assert_eq!(
        h.relay.open_stream(h.sk, 21),
        None,
        "one GET stream at a time"
    );
    h.request(POST, json!(1), "tools/call", json!({"name":"a_slow"}));
    let _ = h.sends();
    h.relay.end_session(h.sk, "deleted by the client");
    let actions = drain(&mut h.relay);
    assert!(matches!(
        actions[0],
        Action::Answer {
            conn: POST,
            text: Some(_)
        }
    ));
    assert!(matches!(actions[1], Action::EndStream { conn: 20 }));
    let closed: Vec<LinkId> = actions[2..]
        .iter()
        .filter_map(|a| match a {
            Action::Close { link } => Some(*link),
            _ => None,
        })
        .collect();
    assert_eq!(closed, h.links);
    assert_eq!(h.relay.session_count(), 0);
}

#[test]
fn a_modern_target_serves_a_legacy_client() {
    let mut relay = Relay::new(Limits::default());
    let (sk, _) = relay
        .create_session(
            backend(&["m"], "failClosed"),
            Rc::default(),
            None,
            None,
            false,
        )
        .expect("session");
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{"elicitation":{}},
        "clientInfo":{"name":"legacy-client","version":"1"}}});
    relay.initialize(sk, Some(POST), init);
    let Some(Action::Open { link, .. }) = drain(&mut relay).pop() else {
        panic!("an Open");
    };
    relay.link_opened(link, Ok(()));
    let mut h = Harness {
        relay,
        sk,
        links: vec![link],
    };
    // The probe finds a modern server: its discover result stands for `initialize`.
    let (_, probe) = h.sends().pop().expect("the probe");
    assert_eq!(probe["method"], "server/discover");
    let discover = json!({"supportedVersions":["2026-07-28"],"capabilities":{"tools":{}},
        "_meta":{"io.modelcontextprotocol/serverInfo":{"name":"m","version":"1"}},"resultType":"complete"});
    h.upstream(
        link,
        json!({"jsonrpc":"2.0","id":probe["id"],"result":discover}),
    );
    let init = h.answers(POST).pop().expect("initialize answered");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    // A modern server has no session: it is not told the client is initialized.
    let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    h.relay.client_message(sk, POST, Kind::Notification, n);
    assert!(h.sends().is_empty());
    // Its log level is kept by the gateway and travels with each request.
    h.request(
        POST,
        json!(1),
        "logging/setLevel",
        json!({"level": "debug"}),
    );
    assert_eq!(h.answers(POST)[0]["result"], json!({}));
    h.request(
        POST,
        json!(2),
        "tools/call",
        json!({"name":"ask","arguments":{}}),
    );
    let (_, call) = h.sends().pop().expect("the call");
    let meta = &call["params"]["_meta"];
    assert_eq!(meta[crate::mcp::META_PROTOCOL_VERSION], "2026-07-28");
    assert_eq!(meta[crate::mcp::META_CLIENT_INFO]["name"], "legacy-client");
    assert!(meta[crate::mcp::META_CLIENT_CAPABILITIES]["elicitation"].is_object());
    assert_eq!(meta[crate::mcp::META_LOG_LEVEL], "debug");
    // The server needs input: the legacy client is asked with a real request...
    let round = json!({"resultType":"input_required","requestState":"s1","inputRequests":{
        "name":{"method":"elicitation/create","params":{"message":"Name?"}}}});
    h.upstream(
        link,
        json!({"jsonrpc":"2.0","id":call["id"],"result":round}),
    );
    let asked = match drain(&mut h.relay).as_slice() {
        [Action::Push {
            conn: POST, msg, ..
        }] => msg.clone(),
        other => panic!("expected the elicitation on the POST: {other:?}"),
    };
    assert_eq!(asked["method"], "elicitation/create");
    assert_eq!(asked["params"]["message"], "Name?");
    // ...and its answer goes back to the server in a retry of the same request.
    let answer = json!({"jsonrpc":"2.0","id":asked["id"],"result":{"action":"accept","content":{"name":"Ada"}}});
    h.relay.client_message(sk, POST, Kind::Response, answer);
    let (_, retry) = h.sends().pop().expect("the retry");
    assert_eq!(retry["method"], "tools/call");
    assert_ne!(retry["id"], call["id"]);
    assert_eq!(retry["params"]["name"], "ask");
    assert_eq!(retry["params"]["requestState"], "s1");
    assert_eq!(
        retry["params"]["inputResponses"]["name"]["content"]["name"],
        "Ada"
    );
    assert_eq!(
        retry["params"]["_meta"][crate::mcp::META_PROTOCOL_VERSION],
        "2026-07-28"
    );
    // The final result reaches the client without the 2026-07-28 fields.
    let done = json!({"resultType":"complete","content":[{"type":"text","text":"Hello, Ada!"}]});
    h.upstream(
        link,
        json!({"jsonrpc":"2.0","id":retry["id"],"result":done}),
    );
    let r = h.answers(POST).pop().expect("the answer");
    assert_eq!(r["id"], 2);
    assert_eq!(
        r["result"],
        json!({"content":[{"type":"text","text":"Hello, Ada!"}]})
    );
}

/// A backend's pool over `targets`, each opened and initialized as a legacy server.
fn ready_pool(targets: &[&str]) -> Harness {
    let mut relay = Relay::new(Limits::default());
    let sk = relay.pool_for(&backend(targets, "failClosed"), &Rc::default(), None, None);
    let mut links = Vec::new();
    for a in drain(&mut relay) {
        let Action::Open { link, .. } = a else {
            panic!("expected Open, got {a:?}");
        };
        relay.link_opened(link, Ok(()));
        links.push(link);
    }
    let mut h = Harness { relay, sk, links };
    for (link, probe) in h.sends() {
        let e = json!({"code": -32601, "message": "Method not found"});
        h.upstream(link, json!({"jsonrpc":"2.0","id":probe["id"],"error":e}));
    }
    for (link, init) in h.sends() {
        assert_eq!(init["method"], "initialize");
        let result = json!({"protocolVersion":"2025-11-25","capabilities":{"tools":{"listChanged":true}},
            "serverInfo":{"name":"s","version":"1"}});
        h.upstream(
            link,
            json!({"jsonrpc":"2.0","id":init["id"],"result":result}),
        );
    }
    for (_, n) in h.sends() {
        assert_eq!(n["method"], "notifications/initialized");
    }
    h
}

fn modern_ctx() -> Modern {
    Modern {
        log_level: None,
        capabilities: json!({}),
        name: Default::default(),
        state: None,
        param_headers: Vec::new(),
        input: Vec::new(),
        client_info: None,
        missing: Vec::new(),
        offered: None,
        principal: None,
    }
}

#[test]
fn a_pool_serves_lists_from_memory_until_a_target_says_they_changed() {
    let mut h = ready_pool(&["a", "b"]);
    let list = |id: u64| json!({"jsonrpc":"2.0","id":id,"method":"tools/list","params":{}});
    let answer_lists = |h: &mut Harness, n: &str| {
        for (link, msg) in h.sends() {
            let tools = json!({"tools":[{"name": n, "inputSchema": {"type":"object"}}]});
            h.upstream(link, json!({"jsonrpc":"2.0","id":msg["id"],"result":tools}));
        }
    };
    h.relay.modern_request(h.sk, POST, list(1), modern_ctx());
    answer_lists(&mut h, "x");
    let first = h.answers(POST).pop().expect("answered");
    assert_eq!(
        first["result"]["tools"].as_array().map(Vec::len),
        Some(2),
        "{first}"
    );
    // The next stateless client's list comes from memory: nothing is sent upstream.
    h.relay.modern_request(h.sk, POST2, list(2), modern_ctx());
    let second = h.answers(POST2).pop().expect("answered from the cache");
    assert_eq!(second["id"], 2);
    assert_eq!(second["result"], first["result"]);
    // A target's list_changed empties it: the next list is asked again.
    let changed = json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"});
    h.upstream(h.links[1], changed);
    let _ = drain(&mut h.relay);
    h.relay.modern_request(h.sk, POST, list(3), modern_ctx());
    answer_lists(&mut h, "y");
    let third = h.answers(POST).pop().expect("answered");
    assert!(
        third["result"]["tools"].to_string().contains("a_y"),
        "{third}"
    );
}
