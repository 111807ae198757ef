//! JSON-RPC 2.0 messages as MCP uses them: parse, classify, build responses and errors.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server errors (-32000..-32099): an upstream failed or timed out.
pub const UPSTREAM_ERROR: i64 = -32000;
/// The same server-error code for a request refused before MCP (a foreign Host or Origin).
pub const REFUSED: i64 = -32000;
pub const REQUEST_TIMEOUT: i64 = -32001;
/// 2026-07-28: an HTTP header disagrees with the body (`MCP-Protocol-Version`, `Mcp-Method`,
/// `Mcp-Name`).
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: serving the request needs a client capability the request did not declare;
/// `data.requiredCapabilities` names it.
pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
/// 2026-07-28: the request names a protocol version the server does not speak; `data` lists
/// the supported ones.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// Legacy "resource not found"; 2026-07-28 uses `INVALID_PARAMS` instead.
pub const RESOURCE_NOT_FOUND: i64 = -32002;

/// `Value::pointer` without its cost: serde_json's unescapes every token into a new `String`
/// (two per token), which on the per-request path added up to more than the rest of a relayed
/// call. These paths are the code's own, never escaped (no `~0` / `~1`), so a token is looked
/// up as it is.
pub trait Path {
    fn at(&self, path: &str) -> Option<&Value>;
    fn at_mut(&mut self, path: &str) -> Option<&mut Value>;
}

/// The tokens of a path (`/a/b/0`), split by hand: `str::split` with a char pattern runs a
/// searcher per token, which for these few short tokens cost more than the lookups.
fn tokens(path: &str) -> Option<impl Iterator<Item = &str>> {
    let rest = path.strip_prefix('/')?;
    let mut start = 0;
    let mut done = false;
    Some(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let bytes = rest.as_bytes();
        let end = (bytes[start..].iter())
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |i| start + i);
        let token = rest.get(start..end)?;
        done = end == bytes.len();
        start = end + 1;
        Some(token)
    }))
}

impl Path for Value {
    fn at(&self, path: &str) -> Option<&Value> {
        tokens(path)?.try_fold(self, |v, k| match v {
            Value::Object(o) => o.get(k),
            Value::Array(a) => a.get(k.parse::<usize>().ok()?),
            _ => None,
        })
    }

    fn at_mut(&mut self, path: &str) -> Option<&mut Value> {
        tokens(path)?.try_fold(self, |v, k| match v {
            Value::Object(o) => o.get_mut(k),
            Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
            _ => None,
        })
    }
}

/// The HTTP status a 2026-07-28 answer goes out with, from its serialized text: 404 for an
/// unknown method, 400 for the revision's request errors, 200 for everything else.
pub fn modern_status(text: &str) -> u16 {
    // A result relayed as text (or served from a cached list) is spliced behind
    // `{"jsonrpc":"2.0","id":`: never an error, and not worth scanning. Everything else was
    // serialized from a Value.
    if text.starts_with(r#"{"jsonrpc":"#) || !text.contains("\"error\"") {
        return 200;
    }
    let code = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.at("/error/code").and_then(Value::as_i64));
    match code {
        Some(METHOD_NOT_FOUND) => 404,
        Some(HEADER_MISMATCH | MISSING_CLIENT_CAPABILITY | UNSUPPORTED_VERSION) => 400,
        _ => 200,
    }
}

/// What one JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// A success answer with an integer id, its `result` left as unparsed text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswer<'a> {
    jsonrpc: &'a str,
    pub id: u64,
    #[serde(borrow)]
    pub result: &'a RawValue,
}

/// Reads `bytes` as exactly a JSON-RPC success answer with an integer id (the ids the gateway
/// gives its upstream requests) without building a `Value` tree. None for anything else (an
/// error, a request, a batch, an extra or duplicate key): those take the general path.
pub fn raw_answer(bytes: &[u8]) -> Option<RawAnswer<'_>> {
    serde_json::from_slice::<RawAnswer>(bytes)
        .ok()
        .filter(|a| a.jsonrpc == "2.0")
}

/// Classifies a message, or says why it is not a valid JSON-RPC 2.0 message.
pub fn classify(v: &Value) -> Result<Kind, &'static str> {
    let Value::Object(o) = v else {
        return Err("message is not an object");
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("jsonrpc must be \"2.0\"");
    }
    let id_ok = |id: &Value| matches!(id, Value::String(_)) || id.is_i64() || id.is_u64();
    match (o.get("method"), o.get("id")) {
        (Some(Value::String(_)), None) => Ok(Kind::Notification),
        (Some(Value::String(_)), Some(id)) if id_ok(id) => Ok(Kind::Request),
        (Some(Value::String(_)), Some(_)) => Err("id must be a string or an integer"),
        (Some(_), _) => Err("method must be a string"),
        (None, Some(_)) if o.contains_key("result") != o.contains_key("error") => {
            Ok(Kind::Response)
        }
        (None, _) => Err("neither a request, a notification nor a response"),
    }
}

