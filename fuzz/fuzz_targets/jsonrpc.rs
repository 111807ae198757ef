//! JSON-RPC on arbitrary bytes: the raw-answer shortcut checked against the full parse; then
//! bodies parsed, every message classified, and requests routed through a two-target prefixed
//! naming, a one-target plain naming, and a two-target shared (`prefixMode: never`) naming that
//! learns names from the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::front::envelope;
use mcplex::jsonrpc::{self, Kind};
use mcplex::mcp::route::{Dest, Naming, Space};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The relay's shortcut for upstream answers must agree with the general path: whatever it
    // accepts is a valid JSON-RPC response whose result round-trips.
    if let Some(a) = jsonrpc::raw_answer(data) {
        let v: Value = serde_json::from_slice(data).expect("raw_answer accepted invalid JSON");
        assert_eq!(jsonrpc::classify(&v), Ok(Kind::Response));
        assert_eq!(v.get("id").and_then(Value::as_u64), Some(a.id));
        assert!(v.get("error").is_none());
        let result: Value = serde_json::from_str(a.result.get()).expect("result is JSON");
        assert_eq!(v.get("result"), Some(&result));
    }
    // Parsed as a POST body is, its envelope put back: what a plain parse gives.
    let Ok((mut body, lifted)) = envelope::parse_body(data) else {
        return;
    };
    if let [one] = body.messages.as_mut_slice() {
        lifted.restore(one);
    }
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
