//! Names and URIs across targets: `<target>_<name>` for tools and prompts, `<target>+<uri>`
//! for resource URIs that have a scheme (agentgateway's convention), and the way back.

use serde_json::Value;

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

/// The rewrite rules of one backend.
#[derive(Debug, Clone)]
pub struct Naming {
    pub targets: Vec<String>,
    pub prefixed: bool,
}

impl Naming {
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

    fn target_index(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t == name)
    }

    /// `everything_echo` -> (index of `everything`, `echo`).
    pub fn split_name<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        if !self.prefixed {
            return (self.targets.len() == 1).then_some((0, name));
        }
        let (t, rest) = name.split_once('_')?;
        Some((self.target_index(t)?, rest))
    }

    /// `everything+test://x` -> (index of `everything`, `test://x`).
    pub fn split_uri<'a>(&self, uri: &'a str) -> Option<(usize, &'a str)> {
        if !self.prefixed {
            return (self.targets.len() == 1).then_some((0, uri));
        }
        let (t, rest) = uri.split_once('+')?;
        Some((self.target_index(t)?, rest))
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
        let (what, pointer, by_uri) = match method {
            "tools/call" => ("tool", "/name", false),
            "prompts/get" => ("prompt", "/name", false),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                ("resource", "/uri", true)
            }
            "completion/complete" => match p.pointer("/ref/type").and_then(Value::as_str) {
                Some("ref/prompt") => ("prompt", "/ref/name", false),
                Some("ref/resource") => ("resource template", "/ref/uri", true),
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
        let Some(Value::String(name)) = p.pointer_mut(pointer) else {
            return Err(format!("missing {what} {}", &pointer[1..]));
        };
        let split = if by_uri {
            self.split_uri(name)
        } else {
            self.split_name(name)
        };
        let Some((target, rest)) = split else {
            return Err(format!("unknown {what}: {name}"));
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
        Naming {
            targets: vec!["demo".into(), "everything".into()],
            prefixed: true,
        }
    }

    #[test]
    fn names_round_trip() {
        let n = two();
        assert_eq!(n.prefix_name(1, "get_sum"), "everything_get_sum");
        assert_eq!(n.split_name("everything_get_sum"), Some((1, "get_sum")));
        assert_eq!(n.prefix_uri(0, "demo://readme"), "demo+demo://readme");
        assert_eq!(n.prefix_uri(0, "relative/path"), "relative/path");
        assert_eq!(
            n.split_uri("demo+demo://readme"),
            Some((0, "demo://readme"))
        );
        assert_eq!(n.split_name("nobody_x"), None);
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
        let one = Naming {
            targets: vec!["demo".into()],
            prefixed: false,
        };
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
}
