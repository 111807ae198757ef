//! What a 2026-07-28 peer controls: a client's request envelope (lifted out as the body is
//! parsed; put back, the message is what a plain parse gives) and its headers (the checks the
//! front runs), header values in the `=?base64?...?=` form, the `requestState` it hands back;
//! an upstream's answer to the era probe and the `x-mcp-header` marks of its tools. No panic;
//! a state verifies only when it is the one that was signed; header values round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::front::{envelope, modern};
use mcplex::http::parse::{parse_request, Limits};
use mcplex::http::Status;
use mcplex::mcp::state::{binding, Resume, Signer};
use mcplex::mcp::{era, params};

const LIMITS: Limits = Limits {
    max_head: 2048,
    max_headers: 16,
    max_body: 2048,
};

fuzz_target!(|data: &[u8]| {
    // As a request: parsed, then, when its body is one JSON-RPC message, checked.
    if let Ok(Status::Complete(req, _)) = parse_request(data, &LIMITS) {
        if let Ok((mut body, lifted)) = envelope::parse_body(&req.body) {
            let plain = serde_json::from_slice::<serde_json::Value>(&req.body).ok();
            if let [msg] = body.messages.as_mut_slice() {
                let meta = msg.get("params").and_then(|p| p.get("_meta"));
                let keys = meta.and_then(|m| m.as_object()).map(|m| m.keys().count());
                assert!(
                    !meta.and_then(|m| m.as_object()).is_some_and(|m| m
                        .keys()
                        .any(|k| k.starts_with("io.modelcontextprotocol/"))),
                    "an envelope key left in _meta ({keys:?} keys)"
                );
                if modern::is_modern(&req, msg, &lifted) {
                    let method = mcplex::jsonrpc::method(msg);
                    let key = modern::name_param(method).unwrap_or("");
                    let named = msg.get("params").and_then(|p| p.get(key));
                    let subject = (method, named.and_then(|n| n.as_str()));
                    let stated = modern::stated(&req);
                    let _ = modern::take(&stated, msg, subject, lifted.clone());
                }
                // Put back, the envelope gives what a plain parse gives.
                lifted.restore(msg);
                assert_eq!(Some(&*msg), plain.as_ref());
            }
        }
        if let Some(v) = req.header("mcp-name") {
            let _ = modern::decode_header_value(v);
        }
    }
    // As JSON: a tool's inputSchema (its marks, and the headers of a call whose arguments are
    // the same document), and an answer to the probe.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(b) = params::bindings(&v) {
            for (name, value) in params::headers(&b, &v) {
                assert!(name.starts_with("Mcp-Param-"));
                let back = modern::decode_header_value(&value).into_owned();
                let _ = params::check(&b, &v, &[(name["Mcp-Param-".len()..].to_string(), back)]);
            }
        }
        let _ = era::probe_outcome(&Ok(v.clone()));
        let _ = era::probe_outcome(&Err(v));
    }
    // As text: a header value and a requestState.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Encoding then decoding gives the value back.
    assert_eq!(modern::decode_header_value(&params::encode(text)), text);
    let _ = modern::decode_header_value(text);
    let signer = Signer::with_key("fuzz", b"fuzz key");
    let bound = binding("tools/call", "t");
    if let Ok(r) = signer.verify(text, 1, &bound) {
        // Only a state this key signed can verify: signing what it names gives it back.
        assert_eq!(signer.sign(r, expiry_of(text), &bound), text, "{r:?}");
    }
    let real = signer.sign(Resume { pool: 1, call: 2 }, 10, &bound);
    assert!(signer.verify(&real, 1, &bound).is_ok());
});

/// The expiry field of a state that verified.
fn expiry_of(state: &str) -> u64 {
    state
        .split('.')
        .nth(4)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}
