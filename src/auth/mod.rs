//! The front door of a route: who the client is (`apiKey`, `jwtAuth`, `mcpAuthentication`, a
//! verified client certificate), whether it may come in now (`localRateLimit`), and what it
//! may see and call (`mcpAuthorization`). Pure over a request's headers and the time; the
//! keys a JWKS URL serves are put in by the loop's fetcher.

pub mod apikey;
pub mod jwt;
pub mod ratelimit;
pub mod rules;

use apikey::ApiKey;
use jwt::{Expect, Jwk, JwtError};
use ratelimit::RateLimit;
use rules::{RuleSet, Vars};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Verified tokens remembered (until their `exp`) so a token is checked once, not per call.
const TOKEN_CACHE_MAX: usize = 1024;
/// A token naming an unknown `kid` asks for a JWKS refresh at most this often.
pub const KID_REFRESH_MIN: Duration = Duration::from_secs(10);

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The key's name, the token's `sub`, or the certificate's subject.
    pub name: String,
    /// How it was authenticated: `apiKey`, `jwt` or `cert`.
    pub kind: &'static str,
    /// JWT claims (an object), for `jwt.*` in rules.
    pub jwt: Option<Value>,
    /// API key metadata, for `apiKey.*` in rules.
    pub api_key: Option<Value>,
    /// `kind:name`, made once: what sessions, pools and rate limits are partitioned by.
    key: Rc<str>,
}

impl Principal {
    pub fn new(
        kind: &'static str,
        name: String,
        jwt: Option<Value>,
        api_key: Option<Value>,
    ) -> Principal {
        Principal {
            key: format!("{kind}:{name}").into(),
            name,
            kind,
            jwt,
            api_key,
        }
    }

    /// What sessions, pools and rate limits are partitioned by: kind and name.
    pub fn key(&self) -> &Rc<str> {
        &self.key
    }

    /// A file-name-safe form of the key, unique per principal: what a stdio child of this
    /// principal's pool finds in `MCPLEX_PRINCIPAL` (and in `${MCPLEX_PRINCIPAL}` in its args
    /// and env), so it can keep per-principal files.
    pub fn tag(&self) -> String {
        let key = &self.key;
        let safe: String = (key.chars().take(48))
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    true => c,
                    false => '_',
                },
            )
            .collect();
        let digest = apikey::sha256(key.as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{safe}-{hex}")
    }
}

/// `mode` of an authentication policy (agentgateway's three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A valid credential is required.
    Strict,
    /// A credential, when present, must be valid.
    Optional,
    /// Valid credentials are used; missing or invalid ones are ignored.
    Permissive,
}

/// Where a credential is read: a header, after an optional prefix (`Bearer `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub header: String,
    pub prefix: Option<String>,
}

impl Default for Location {
    fn default() -> Location {
        Location {
            header: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }
}

impl Location {
    fn extract<'a>(&self, header: &dyn Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
        let v = header(&self.header)?.trim();
        match &self.prefix {
            None => Some(v),
            Some(p) => {
                let p = p.trim_end();
                let head = v.get(..p.len())?;
                if !head.eq_ignore_ascii_case(p) {
                    return None;
                }
                let rest = v[p.len()..].trim_start();
                (!rest.is_empty()).then_some(rest)
            }
        }
    }
}

#[derive(Debug)]
pub struct ApiKeys {
    pub keys: Vec<ApiKey>,
    pub mode: Mode,
    pub location: Location,
}

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Read at load (and reload).
    File(String),
    Inline,
    /// Fetched by the gateway, refreshed in the background.
    Url(String),
}

/// The RFC 9728 document an `mcpAuthentication` route publishes.
#[derive(Debug, Clone, Default)]
pub struct ResourceMetadata {
    /// The resource identifier clients ask tokens for (RFC 8707), an absolute URL.
    pub resource: Option<String>,
    pub authorization_servers: Vec<String>,
    /// Further members, as configured (scopes_supported, bearer_methods_supported, ...).
    pub extra: Map<String, Value>,
}

