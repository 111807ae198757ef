//! Requests of the stateless revision (2026-07-28): which POSTs are modern, and the checks
//! each must pass before it is served (the order the revision gives: the envelope in
//! `params._meta`, then the HTTP headers against the body, then the version).

use super::envelope::Lifted;
use super::Reply;
use crate::http::parse::Request;
use crate::jsonrpc;
use crate::jsonrpc::Path;
use crate::mcp::META_CLIENT_CAPABILITIES;
use crate::mcp::{ALL_VERSIONS, META_PROTOCOL_VERSION, MODERN_VERSION};
use serde_json::{json, Value};
use std::borrow::Cow;

/// What a modern request says of its client.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: String,
    pub capabilities: Value,
    pub client_info: Option<Value>,
    /// The level the client wants log notifications at, for this request only.
    pub log_level: Option<String>,
}

/// Whether a POSTed message is served statelessly: its `params._meta` names a protocol
/// version (`lifted` holds what the parse lifted out of it), or the request's
/// `MCP-Protocol-Version` header names the modern revision (a request without the envelope
/// then fails the checks). `initialize` is legacy unless it carries the envelope and no
/// `protocolVersion` of its own: then it is a modern client calling a method its revision
/// removed.
pub fn is_modern(req: &Request, msg: &Value, lifted: &Lifted) -> bool {
    let enveloped = lifted.version.is_some();
    if jsonrpc::method(msg) == "initialize" {
        return enveloped && msg.at("/params/protocolVersion").is_none();
    }
    enveloped || req.header("mcp-protocol-version") == Some(MODERN_VERSION)
}

/// Methods of the legacy revisions that 2026-07-28 removed: a modern request for one is
/// answered "method not found" (HTTP 404) by the gateway, whatever its upstreams speak.
pub fn removed(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
    )
}

/// A 400 with a JSON-RPC error for the request `msg`.
fn refuse(msg: &Value, code: i64, message: &str, data: Option<Value>) -> Reply {
    let id = msg
        .get("id")
        .filter(|i| i.is_string() || i.is_number())
        .cloned()
        .unwrap_or(Value::Null);
    let mut e = jsonrpc::error(id, code, message);
    if let Some(d) = data {
        e["error"]["data"] = d;
    }
    Reply::json(400, &e)
}

/// Which parameter `Mcp-Name` mirrors, for the methods that have one.
pub fn name_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// The checks a modern request passes before it is served, on its envelope (lifted out of
/// `params._meta` as the body was parsed: a legacy upstream gets none of it; a modern one
/// gets it rebuilt). `subject`: the request's method and the parameter `Mcp-Name` mirrors.
/// Err: the 400 to answer with.
pub fn take(
    stated: &Stated<'_>,
    msg: &Value,
    (method, named): (&str, Option<&str>),
    lifted: Lifted,
) -> Result<Envelope, Reply> {
    let Lifted {
        version,
        capabilities,
        client_info,
        log_level,
        ..
    } = lifted;
    let missing: Vec<&str> = [
        (META_PROTOCOL_VERSION, version.is_none()),
        (META_CLIENT_CAPABILITIES, capabilities.is_none()),
    ]
    .into_iter()
    .filter_map(|(k, absent)| absent.then_some(k))
    .collect();
    if !missing.is_empty() {
        let why = format!(
            "params._meta is missing the required key(s): {}",
            missing.join(", ")
        );
        return Err(refuse(msg, jsonrpc::INVALID_PARAMS, &why, None));
    }
    let (Some(Value::String(version)), Some(capabilities @ Value::Object(_))) =
        (version, capabilities)
    else {
        let why = "params._meta: the protocol version must be a string and the client capabilities an object";
        return Err(refuse(msg, jsonrpc::INVALID_PARAMS, why, None));
    };
    let mismatch = |what: &str| {
        let why = format!("the {what} header does not match the request body");
        Err(refuse(msg, jsonrpc::HEADER_MISMATCH, &why, None))
    };
    if stated.version != Some(version.as_str()) {
        return mismatch("MCP-Protocol-Version");
    }
    if stated.method != Some(method) {
        return mismatch("Mcp-Method");
    }
    if let Some(body) = named {
        let header = stated.name.map(decode_header_value);
        if header.as_deref() != Some(body) {
            return mismatch("Mcp-Name");
        }
    }
    if version != MODERN_VERSION {
        let data = json!({"supported": ALL_VERSIONS, "requested": version});
        return Err(refuse(
            msg,
            jsonrpc::UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            Some(data),
        ));
    }
    Ok(Envelope {
        version,
        capabilities,
        client_info,
        log_level: log_level.and_then(|l| l.as_str().map(str::to_string)),
    })
}

