//! `apiKey`: keys a client presents (by default as `Authorization: Bearer <key>`), each with
//! a name and metadata. Keys are kept only as SHA-256 digests, and a presented key is compared
//! with every digest in constant time, so neither memory nor timing gives a key away.

use super::Principal;
use ring::digest::{digest, SHA256};
use std::rc::Rc;

/// One accepted key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub digest: [u8; 32],
    /// The principal this key authenticates as (its name; its `metadata`, what `apiKey.*` in
    /// authorization rules sees), made at load time.
    pub principal: Rc<Principal>,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Parses `sha256:<64 hex digits>` (agentgateway's `keyHash`).
pub fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key whose digest matches `presented`, looking at every key whatever matches.
pub fn find<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let d = sha256(presented.as_bytes());
    let mut found = None;
    for k in keys {
        if same(&k.digest, &d) && found.is_none() {
            found = Some(k);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_by_digest() {
        let key = |k: &[u8], name: &str| ApiKey {
            digest: sha256(k),
            principal: Rc::new(Principal::new("apiKey", name.into(), None, None)),
        };
        let keys = vec![key(b"k-alice", "alice"), key(b"k-bob", "bob")];
        assert_eq!(
            find(&keys, "k-bob").map(|k| k.principal.name.as_str()),
            Some("bob")
        );
        assert!(find(&keys, "k-bo").is_none());
        assert!(find(&keys, "").is_none());
        let hex: String = sha256(b"k-alice")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            parse_key_hash(&format!("sha256:{hex}")),
            Some(sha256(b"k-alice"))
        );
        assert_eq!(parse_key_hash(&format!("sha256:{}", &hex[1..])), None);
        assert_eq!(parse_key_hash(&hex), None);
    }
}
