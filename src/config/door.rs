//! The front-door route policies: `apiKey`, `jwtAuth`, `mcpAuthentication`,
//! `mcpAuthorization` and `localRateLimit`, read into an [`auth::Door`].

use super::{join, secret, Checker, Jwks, Obj, Url};
use crate::auth::apikey::{parse_key_hash, sha256, ApiKey};
use crate::auth::jwt::{parse_jwks, Expect, Jwk};
use crate::auth::ratelimit::RateLimit;
use crate::auth::rules::{Rule, RuleSet};
use crate::auth::{
    ApiKeys, Door, JwksSource, JwtAuth, Location, Mode, Principal, ResourceMetadata,
};
use crate::tls::TlsOptions;
use serde_yaml::Value;
use std::rc::Rc;

/// A JWKS URL to fetch, resolved, with the TLS to fetch it over.
type Fetch = (Url, Option<super::JwksTls>);

impl Checker {
    /// Reads the front-door policies out of a route's `policies`; None when it has none.
    pub(super) fn door(&mut self, o: &mut Obj<'_>) -> Option<Rc<Door>> {
        let path = o.path.clone();
        let mut door = Door::default();
        let mut any = false;
        if let Some(v) = self.get(o, "apiKey") {
            door.api_key = self.api_keys(v, &join(&path, "apiKey"));
            any = true;
        }
        let jwt = self.get(o, "jwtAuth");
        let mcp = self.get(o, "mcpAuthentication");
        if jwt.is_some() && mcp.is_some() {
            self.err(&path, "give one of `jwtAuth` and `mcpAuthentication`");
        }
        let parsed = match (jwt, mcp) {
            (Some(v), _) => self.jwt_auth(v, &join(&path, "jwtAuth"), false),
            (None, Some(v)) => self.jwt_auth(v, &join(&path, "mcpAuthentication"), true),
            (None, None) => None,
        };
        any |= jwt.is_some() || mcp.is_some();
        if let Some((auth, fetch)) = parsed {
            let auth = Rc::new(auth);
            if let Some((url, tls)) = fetch {
                self.jwks.push(Jwks {
                    auth: Rc::clone(&auth),
                    url,
                    tls,
                });
            }
            door.jwt = Some(auth);
        }
        if let Some(v) = self.get(o, "mcpAuthorization") {
            door.rules = self.rule_set(v, &join(&path, "mcpAuthorization"));
            any = true;
        }
        if let Some(v) = self.get(o, "localRateLimit") {
            door.rate = self.rate_limits(v, &join(&path, "localRateLimit"));
            any = true;
        }
        any.then(|| Rc::new(door))
    }

    fn mode(&mut self, o: &mut Obj<'_>, default: Mode) -> Mode {
        let path = join(&o.path, "mode");
        match self.string(o, "mode").as_deref() {
            None => default,
            Some(m) if m.eq_ignore_ascii_case("strict") => Mode::Strict,
            Some(m) if m.eq_ignore_ascii_case("optional") => Mode::Optional,
            Some(m) if m.eq_ignore_ascii_case("permissive") => Mode::Permissive,
            Some(m) => {
                self.err(
                    &path,
                    format!("{m:?}: expected strict, optional or permissive"),
                );
                default
            }
        }
    }

    fn location(&mut self, o: &mut Obj<'_>) -> Location {
        let path = join(&o.path, "location");
        match self.get(o, "location") {
            None => Location::default(),
            Some(l) => match self.auth_location(l, &path) {
                Some((header, prefix)) => Location {
                    header: header.to_ascii_lowercase(),
                    prefix,
                },
                None => Location::default(),
            },
        }
    }