/// A request's MCP headers, read in one pass over its fields (the first of each name).
#[derive(Debug, Default)]
pub struct Stated<'a> {
    pub version: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
    /// `Mcp-Param-*`: (the name after the prefix, in lower case; the value decoded), checked
    /// against the tool's `x-mcp-header` marks once the call is routed.
    pub params: Vec<(String, String)>,
}

pub fn stated(req: &Request) -> Stated<'_> {
    let mut s = Stated::default();
    for (rest, v) in req.headers_prefixed("mcp-") {
        match rest {
            "protocol-version" => _ = s.version.get_or_insert(v),
            "method" => _ = s.method.get_or_insert(v),
            "name" => _ = s.name.get_or_insert(v),
            _ => match rest.strip_prefix("param-") {
                Some(p) if !p.is_empty() => {
                    s.params
                        .push((p.to_string(), decode_header_value(v).into_owned()));
                }
                _ => {}
            },
        }
    }
    s
}

/// A header value as the revision encodes non-ASCII ones: `=?base64?<base64>?=`, else as it
/// is. A payload that is not valid, padded base64 of UTF-8 text stays as it was sent (and so
/// mismatches).
pub fn decode_header_value(v: &str) -> Cow<'_, str> {
    let Some(payload) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
        // Padded to whole quanta, as the revision's examples and test cases require.
        .filter(|p| p.len() % 4 == 0 && p.len() - p.trim_end_matches('=').len() <= 2)
    else {
        return Cow::Borrowed(v);
    };
    match crate::base64::decode(payload, crate::base64::Alphabet::Standard)
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(text) => Cow::Owned(text),
        None => Cow::Borrowed(v),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;
    use crate::mcp::META_LOG_LEVEL;

    fn post(headers: &str, body: &Value) -> (Request, Value, Lifted) {
        let text = body.to_string();
        let raw = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\n\r\n{text}",
            text.len()
        );
        let (mut parsed, lifted) =
            super::super::envelope::parse_body(text.as_bytes()).expect("one message");
        (
            parse(&raw),
            parsed.messages.pop().unwrap_or_default(),
            lifted,
        )
    }

    fn call(version: &str, meta_extra: Value) -> Value {
        let mut meta = json!({META_PROTOCOL_VERSION: version, META_CLIENT_CAPABILITIES: {}});
        if let (Value::Object(m), Value::Object(x)) = (&mut meta, meta_extra) {
            m.extend(x);
        }
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
               "params":{"name":"echo","arguments":{},"_meta":meta}})
    }

    fn subject(msg: &Value) -> (&str, Option<&str>) {
        let method = jsonrpc::method(msg);
        let key = name_param(method).unwrap_or("");
        (method, msg["params"][key].as_str())
    }

    fn code(r: Result<Envelope, Reply>) -> (u16, i64) {
        let r = r.expect_err("refused");
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(body["id"], 3);
        (r.status, body["error"]["code"].as_i64().unwrap_or(0))
    }

    const HEADERS: &str =
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\n";

    #[test]
    fn a_valid_request_yields_its_envelope() {
        let (req, msg, lifted) = post(
            HEADERS,
            &call(MODERN_VERSION, json!({META_LOG_LEVEL: "info"})),
        );
        assert!(is_modern(&req, &msg, &lifted));
        let env = take(&stated(&req), &msg, subject(&msg), lifted).expect("valid");
        assert_eq!(env.version, MODERN_VERSION);
        assert_eq!(env.log_level.as_deref(), Some("info"));
    }

    #[test]
    fn the_ladder_refuses_in_order() {
        // No envelope, but a modern header: modern, and refused for the missing keys.
        let bare = json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{}});
        let (req, msg, lifted) = post(HEADERS, &bare);
        assert!(is_modern(&req, &msg, &lifted));
        assert_eq!(
            code(take(&stated(&req), &msg, subject(&msg), lifted)),
            (400, jsonrpc::INVALID_PARAMS)
        );
        // Headers that disagree with the body.
        let (req, msg, lifted) = post(
            "Mcp-Method: tools/call\r\nMcp-Name: echo\r\n",
            &call(MODERN_VERSION, json!({})),
        );
        assert_eq!(
            code(take(&stated(&req), &msg, subject(&msg), lifted)),
            (400, jsonrpc::HEADER_MISMATCH)
        );
        let wrong_name = HEADERS.replace("Mcp-Name: echo", "Mcp-Name: other");
        let (req, msg, lifted) = post(&wrong_name, &call(MODERN_VERSION, json!({})));
        assert_eq!(
            code(take(&stated(&req), &msg, subject(&msg), lifted)),
            (400, jsonrpc::HEADER_MISMATCH)
        );
        // An unknown version, stated consistently: -32022 with the supported list.
        let future = HEADERS.replace("2026-07-28", "2027-01-01");
        let (req, msg, lifted) = post(&future, &call("2027-01-01", json!({})));
        let r = take(&stated(&req), &msg, subject(&msg), lifted).expect_err("refused");
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(body["error"]["code"], jsonrpc::UNSUPPORTED_VERSION);
        assert_eq!(body["error"]["data"]["requested"], "2027-01-01");
        assert_eq!(body["error"]["data"]["supported"][0], MODERN_VERSION);
    }

    #[test]
    fn legacy_messages_are_not_modern() {
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","_meta":{META_PROTOCOL_VERSION: MODERN_VERSION}}});
        let (req, msg, lifted) = post(HEADERS, &init);
        assert!(!is_modern(&req, &msg, &lifted));
        // Without a version of its own it is a modern request for a removed method.
        let removed = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"_meta":{META_PROTOCOL_VERSION: MODERN_VERSION}}});
        let (req, msg, lifted) = post(HEADERS, &removed);
        assert!(is_modern(&req, &msg, &lifted) && super::removed("initialize"));
        assert!(!super::removed("tools/list") && super::removed("logging/setLevel"));
        let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        let (req, msg, lifted) = post("MCP-Protocol-Version: 2025-11-25\r\n", &list);
        assert!(!is_modern(&req, &msg, &lifted));
    }

    #[test]
    fn the_mcp_headers_are_read_in_one_pass() {
        let headers = "mcp-method: tools/call\r\nMCP-Method: other\r\nMcp-Param-Region: =?base64?SGVsbG8=?=\r\nMcp-Param-: x\r\nMcp-Name: echo\r\n";
        let (req, _, _) = post(headers, &json!({"jsonrpc": "2.0", "id": 1, "method": "m"}));
        let s = stated(&req);
        assert_eq!(
            (s.version, s.method, s.name),
            (None, Some("tools/call"), Some("echo"))
        );
        assert_eq!(s.params, [("region".to_string(), "Hello".to_string())]);
    }

    #[test]
    fn base64_header_values() {
        assert_eq!(decode_header_value("=?base64?w6ljaG8=?="), "écho");
        // Unpadded, over-padded or outside the alphabet: taken literally.
        assert_eq!(
            decode_header_value("=?base64?w6ljaG8?="),
            "=?base64?w6ljaG8?="
        );
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8?="),
            "=?base64?SGVsbG8?="
        );
        assert_eq!(
            decode_header_value("=?base64?SGVs!!!bG8=?="),
            "=?base64?SGVs!!!bG8=?="
        );
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8===?="),
            "=?base64?SGVsbG8===?="
        );
        assert_eq!(decode_header_value("=?base64?SGVsbG8=?="), "Hello");
        assert_eq!(decode_header_value("plain"), "plain");
        assert_eq!(decode_header_value("=?base64?***?="), "=?base64?***?=");
    }
}