/// `jwtAuth` or `mcpAuthentication`.
#[derive(Debug)]
pub struct JwtAuth {
    pub mode: Mode,
    pub location: Location,
    pub expect: Expect,
    pub source: JwksSource,
    /// The keys in force (from the file, or the last good fetch).
    pub keys: RefCell<Rc<Vec<Jwk>>>,
    /// Set when a token named an unknown key: the fetcher refreshes early.
    pub refresh_wanted: Cell<bool>,
    pub last_kid_refresh: Cell<Option<Instant>>,
    /// `mcpAuthentication`: answer 401 with the MCP challenge and publish this.
    pub mcp: Option<ResourceMetadata>,
    cache: RefCell<HashMap<String, (Rc<Principal>, u64)>>,
}

impl JwtAuth {
    pub fn new(
        mode: Mode,
        location: Location,
        expect: Expect,
        source: JwksSource,
        keys: Vec<Jwk>,
        mcp: Option<ResourceMetadata>,
    ) -> JwtAuth {
        JwtAuth {
            mode,
            location,
            expect,
            source,
            keys: RefCell::new(Rc::new(keys)),
            refresh_wanted: Cell::new(false),
            last_kid_refresh: Cell::new(None),
            mcp,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// New keys (a JWKS fetch): tokens verified with the old ones are checked again.
    pub fn set_keys(&self, keys: Vec<Jwk>) {
        *self.keys.borrow_mut() = Rc::new(keys);
        self.cache.borrow_mut().clear();
    }

    /// The principal a token stands for, verified once and then remembered until `exp`.
    pub fn principal(
        &self,
        token: &str,
        now: u64,
        mono: Instant,
    ) -> Result<Rc<Principal>, JwtError> {
        if let Some((p, exp)) = self.cache.borrow().get(token) {
            if now <= exp.saturating_add(jwt::LEEWAY_SECS) {
                return Ok(Rc::clone(p));
            }
        }
        let keys = Rc::clone(&self.keys.borrow());
        let v = match jwt::verify(token, &keys, &self.expect, now) {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, JwtError::UnknownKey | JwtError::NoKeys)
                    && matches!(self.source, JwksSource::Url(_))
                    && self
                        .last_kid_refresh
                        .get()
                        .is_none_or(|t| mono.duration_since(t) >= KID_REFRESH_MIN)
                {
                    self.last_kid_refresh.set(Some(mono));
                    self.refresh_wanted.set(true);
                }
                self.cache.borrow_mut().remove(token);
                return Err(e);
            }
        };
        // The subject; a machine client's token may name only its client.
        let name = ["sub", "client_id", "azp"]
            .iter()
            .find_map(|c| v.claims.get(*c).and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let p = Rc::new(Principal::new(
            "jwt",
            name,
            Some(Value::Object(v.claims)),
            None,
        ));
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (_, exp)| now <= exp.saturating_add(jwt::LEEWAY_SECS));
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (Rc::clone(&p), v.exp));
        Ok(p)
    }
}

/// The `WWW-Authenticate` value of a JWT policy's 401: `Bearer`, with the MCP resource's
/// metadata URL and scopes for `mcpAuthentication`, and `error` when a token was refused.
fn challenge(j: &JwtAuth, v: &Visitor<'_>, error: Option<&str>) -> String {
    let mut params = Vec::new();
    if let Some(url) = j.mcp.as_ref().and_then(|_| (v.metadata_url)()) {
        params.push(format!("resource_metadata=\"{url}\""));
    }
    let scopes = (j.mcp.as_ref())
        .and_then(|m| m.extra.get("scopes_supported"))
        .and_then(Value::as_array);
    if let Some(scope) = scopes {
        let s: Vec<&str> = scope.iter().filter_map(Value::as_str).collect();
        if !s.is_empty() {
            params.push(format!("scope=\"{}\"", s.join(" ")));
        }
    }
    if let Some(e) = error {
        params.push(format!("error=\"{e}\""));
    }
    match params.is_empty() {
        true => "Bearer".into(),
        false => format!("Bearer {}", params.join(", ")),
    }
}

