//! JSON-RPC bodies and routing on arbitrary bytes: parse, classify every message, and route
//! requests through a two-target prefixed naming, a one-target plain naming, and a two-target
//! shared (`prefixMode: never`) naming that learns names from the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::jsonrpc::{self, Kind};
use mcplex::mcp::route::{Dest, Naming, Space};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = jsonrpc::parse_body(data) else {
        return;
    };
    assert!(!body.messages.is_empty());
    assert!(body.batch || body.messages.len() == 1);
    let two = Naming::new(vec!["demo".into(), "everything".into()], true);
    let one = Naming::new(vec!["demo".into()], false);
    let mut shared = Naming::new(vec!["demo".into(), "everything".into()], false);
    shared.learn(Space::Tool, "echo", 0);
    shared.learn(Space::Resource, "demo://readme", 0);
    // Names in the input are offered by a target picked from their length, so some collide.
    for (i, m) in body.messages.iter().enumerate() {
        for (space, ptr) in [
            (Space::Tool, "/params/name"),
            (Space::Prompt, "/params/name"),
            (Space::Resource, "/params/uri"),
            (Space::Template, "/params/ref/uri"),
        ] {
            if let Some(name) = m.pointer(ptr).and_then(Value::as_str) {
                shared.learn(space, name, (name.len() + i) % 2);
            }
        }
    }
    for m in &body.messages {
        let Ok(kind) = jsonrpc::classify(m) else {
            continue;
        };
        if let Some(id) = m.get("id") {
            let _ = jsonrpc::id_key(id);
        }
        if kind != Kind::Request {
            continue;
        }
        let method = jsonrpc::method(m);
        let params = m.get("params");
        if let Ok(Dest::One(t, _)) = two.route(method, params) {
            assert!(t < 2, "routed to target {t}");
        }
        match one.route(method, params) {
            Ok(Dest::One(0, p)) => {
                assert_eq!(p.as_ref(), params, "one plain target rewrote params")
            }
            Ok(Dest::Local) => {}
            other => panic!("one plain target routed {method} to {other:?}"),
        }
        // Bare names are never rewritten, only looked up.
        if let Ok(Dest::One(t, p)) = shared.route(method, params) {
            assert!(t < 2, "routed to target {t}");
            assert_eq!(p.as_ref(), params, "shared naming rewrote params");
        }
    }
});
