//! `mcpAuthorization` rules: parsing arbitrary text and evaluating what parses against a few
//! requests. No panic, no unbounded recursion; a parse error points inside the rule (or just
//! past its end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::auth::rules::{Rule, Vars};
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Rule::parse(text) {
        Ok(rule) => {
            let tool = json!({"tool": {"name": "echo", "target": "demo"}});
            let claims =
                json!({"sub": "alice", "groups": ["a", "b"], "n": 3, "nested": {"key": "v"}});
            let meta = json!({"role": "admin"});
            for vars in [
                Vars::default(),
                Vars {
                    mcp: Some(&tool),
                    jwt: Some(&claims),
                    api_key: None,
                },
                Vars {
                    mcp: Some(&tool),
                    jwt: None,
                    api_key: Some(&meta),
                },
            ] {
                let _ = rule.eval(&vars);
            }
        }
        Err(e) => assert!(
            e.column >= 1 && e.column <= text.chars().count() + 1,
            "column {} outside a rule of {} chars",
            e.column,
            text.chars().count()
        ),
    }
});
