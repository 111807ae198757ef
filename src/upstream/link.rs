//! The links the loop holds, by id: each a stdio child or an HTTP session, with its lifecycle.
//!
//! A link is opened, fed readiness and deadlines, sent messages and closed; what it reports
//! comes back as [`LinkEvent`]s for the relay. It never learns who it serves: that is the
//! relay's table (link -> holder), so one link can later serve many stateless requests.

use super::http::{Flavor, HttpTarget};
use super::stdio::{ReadOutcome, StdioChild};
use super::{LinkEvent, LinkId, Registrar};
use crate::config::{BackendTls, RoutePolicy, Target, TargetKind, Url};
use crate::idmap::IdMap;
use crate::jsonrpc;
use crate::tls::{self, TlsOptions};
use mio::event::Source;
use mio::{Interest, Token};
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A child whose stdin was closed gets this long to exit before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(2);
/// A closed HTTP link gets this long to DELETE its upstream session.
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// The loop's side of registration: sources are registered on behalf of one link, whose id
/// the loop stores with each token so readiness comes back to [`Links::ready`].
/// Whom a link serves: the client's `credential` (for passthrough), many stateless clients at
/// once (`shared`), one principal alone (`principal`, its `Principal::tag`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkUse<'a> {
    pub credential: Option<&'a str>,
    pub shared: bool,
    pub principal: Option<&'a str>,
}

pub trait LinkRegistry {
    fn register(
        &mut self,
        link: LinkId,
        src: &mut dyn Source,
        interest: Interest,
    ) -> io::Result<Token>;
    fn reregister(
        &mut self,
        src: &mut dyn Source,
        token: Token,
        interest: Interest,
    ) -> io::Result<()>;
    fn deregister(&mut self, src: &mut dyn Source, token: Token);
}

/// A [`Registrar`] for one link's transport.
struct ForLink<'a> {
    reg: &'a mut dyn LinkRegistry,
    link: LinkId,
}

impl Registrar for ForLink<'_> {
    fn register(&mut self, src: &mut dyn Source, interest: Interest) -> io::Result<Token> {
        self.reg.register(self.link, src, interest)
    }
    fn reregister(
        &mut self,
        src: &mut dyn Source,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.reg.reregister(src, token, interest)
    }
    fn deregister(&mut self, src: &mut dyn Source, token: Token) {
        self.reg.deregister(src, token)
    }
}

enum Transport {
    /// A child and its stdin, stdout and stderr tokens.
    Stdio(StdioChild, [Token; 3]),
    Http(Box<HttpTarget>),
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Serving its holder; events reach the relay.
    Live,
    /// Told to stop (stdin closed, or its DELETE in flight); dropped by `until` at the latest.
    /// Nothing it reports reaches anyone.
    Closing { until: Instant },
}

struct Link {
    name: String,
    transport: Transport,
    state: Lifecycle,
}

/// Every link, live or closing.
pub struct Links {
    map: IdMap<LinkId, Link>,
    /// Verified TLS settings for https:// upstreams without a backendTLS policy (built once).
    default_tls: Option<Arc<rustls::ClientConfig>>,
    /// Longest stdout line a child may write.
    pub max_line: usize,
    pub request_timeout: Duration,
}

impl Links {
    pub fn new(max_line: usize, request_timeout: Duration) -> Links {
        Links {
            map: IdMap::default(),
            default_tls: None,
            max_line,
            request_timeout,
        }
    }

