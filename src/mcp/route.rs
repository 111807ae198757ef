//! Names and URIs across targets: `<target>_<name>` for tools and prompts, `<target>+<uri>`
//! for resource URIs that have a scheme (agentgateway's convention), and the way back.

use crate::jsonrpc::Path;
use serde_json::Value;
use std::collections::HashMap;

/// Where a client request goes.
#[derive(Debug, PartialEq)]
pub enum Dest {
    /// One target, with the request's params rewritten for it.
    One(usize, Option<Value>),
    /// Every target; results are merged.
    All,
    /// Answered by the gateway itself.
    Local,
}

/// The kinds of names a target offers; each has its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Tool,
    Prompt,
    Resource,
    Template,
}

/// The rewrite rules of one backend, and (for `prefixMode: never` with several targets) which
/// target serves each bare name, as learned from the lists that passed through.
#[derive(Debug, Clone)]
pub struct Naming {
    pub targets: Vec<String>,
    pub prefixed: bool,
    index: HashMap<String, usize>,
    /// Bare name -> its target; `None` when two targets offer the same name.
    owners: HashMap<(Space, String), Option<usize>>,
}

impl Naming {
    pub fn new(targets: Vec<String>, prefixed: bool) -> Naming {
        let index = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Naming {
            targets,
            prefixed,
            index,
            owners: HashMap::new(),
        }
    }

    /// Whether bare names from several targets share one namespace (`prefixMode: never`).
    pub fn shared(&self) -> bool {
        !self.prefixed && self.targets.len() > 1
    }

    pub fn prefix_name(&self, target: usize, name: &str) -> String {
        match self.targets.get(target) {
            Some(t) if self.prefixed => format!("{t}_{name}"),
            _ => name.to_string(),
        }
    }

    pub fn prefix_uri(&self, target: usize, uri: &str) -> String {
        match self.targets.get(target) {
            Some(t) if self.prefixed && has_scheme(uri) => format!("{t}+{uri}"),
            _ => uri.to_string(),
        }
    }

    /// Records that `target` offers `name` (unprefixed mode). Returns false when another
    /// target offers it too: the name is then ambiguous and must be left out of lists.
    pub fn learn(&mut self, space: Space, name: &str, target: usize) -> bool {
        if !self.shared() {
            return true;
        }
        if matches!(space, Space::Resource | Space::Template) {
            if let Some(scheme) = uri_scheme(name) {
                self.claim((space, format!("scheme:{scheme}")), target);
            }
        }
        self.claim((space, name.to_string()), target)
    }

    /// False for a bare name that two targets offer.
    pub fn is_unambiguous(&self, space: Space, name: &str) -> bool {
        !self.shared() || self.owners.get(&(space, name.to_string())) != Some(&None)
    }

    fn claim(&mut self, key: (Space, String), target: usize) -> bool {
        let slot = self.owners.entry(key).or_insert(Some(target));
        if *slot != Some(target) {
            *slot = None;
        }
        slot.is_some()
    }

    fn owner(&self, space: Space, name: &str) -> Result<usize, String> {
        let what = match space {
            Space::Tool => "tool",
            Space::Prompt => "prompt",
            Space::Resource => "resource",
            Space::Template => "resource template",
        };
        let mut found = self.owners.get(&(space, name.to_string()));
        // A resource read from a template is in no list: fall back to who serves the scheme.
        if found.is_none() && matches!(space, Space::Resource | Space::Template) {
            if let Some(scheme) = uri_scheme(name) {
                let key = format!("scheme:{scheme}");
                found = self
                    .owners
                    .get(&(Space::Resource, key.clone()))
                    .or_else(|| self.owners.get(&(Space::Template, key)));
            }
        }
        match found {
            Some(Some(t)) => Ok(*t),
            Some(None) => Err(format!(
                "{what} {name} is offered by more than one target (prefixMode: never)"
            )),
            None => Err(format!("unknown {what}: {name}")),
        }
    }

