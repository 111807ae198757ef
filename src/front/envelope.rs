//! A POSTed body parsed with the 2026-07-28 envelope lifted out on the way: the
//! `io.modelcontextprotocol/` keys of a message's `params._meta` are read straight into a
//! `Lifted`, borrowed from the body, instead of becoming map entries that the stateless path
//! would only look up and take out again. A legacy message gets them put back (`restore`),
//! so either path sees what a plain parse gives it.

use crate::jsonrpc::{self, Body};
use crate::mcp::META_PREFIX;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// The envelope keys of one message's `params._meta`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lifted {
    pub version: Option<Value>,
    pub capabilities: Option<Value>,
    pub client_info: Option<Value>,
    pub log_level: Option<Value>,
    /// The namespace's other keys, as they came.
    pub other: Vec<(String, Value)>,
    /// `params._meta` was an object (read here; left out of `params` when nothing else was in it).
    pub meta: bool,
}

impl Lifted {
    /// Puts the lifted keys back into `msg`'s `params._meta`, as the body had them.
    pub fn restore(self, msg: &mut Value) {
        if !self.meta {
            return;
        }
        let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) else {
            return;
        };
        let meta = params
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else {
            return;
        };
        let named = [
            ("protocolVersion", self.version),
            ("clientCapabilities", self.capabilities),
            ("clientInfo", self.client_info),
            ("logLevel", self.log_level),
        ];
        for (name, v) in named {
            if let Some(v) = v {
                meta.insert(format!("{META_PREFIX}{name}"), v);
            }
        }
        meta.extend(self.other);
    }
}

/// Parses an HTTP body into JSON-RPC messages; a single message's envelope is lifted out.
/// Errors carry the JSON-RPC error to answer with: -32700 for bad JSON, -32600 for an
/// empty batch.
pub fn parse_body(bytes: &[u8]) -> Result<(Body, Lifted), Value> {
    let mut lifted = Lifted::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Lift {
        level: Level::Message,
        into: &mut lifted,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    let v = parsed.map_err(|e| {
        let why = format!("Parse error: {e}");
        jsonrpc::error(Value::Null, jsonrpc::PARSE_ERROR, &why)
    })?;
    jsonrpc::body(v).map(|b| (b, lifted))
}

/// Where in the message the value being read sits.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Message,
    Params,
    Meta,
    /// Anywhere else: read as a plain value.
    Inner,
}

/// A value read as `serde_json::Value` reads it, except at the path `params._meta`.
struct Lift<'a> {
    level: Level,
    into: &'a mut Lifted,
}

