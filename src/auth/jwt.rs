//! JSON Web Tokens: the compact form parsed, its signature checked against a JWKS (RSA, P-256,
//! P-384 and Ed25519 keys, through ring), and the registered claims checked (`iss`, `aud`,
//! `exp`, `nbf`). Pure: keys come in parsed, time comes in as seconds.

use crate::base64::{decode, Alphabet};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use std::fmt;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// A token longer than this is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(&'static str),
    UnsupportedAlg(String),
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
    NoKeys,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::UnsupportedAlg(a) => write!(f, "signature algorithm {a:?} is not accepted"),
            JwtError::UnknownKey => write!(f, "no key in the JWKS matches the token's kid/alg"),
            JwtError::BadSignature => write!(f, "bad signature"),
            JwtError::Expired => write!(f, "token expired"),
            JwtError::NotYetValid => write!(f, "token not valid yet (nbf)"),
            JwtError::WrongIssuer => write!(f, "wrong issuer"),
            JwtError::WrongAudience => write!(f, "wrong audience"),
            JwtError::MissingClaim(c) => write!(f, "the token has no `{c}` claim"),
            JwtError::NoKeys => write!(f, "no signing keys loaded (JWKS not fetched yet?)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" | "Ed25519" => Alg::EdDsa,
            _ => return None,
        })
    }
}

/// One public key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point (0x04 || x || y).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<String>,
    pub key: KeyMaterial,
}

impl Jwk {
    fn fits(&self, alg: Alg) -> bool {
        let kind = matches!(
            (&self.key, alg),
            (
                KeyMaterial::Rsa { .. },
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (KeyMaterial::P256(_), Alg::Es256)
                | (KeyMaterial::P384(_), Alg::Es384)
                | (KeyMaterial::Ed25519(_), Alg::EdDsa)
        );
        kind && self
            .alg
            .as_deref()
            .is_none_or(|a| Alg::parse(a) == Some(alg))
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::Rsa { n, e } => {
                let params = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            KeyMaterial::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyMaterial::P384(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyMaterial::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
        }
    }
}

fn b64_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = o
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing `{name}`"))?;
    decode(s, Alphabet::Url).ok_or_else(|| format!("`{name}` is not base64url"))
}

/// Parses a JWKS document (`{"keys": [...]}`, or a single JWK). Keys that are not signature
/// keys of a supported type are skipped; a document with no usable key is an error.
pub fn parse_jwks(text: &str) -> Result<Vec<Jwk>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let entries: Vec<&Value> = match v.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("`keys` must be a list".into()),
        None if v.get("kty").is_some() => vec![&v],
        None => return Err("expected a JWKS (`{\"keys\": [...]}`)".into()),
    };
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in entries.iter().enumerate() {
        let Some(o) = k.as_object() else {
            skipped.push(format!("keys[{i}]: not an object"));
            continue;
        };
        if o.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let kid = o.get("kid").and_then(Value::as_str).map(str::to_string);
        let alg = o.get("alg").and_then(Value::as_str).map(str::to_string);
        let key = match (
            o.get("kty").and_then(Value::as_str),
            o.get("crv").and_then(Value::as_str),
        ) {
            (Some("RSA"), _) => b64_member(o, "n").and_then(|n| {
                let e = b64_member(o, "e")?;
                Ok(KeyMaterial::Rsa { n, e })
            }),
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let width = if crv == "P-256" { 32 } else { 48 };
                b64_member(o, "x").and_then(|x| {
                    let y = b64_member(o, "y")?;
                    if x.len() != width || y.len() != width {
                        return Err(format!("{crv} coordinates must be {width} bytes"));
                    }
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    Ok(match width {
                        32 => KeyMaterial::P256(point),
                        _ => KeyMaterial::P384(point),
                    })
                })
            }
            (Some("OKP"), Some("Ed25519")) => b64_member(o, "x").and_then(|x| match x.len() {
                32 => Ok(KeyMaterial::Ed25519(x)),
                _ => Err("an Ed25519 key is 32 bytes".into()),
            }),
            (kty, crv) => Err(format!(
                "unsupported key type {} {}",
                kty.unwrap_or("?"),
                crv.unwrap_or("")
            )),
        };
        match key {
            Ok(key) => out.push(Jwk { kid, alg, key }),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    if out.is_empty() {
        return Err(match skipped.is_empty() {
            true => "the JWKS has no signature keys".into(),
            false => format!("no usable key ({})", skipped.join("; ")),
        });
    }
    Ok(out)
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub issuer: String,
    /// Empty: any audience (and none) is accepted.
    pub audiences: Vec<String>,
}

