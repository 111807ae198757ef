//! The gateway's own HTTP GETs: the JWKS documents `jwtAuth` / `mcpAuthentication` name by
//! URL. Each is fetched when a config loads, again every `REFRESH`, sooner when a token names
//! a key the set lacks (rotation), and retried with a backoff after a failure; the keys in
//! force stay until a good document replaces them. A GET is a non-blocking request driven by
//! readiness in the loop, like an upstream link's; the address was resolved at load time.

use super::Registrar;
use crate::auth::jwt::parse_jwks;
use crate::auth::JwtAuth;
use crate::config::{Jwks, JwksTls, Url};
use crate::http::client::{parse_response_head, write_request, BodyDecoder, ResponseHead};
use crate::http::Status;
use crate::transport::{Io, Transport};
use crate::{log, warn};
use mio::{Interest, Token};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A good JWKS is fetched again after this.
pub const REFRESH: Duration = Duration::from_secs(300);
/// A GET that takes longer is abandoned.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after failures wait 1 s, 2 s, 4 s ... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A JWKS document larger than this is refused.
const MAX_BODY: usize = 1024 * 1024;
const MAX_HEAD: usize = 16 * 1024;

struct Get {
    t: Transport,
    token: Token,
    out: Vec<u8>,
    wpos: usize,
    raw: Vec<u8>,
    head: Option<(ResponseHead, BodyDecoder)>,
    body: Vec<u8>,
    deadline: Instant,
}

struct Job {
    auth: Rc<JwtAuth>,
    url: Url,
    tls: Option<JwksTls>,
    due: Instant,
    failures: u32,
    get: Option<Get>,
    /// Next address to try (several when the name resolved to more than one).
    next_addr: usize,
}

#[derive(Default)]
pub struct Fetcher {
    jobs: Vec<Job>,
}

impl Fetcher {
    /// The JWKS URLs of a (re)loaded config: every one is fetched now; fetches under way for
    /// the config it replaces are dropped.
    pub fn configure(&mut self, list: &[Jwks], reg: &mut dyn Registrar, now: Instant) {
        // A reloaded config's policy starts with the keys its URL served so far, so tokens
        // keep working while the fresh fetch is under way.
        for j in list {
            let old = self.jobs.iter().find(|o| shown(&o.url) == shown(&j.url));
            if let Some(o) = old.filter(|_| j.auth.keys.borrow().is_empty()) {
                let keys = (**o.auth.keys.borrow()).clone();
                j.auth.set_keys(keys);
            }
        }
        for j in self.jobs.drain(..) {
            if let Some(mut g) = j.get {
                reg.deregister(&mut g.t.sock, g.token);
            }
        }
        self.jobs = list
            .iter()
            .map(|j| Job {
                auth: Rc::clone(&j.auth),
                url: j.url.clone(),
                tls: j.tls.clone(),
                due: now,
                failures: 0,
                get: None,
                next_addr: 0,
            })
            .collect();
        self.tick(now, reg);
    }

    /// Starts the fetches that are due (or asked for by an unknown key), abandons slow ones.
    pub fn tick(&mut self, now: Instant, reg: &mut dyn Registrar) {
        for j in &mut self.jobs {
            if let Some(g) = &j.get {
                if now >= g.deadline {
                    let why = "timed out".to_string();
                    fail(j, reg, now, &why);
                }
                continue;
            }
            if j.auth.refresh_wanted.replace(false) || now >= j.due {
                if let Err(why) = start(j, reg, now) {
                    fail(j, reg, now, &why);
                }
            }
        }
    }

    /// Whether `token` is one of the fetches' sockets.
    pub fn owns(&self, token: Token) -> bool {
        self.jobs
            .iter()
            .any(|j| j.get.as_ref().is_some_and(|g| g.token == token))
    }

    /// Readiness on a fetch's socket: moves its request and response along.
    pub fn ready(&mut self, token: Token, reg: &mut dyn Registrar, now: Instant) {
        let Some(j) = self
            .jobs
            .iter_mut()
            .find(|j| j.get.as_ref().is_some_and(|g| g.token == token))
        else {
            return;
        };
        match advance(j) {
            Ok(None) => {}
            Ok(Some(body)) => {
                let text = String::from_utf8_lossy(&body);
                match parse_jwks(&text) {
                    Ok(keys) => {
                        let n = keys.len();
                        let changed = **j.auth.keys.borrow() != keys;
                        j.auth.set_keys(keys);
                        if changed {
                            log!("JWKS {}: {n} key(s) loaded", shown(&j.url));
                        }
                        if let Some(mut g) = j.get.take() {
                            reg.deregister(&mut g.t.sock, g.token);
                        }
                        j.failures = 0;
                        j.due = now + REFRESH;
                    }
                    Err(why) => fail(j, reg, now, &format!("not a usable JWKS: {why}")),
                }
            }
            Err(why) => fail(j, reg, now, &why),
        }
    }
}