    /// Opens link `id` to `target` (used as `how` says): spawns a stdio child, or prepares an HTTP session (a
    /// legacy SSE one opens its stream at once) with the route's `policy` for it and the
    /// client's `credential` (for passthrough). `shared`: the link serves many stateless
    /// clients, so an HTTP one may hold more requests open at once. Err: why it could not be
    /// opened.
    pub fn open(
        &mut self,
        id: LinkId,
        target: &Target,
        policy: &RoutePolicy,
        how: LinkUse<'_>,
        reg: &mut dyn LinkRegistry,
    ) -> Result<Vec<LinkEvent>, String> {
        let LinkUse {
            credential,
            shared,
            principal,
        } = how;
        let mut events = Vec::new();
        let transport = match &target.kind {
            TargetKind::Stdio(cfg) => {
                let mut child = StdioChild::spawn(cfg, principal)
                    .map_err(|e| format!("cannot start command {:?}: {e}", cfg.cmd))?;
                match register_pipes(&mut child, id, reg) {
                    Ok(tokens) => Transport::Stdio(child, tokens),
                    Err(e) => {
                        let _ = child.child.kill();
                        let _ = child.child.wait();
                        return Err(format!("cannot watch its pipes: {e}"));
                    }
                }
            }
            TargetKind::Mcp(url) | TargetKind::Sse(url) => {
                let flavor = match target.kind {
                    TargetKind::Sse(_) => Flavor::Legacy,
                    _ => Flavor::Streamable,
                };
                let lp = policy.for_target(target);
                let tls = self.tls_for(url, lp.tls.as_deref())?;
                let timeout = lp.timeout.unwrap_or(self.request_timeout);
                let mut http = HttpTarget::new(&target.name, url, flavor, tls, timeout, &lp);
                http.set_credential(credential);
                if shared {
                    http.max_conns = super::http::SHARED_MAX_CONNS;
                }
                http.start(&mut ForLink { reg, link: id }, &mut events);
                Transport::Http(Box::new(http))
            }
        };
        let link = Link {
            name: target.name.clone(),
            transport,
            state: Lifecycle::Live,
        };
        self.map.insert(id, link);
        Ok(events)
    }

    /// The TLS client settings for an upstream URL: the route's backendTLS policy, else the
    /// default verified configuration for https:// URLs, else none.
    fn tls_for(
        &mut self,
        url: &Url,
        policy: Option<&BackendTls>,
    ) -> Result<Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>, String> {
        let (cfg, opts) = match policy {
            Some(p) => (Arc::clone(&p.config), p.options.clone()),
            None if url.https => {
                let cfg = match &self.default_tls {
                    Some(c) => Arc::clone(c),
                    None => {
                        let c = tls::client_config(&TlsOptions::default())?;
                        self.default_tls = Some(Arc::clone(&c));
                        c
                    }
                };
                (cfg, TlsOptions::default())
            }
            None => return Ok(None),
        };
        Ok(Some((cfg, tls::server_name(&url.host, &opts)?)))
    }