/// A verified token's claims and its expiry (seconds since the epoch).
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub exp: u64,
}

fn segment_json(s: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = decode(s, Alphabet::Url).ok_or(JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(what)),
    }
}

fn seconds(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(JwtError::Malformed("a time claim is negative")),
        },
        Some(_) => Err(JwtError::Malformed("a time claim is not a number")),
    }
}

/// Verifies `token` (compact JWS) against `keys` and `expect` at time `now`.
pub fn verify(token: &str, keys: &[Jwk], expect: &Expect, now: u64) -> Result<Verified, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    let header = segment_json(h, "header")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("no alg"))?;
    // `none` and the shared-secret HMAC algorithms are never accepted: a JWKS holds public keys.
    let alg = Alg::parse(alg_name).ok_or_else(|| JwtError::UnsupportedAlg(alg_name.into()))?;
    if header.get("crit").is_some() {
        return Err(JwtError::Malformed(
            "critical header parameters are not understood",
        ));
    }
    let sig = decode(s, Alphabet::Url).ok_or(JwtError::Malformed("signature"))?;
    if keys.is_empty() {
        return Err(JwtError::NoKeys);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Jwk> = keys
        .iter()
        .filter(|k| k.fits(alg) && (kid.is_none() || k.kid.as_deref() == kid))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::UnknownKey);
    }
    let signed = &token[..h.len() + 1 + p.len()];
    if !candidates
        .iter()
        .any(|k| k.verify(alg, signed.as_bytes(), &sig))
    {
        return Err(JwtError::BadSignature);
    }
    let claims = segment_json(p, "payload")?;
    let exp = seconds(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = seconds(&claims, "nbf")? {
        if nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::NotYetValid);
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    if !expect.audiences.is_empty() {
        // A resource URI with or without its trailing slash is the same audience.
        let same = |a: &str| {
            (expect.audiences.iter()).any(|e| e.trim_end_matches('/') == a.trim_end_matches('/'))
        };
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => same(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(same),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok(Verified { claims, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64::encode_url;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn sign_ed(kp: &Ed25519KeyPair, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            encode_url(header.as_bytes()),
            encode_url(claims.as_bytes())
        );
        let sig = kp.sign(input.as_bytes());
        format!("{input}.{}", encode_url(sig.as_ref()))
    }

    fn ed_key() -> (Ed25519KeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{}"}}]}}"#,
            encode_url(kp.public_key().as_ref())
        );
        let jwk = parse_jwks(&jwks).expect("jwks").remove(0);
        (kp, jwk)
    }

    fn expect() -> Expect {
        Expect {
            issuer: "https://issuer".into(),
            audiences: vec!["mcp".into()],
        }
    }

    const H: &str = r#"{"alg":"EdDSA","kid":"k1"}"#;

    #[test]
    fn a_good_token_and_each_way_to_fail() {
        let (kp, jwk) = ed_key();
        let keys = [jwk];
        let ok = r#"{"iss":"https://issuer","aud":["x","mcp"],"sub":"alice","exp":2000}"#;
        let v = verify(&sign_ed(&kp, H, ok), &keys, &expect(), 1000).expect("valid");
        assert_eq!(v.claims["sub"], "alice");
        assert_eq!(v.exp, 2000);
        let t = sign_ed(&kp, H, ok);
        assert_eq!(
            verify(&t, &keys, &expect(), 2100).map(|_| ()),
            Err(JwtError::Expired)
        );
        // (the leeway) a token a few seconds past exp still passes
        assert!(verify(&t, &keys, &expect(), 2010).is_ok());
        let cases = [
            (
                r#"{"iss":"other","aud":"mcp","exp":2000}"#,
                JwtError::WrongIssuer,
            ),
            (
                r#"{"iss":"https://issuer","aud":"else","exp":2000}"#,
                JwtError::WrongAudience,
            ),
            (
                r#"{"iss":"https://issuer","aud":"mcp"}"#,
                JwtError::MissingClaim("exp"),
            ),
            (
                r#"{"iss":"https://issuer","aud":"mcp","exp":2000,"nbf":1500}"#,
                JwtError::NotYetValid,
            ),
        ];
        for (claims, want) in cases {
            let got = verify(&sign_ed(&kp, H, claims), &keys, &expect(), 1000).map(|_| ());
            assert_eq!(got, Err(want), "{claims}");
        }
        // A signature by another key, or over other claims.
        let (other, _) = ed_key();
        let forged = sign_ed(&other, H, ok);
        assert_eq!(
            verify(&forged, &keys, &expect(), 1000).map(|_| ()),
            Err(JwtError::BadSignature)
        );
        let mut parts: Vec<&str> = t.split('.').collect();
        let swapped =
            encode_url(br#"{"iss":"https://issuer","aud":"mcp","sub":"root","exp":2000}"#);
        parts[1] = &swapped;
        assert_eq!(
            verify(&parts.join("."), &keys, &expect(), 1000).map(|_| ()),
            Err(JwtError::BadSignature)
        );
        // alg none, HS256, an unknown kid, garbage.
        let none = format!(
            "{}.{}.",
            encode_url(br#"{"alg":"none"}"#),
            encode_url(ok.as_bytes())
        );
        assert!(matches!(
            verify(&none, &keys, &expect(), 1000),
            Err(JwtError::UnsupportedAlg(_))
        ));
        let hs = sign_ed(&kp, r#"{"alg":"HS256"}"#, ok);
        assert!(matches!(
            verify(&hs, &keys, &expect(), 1000),
            Err(JwtError::UnsupportedAlg(_))
        ));
        let kid = sign_ed(&kp, r#"{"alg":"EdDSA","kid":"k2"}"#, ok);
        assert_eq!(
            verify(&kid, &keys, &expect(), 1000).map(|_| ()),
            Err(JwtError::UnknownKey)
        );
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(verify(junk, &keys, &expect(), 1000).is_err(), "{junk}");
        }
    }

    #[test]
    fn es256_tokens_verify_against_their_jwk() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        let point = kp.public_key().as_ref();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","use":"sig"}},{{"kty":"oct","k":"c2VjcmV0"}}]}}"#,
            encode_url(&point[1..33]),
            encode_url(&point[33..])
        );
        let keys = parse_jwks(&jwks).expect("jwks");
        assert_eq!(keys.len(), 1, "the symmetric key is skipped");
        let input = format!(
            "{}.{}",
            encode_url(br#"{"alg":"ES256"}"#),
            encode_url(br#"{"iss":"https://issuer","aud":"mcp","exp":2000}"#)
        );
        let sig = kp.sign(&rng, input.as_bytes()).expect("sign");
        let token = format!("{input}.{}", encode_url(sig.as_ref()));
        assert!(verify(&token, &keys, &expect(), 1000).is_ok());
    }

    #[test]
    fn jwks_documents_that_are_refused() {
        for bad in [
            "",
            "[]",
            r#"{"keys":3}"#,
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
        ] {
            assert!(parse_jwks(bad).is_err(), "{bad}");
        }
    }
}