/// A body parsed into messages: one object or a batch (array).
#[derive(Debug)]
pub struct Body {
    pub messages: Vec<Value>,
    pub batch: bool,
}

/// A parsed body as messages: one object, or a batch (a non-empty array).
pub fn body(v: Value) -> Result<Body, Value> {
    match v {
        Value::Array(items) if items.is_empty() => {
            Err(error(Value::Null, INVALID_REQUEST, "empty batch"))
        }
        Value::Array(items) => Ok(Body {
            messages: items,
            batch: true,
        }),
        v => Ok(Body {
            messages: vec![v],
            batch: false,
        }),
    }
}

/// The method of a request or notification.
pub fn method(v: &Value) -> &str {
    v.get("method").and_then(Value::as_str).unwrap_or("")
}

/// A success response.
pub fn result(id: Value, result: Value) -> Value {
    // Built by hand: `json!` would deep-copy `result` through `to_value`.
    answer(id, "result", result)
}

/// An error response carrying an upstream's `error` object as it is.
pub fn error_answer(id: Value, error: Value) -> Value {
    answer(id, "error", error)
}

fn answer(id: Value, key: &str, value: Value) -> Value {
    let mut o = Map::new();
    o.insert("jsonrpc".into(), "2.0".into());
    o.insert("id".into(), id);
    o.insert(key.into(), value);
    Value::Object(o)
}

/// An error response.
pub fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A request.
pub fn request(id: Value, method: &str, params: Option<Value>) -> Value {
    let mut o = Map::new();
    o.insert("jsonrpc".into(), "2.0".into());
    o.insert("id".into(), id);
    o.insert("method".into(), method.into());
    if let Some(p) = params {
        o.insert("params".into(), p);
    }
    Value::Object(o)
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut o = Map::new();
    o.insert("jsonrpc".into(), "2.0".into());
    o.insert("method".into(), method.into());
    if let Some(p) = params {
        o.insert("params".into(), p);
    }
    Value::Object(o)
}

/// A stable map key for a JSON-RPC id (string ids and numeric ids never collide).
pub fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => format!("s:{s}"),
        other => format!("n:{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_status_reads_only_error_answers() {
        let relayed = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"\"error\": none"}]}}"#;
        assert_eq!(modern_status(relayed), 200);
        let unknown = error(json!(1), METHOD_NOT_FOUND, "no such method").to_string();
        assert_eq!(modern_status(&unknown), 404);
        let mismatch = error(json!(1), HEADER_MISMATCH, "x").to_string();
        assert_eq!(modern_status(&mismatch), 400);
        assert_eq!(
            modern_status(&error(json!(1), INVALID_PARAMS, "x").to_string()),
            200
        );
    }

    #[test]
    fn path_tokens_split_like_str_split() {
        for p in [
            "/a",
            "/a/b/0",
            "/",
            "/a//b",
            "/a/",
            "//",
            "/params/_meta/io.x/y",
        ] {
            let mine: Vec<&str> = tokens(p).expect("a path").collect();
            let theirs: Vec<&str> = p[1..].split('/').collect();
            assert_eq!(mine, theirs, "{p}");
        }
        assert!(tokens("no-slash").is_none());
    }

    #[test]
    fn raw_answer_takes_only_plain_success_answers() {
        let a = raw_answer(
            br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
        )
        .expect("a plain answer");
        assert_eq!(a.id, 7);
        assert_eq!(
            a.result.get(),
            r#"{"content":[{"type":"text","text":"hi"}]}"#
        );
        for other in [
            &br#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"x"}}"#[..],
            br#"{"jsonrpc":"2.0","id":7,"result":{},"error":{"code":1,"message":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":7,"result":{},"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":"7","result":{}}"#,
            br#"{"jsonrpc":"2.0","id":-7,"result":{}}"#,
            br#"{"jsonrpc":"1.0","id":7,"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":7,"method":"ping","result":{}}"#,
            br#"{"id":7,"result":{}}"#,
            br#"[{"jsonrpc":"2.0","id":7,"result":{}}]"#,
            br#"{"jsonrpc":"2.0","id":7,"result":{}"#,
        ] {
            assert!(
                raw_answer(other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn classifies() {
        let cases = [
            (
                json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
                Ok(Kind::Request),
            ),
            (
                json!({"jsonrpc":"2.0","id":"a","method":"ping"}),
                Ok(Kind::Request),
            ),
            (
                json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
                Ok(Kind::Notification),
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"result":{}}),
                Ok(Kind::Response),
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}),
                Ok(Kind::Response),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(classify(&v), want, "{v}");
        }
        for bad in [
            json!([]),
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"x"}),
            json!({"jsonrpc":"2.0","id":null,"method":"x"}),
            json!({"jsonrpc":"2.0","method":3}),
            json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}}),
            json!({"jsonrpc":"2.0"}),
        ] {
            assert!(classify(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_keys_tell_strings_from_numbers() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
    }
}