    /// `apiKey: {keys: [{key | keyHash, metadata, name}], mode, location}`.
    fn api_keys(&mut self, v: &Value, path: &str) -> Option<ApiKeys> {
        let mut o = self.obj(v, path)?;
        let mode = self.mode(&mut o, Mode::Optional);
        let location = self.location(&mut o);
        let mut keys = Vec::new();
        for (kpath, k) in self.seq(&mut o, "keys") {
            let Some(mut ko) = self.obj(k, &kpath) else {
                continue;
            };
            let digest = match (self.get(&mut ko, "key"), self.get(&mut ko, "keyHash")) {
                (Some(_), Some(_)) => {
                    self.err(&kpath, "give one of `key` and `keyHash`");
                    None
                }
                (Some(secret_value), None) => match secret(secret_value) {
                    Ok(raw) if raw.is_empty() => {
                        self.err(&join(&kpath, "key"), "an empty key");
                        None
                    }
                    Ok(raw) => Some(sha256(&raw)),
                    Err(why) => {
                        self.err(&join(&kpath, "key"), why);
                        None
                    }
                },
                (None, Some(Value::String(h))) => match parse_key_hash(h) {
                    Some(d) => Some(d),
                    None => {
                        self.err(&join(&kpath, "keyHash"), "expected sha256:<64 hex digits>");
                        None
                    }
                },
                (None, Some(_)) => {
                    self.err(&join(&kpath, "keyHash"), "expected a string");
                    None
                }
                (None, None) => {
                    self.err(&kpath, "missing `key` (or `keyHash`)");
                    None
                }
            };
            let metadata = self
                .get(&mut ko, "metadata")
                .map(|m| serde_json::to_value(m).unwrap_or_default())
                .unwrap_or(serde_json::Value::Object(Default::default()));
            let name = self.string(&mut ko, "name");
            self.unsupported(&mut ko, "allowedModels");
            self.finish(ko);
            // The principal: `name`, else the metadata's `name`, `user` or `sub`, else the
            // key's position.
            let name = name
                .or_else(|| {
                    ["name", "user", "sub"].iter().find_map(|f| {
                        metadata
                            .get(*f)
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                    })
                })
                .unwrap_or_else(|| format!("key{}", keys.len() + 1));
            if let Some(digest) = digest {
                if keys.iter().any(|k: &ApiKey| k.digest == digest) {
                    self.err(&kpath, "the same key twice");
                }
                let principal = Principal::new("apiKey", name, None, Some(metadata));
                keys.push(ApiKey {
                    digest,
                    principal: Rc::new(principal),
                });
            }
        }
        self.finish(o);
        if keys.is_empty() && !self.errors.iter().any(|e| e.path.starts_with(path)) {
            self.err(&join(path, "keys"), "no keys");
        }
        Some(ApiKeys {
            keys,
            mode,
            location,
        })
    }

    /// `jwtAuth: {issuer, audiences, jwks, mode, location}`; `mcpAuthentication` adds
    /// `resourceMetadata` (and defaults to strict).
    fn jwt_auth(&mut self, v: &Value, path: &str, mcp: bool) -> Option<(JwtAuth, Option<Fetch>)> {
        let mut o = self.obj(v, path)?;
        let mode = self.mode(&mut o, if mcp { Mode::Strict } else { Mode::Optional });
        let location = self.location(&mut o);
        let issuer = self.required_string(&mut o, "issuer");
        let audiences = self.strings(&mut o, "audiences");
        let jwks = self.get(&mut o, "jwks");
        let jpath = join(path, "jwks");
        let jwks = match jwks {
            Some(j) => self.jwks(j, &jpath),
            None => {
                self.err(
                    &jpath,
                    "missing (JWKS URLs derived from `provider` are not supported yet)",
                );
                None
            }
        };
        let metadata = match mcp {
            true => {
                let rm = self.get(&mut o, "resourceMetadata");
                Some(self.resource_metadata(rm, &join(path, "resourceMetadata"), issuer.as_deref()))
            }
            false => None,
        };
        // MCP authorization: a token must have been issued for this resource (RFC 8707).
        let mut audiences = audiences;
        if let Some(m) = metadata.as_ref().filter(|_| audiences.is_empty()) {
            match &m.resource {
                Some(r) => audiences.push(r.clone()),
                None => self.err(
                    &join(path, "audiences"),
                    "missing: tokens must name this resource as their audience (or set resourceMetadata.resource)",
                ),
            }
        }
        for key in [
            "provider",
            "clientId",
            "clientSecret",
            "providers",
            "jwtValidationOptions",
        ] {
            self.unsupported(&mut o, key);
        }
        self.finish(o);
        let (source, keys, fetch) = jwks?;
        let auth = JwtAuth::new(
            mode,
            location,
            Expect {
                issuer: issuer?,
                audiences,
            },
            source,
            keys,
            metadata,
        );
        Some((auth, fetch))
    }

