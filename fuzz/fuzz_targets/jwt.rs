//! JWT and JWKS parsing: the first line is a JWKS document, the rest a token checked against
//! it. No panic, whatever the bytes; a token only verifies with a key it was signed by (no
//! key here signs, so nothing may verify unless the input carries a real signature).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::auth::jwt::{parse_jwks, verify, Expect};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (jwks, token) = text.split_once('\n').unwrap_or((text, ""));
    let keys = parse_jwks(jwks).unwrap_or_default();
    let expect = Expect {
        issuer: "https://issuer".into(),
        audiences: vec!["mcp".into()],
    };
    if let Ok(v) = verify(token, &keys, &expect, 1_000_000) {
        assert!(!keys.is_empty(), "verified without keys");
        assert!(v.exp + 30 >= 1_000_000, "an expired token verified");
    }
    // Without keys nothing verifies.
    assert!(verify(token, &[], &expect, 0).is_err());
});