/// A route's front-door policies.
#[derive(Debug, Default)]
pub struct Door {
    pub api_key: Option<ApiKeys>,
    pub jwt: Option<Rc<JwtAuth>>,
    pub rate: Vec<RateLimit>,
    pub rules: Option<RuleSet>,
}

/// Why a request is turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no or a bad credential. `challenge` is the `WWW-Authenticate` value.
    Unauthorized { reason: String, challenge: String },
    /// 429 with `Retry-After` seconds.
    Limited { retry_after: u64, limit: u64 },
}

/// What a request brings to the door.
pub struct Visitor<'a> {
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    /// The principal a verified client certificate names (mutual TLS).
    pub cert: Option<&'a Rc<Principal>>,
    /// Where the protected-resource metadata of this route is, for a challenge (made only
    /// when one is sent).
    pub metadata_url: &'a dyn Fn() -> Option<String>,
}

impl Door {
    /// Authenticates and rate-limits a request: its principal (None: anonymous, allowed by
    /// the modes in force), or why it is refused.
    pub fn admit(
        &self,
        v: &Visitor<'_>,
        now: u64,
        mono: Instant,
    ) -> Result<Option<Rc<Principal>>, Refusal> {
        let mut who: Option<Rc<Principal>> = None;
        // A strict policy that found no credential of its kind: refused unless another policy
        // authenticated the request.
        let mut missing: Option<Refusal> = None;
        // A presented key no API key matched: with a JWT policy too, the credential may be a
        // token (both read `Authorization: Bearer` by default), so the JWT policy decides.
        let mut unknown_key = false;
        if let Some(k) = &self.api_key {
            match k.location.extract(v.header) {
                Some(presented) => match apikey::find(&k.keys, presented) {
                    Some(key) => who = Some(Rc::clone(&key.principal)),
                    None if k.mode == Mode::Permissive => {}
                    None if self.jwt.is_some() => unknown_key = true,
                    None => {
                        return Err(Refusal::Unauthorized {
                            reason: "invalid API key".into(),
                            challenge: "Bearer".into(),
                        })
                    }
                },
                None if k.mode == Mode::Strict => {
                    missing = Some(Refusal::Unauthorized {
                        reason: "an API key is required".into(),
                        challenge: "Bearer".into(),
                    })
                }
                None => {}
            }
        }
        if let (Some(j), None) = (&self.jwt, &who) {
            let challenge = |error: Option<&str>| challenge(j, v, error);
            match j.location.extract(v.header) {
                Some(token) => match j.principal(token, now, mono) {
                    Ok(p) => who = Some(p),
                    Err(_) if j.mode == Mode::Permissive && !unknown_key => {}
                    Err(e) => {
                        let reason = match unknown_key {
                            true => format!("neither a known API key nor a valid token ({e})"),
                            false => e.to_string(),
                        };
                        return Err(Refusal::Unauthorized {
                            reason,
                            challenge: challenge(Some("invalid_token")),
                        });
                    }
                },
                None if j.mode == Mode::Strict => {
                    missing = Some(Refusal::Unauthorized {
                        reason: "a bearer token is required".into(),
                        challenge: challenge(None),
                    })
                }
                None => {}
            }
        }
        if let (None, Some(refusal)) = (&who, missing) {
            return Err(refusal);
        }
        let who = who.or_else(|| v.cert.cloned());
        let key = who.as_ref().map_or("", |p| &**p.key());
        for limit in &self.rate {
            if let Err(retry_after) = limit.take(key, mono) {
                return Err(Refusal::Limited {
                    retry_after,
                    limit: limit.max_tokens,
                });
            }
        }
        Ok(who)
    }
}

