//! `requestState` for multi-round-trip results (2026-07-28): what a stateless client hands
//! back on its retry so the gateway finds the call still waiting in a legacy child. The client
//! must not be able to forge, alter, replay elsewhere or keep it: it is signed (HMAC-SHA256
//! with a key of this process), names the instance, pool and call, expires, and is bound to
//! the request it belongs to (method and tool, prompt or resource name).
//!
//! Text form: `v1.<instance>.<pool>.<call>.<expiry ms>.<binding>.<mac>`, the MAC hex-encoded
//! over everything before it.

use ring::hmac;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest `requestState` accepted (a well-formed one is far shorter).
const MAX_LEN: usize = 512;

/// Where a verified state points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub pool: u64,
    pub call: u64,
}

/// Why a state was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    Malformed,
    BadSignature,
    Expired,
    /// Minted by another gateway instance (a balancer sent the retry elsewhere).
    OtherInstance(String),
    /// Minted for another request.
    WrongRequest,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Malformed => write!(f, "requestState is malformed"),
            StateError::BadSignature => write!(f, "requestState does not verify"),
            StateError::Expired => write!(f, "requestState has expired"),
            StateError::OtherInstance(i) => write!(
                f,
                "requestState belongs to gateway instance {i:?}; retry on that instance"
            ),
            StateError::WrongRequest => write!(f, "requestState belongs to another request"),
        }
    }
}

/// How the gateway's own `requestState` values begin.
pub const PREFIX: &str = "mcplex1.";

/// Signs and checks states with one key.
pub struct Signer {
    key: hmac::Key,
    instance: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a state is bound to: the method and the name it acts on, hex-encoded (so the text
/// form needs no escaping), shortened by a digest.
pub fn binding(method: &str, name: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(method.as_bytes());
    ctx.update(b"\0");
    ctx.update(name.as_bytes());
    let d = ctx.finish();
    hex(&d.as_ref()[..12])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

impl Signer {
    /// A signer with a fresh random key; `instance` names this gateway process.
    pub fn new(instance: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        // Without the system's random numbers there is no key an attacker cannot guess:
        // better not to start than to sign with one.
        #[allow(clippy::expect_used)]
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .expect("the system random number generator failed");
        Signer {
            key,
            instance: instance.to_string(),
        }
    }

    /// A signer with a given key (`requestStateKey`, shared by several instances).
    pub fn with_key(instance: &str, key: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            instance: instance.to_string(),
        }
    }

    /// Whether a `requestState` is one of the gateway's (else it is a modern target's own,
    /// and goes to that target untouched).
    pub fn is_ours(state: &str) -> bool {
        state.starts_with(PREFIX)
    }

    pub fn sign(&self, r: Resume, expires_ms: u64, binding: &str) -> String {
        let body = format!(
            "{PREFIX}{}.{}.{}.{expires_ms}.{binding}",
            self.instance, r.pool, r.call
        );
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(tag.as_ref()))
    }

    /// Checks a state a client sent back for a request bound as `binding`, at `now_ms`.
    pub fn verify(&self, state: &str, now_ms: u64, binding: &str) -> Result<Resume, StateError> {
        if state.len() > MAX_LEN || !state.is_ascii() {
            return Err(StateError::Malformed);
        }
        let (body, mac) = state.rsplit_once('.').ok_or(StateError::Malformed)?;
        let mac = unhex(mac).ok_or(StateError::Malformed)?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| StateError::BadSignature)?;
        let f: Vec<&str> = body.split('.').collect();
        let [v, instance, pool, call, expires, bound] = f.as_slice() else {
            return Err(StateError::Malformed);
        };
        if Some(*v) != PREFIX.strip_suffix('.') {
            return Err(StateError::Malformed);
        }
        if *instance != self.instance {
            return Err(StateError::OtherInstance(instance.to_string()));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| StateError::Malformed);
        let (pool, call, expires) = (num(pool)?, num(call)?, num(expires)?);
        if now_ms >= expires {
            return Err(StateError::Expired);
        }
        if *bound != binding {
            return Err(StateError::WrongRequest);
        }
        Ok(Resume { pool, call })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_state_verifies_only_as_it_was_issued() {
        let s = Signer::with_key("a", b"key");
        let b = binding("tools/call", "delete_repo");
        let r = Resume { pool: 3, call: 17 };
        let state = s.sign(r, 10_000, &b);
        assert_eq!(s.verify(&state, 9_999, &b), Ok(r));
        assert_eq!(s.verify(&state, 10_000, &b), Err(StateError::Expired));
        let other = binding("tools/call", "other_tool");
        assert_eq!(s.verify(&state, 1, &other), Err(StateError::WrongRequest));
        // Any change breaks the signature: the call number, the expiry.
        let forged = state.replacen(".17.", ".18.", 1);
        assert_eq!(s.verify(&forged, 1, &b), Err(StateError::BadSignature));
        let longer = state.replacen(".10000.", ".99999.", 1);
        assert_eq!(s.verify(&longer, 1, &b), Err(StateError::BadSignature));
        // Another process's key, another instance, garbage.
        let stranger = Signer::with_key("a", b"other key");
        assert_eq!(
            stranger.verify(&state, 1, &b),
            Err(StateError::BadSignature)
        );
        let b_instance = Signer::with_key("b", b"key");
        assert_eq!(
            b_instance.verify(&state, 1, &b),
            Err(StateError::OtherInstance("a".into()))
        );
        for junk in [
            "",
            ".",
            "v1",
            "zz.zz",
            &"x".repeat(600),
            "mcplex1.a.1.2.3.4.zz",
        ] {
            assert!(s.verify(junk, 1, &b).is_err(), "{junk}");
        }
    }

    #[test]
    fn fresh_keys_differ() {
        let b = binding("tools/call", "t");
        let r = Resume { pool: 1, call: 1 };
        let one = Signer::new("x").sign(r, 5, &b);
        let two = Signer::new("x").sign(r, 5, &b);
        assert_ne!(one, two);
    }
}
