//! Talking to targets of either era: how a target's era is told from its answer to the
//! `server/discover` probe, the `_meta` envelope a 2026-07-28 target needs on every request,
//! and how its results are reshaped for a legacy client. Pure functions; the relay decides
//! when to use them.

use super::session::{Modern, Session};
use super::{META_CLIENT_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL, META_PROTOCOL_VERSION};
use super::{META_SERVER_INFO, MODERN_VERSION};
use crate::jsonrpc::Path;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// How long an `auto` target may take to answer the probe before it is taken to be legacy
/// (a legacy server may ignore a method it does not know).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the probe's answer says.
#[derive(Debug, PartialEq)]
pub enum Probe {
    /// A `server/discover` result offering 2026-07-28: the `initialize`-shaped view of it.
    Modern(Value),
    /// `-32022` naming 2026-07-28 among the versions it supports: ask again (once).
    Retry,
    /// Anything else (an error, a result without the version, a failed request).
    Legacy,
}

/// Reads the answer to the probe. Only a discover result that offers the modern revision
/// counts. `-32022` (version not supported) is a modern server's answer: if its list holds
/// the revision the gateway asked for after all, the probe is worth repeating; otherwise, and
/// for every other error, the target is legacy (the gateway speaks one modern revision).
pub fn probe_outcome(answer: &Result<Value, Value>) -> Probe {
    match answer {
        Ok(v) => discover_as_init(v).map_or(Probe::Legacy, Probe::Modern),
        Err(e)
            if e.get("code").and_then(Value::as_i64)
                == Some(crate::jsonrpc::UNSUPPORTED_VERSION) =>
        {
            let supported = e.at("/data/supported").and_then(Value::as_array);
            match supported.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(MODERN_VERSION))) {
                true => Probe::Retry,
                false => Probe::Legacy,
            }
        }
        Err(_) => Probe::Legacy,
    }
}

/// A `server/discover` result in the shape of an `initialize` result (what the aggregation
/// merges), if it offers 2026-07-28.
pub fn discover_as_init(v: &Value) -> Option<Value> {
    let offered = v.get("supportedVersions")?.as_array()?;
    if !offered.iter().any(|x| x.as_str() == Some(MODERN_VERSION)) {
        return None;
    }
    let server_info = v
        .pointer(&format!("/_meta/{}", META_SERVER_INFO.replace('/', "~1")))
        .or_else(|| v.get("serverInfo"))
        .cloned()
        .unwrap_or_else(|| json!({"name": "unknown", "version": "0"}));
    let mut init = json!({
        "protocolVersion": MODERN_VERSION,
        "capabilities": v.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "serverInfo": server_info,
    });
    if let Some(i) = v.get("instructions").filter(|i| i.is_string()) {
        init["instructions"] = i.clone();
    }
    Some(init)
}

/// The envelope for a request to a modern target: the stateless client's own, or built
/// from a legacy client's `initialize` (and its `logging/setLevel`).
pub fn envelope(s: &Session, modern: Option<&Modern>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(META_PROTOCOL_VERSION.into(), MODERN_VERSION.into());
    let (caps, info, level) = match modern {
        Some(md) => (
            Some(md.capabilities.clone()),
            md.client_info.clone(),
            md.log_level.clone(),
        ),
        None => (
            s.init_params.get("capabilities").cloned(),
            s.init_params.get("clientInfo").cloned(),
            s.log_level.clone(),
        ),
    };
    let caps = caps.filter(Value::is_object).unwrap_or_else(|| json!({}));
    m.insert(META_CLIENT_CAPABILITIES.into(), caps);
    if let Some(i) = info.filter(Value::is_object) {
        m.insert(META_CLIENT_INFO.into(), i);
    }
    if let Some(l) = level {
        m.insert(META_LOG_LEVEL.into(), l.into());
    }
    m
}

/// Puts the envelope into a request's params (creating `params` and `_meta` as needed).
pub fn stamp(params: &mut Option<Value>, envelope: &Map<String, Value>) {
    let p = params.get_or_insert_with(|| json!({}));
    if !p.is_object() {
        *p = json!({});
    }
    let meta = p
        .as_object_mut()
        .map(|o| o.entry("_meta").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        for (k, v) in envelope {
            meta.insert(k.clone(), v.clone());
        }
    }
}