    /// Sends one JSON-RPC message. A request that cannot be sent comes back as
    /// `RequestFailed`; a child that cannot be written to, as `Fatal`.
    /// Sends one message; `headers`: HTTP headers of a 2026-07-28 request (none for stdio,
    /// and for everything a legacy target gets).
    pub fn send(
        &mut self,
        id: LinkId,
        msg: &Value,
        headers: Vec<(String, String)>,
        reg: &mut dyn LinkRegistry,
    ) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        let link = self.map.get_mut(&id).filter(|l| l.state == Lifecycle::Live);
        let failed = match link.map(|l| (&l.name, &mut l.transport)) {
            Some((_, Transport::Stdio(child, _))) => {
                if let Err(e) = child.send_json(msg) {
                    events.push(LinkEvent::Fatal(format!("cannot write to it: {e}")));
                }
                None
            }
            Some((_, Transport::Http(http))) => http
                .send(&mut ForLink { reg, link: id }, msg, headers, &mut events)
                .err(),
            None => Some("target is not running".to_string()),
        };
        // Only a request waits for an answer that must now be failed.
        let request_id = || {
            let uid = msg.get("id").and_then(Value::as_u64);
            uid.filter(|_| msg.get("method").is_some())
        };
        if let Some((why, uid)) = failed.and_then(|why| Some((why, request_id()?))) {
            events.push(LinkEvent::RequestFailed(uid, why.into()));
        }
        events
    }

    /// A passthrough target's link gets the client's new credential (others ignore it).
    pub fn set_credential(&mut self, id: LinkId, credential: Option<&str>) {
        if let Some(Link {
            transport: Transport::Http(http),
            ..
        }) = self.map.get_mut(&id)
        {
            http.set_credential(credential);
        }
    }

    /// Readiness of one of a link's sources; `closed`: the event reported the peer's close.
    pub fn ready(
        &mut self,
        id: LinkId,
        token: Token,
        closed: bool,
        reg: &mut dyn LinkRegistry,
    ) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        let Some(link) = self.map.get_mut(&id) else {
            return events;
        };
        let max_line = self.max_line;
        match &mut link.transport {
            Transport::Http(http) => {
                http.ready(&mut ForLink { reg, link: id }, token, closed, &mut events);
                if link.state != Lifecycle::Live {
                    events.clear();
                    if http.is_done() {
                        self.map.remove(&id);
                    }
                }
            }
            Transport::Stdio(child, tokens) => {
                if token == tokens[0] {
                    if let Err(e) = child.flush() {
                        events.push(LinkEvent::Fatal(format!("cannot write to it: {e}")));
                    }
                } else if token == tokens[1] {
                    read_stdout(child, &link.name, max_line, !closed, &mut events);
                } else if token == tokens[2] {
                    let name = &link.name;
                    let outcome = child.read_stderr(|l| {
                        events.push(LinkEvent::Log(format!(
                            "{name}: {}",
                            String::from_utf8_lossy(l)
                        )))
                    });
                    if outcome == ReadOutcome::Eof {
                        if let Some(mut p) = child.stderr.take() {
                            reg.deregister(&mut p, tokens[2]);
                        }
                    }
                }
            }
        }
        events
    }

    /// Stops waiting for request `uid` on an HTTP link (its connection is closed, or it is
    /// taken out of the queue); a stdio link is told with `notifications/cancelled` instead.
    pub fn abandon(&mut self, id: LinkId, uid: u64, reg: &mut dyn LinkRegistry) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        if let Some(Transport::Http(http)) = self.map.get_mut(&id).map(|l| &mut l.transport) {
            http.abandon(&mut ForLink { reg, link: id }, uid, &mut events);
        }
        events
    }

    /// Closes a link: a child's pipes are let go (its stdin EOF tells it to exit) and it is
    /// killed after a grace period; an HTTP session is DELETEd upstream.
    pub fn close(&mut self, id: LinkId, reg: &mut dyn LinkRegistry) {
        let Some(link) = self.map.get_mut(&id) else {
            return;
        };
        if link.state != Lifecycle::Live {
            return;
        }
        let now = Instant::now();
        match &mut link.transport {
            Transport::Http(http) => {
                http.shutdown(&mut ForLink { reg, link: id });
                if http.is_done() {
                    self.map.remove(&id);
                    return;
                }
                link.state = Lifecycle::Closing {
                    until: now + RETIRE_GRACE,
                };
            }
            Transport::Stdio(child, tokens) => {
                if let Some(mut p) = child.stdin.take() {
                    reg.deregister(&mut p, tokens[0]);
                }
                if let Some(mut p) = child.stdout.take() {
                    reg.deregister(&mut p, tokens[1]);
                }
                if let Some(mut p) = child.stderr.take() {
                    reg.deregister(&mut p, tokens[2]);
                }
                if !matches!(child.child.try_wait(), Ok(None)) {
                    self.map.remove(&id);
                    return;
                }
                link.state = Lifecycle::Closing {
                    until: now + CHILD_GRACE,
                };
            }
        }
    }

    /// Reaps exited children. A live link whose child exited reports what was still in its
    /// stdout pipe and then `Fatal`; closing ones are forgotten, or killed once their grace
    /// period is over.
    pub fn reap(&mut self, now: Instant) -> Vec<(LinkId, LinkEvent)> {
        let mut out = Vec::new();
        let max_line = self.max_line;
        self.map.retain(|&id, link| {
            let Transport::Stdio(child, _) = &mut link.transport else {
                return true;
            };
            match (link.state, child.child.try_wait()) {
                (Lifecycle::Closing { .. }, Ok(Some(_)) | Err(_)) => false,
                (Lifecycle::Closing { until }, Ok(None)) => {
                    if now >= until {
                        let _ = child.child.kill();
                    }
                    true
                }
                (Lifecycle::Live, Ok(Some(status))) => {
                    // Answers written just before exiting may still sit in the pipe: read
                    // them first, so only requests that really lost their answer fail.
                    let mut events = Vec::new();
                    read_stdout(child, &link.name, max_line, false, &mut events);
                    events.push(LinkEvent::Fatal(format!("exited ({status})")));
                    out.extend(events.into_iter().map(|e| (id, e)));
                    true
                }
                (Lifecycle::Live, _) => true,
            }
        });
        out
    }

    /// Deadlines of HTTP links (connects, responses, idle connections, stream retries) and of
    /// closing ones.
    pub fn tick(&mut self, now: Instant, reg: &mut dyn LinkRegistry) -> Vec<(LinkId, LinkEvent)> {
        let mut out = Vec::new();
        let mut done = Vec::new();
        for (&id, link) in self.map.iter_mut() {
            let Transport::Http(http) = &mut link.transport else {
                continue;
            };
            let mut r = ForLink { reg, link: id };
            let mut events = Vec::new();
            http.tick(&mut r, now, &mut events);
            match link.state {
                Lifecycle::Live => out.extend(events.into_iter().map(|e| (id, e))),
                Lifecycle::Closing { until } => {
                    if until <= now {
                        http.abort(&mut r);
                    }
                    if http.is_done() {
                        done.push(id);
                    }
                }
            }
        }
        for id in done {
            self.map.remove(&id);
        }
        out
    }

    /// Whether children are still exiting or HTTP sessions still being DELETEd.
    pub fn closing(&self) -> bool {
        self.map.values().any(|l| l.state != Lifecycle::Live)
    }

    /// How many children are running (live or exiting) and how many HTTP connections live
    /// links hold.
    pub fn counts(&self) -> (usize, usize) {
        let (mut children, mut conns) = (0, 0);
        for l in self.map.values() {
            match &l.transport {
                Transport::Stdio(..) => children += 1,
                Transport::Http(h) if l.state == Lifecycle::Live => conns += h.tokens().len(),
                Transport::Http(_) => {}
            }
        }
        (children, conns)
    }

    /// Forgets closing links that are done and reports whether any are left.
    pub fn settle_closing(&mut self) -> bool {
        self.map.retain(|_, l| match &mut l.transport {
            Transport::Stdio(child, _) if l.state != Lifecycle::Live => {
                matches!(child.child.try_wait(), Ok(None))
            }
            Transport::Http(h) if l.state != Lifecycle::Live => !h.is_done(),
            _ => true,
        });
        self.closing()
    }

    /// Kills and reaps every child that is left (the end of a shutdown).
    pub fn kill_all(&mut self) {
        for (_, mut l) in self.map.drain() {
            if let Transport::Stdio(child, _) = &mut l.transport {
                let _ = child.child.kill();
                let _ = child.child.wait();
            }
        }
    }

    pub fn shrink(&mut self) {
        if self.map.capacity() > 256 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
    }
}