    /// `jwks: {file: PATH} | {url: URL} | "<inline JWKS JSON>"`.
    fn jwks(&mut self, v: &Value, path: &str) -> Option<(JwksSource, Vec<Jwk>, Option<Fetch>)> {
        let (source, text) = match v {
            Value::String(inline) => (JwksSource::Inline, inline.clone()),
            Value::Mapping(_) => {
                let mut o = self.obj(v, path)?;
                let file = self.string(&mut o, "file");
                let url = self.string(&mut o, "url");
                let tls = match self.get(&mut o, "backendTLS") {
                    Some(t) => self.backend_tls(t, &join(path, "backendTLS")),
                    None => None,
                };
                self.finish(o);
                match (file, url) {
                    (Some(f), None) => match std::fs::read_to_string(&f) {
                        Ok(text) => (JwksSource::File(f), text),
                        Err(e) => {
                            self.err(&join(path, "file"), format!("cannot read {f}: {e}"));
                            return None;
                        }
                    },
                    (None, Some(u)) => {
                        // Resolved now (the loop does no DNS), fetched by the loop once it runs.
                        let url = Url::parse(&u).and_then(|mut url| url.resolve().map(|()| url));
                        return match url {
                            Ok(url) if !url.https => {
                                Some((JwksSource::Url(u), Vec::new(), Some((url, None))))
                            }
                            Ok(url) => {
                                let made = match &tls {
                                    Some(t) => Ok(std::sync::Arc::clone(&t.config)),
                                    None => crate::tls::client_config(&TlsOptions::default()),
                                };
                                let opts =
                                    tls.as_ref().map(|t| t.options.clone()).unwrap_or_default();
                                let name = crate::tls::server_name(&url.host, &opts);
                                match made.and_then(|c| name.map(|n| (c, n))) {
                                    Ok(t) => {
                                        Some((JwksSource::Url(u), Vec::new(), Some((url, Some(t)))))
                                    }
                                    Err(why) => {
                                        self.err(&join(path, "url"), why);
                                        None
                                    }
                                }
                            }
                            Err(why) => {
                                self.err(&join(path, "url"), why);
                                None
                            }
                        };
                    }
                    _ => {
                        self.err(path, "expected one of `file` and `url`");
                        return None;
                    }
                }
            }
            _ => {
                self.err(path, "expected {file: PATH}, {url: URL} or an inline JWKS");
                return None;
            }
        };
        match parse_jwks(&text) {
            Ok(keys) => Some((source, keys, None)),
            Err(why) => {
                self.err(path, why);
                None
            }
        }
    }

    /// `resourceMetadata`: `resource` and the RFC 9728 members in camelCase
    /// (`scopesSupported` -> `scopes_supported`, ...); the issuer is the authorization server.
    fn resource_metadata(
        &mut self,
        v: Option<&Value>,
        path: &str,
        issuer: Option<&str>,
    ) -> ResourceMetadata {
        let mut m = ResourceMetadata {
            authorization_servers: issuer.map(str::to_string).into_iter().collect(),
            ..ResourceMetadata::default()
        };
        let Some(v) = v else {
            return m;
        };
        let Some(mut o) = self.obj(v, path) else {
            return m;
        };
        m.resource = self.string(&mut o, "resource");
        if let Some(r) = &m.resource {
            if Url::parse(r).is_err() {
                self.err(&join(path, "resource"), "expected an absolute http(s) URL");
            }
        }
        for (camel, snake) in METADATA_MEMBERS {
            if let Some(value) = self.get(&mut o, camel) {
                if let Ok(j) = serde_json::to_value(value) {
                    m.extra.insert(snake.to_string(), j);
                }
            }
        }
        self.finish(o);
        m
    }

