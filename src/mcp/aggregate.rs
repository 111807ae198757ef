//! Merging what several targets answer into one answer: `initialize` results, and the
//! `*/list` results with a cursor that carries every target's own cursor.

use super::route::{Naming, Space};
use serde_json::{json, Map, Value};

/// One target's part of a merged answer.
pub struct Part<'a> {
    pub target: usize,
    pub result: &'a Value,
}

/// Deep union of capability objects: objects merge key by key, `true` wins over `false`.
fn union(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) => union(slot, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Bool(a), Value::Bool(b)) => *a |= *b,
        _ => {}
    }
}

/// The gateway's `initialize` result from its targets' results.
pub fn merge_initialize(parts: &[Part<'_>], naming: &Naming, version: &str) -> Value {
    let mut caps = Value::Object(Map::new());
    let mut instructions = Vec::new();
    for p in parts {
        if let Some(c) = p.result.get("capabilities") {
            union(&mut caps, c);
        }
        if let Some(Value::String(text)) = p.result.get("instructions") {
            instructions.push((p.target, text.clone()));
        }
    }
    let mut out = json!({
        "protocolVersion": version,
        "capabilities": caps,
        "serverInfo": {"name": "mcplex", "version": env!("CARGO_PKG_VERSION")},
    });
    let text = match instructions.as_slice() {
        [] => None,
        [(_, only)] if naming.targets.len() == 1 => Some(only.clone()),
        many => Some(
            many.iter()
                .map(|(t, text)| {
                    format!(
                        "## {}\n{}",
                        naming.targets.get(*t).map_or("", String::as_str),
                        text
                    )
                })
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
    };
    if let Some(text) = text {
        out["instructions"] = Value::String(text);
    }
    out
}

/// The key of the item array in a list result, the field of each item that is renamed, and
/// the namespace of that field.
pub fn list_shape(method: &str) -> Option<(&'static str, &'static str, Space)> {
    match method {
        "tools/list" => Some(("tools", "name", Space::Tool)),
        "prompts/list" => Some(("prompts", "name", Space::Prompt)),
        "resources/list" => Some(("resources", "uri", Space::Resource)),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate", Space::Template)),
        _ => None,
    }
}

/// Decodes a gateway cursor into (target, that target's cursor) pairs. `None` cursor: the
/// first page of every target.
pub fn decode_cursor(
    cursor: Option<&str>,
    targets: usize,
) -> Result<Vec<(usize, Option<String>)>, String> {
    let Some(c) = cursor else {
        return Ok((0..targets).map(|t| (t, None)).collect());
    };
    let parsed: Vec<(usize, Option<String>)> =
        serde_json::from_str(c).map_err(|_| "invalid cursor".to_string())?;
    if parsed.is_empty() || parsed.iter().any(|(t, _)| *t >= targets) {
        return Err("invalid cursor".into());
    }
    Ok(parsed)
}

/// Merges list pages. Items are renamed for their target; `nextCursor` lists the targets that
/// have more, each with its own cursor, so following it yields every item exactly once. With
/// bare names shared by several targets, a name offered twice is left out.
pub fn merge_list(method: &str, parts: Vec<(usize, Value)>, naming: &mut Naming) -> Value {
    let Some((key, field, space)) = list_shape(method) else {
        return json!({});
    };
    // Learn every name first, so an ambiguity anywhere in the answer hides the name everywhere.
    for (target, result) in &parts {
        if let Some(Value::Array(list)) = result.get(key) {
            for name in list
                .iter()
                .filter_map(|i| i.get(field).and_then(Value::as_str))
            {
                naming.learn(space, name, *target);
            }
        }
    }
    let mut items = Vec::new();
    let mut more = Vec::new();
    for (target, mut result) in parts {
        // Items are moved, not cloned: the parts are not needed afterwards.
        if let Some(Value::Array(list)) = result.get_mut(key).map(Value::take) {
            for mut item in list {
                if let Some(Value::String(s)) = item.get_mut(field) {
                    if !naming.is_unambiguous(space, s) {
                        continue;
                    }
                    *s = match space {
                        Space::Resource | Space::Template => naming.prefix_uri(target, s),
                        Space::Tool | Space::Prompt => naming.prefix_name(target, s),
                    };
                }
                items.push(item);
            }
        }
        // With shared names every page was fetched already; nothing is left to page through.
        if let (Some(Value::String(next)), false) = (
            result.get_mut("nextCursor").map(Value::take),
            naming.shared(),
        ) {
            more.push((target, Some(next)));
        }
    }
    let mut out = Map::new();
    out.insert(key.into(), Value::Array(items));
    if !more.is_empty() {
        out.insert("nextCursor".into(), Value::String(json!(more).to_string()));
    }
    Value::Object(out)
}

/// Rewrites resource URIs inside a result from `target` (resource contents, `resource_link`
/// and embedded resources in tool results and prompt messages).
pub fn prefix_result_uris(v: &mut Value, target: usize, naming: &Naming) {
    if !naming.prefixed {
        return;
    }
    let fix = |s: &mut Value| {
        if let Value::String(u) = s {
            *u = naming.prefix_uri(target, u);
        }
    };
    if let Some(Value::Array(contents)) = v.get_mut("contents") {
        contents
            .iter_mut()
            .filter_map(|c| c.get_mut("uri"))
            .for_each(fix);
    }
    let mut blocks: Vec<&mut Value> = Vec::new();
    if let Value::Object(o) = v {
        for (k, field) in o.iter_mut() {
            match (k.as_str(), field) {
                ("content", Value::Array(content)) => blocks.extend(content.iter_mut()),
                ("messages", Value::Array(messages)) => {
                    blocks.extend(messages.iter_mut().filter_map(|m| m.get_mut("content")))
                }
                _ => {}
            }
        }
    }
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("resource_link") => {
                if let Some(u) = b.get_mut("uri") {
                    fix(u)
                }
            }
            Some("resource") => {
                if let Some(u) = b.pointer_mut("/resource/uri") {
                    fix(u)
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Naming {
        Naming::new(vec!["a".into(), "b".into()], true)
    }

    #[test]
    fn merges_capabilities_and_instructions() {
        let r0 =
            json!({"capabilities": {"tools": {"listChanged": false}}, "instructions": "use a"});
        let r1 = json!({"capabilities": {"tools": {"listChanged": true}, "prompts": {}}});
        let m = merge_initialize(
            &[
                Part {
                    target: 0,
                    result: &r0,
                },
                Part {
                    target: 1,
                    result: &r1,
                },
            ],
            &two(),
            "2025-06-18",
        );
        assert_eq!(
            m["capabilities"],
            json!({"tools": {"listChanged": true}, "prompts": {}})
        );
        assert_eq!(m["protocolVersion"], "2025-06-18");
        assert_eq!(m["instructions"], "## a\nuse a");
    }

    #[test]
    fn list_pages_carry_every_cursor() {
        let r0 = json!({"tools": [{"name": "x"}], "nextCursor": "p2"});
        let r1 = json!({"tools": [{"name": "y"}]});
        let m = merge_list("tools/list", vec![(0, r0), (1, r1)], &mut two());
        assert_eq!(m["tools"], json!([{"name": "a_x"}, {"name": "b_y"}]));
        let next = m["nextCursor"].as_str().map(str::to_string);
        assert_eq!(
            decode_cursor(next.as_deref(), 2),
            Ok(vec![(0, Some("p2".into()))])
        );
        assert!(decode_cursor(Some("junk"), 2).is_err());
        assert!(decode_cursor(Some("[[5,null]]"), 2).is_err());
    }

    #[test]
    fn rewrites_uris_in_results() {
        let mut v = json!({"content": [{"type": "resource_link", "uri": "t://1"}, {"type": "resource", "resource": {"uri": "t://2"}}], "contents": [{"uri": "t://3"}]});
        prefix_result_uris(&mut v, 1, &two());
        assert_eq!(v["content"][0]["uri"], "b+t://1");
        assert_eq!(v["content"][1]["resource"]["uri"], "b+t://2");
        assert_eq!(v["contents"][0]["uri"], "b+t://3");
    }
}
