//! 2026-07-28's custom headers from tool parameters: a tool's `inputSchema` may mark a
//! property with `x-mcp-header: Name`, and every `tools/call` of it over HTTP then carries the
//! argument's value as `Mcp-Param-Name`, so that intermediaries can route on it without
//! reading the body. This module reads the marks (and says when a tool's are invalid, which
//! makes a client drop the tool), builds the headers for a call, and checks a client's.

use serde_json::Value;

/// One marked parameter: the header name (after `Mcp-Param-`) and the property path.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub header: String,
    pub path: Vec<String>,
}

/// The marks in a tool's `inputSchema`. Err: why the tool definition is invalid (a name
/// that is not an HTTP token or repeats another, case aside; a mark on a property that is not
/// a string, integer or boolean, or one not reachable through `properties` alone).
pub fn bindings(schema: &Value) -> Result<Vec<Binding>, String> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), true, &mut out)?;
    Ok(out)
}

fn walk(
    node: &Value,
    path: &mut Vec<String>,
    reachable: bool,
    out: &mut Vec<Binding>,
) -> Result<(), String> {
    match node {
        Value::Array(items) => {
            for n in items {
                walk(n, path, false, out)?;
            }
        }
        Value::Object(o) => {
            if let Some(mark) = o.get("x-mcp-header") {
                let name = mark.as_str().unwrap_or("");
                if !is_token(name) {
                    return Err(format!("x-mcp-header {mark} is not an HTTP token"));
                }
                if !reachable || path.is_empty() {
                    return Err(format!("x-mcp-header {name:?} is not on a property reachable through properties alone"));
                }
                let primitive = matches!(
                    o.get("type").and_then(Value::as_str),
                    Some("string" | "integer" | "boolean")
                );
                if !primitive {
                    return Err(format!("x-mcp-header {name:?} is on a parameter that is not a string, integer or boolean"));
                }
                if out.iter().any(|b| b.header.eq_ignore_ascii_case(name)) {
                    return Err(format!("x-mcp-header {name:?} is used twice"));
                }
                out.push(Binding {
                    header: name.to_string(),
                    path: path.clone(),
                });
            }
            for (k, v) in o {
                if k == "properties" {
                    if let Value::Object(props) = v {
                        for (name, sub) in props {
                            path.push(name.clone());
                            walk(sub, path, reachable, out)?;
                            path.pop();
                        }
                    }
                } else if v.is_object() || v.is_array() {
                    // Anything under items, a composition, a conditional or $defs is not
                    // reachable from the arguments by property names alone.
                    walk(v, path, false, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// RFC 9110 token: 1*tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The argument at `path`, as a header value's text; None when absent or null.
fn argument(args: &Value, path: &[String]) -> Option<String> {
    let mut v = args;
    for p in path {
        v = v.get(p)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The `Mcp-Param-*` headers of a call with `args`: (full header name, encoded value).
pub fn headers(bindings: &[Binding], args: &Value) -> Vec<(String, String)> {
    bindings
        .iter()
        .filter_map(|b| {
            Some((
                format!("Mcp-Param-{}", b.header),
                encode(&argument(args, &b.path)?),
            ))
        })
        .collect()
}

/// A header value as the revision writes it: as it is when printable ASCII without
/// surrounding spaces (and not looking like the wrapper), else `=?base64?...?=`.
pub fn encode(v: &str) -> String {
    let plain = v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        && v.trim() == v
        && !(v.starts_with("=?base64?") && v.ends_with("?="));
    if plain {
        return v.to_string();
    }
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("=?base64?");
    for chunk in v.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out.push_str("?=");
    out
}

/// Checks a client's `Mcp-Param-*` headers (`given`, names without the prefix, values
/// decoded) against a call's arguments. Err: what disagrees (the caller answers -32020).
pub fn check(bindings: &[Binding], args: &Value, given: &[(String, String)]) -> Result<(), String> {
    for b in bindings {
        let header = given
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&b.header));
        match (argument(args, &b.path), header) {
            (None, _) => {}
            (Some(_), None) => return Err(format!("the Mcp-Param-{} header is missing", b.header)),
            (Some(want), Some((_, got))) => {
                let same = *got == want
                    || matches!((want.parse::<f64>(), got.parse::<f64>()), (Ok(a), Ok(b)) if a == b);
                if !same {
                    return Err(format!(
                        "Mcp-Param-{} does not match the argument",
                        b.header
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marks_are_read_and_invalid_ones_refused() {
        let s = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"tier": {"type": "integer", "x-mcp-header": "Tier"}}},
            "plain": {"type": "string"}}});
        let b = bindings(&s).expect("valid");
        assert_eq!(b.len(), 2);
        assert!(b.contains(&Binding {
            header: "Region".into(),
            path: vec!["region".into()]
        }));
        assert!(b.contains(&Binding {
            header: "Tier".into(),
            path: vec!["opts".into(), "tier".into()]
        }));
        for bad in [
            json!({"properties": {"a": {"type": "string", "x-mcp-header": ""}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "has space"}}}),
            json!({"properties": {"a": {"type": "object", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"}, "b": {"type": "string", "x-mcp-header": "a"}}}),
            json!({"properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "A"}}}}),
            json!({"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": 5}}}),
            json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
        ] {
            assert!(bindings(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_mirror_present_arguments() {
        let b = bindings(&json!({"properties": {
            "r": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "f": {"type": "boolean", "x-mcp-header": "F"}}}))
        .expect("valid");
        let mut h = headers(&b, &json!({"r": "écho", "n": 42, "f": null}));
        h.sort();
        assert_eq!(
            h,
            vec![
                ("Mcp-Param-N".to_string(), "42".to_string()),
                (
                    "Mcp-Param-Region".to_string(),
                    "=?base64?w6ljaG8=?=".to_string()
                ),
            ]
        );
        assert_eq!(encode(" padded"), "=?base64?IHBhZGRlZA==?=");
        assert_eq!(encode("us-west1"), "us-west1");
        let given = vec![
            ("region".to_string(), "écho".to_string()),
            ("N".to_string(), "42.0".to_string()),
        ];
        assert_eq!(check(&b, &json!({"r": "écho", "n": 42}), &given), Ok(()));
        assert!(check(&b, &json!({"r": "other", "n": 42}), &given).is_err());
        assert!(check(&b, &json!({"r": "écho", "n": 42, "f": true}), &given).is_err());
        assert_eq!(check(&b, &json!({}), &[]), Ok(()));
    }
}