fn register_pipes(
    child: &mut StdioChild,
    id: LinkId,
    reg: &mut dyn LinkRegistry,
) -> io::Result<[Token; 3]> {
    let mut tokens = [Token(usize::MAX); 3];
    if let Some(p) = child.stdin.as_mut() {
        tokens[0] = reg.register(id, p, Interest::WRITABLE)?;
    }
    if let Some(p) = child.stdout.as_mut() {
        tokens[1] = reg.register(id, p, Interest::READABLE)?;
    }
    if let Some(p) = child.stderr.as_mut() {
        tokens[2] = reg.register(id, p, Interest::READABLE)?;
    }
    Ok(tokens)
}

/// Reads a child's stdout: each line becomes an event (an answer kept as text when it is a
/// plain success answer), then EOF or an over-long line is `Fatal`.
fn read_stdout(
    child: &mut StdioChild,
    name: &str,
    max_line: usize,
    short_read_drains: bool,
    events: &mut Vec<LinkEvent>,
) {
    let outcome = child.read_stdout(max_line, short_read_drains, |l| {
        events.push(line_event(name, l))
    });
    match outcome {
        ReadOutcome::Open => {}
        ReadOutcome::Eof => events.push(LinkEvent::Fatal("closed its stdout (exited)".into())),
        ReadOutcome::LineTooLong => events.push(LinkEvent::Fatal(format!(
            "wrote a line over {max_line} bytes"
        ))),
    }
}

/// One stdout line of a child as an event.
fn line_event(name: &str, line: &[u8]) -> LinkEvent {
    if let Some(a) = jsonrpc::raw_answer(line) {
        return LinkEvent::Answer(a.id, a.result.to_owned());
    }
    match serde_json::from_slice(line) {
        Ok(msg) => LinkEvent::Message(msg),
        Err(_) => LinkEvent::Log(format!(
            "{name}: ignored a stdout line that is not JSON: {}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_lines_become_events() {
        match line_event("t", br#"{"jsonrpc":"2.0","id":7,"result":{"ok":true}}"#) {
            LinkEvent::Answer(7, r) => assert_eq!(r.get(), r#"{"ok":true}"#),
            e => panic!("{e:?}"),
        }
        match line_event(
            "t",
            br#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"x"}}"#,
        ) {
            LinkEvent::Message(m) => assert_eq!(m["error"]["code"], 1),
            e => panic!("{e:?}"),
        }
        match line_event("t", b"hello") {
            LinkEvent::Log(l) => assert!(l.contains("not JSON: hello"), "{l}"),
            e => panic!("{e:?}"),
        }
    }
}