/// Whether `rules` let `principal` use the tool, prompt or resource `kind` (`tool`,
/// `prompt`, `resource`) named `name` on `target`.
pub fn permits(
    rules: &RuleSet,
    principal: Option<&Principal>,
    kind: &str,
    name: &str,
    target: &str,
) -> bool {
    let mut item = json!({"name": name, "target": target});
    if kind == "resource" {
        item["uri"] = json!(name);
    }
    let mcp = json!({ kind: item });
    let vars = Vars {
        mcp: Some(&mcp),
        jwt: principal.and_then(|p| p.jwt.as_ref()),
        api_key: principal.and_then(|p| p.api_key.as_ref()),
    };
    rules.permits(&vars)
}

/// The protected-resource metadata document (RFC 9728) of an `mcpAuthentication` route.
/// `resource` is the configured one, else the URL the client used.
pub fn metadata_document(m: &ResourceMetadata, fallback_resource: &str) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "resource".into(),
        json!(m.resource.as_deref().unwrap_or(fallback_resource)),
    );
    doc.insert(
        "authorization_servers".into(),
        json!(m.authorization_servers),
    );
    for (k, v) in &m.extra {
        doc.insert(k.clone(), v.clone());
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(d: &Door, list: &[(&str, &str)], now: Instant) -> Result<Option<String>, Refusal> {
        let header = |name: &str| {
            list.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let v = Visitor {
            header: &header,
            cert: None,
            metadata_url: &|| None,
        };
        d.admit(&v, 0, now).map(|p| p.map(|p| p.name.clone()))
    }

    fn door(mode: Mode) -> Door {
        Door {
            api_key: Some(ApiKeys {
                keys: vec![ApiKey {
                    digest: apikey::sha256(b"secret-a"),
                    principal: Rc::new(Principal::new(
                        "apiKey",
                        "alice".into(),
                        None,
                        Some(json!({"team": "dev"})),
                    )),
                }],
                mode,
                location: Location::default(),
            }),
            ..Door::default()
        }
    }

    #[test]
    fn api_key_modes() {
        let now = Instant::now();
        let good = [("Authorization", "bearer secret-a")];
        let bad = [("Authorization", "Bearer secret-b")];
        let strict = door(Mode::Strict);
        assert_eq!(admit(&strict, &good, now), Ok(Some("alice".into())));
        assert!(admit(&strict, &bad, now).is_err());
        assert!(admit(&strict, &[], now).is_err());
        let optional = door(Mode::Optional);
        assert_eq!(admit(&optional, &[], now), Ok(None));
        assert!(admit(&optional, &bad, now).is_err());
        let permissive = door(Mode::Permissive);
        assert_eq!(admit(&permissive, &bad, now), Ok(None));
    }

    #[test]
    fn api_key_and_jwt_together() {
        let now = Instant::now();
        let mut d = door(Mode::Strict);
        d.jwt = Some(Rc::new(JwtAuth::new(
            Mode::Optional,
            Location::default(),
            Expect::default(),
            JwksSource::Inline,
            Vec::new(),
            None,
        )));
        // The strict key policy still refuses a request with no credential at all.
        assert!(admit(&d, &[], now).is_err());
        assert_eq!(
            admit(&d, &[("Authorization", "Bearer secret-a")], now),
            Ok(Some("alice".into()))
        );
        // A bearer credential that is no key goes to the JWT policy, which refuses it.
        match admit(&d, &[("Authorization", "Bearer not-a-key")], now) {
            Err(Refusal::Unauthorized { reason, challenge }) => {
                assert!(reason.contains("neither"), "{reason}");
                assert!(challenge.contains("invalid_token"), "{challenge}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limits_are_per_principal() {
        let mut d = door(Mode::Optional);
        d.rate.push(RateLimit::new(1, 1, Duration::from_secs(60)));
        let now = Instant::now();
        let alice = [("Authorization", "Bearer secret-a")];
        assert!(admit(&d, &alice, now).is_ok());
        assert!(matches!(
            admit(&d, &alice, now),
            Err(Refusal::Limited {
                retry_after: 60,
                ..
            })
        ));
        assert!(
            admit(&d, &[], now).is_ok(),
            "the anonymous bucket is another one"
        );
    }
}