impl<'de> DeserializeSeed<'de> for Lift<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key, borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Lift<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        de::Deserialize::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (level, into) = (self.level, self.into);
        into.meta |= level == Level::Meta;
        let mut out = Map::new();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let next = match (level, &*k) {
                (Level::Message, "params") => Level::Params,
                (Level::Params, "_meta") => Level::Meta,
                (Level::Meta, key) => match key.strip_prefix(META_PREFIX) {
                    Some(name) => {
                        let v = map.next_value::<Value>()?;
                        match name {
                            "protocolVersion" => into.version = Some(v),
                            "clientCapabilities" => into.capabilities = Some(v),
                            "clientInfo" => into.client_info = Some(v),
                            "logLevel" => into.log_level = Some(v),
                            _ => into.other.push((k.into_owned(), v)),
                        }
                        continue;
                    }
                    None => Level::Inner,
                },
                _ => Level::Inner,
            };
            let v = match next {
                Level::Inner => map.next_value::<Value>()?,
                _ => {
                    // A repeated `params` or `_meta` replaces the first, as in a plain parse.
                    *into = Lifted::default();
                    map.next_value_seed(Lift {
                        level: next,
                        into: &mut *into,
                    })?
                }
            };
            // A `_meta` that held only the envelope is left out; `restore` brings it back.
            if next == Level::Meta && v.as_object().is_some_and(Map::is_empty) {
                out.remove("_meta");
                continue;
            }
            out.insert(k.into_owned(), v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Lifting then restoring gives what a plain parse gives.
    fn round_trip(text: &str) -> (Value, Lifted) {
        let plain: Value = serde_json::from_str(text).unwrap_or_default();
        let (body, lifted) = parse_body(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut back = body.messages.into_iter().next().unwrap_or_default();
        let lifted_copy = lifted.clone();
        let before = back.clone();
        lifted.restore(&mut back);
        assert_eq!(back, plain, "{text}");
        (before, lifted_copy)
    }

    #[test]
    fn the_envelope_leaves_meta_and_comes_back() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t",
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientCapabilities":{},"progressToken":7,
            "io.modelcontextprotocol/related-task":{"taskId":"x"}}}}"#;
        let (msg, lifted) = round_trip(text);
        assert_eq!(msg["params"]["_meta"], json!({"progressToken": 7}));
        assert_eq!(lifted.version, Some(json!("2026-07-28")));
        assert_eq!(lifted.capabilities, Some(json!({})));
        assert_eq!(lifted.other.len(), 1);
    }

    #[test]
    fn a_meta_of_only_the_envelope_is_left_out() {
        let text = r#"{"id":1,"method":"m","params":{"_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28"},"x":[1,2.5,null,true]}}"#;
        let (msg, _) = round_trip(text);
        assert_eq!(msg["params"], json!({"x": [1, 2.5, null, true]}));
        round_trip(r#"{"id":1,"method":"m","params":{"_meta":{}}}"#);
    }

    #[test]
    fn only_params_meta_of_the_message_is_read() {
        // Elsewhere, and in a batch, the same keys stay where they are.
        let deep = r#"{"id":1,"method":"m","params":{"arguments":{"_meta":
            {"io.modelcontextprotocol/protocolVersion":"v"}}},"_meta":{"io.modelcontextprotocol/x":1}}"#;
        let (msg, lifted) = round_trip(deep);
        assert_eq!(lifted, Lifted::default());
        assert!(msg["params"]["arguments"]["_meta"].is_object());
        let batch = r#"[{"id":1,"method":"m","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"v"}}}]"#;
        let (body, lifted) = parse_body(batch.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lifted, Lifted::default());
        assert_eq!(
            body.messages[0]["params"]["_meta"]
                .as_object()
                .map(Map::len),
            Some(1)
        );
    }

    #[test]
    fn odd_shapes_parse_as_plainly() {
        for text in [
            r#"{"id":1,"method":"m","params":{"_meta":"text"}}"#,
            r#"{"id":1,"method":"m","params":[1,{"_meta":{}}]}"#,
            r#"{"id":1,"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":1},"_meta":{"a":2}}}"#,
            r#"{"id":1,"params":{"_meta":{"io.model\u0063ontextprotocol/protocolVersion":"x"}}}"#,
            r#"{"id":-5,"params":{"big":18446744073709551615,"f":-1e300,"s":"\ud83d\ude00"}}"#,
            r#"{"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"x"}},"params":{}}"#,
            r#"{"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"x"}},"params":[]}"#,
        ] {
            round_trip(text);
        }
        // Keys a plain parse refuses are refused here too, wherever they sit.
        for bad in [
            &b"{\"a\x01\":1}"[..],
            b"{\"params\":{\"_meta\":{\"io.modelcontextprotocol/x\x02\":1}}}",
            b"{\"params\":{\"\\ud800\":1}}",
            b"{\"params\":{\"\xff\":1}}",
        ] {
            assert!(serde_json::from_slice::<Value>(bad).is_err());
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        round_trip(r#"{"params":{"k\u00e9\n":1,"_meta":{"io.modelcontextprotocol/\u00e9":2}}}"#);
        assert!(parse_body(b"{\"a\":1} x").is_err());
        let code = |b: &[u8]| parse_body(b).err().unwrap_or_default()["error"]["code"].clone();
        assert_eq!(code(b"{oops"), jsonrpc::PARSE_ERROR);
        assert_eq!(code(b"[]"), jsonrpc::INVALID_REQUEST);
        let batch = |b: &[u8]| parse_body(b).map(|(b, _)| (b.batch, b.messages.len())).ok();
        assert_eq!(
            batch(br#"{"jsonrpc":"2.0","method":"x"}"#),
            Some((false, 1))
        );
        assert_eq!(batch(b"[1,2]"), Some((true, 2)));
        assert!(parse_body(b"{\"params\":{\"_meta\":{").is_err());
    }
}