/// The URL as logs show it (no query: it may carry a key).
fn shown(u: &Url) -> String {
    let path = u.path.split('?').next().unwrap_or("");
    format!(
        "{}://{}{path}",
        if u.https { "https" } else { "http" },
        u.authority()
    )
}

fn fail(j: &mut Job, reg: &mut dyn Registrar, now: Instant, why: &str) {
    if let Some(mut g) = j.get.take() {
        reg.deregister(&mut g.t.sock, g.token);
    }
    j.failures = j.failures.saturating_add(1);
    j.next_addr += 1;
    let backoff = Duration::from_secs(1u64 << j.failures.min(6)).min(MAX_BACKOFF);
    j.due = now + backoff;
    let kept = j.auth.keys.borrow().len();
    warn!(
        "JWKS {}: {why}; {kept} key(s) kept; retry in {} s",
        shown(&j.url),
        backoff.as_secs()
    );
}

fn start(j: &mut Job, reg: &mut dyn Registrar, now: Instant) -> Result<(), String> {
    let addr = *j
        .url
        .addrs
        .get(j.next_addr % j.url.addrs.len().max(1))
        .ok_or("the host has no address")?;
    let mut t = Transport::connect(addr).map_err(|e| format!("connect: {e}"))?;
    if j.url.https {
        // Made at load time for every https URL.
        let (cfg, name) = j
            .tls
            .clone()
            .ok_or("no TLS configuration for an https URL")?;
        t.start_tls(cfg, name)?;
    }
    let token = reg
        .register(&mut t.sock, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("register: {e}"))?;
    let mut out = Vec::new();
    let headers = [("Accept", "application/json"), ("Connection", "close")];
    write_request(
        &mut out,
        "GET",
        &j.url.path,
        &j.url.authority(),
        &headers,
        b"",
    );
    j.get = Some(Get {
        t,
        token,
        out,
        wpos: 0,
        raw: Vec::new(),
        head: None,
        body: Vec::new(),
        deadline: now + GET_TIMEOUT,
    });
    Ok(())
}

/// Writes what is pending, reads what arrived. Ok(Some(body)): the whole 200 response.
fn advance(j: &mut Job) -> Result<Option<Vec<u8>>, String> {
    let Some(g) = j.get.as_mut() else {
        return Ok(None);
    };
    if !g.t.check_connected()? {
        return Ok(None);
    }
    match err_only(g.t.write(&g.out, &mut g.wpos)) {
        Io::Error(e) => return Err(format!("send: {e}")),
        Io::Closed => return Err("send: connection closed".into()),
        _ => {}
    }
    loop {
        let got = g.t.read(&mut g.raw, MAX_HEAD + MAX_BODY, false);
        if g.head.is_none() {
            match parse_response_head(&g.raw, MAX_HEAD) {
                Ok(Status::Complete(head, n)) => {
                    if head.status != 200 {
                        return Err(format!("HTTP {}", head.status));
                    }
                    let dec = BodyDecoder::for_response(&head, "GET").map_err(|e| e.to_string())?;
                    g.raw.drain(..n);
                    g.head = Some((head, dec));
                }
                Ok(Status::Partial) => {}
                Err(e) => return Err(format!("bad response: {e}")),
            }
        }
        if let Some((_, dec)) = g.head.as_mut() {
            let (used, done) = dec.feed(&g.raw, &mut g.body).map_err(|e| e.to_string())?;
            g.raw.drain(..used);
            if g.body.len() > MAX_BODY {
                return Err(format!("the document is over {MAX_BODY} bytes"));
            }
            if done {
                return Ok(Some(std::mem::take(&mut g.body)));
            }
        }
        match got {
            Io::More => continue,
            Io::WouldBlock => return Ok(None),
            Io::Closed => {
                return match &g.head {
                    Some((_, dec)) if dec.complete_at_eof() => {
                        Ok(Some(std::mem::take(&mut g.body)))
                    }
                    _ => Err("connection closed before the whole response".into()),
                }
            }
            Io::Error(e) => return Err(e),
        }
    }
}

/// A write's outcome, with "wrote what it could" folded into `WouldBlock`.
fn err_only(io: Io) -> Io {
    match io {
        Io::More => Io::WouldBlock,
        other => other,
    }
}