/// A modern target's result for a legacy client: the 2026-07-28 fields it would not know
/// are dropped. False: the result is `input_required` (the client must be asked first).
pub fn legacy_result(v: &mut Value) -> bool {
    let Value::Object(o) = v else {
        return true;
    };
    if o.get("resultType").and_then(Value::as_str) == Some("input_required") {
        return false;
    }
    o.remove("resultType");
    o.remove("ttlMs");
    o.remove("cacheScope");
    true
}

/// The HTTP headers of a 2026-07-28 request to a modern target: the version, `Mcp-Method`,
/// `Mcp-Name` for the methods that name something, and for `tools/call` the `Mcp-Param-*`
/// of the tool's marked arguments (`params`: the target's marks, by tool name), or, for a
/// tool with no marks known, the client's own (`given`: names after the prefix, decoded).
pub fn http_headers(
    msg: &Value,
    params: &std::collections::HashMap<String, Vec<super::params::Binding>>,
    given: &[(String, String)],
) -> Vec<(String, String)> {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let mut h = vec![
        (
            "MCP-Protocol-Version".to_string(),
            MODERN_VERSION.to_string(),
        ),
        ("Mcp-Method".to_string(), method.to_string()),
    ];
    let named = match method {
        "tools/call" | "prompts/get" => msg.at("/params/name"),
        "resources/read" => msg.at("/params/uri"),
        _ => None,
    };
    if let Some(name) = named.and_then(Value::as_str) {
        h.push(("Mcp-Name".to_string(), super::params::encode(name)));
        match (params.get(name), method) {
            (Some(b), "tools/call") => {
                let args = msg.at("/params/arguments").unwrap_or(&Value::Null);
                h.extend(super::params::headers(b, args));
            }
            (None, "tools/call") => h.extend(
                (given.iter()).map(|(n, v)| (format!("Mcp-Param-{n}"), super::params::encode(v))),
            ),
            _ => {}
        }
    }
    h
}

/// Client-to-server notifications a modern target has no use for (it has no session).
pub fn session_notification(method: &str) -> bool {
    matches!(
        method,
        "notifications/initialized" | "notifications/roots/list_changed"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_discover_result_offering_the_revision_is_modern() {
        let d = json!({"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "m", "version": "1"}},
            "instructions": "be nice"});
        let Probe::Modern(init) = probe_outcome(&Ok(d)) else {
            panic!("modern")
        };
        assert_eq!(init["serverInfo"]["name"], "m");
        assert_eq!(init["capabilities"]["tools"], json!({}));
        assert_eq!(init["instructions"], "be nice");
        let older = json!({"supportedVersions": ["2027-01-01"]});
        assert_eq!(probe_outcome(&Ok(older)), Probe::Legacy);
        assert_eq!(probe_outcome(&Ok(json!({}))), Probe::Legacy);
        let unsupported = json!({"code": -32022, "message": "no", "data": {"supported": ["x"]}});
        assert_eq!(probe_outcome(&Err(unsupported)), Probe::Legacy);
        let retry = json!({"code": -32022, "message": "no", "data": {"supported": ["2026-07-28"]}});
        assert_eq!(probe_outcome(&Err(retry)), Probe::Retry);
        assert_eq!(
            probe_outcome(&Err(json!({"code": -32601, "message": "Method not found"}))),
            Probe::Legacy
        );
    }

    #[test]
    fn stamping_keeps_what_the_request_had() {
        let mut env = Map::new();
        env.insert(META_PROTOCOL_VERSION.into(), MODERN_VERSION.into());
        let mut p = Some(json!({"name": "x", "_meta": {"progressToken": 7}}));
        stamp(&mut p, &env);
        let p = p.unwrap_or_default();
        assert_eq!(p["_meta"]["progressToken"], 7);
        assert_eq!(p["_meta"][META_PROTOCOL_VERSION], MODERN_VERSION);
        let mut none = None;
        stamp(&mut none, &env);
        assert_eq!(
            none.unwrap_or_default()["_meta"][META_PROTOCOL_VERSION],
            MODERN_VERSION
        );
    }

    #[test]
    fn legacy_results_lose_the_modern_fields() {
        let mut r =
            json!({"resultType": "complete", "ttlMs": 0, "cacheScope": "private", "tools": []});
        assert!(legacy_result(&mut r));
        assert_eq!(r, json!({"tools": []}));
        let mut ask = json!({"resultType": "input_required", "inputRequests": {}});
        assert!(!legacy_result(&mut ask));
    }
}