    /// `mcpAuthorization: {rules: [RULE | {allow: RULE} | {deny: RULE} | {require: RULE}]}`.
    fn rule_set(&mut self, v: &Value, path: &str) -> Option<RuleSet> {
        let mut o = self.obj(v, path)?;
        let mut set = RuleSet::default();
        for (rpath, r) in self.seq(&mut o, "rules") {
            let (text, list, at) = match r {
                Value::String(s) => (s.clone(), &mut set.allow, rpath.clone()),
                Value::Mapping(m) if m.len() == 1 => {
                    let Some((k, val)) = m.iter().next() else {
                        continue;
                    };
                    let Some(text) = val.as_str() else {
                        self.err(&rpath, "a rule is a string");
                        continue;
                    };
                    let list = match k.as_str() {
                        Some("allow") => &mut set.allow,
                        Some("deny") => &mut set.deny,
                        Some("require") => &mut set.require,
                        _ => {
                            self.err(&rpath, "expected allow, deny or require");
                            continue;
                        }
                    };
                    let at = join(&rpath, k.as_str().unwrap_or(""));
                    (text.to_string(), list, at)
                }
                _ => {
                    self.err(
                        &rpath,
                        "expected a rule (a string) or {allow|deny|require: RULE}",
                    );
                    continue;
                }
            };
            match Rule::parse(&text) {
                Ok(rule) => list.push(rule),
                Err(e) => self.err(&at, format!("{e}: {text}")),
            }
        }
        self.finish(o);
        Some(set)
    }

    /// `localRateLimit: [{maxTokens, tokensPerFill, fillInterval, type: requests}]`.
    fn rate_limits(&mut self, v: &Value, path: &str) -> Vec<RateLimit> {
        let items: Vec<(String, &Value)> = match v {
            Value::Sequence(s) => s
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            Value::Mapping(_) => vec![(path.to_string(), v)],
            _ => {
                self.err(
                    path,
                    "expected a list of {maxTokens, tokensPerFill, fillInterval}",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (lpath, l) in items {
            let Some(mut o) = self.obj(l, &lpath) else {
                continue;
            };
            let max = self.uint(&mut o, "maxTokens");
            let per = self.uint(&mut o, "tokensPerFill");
            let every = self.duration(&mut o, "fillInterval");
            if let Some(t) = self.string(&mut o, "type") {
                if !t.eq_ignore_ascii_case("requests") {
                    self.err(
                        &join(&lpath, "type"),
                        format!("{t:?} is not supported yet (only requests)"),
                    );
                }
            }
            self.finish(o);
            match (max, per, every) {
                (Some(max), Some(per), Some(every)) if max > 0 && per > 0 && !every.is_zero() => {
                    out.push(RateLimit::new(max, per, every))
                }
                (Some(_), Some(_), Some(_)) => self.err(
                    &lpath,
                    "maxTokens, tokensPerFill and fillInterval must be above 0",
                ),
                _ => {
                    for (k, val) in [
                        ("maxTokens", max.is_some()),
                        ("tokensPerFill", per.is_some()),
                        ("fillInterval", every.is_some()),
                    ] {
                        let p = join(&lpath, k);
                        if !val && !self.errors.iter().any(|e| e.path == p) {
                            self.err(&p, "missing");
                        }
                    }
                }
            }
        }
        out
    }
}

/// The RFC 9728 members `resourceMetadata` may set, as agentgateway spells them and as the
/// document names them.
const METADATA_MEMBERS: [(&str, &str); 10] = [
    ("resourceName", "resource_name"),
    ("scopesSupported", "scopes_supported"),
    ("bearerMethodsSupported", "bearer_methods_supported"),
    ("resourceDocumentation", "resource_documentation"),
    ("resourcePolicyUri", "resource_policy_uri"),
    ("resourceTosUri", "resource_tos_uri"),
    ("jwksUri", "jwks_uri"),
    (
        "resourceSigningAlgValuesSupported",
        "resource_signing_alg_values_supported",
    ),
    (
        "tlsClientCertificateBoundAccessTokens",
        "tls_client_certificate_bound_access_tokens",
    ),
    (
        "dpopBoundAccessTokensRequired",
        "dpop_bound_access_tokens_required",
    ),
];