    /// `everything_echo` -> (index of `everything`, `echo`).
    pub fn split_name<'a>(&self, space: Space, name: &'a str) -> Result<(usize, &'a str), String> {
        if !self.prefixed {
            if self.targets.len() == 1 {
                return Ok((0, name));
            }
            return self.owner(space, name).map(|t| (t, name));
        }
        let unknown = || {
            format!(
                "unknown {}: {name}",
                if space == Space::Tool {
                    "tool"
                } else {
                    "prompt"
                }
            )
        };
        let (t, rest) = name.split_once('_').ok_or_else(unknown)?;
        Ok((*self.index.get(t).ok_or_else(unknown)?, rest))
    }

    /// `everything+test://x` -> (index of `everything`, `test://x`).
    pub fn split_uri<'a>(&self, space: Space, uri: &'a str) -> Result<(usize, &'a str), String> {
        if !self.prefixed {
            if self.targets.len() == 1 {
                return Ok((0, uri));
            }
            return self.owner(space, uri).map(|t| (t, uri));
        }
        let unknown = || format!("unknown resource: {uri}");
        let (t, rest) = uri.split_once('+').ok_or_else(unknown)?;
        Ok((*self.index.get(t).ok_or_else(unknown)?, rest))
    }

    /// Decides where a client request goes, rewriting its params for the target.
    /// Errors are the JSON-RPC error message (code -32602).
    pub fn route(&self, method: &str, params: Option<&Value>) -> Result<Dest, String> {
        if method == "ping" {
            return Ok(Dest::Local);
        }
        // One unprefixed target: a pure relay, nothing to rewrite or merge.
        if self.targets.len() == 1 && !self.prefixed {
            return Ok(Dest::One(0, params.cloned()));
        }
        if is_fan_out(method) {
            return Ok(Dest::All);
        }
        let mut p = params.cloned().unwrap_or(Value::Null);
        let (space, pointer) = match method {
            "tools/call" => (Space::Tool, "/name"),
            "prompts/get" => (Space::Prompt, "/name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                (Space::Resource, "/uri")
            }
            "completion/complete" => match p.at("/ref/type").and_then(Value::as_str) {
                Some("ref/prompt") => (Space::Prompt, "/ref/name"),
                Some("ref/resource") => (Space::Template, "/ref/uri"),
                _ => {
                    return Err(
                        "completion/complete needs ref.type ref/prompt or ref/resource".into(),
                    )
                }
            },
            _ => {
                return Err(format!(
                    "method {method} cannot be routed to one of several targets"
                ))
            }
        };
        let Some(Value::String(name)) = p.at_mut(pointer) else {
            return Err(format!("missing {}", &pointer[1..]));
        };
        let (target, rest) = match space {
            Space::Tool | Space::Prompt => self.split_name(space, name)?,
            Space::Resource | Space::Template => self.split_uri(space, name)?,
        };
        *name = rest.to_string();
        Ok(Dest::One(target, Some(p)))
    }
}

/// Methods that go to every target and whose results are merged.
pub fn is_fan_out(method: &str) -> bool {
    matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "logging/setLevel"
    )
}

/// The scheme of a URI (or URI template), if it has one.
fn uri_scheme(uri: &str) -> Option<&str> {
    has_scheme(uri).then(|| uri.split(':').next().unwrap_or(""))
}

/// Whether a URI starts with `scheme:` (RFC 3986: a letter, then letters, digits, `+-.`).
pub fn has_scheme(uri: &str) -> bool {
    match uri.find(':') {
        Some(i) if i > 0 => {
            let s = &uri[..i];
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn two() -> Naming {
        Naming::new(vec!["demo".into(), "everything".into()], true)
    }

    #[test]
    fn names_round_trip() {
        let n = two();
        assert_eq!(n.prefix_name(1, "get_sum"), "everything_get_sum");
        assert_eq!(
            n.split_name(Space::Tool, "everything_get_sum"),
            Ok((1, "get_sum"))
        );
        assert_eq!(n.prefix_uri(0, "demo://readme"), "demo+demo://readme");
        assert_eq!(n.prefix_uri(0, "relative/path"), "relative/path");
        assert_eq!(
            n.split_uri(Space::Resource, "demo+demo://readme"),
            Ok((0, "demo://readme"))
        );
        assert!(n.split_name(Space::Tool, "nobody_x").is_err());
    }

    #[test]
    fn routes_requests() {
        let n = two();
        let r = n.route(
            "tools/call",
            Some(&json!({"name": "everything_echo", "arguments": {}})),
        );
        assert_eq!(
            r,
            Ok(Dest::One(1, Some(json!({"name": "echo", "arguments": {}}))))
        );
        let r = n.route(
            "completion/complete",
            Some(&json!({"ref": {"type": "ref/prompt", "name": "demo_greet"}})),
        );
        assert_eq!(
            r,
            Ok(Dest::One(
                0,
                Some(json!({"ref": {"type": "ref/prompt", "name": "greet"}}))
            ))
        );
        assert_eq!(n.route("tools/list", None), Ok(Dest::All));
        assert!(n
            .route("tools/call", Some(&json!({"name": "zzz_echo"})))
            .is_err());
        assert!(n.route("tools/call", None).is_err());
        let one = Naming::new(vec!["demo".into()], false);
        assert_eq!(
            one.route("x/y", Some(&json!(1))),
            Ok(Dest::One(0, Some(json!(1))))
        );
        assert!(
            has_scheme("test://x")
                && has_scheme("urn:x")
                && !has_scheme("/a:b")
                && !has_scheme("1a:b")
        );
    }

    #[test]
    fn never_mode_routes_by_learned_owner() {
        let mut n = Naming::new(vec!["a".into(), "b".into()], false);
        assert!(n.learn(Space::Tool, "only_a", 0));
        assert!(n.learn(Space::Tool, "both", 0));
        assert!(!n.learn(Space::Tool, "both", 1));
        assert!(n.learn(Space::Template, "notes://{x}", 1));
        let r = n.route("tools/call", Some(&json!({"name": "only_a"})));
        assert_eq!(r, Ok(Dest::One(0, Some(json!({"name": "only_a"})))));
        let e = n
            .route("tools/call", Some(&json!({"name": "both"})))
            .unwrap_err();
        assert!(e.contains("more than one target"), "{e}");
        assert!(n
            .route("tools/call", Some(&json!({"name": "nope"})))
            .is_err());
        // A URI made from a template is routed by its scheme.
        let r = n.route("resources/read", Some(&json!({"uri": "notes://x"})));
        assert_eq!(r, Ok(Dest::One(1, Some(json!({"uri": "notes://x"})))));
    }
}
