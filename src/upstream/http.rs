//! An HTTP link (one upstream session): streamable HTTP (`mcp:`) or legacy HTTP+SSE (`sse:`).
//!
//! HTTP/1.1 carries one request at a time per connection and a response may be a long SSE
//! stream, so each target keeps a small pool of connections: a POST takes an idle one or opens
//! a new one (up to [`MAX_CONNS`], beyond that messages wait in a queue), and the GET stream
//! holds one of its own. Everything is non-blocking and driven by the event loop: `send`
//! queues, `ready` handles readiness of one connection, `tick` handles deadlines. What the
//! target says comes back as [`LinkEvent`]s.

use super::{Failure, LinkEvent, Registrar};
use crate::config::{BackendAuth, LinkPolicy, Retry, Url};
use crate::http::client::{parse_response_head, write_request, BodyDecoder, ResponseHead};
use crate::http::{sse, Status};
use crate::idmap::IdMap;
use crate::transport::{Io, Transport};
use mio::{Interest, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections per target and session, the GET stream included.
pub const MAX_CONNS: usize = 8;
/// The same for a link shared by a pool: every stateless client's requests ride on it, and
/// an input round a client never retries holds its POST open until the request times out.
pub const SHARED_MAX_CONNS: usize = 64;
/// Largest response head accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest JSON response body (or SSE event) accepted from an upstream.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
/// A connection attempt (TCP and TLS handshake) must finish within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reconnection delays of the GET stream: doubling from the first to the last.
const STREAM_RETRY_FIRST: Duration = Duration::from_millis(500);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(30);
/// Bytes read from a connection before the input is processed.
const READ_CHUNK: usize = 256 * 1024;
/// How many times one request's SSE stream is resumed after ending early.
const MAX_RESUMES: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MCP streamable HTTP (2025-03-26 and later).
    Streamable,
    /// MCP HTTP+SSE (2024-11-05): GET the stream, POST to the `endpoint` it announces.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A JSON-RPC message POSTed.
    Post,
    /// The GET stream (server-to-client messages; in legacy mode, every message).
    Stream,
    /// Ending the upstream session.
    Delete,
    /// Resuming a POST's SSE stream that ended before its answer (GET with Last-Event-ID).
    Resume,
}

struct Outgoing {
    kind: Kind,
    body: Vec<u8>,
    /// The JSON-RPC id when the body is a request.
    request_id: Option<u64>,
    /// Sent again once after a reused connection turned out to be closed.
    retried: bool,
    /// For `Resume`: the last event id seen, and how many resumptions came before.
    resume: Option<(String, u8)>,
    /// A 2026-07-28 request: the headers the relay made for it (it carries no session).
    modern: Option<Vec<(String, String)>>,
    /// Attempts made before this one (`retry`).
    attempt: u8,
    /// A request that may be sent again after any failure (a list, a read).
    safe: bool,
}

impl Outgoing {
    fn new(kind: Kind, body: Vec<u8>, request_id: Option<u64>) -> Outgoing {
        Outgoing {
            kind,
            body,
            request_id,
            retried: kind != Kind::Post,
            resume: None,
            modern: None,
            attempt: 0,
            safe: false,
        }
    }
}

/// Requests that change nothing upstream, so `retry` may send them again after any failure.
fn safe_to_repeat(method: &str) -> bool {
    method.ends_with("/list")
        || matches!(
            method,
            "resources/read" | "prompts/get" | "server/discover" | "ping"
        )
}

struct Exchange {
    out: Outgoing,
    head: Option<ResponseHead>,
    body: Option<BodyDecoder>,
    /// Decoded body bytes not yet consumed (JSON being collected, or SSE being split).
    data: Vec<u8>,
    sse: bool,
    /// The request's answer arrived on this response.
    answered: bool,
    /// The last SSE event id seen on this response.
    last_event_id: Option<String>,
}

enum State {
    Idle(Instant),
    Busy(Box<Exchange>),
}

struct Conn {
    t: Transport,
    connected: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    state: State,
    /// Carried an earlier exchange (so a close before any answer may just be a stale socket).
    reused: bool,
    /// Connect deadline, then the deadline for the response head.
    deadline: Option<Instant>,
    /// Set once connected and through TLS (the connect deadline no longer applies).
    established: Option<()>,
    /// Registered for writability too (see `HttpTarget::sync_interest`).
    writable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// Not wanted yet (streamable: until the session is initialized).
    Off,
    Open(Token),
    /// Closed or failed; open again at this time.
    RetryAt(Instant),
    /// The upstream has no GET stream (405).
    Unsupported,
}

pub struct HttpTarget {
    name: String,
    url: Url,
    flavor: Flavor,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    conns: IdMap<Token, Conn>,
    queue: VecDeque<Outgoing>,
    session_id: Option<String>,
    protocol_version: Option<String>,
    init_id: Option<u64>,
    /// Where POSTs go: the URL's path, or (legacy) the announced endpoint.
    post_path: Option<String>,
    stream: StreamState,
    stream_delay: Duration,
    last_event_id: Option<String>,
    request_timeout: Duration,
    next_addr: usize,
    /// Shutting down: no new work, only the DELETE in flight.
    closing: bool,
    /// At most this many connections at once ([`MAX_CONNS`] unless shared).
    pub max_conns: usize,
    /// Headers every request carries (`requestHeaderModifier`, a `backendAuth` key).
    headers: Vec<(String, String)>,
    /// `backendAuth: passthrough`: where a client's credential goes, and the header made of
    /// the latest one.
    passthrough: Option<BackendAuth>,
    credential: Option<(String, String)>,
    retry: Option<Retry>,
    /// Requests waiting for their next attempt.
    delayed: Vec<(Instant, Outgoing)>,
}

impl HttpTarget {
    pub fn new(
        name: &str,
        url: &Url,
        flavor: Flavor,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
        request_timeout: Duration,
        policy: &LinkPolicy,
    ) -> HttpTarget {
        HttpTarget {
            headers: policy.headers.clone(),
            passthrough: policy.passthrough.clone(),
            credential: None,
            retry: policy.retry.clone().filter(|r| r.attempts > 1),
            delayed: Vec::new(),
            name: name.to_string(),
            url: url.clone(),
            flavor,
            tls,
            conns: IdMap::default(),
            queue: VecDeque::new(),
            session_id: None,
            protocol_version: None,
            init_id: None,
            post_path: (flavor == Flavor::Streamable).then(|| url.path.clone()),
            stream: StreamState::Off,
            stream_delay: STREAM_RETRY_FIRST,
            last_event_id: None,
            request_timeout,
            next_addr: 0,
            closing: false,
            max_conns: MAX_CONNS,
        }
    }

    /// Starts what must run before the first message: the legacy SSE stream.
    pub fn start(&mut self, reg: &mut dyn Registrar, out: &mut Vec<LinkEvent>) {
        if self.flavor == Flavor::Legacy {
            self.open_stream(reg, out);
        }
    }

    /// The client's credential for a passthrough target (ignored by others): every request
    /// from now on carries it.
    pub fn set_credential(&mut self, client: Option<&str>) {
        self.credential = match (&self.passthrough, client) {
            (Some(p), Some(c)) => p.pass(c),
            _ => None,
        };
    }

    /// The tokens of every open connection.
    pub fn tokens(&self) -> Vec<Token> {
        self.conns.keys().copied().collect()
    }

    /// Whether nothing is left in flight (after `shutdown`).
    pub fn is_done(&self) -> bool {
        self.conns.is_empty()
    }

    /// Sends one JSON-RPC message to the target.
    pub fn send(
        &mut self,
        reg: &mut dyn Registrar,
        msg: &Value,
        headers: Vec<(String, String)>,
        out: &mut Vec<LinkEvent>,
    ) -> Result<(), String> {
        if self.closing {
            return Err(format!("target {} is shutting down", self.name));
        }
        let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        let method = msg.get("method").and_then(Value::as_str);
        let request_id = msg
            .get("id")
            .and_then(Value::as_u64)
            .filter(|_| method.is_some());
        if method == Some("initialize") {
            self.init_id = request_id;
        }
        let mut o = Outgoing::new(Kind::Post, body, request_id);
        o.modern = (!headers.is_empty()).then_some(headers);
        o.safe = method.is_some_and(safe_to_repeat);
        self.dispatch(reg, o, out);
        // The streamable GET stream is opened once the session is initialized.
        if method == Some("notifications/initialized")
            && self.flavor == Flavor::Streamable
            && self.stream == StreamState::Off
        {
            self.open_stream(reg, out);
        }
        Ok(())
    }

    /// Ends the upstream session: connections close, and a streamable session that has an id
    /// is DELETEd (the caller keeps this target until `is_done`).
    pub fn shutdown(&mut self, reg: &mut dyn Registrar) {
        self.abort(reg);
        if self.flavor == Flavor::Streamable && self.session_id.is_some() {
            let mut ignored = Vec::new();
            let o = Outgoing::new(Kind::Delete, Vec::new(), None);
            self.open_conn(reg, o, &mut ignored);
        }
    }

    /// Drops every connection at once (the DELETE took too long).
    pub fn abort(&mut self, reg: &mut dyn Registrar) {
        self.closing = true;
        self.queue.clear();
        self.delayed.clear();
        for (token, mut c) in self.conns.drain() {
            reg.deregister(&mut c.t.sock, token);
        }
    }

    /// Forgets request `uid`: queued, it is dropped; in flight, its connection is closed
    /// (the server sees its response stream end). Nothing is reported for it.
    pub fn abandon(&mut self, reg: &mut dyn Registrar, uid: u64, out: &mut Vec<LinkEvent>) {
        self.queue.retain(|o| o.request_id != Some(uid));
        self.delayed.retain(|(_, o)| o.request_id != Some(uid));
        let busy = self.conns.iter().find(|(_, c)| match &c.state {
            State::Busy(ex) => ex.out.request_id == Some(uid) && ex.out.kind != Kind::Stream,
            State::Idle(_) => false,
        });
        if let Some(token) = busy.map(|(t, _)| *t) {
            self.drop_conn(reg, token);
            self.pump(reg, out);
        }
    }

    fn dispatch(&mut self, reg: &mut dyn Registrar, o: Outgoing, out: &mut Vec<LinkEvent>) {
        if o.kind == Kind::Post && self.post_path.is_none() {
            // Legacy: no endpoint announced yet.
            self.queue.push_back(o);
            return;
        }
        let idle = self
            .conns
            .iter()
            .find(|(_, c)| matches!(c.state, State::Idle(_)))
            .map(|(t, _)| *t);
        match idle {
            Some(token) => self.begin(reg, token, o, out),
            None if self.conns.len() < self.max_conns || o.kind != Kind::Post => {
                self.open_conn(reg, o, out)
            }
            None => self.queue.push_back(o),
        }
    }

    /// Sends queued POSTs on whatever is free.
    fn pump(&mut self, reg: &mut dyn Registrar, out: &mut Vec<LinkEvent>) {
        while self.post_path.is_some() {
            let has_room = self.conns.len() < self.max_conns
                || self
                    .conns
                    .values()
                    .any(|c| matches!(c.state, State::Idle(_)));
            if !has_room {
                break;
            }
            let Some(o) = self.queue.pop_front() else {
                break;
            };
            self.dispatch(reg, o, out);
        }
    }

    fn open_conn(&mut self, reg: &mut dyn Registrar, o: Outgoing, out: &mut Vec<LinkEvent>) {
        let addr = self.url.addrs[self.next_addr % self.url.addrs.len().max(1)];
        self.next_addr = self.next_addr.wrapping_add(1);
        let mut t = match Transport::connect(addr) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot connect to {addr}: {e}");
                return self.fail_outgoing(o, &why, true, out);
            }
        };
        if let Some((cfg, name)) = &self.tls {
            if let Err(e) = t.start_tls(Arc::clone(cfg), name.clone()) {
                return self.fail_outgoing(o, &e, false, out);
            }
        }
        let token = match reg.register(&mut t.sock, Interest::READABLE | Interest::WRITABLE) {
            Ok(tok) => tok,
            Err(e) => {
                let why = format!("cannot register socket: {e}");
                return self.fail_outgoing(o, &why, true, out);
            }
        };
        let mut c = Conn {
            t,
            connected: false,
            wbuf: Vec::new(),
            wpos: 0,
            rbuf: Vec::new(),
            state: State::Idle(Instant::now()),
            reused: false,
            deadline: Some(Instant::now() + CONNECT_TIMEOUT),
            established: None,
            writable: true,
        };
        self.write_request(&mut c, &o);
        if o.kind == Kind::Stream {
            self.stream = StreamState::Open(token);
        }
        c.state = State::Busy(Box::new(Exchange::new(o)));
        self.conns.insert(token, c);
    }

    /// Starts an exchange on an idle, connected connection.
    fn begin(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        o: Outgoing,
        out: &mut Vec<LinkEvent>,
    ) {
        let Some(mut c) = self.conns.remove(&token) else {
            return;
        };
        self.write_request(&mut c, &o);
        c.reused = true;
        c.deadline = (o.kind == Kind::Post).then(|| Instant::now() + self.request_timeout);
        if o.kind == Kind::Stream {
            self.stream = StreamState::Open(token);
        }
        c.state = State::Busy(Box::new(Exchange::new(o)));
        self.conns.insert(token, c);
        self.drive(reg, token, true, out);
    }

    fn write_request(&self, c: &mut Conn, o: &Outgoing) {
        let host = self.url.authority();
        let mut headers: Vec<(&str, &str)> = (self.headers.iter())
            .chain(&self.credential)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let streamable = self.flavor == Flavor::Streamable;
        if let Some(m) = &o.modern {
            headers.extend(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        } else if streamable {
            if let Some(sid) = &self.session_id {
                headers.push(("Mcp-Session-Id", sid));
            }
            if let Some(v) = &self.protocol_version {
                headers.push(("MCP-Protocol-Version", v));
            }
        }
        match o.kind {
            Kind::Post => {
                headers.push(("Content-Type", "application/json"));
                headers.push(("Accept", "application/json, text/event-stream"));
                let path = self.post_path.as_deref().unwrap_or("/");
                write_request(&mut c.wbuf, "POST", path, &host, &headers, &o.body);
            }
            Kind::Stream => {
                headers.push(("Accept", "text/event-stream"));
                if let (true, Some(id)) = (streamable, &self.last_event_id) {
                    headers.push(("Last-Event-ID", id));
                }
                write_request(&mut c.wbuf, "GET", &self.url.path, &host, &headers, b"");
            }
            Kind::Delete => {
                write_request(&mut c.wbuf, "DELETE", &self.url.path, &host, &headers, b"")
            }
            Kind::Resume => {
                headers.push(("Accept", "text/event-stream"));
                if let Some((id, _)) = &o.resume {
                    headers.push(("Last-Event-ID", id));
                }
                write_request(&mut c.wbuf, "GET", &self.url.path, &host, &headers, b"");
            }
        }
    }

    fn open_stream(&mut self, reg: &mut dyn Registrar, out: &mut Vec<LinkEvent>) {
        let o = Outgoing::new(Kind::Stream, Vec::new(), None);
        self.stream = StreamState::RetryAt(Instant::now() + self.stream_delay);
        self.open_conn(reg, o, out);
    }

    /// Handles readiness of one of this target's connections; `peer_closed`: the event
    /// reported the peer's close.
    pub fn ready(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        peer_closed: bool,
        out: &mut Vec<LinkEvent>,
    ) {
        if self.conns.contains_key(&token) {
            self.drive(reg, token, !peer_closed, out);
        }
        if !self.closing {
            self.pump(reg, out);
        }
    }

    /// Connects, writes, reads and processes until the connection would block, then asks for
    /// writability only if it is still needed.
    fn drive(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        short_read_drains: bool,
        out: &mut Vec<LinkEvent>,
    ) {
        self.drive_io(reg, token, short_read_drains, out);
        self.sync_interest(reg, token);
    }

    /// Writability is asked for only while a connect, a TLS step or request bytes are
    /// pending: otherwise the ACK of every request would wake the loop for nothing.
    fn sync_interest(&mut self, reg: &mut dyn Registrar, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let want = !c.connected || c.wpos < c.wbuf.len() || c.t.tls_wants_write();
        let interest = match want {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        if want != c.writable && reg.reregister(&mut c.t.sock, token, interest).is_ok() {
            c.writable = want;
        }
    }

    fn drive_io(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        short_read_drains: bool,
        out: &mut Vec<LinkEvent>,
    ) {
        loop {
            let request_timeout = self.request_timeout;
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            if !c.connected {
                match c.t.check_connected() {
                    Ok(true) => c.connected = true,
                    Ok(false) => return,
                    Err(e) => return self.fail_conn(reg, token, &e, out),
                }
            }
            // Write, read, and write again: a TLS handshake step read in may unblock the
            // request's plaintext.
            let mut io = Io::WouldBlock;
            for step in 0..3 {
                let r = if step == 1 {
                    let limit = c.rbuf.len() + READ_CHUNK;
                    c.t.read(&mut c.rbuf, limit, short_read_drains)
                } else {
                    c.t.write(&c.wbuf, &mut c.wpos)
                };
                match r {
                    Io::Error(e) => return self.broken(reg, token, &e, out),
                    Io::Closed if step != 1 => {
                        return self.broken(reg, token, "connection closed while sending", out)
                    }
                    r if step == 1 => io = r,
                    _ => {}
                }
            }
            if c.wpos == c.wbuf.len() {
                c.wbuf.clear();
                c.wpos = 0;
            }
            // Once connected (and through TLS), a request gets the request timeout for its
            // response head instead of the connect timeout.
            if c.deadline.is_some() && !c.t.handshaking() {
                if let State::Busy(ex) = &c.state {
                    if ex.head.is_none() && !c.reused && c.established.is_none() {
                        c.established = Some(());
                        c.deadline = Some(Instant::now() + request_timeout);
                    }
                }
            }
            self.process(reg, token, out);
            match io {
                Io::More => continue,
                Io::WouldBlock => return,
                Io::Closed => return self.on_eof(reg, token, out),
                Io::Error(e) => return self.broken(reg, token, &e, out),
            }
        }
    }

    /// Parses what has arrived on a busy connection.
    fn process(&mut self, reg: &mut dyn Registrar, token: Token, out: &mut Vec<LinkEvent>) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let State::Busy(ex) = &mut c.state else {
            if !c.rbuf.is_empty() {
                // Bytes nobody asked for on an idle connection: it cannot be trusted.
                return self.fail_conn(reg, token, "unexpected data on an idle connection", out);
            }
            return;
        };
        if ex.head.is_none() {
            match parse_response_head(&c.rbuf, MAX_RESPONSE_HEAD) {
                Ok(Status::Partial) => return,
                Ok(Status::Complete(head, n)) => {
                    c.rbuf.drain(..n);
                    let method = match ex.out.kind {
                        Kind::Post => "POST",
                        Kind::Stream | Kind::Resume => "GET",
                        Kind::Delete => "DELETE",
                    };
                    match BodyDecoder::for_response(&head, method) {
                        Ok(b) => ex.body = Some(b),
                        Err(e) => {
                            return self.fail_conn(reg, token, &format!("bad response: {e}"), out)
                        }
                    }
                    ex.sse = (200..300).contains(&head.status)
                        && head.content_type_is("text/event-stream");
                    if ex.out.kind == Kind::Post
                        && ex.out.request_id.is_some()
                        && ex.out.request_id == self.init_id
                    {
                        if let Some(sid) = head.header("mcp-session-id") {
                            self.session_id = Some(sid.to_string());
                        }
                    }
                    // Streams and SSE answers may stay quiet for long; the call's own
                    // deadline (in the gateway) bounds a request.
                    c.deadline = None;
                    ex.head = Some(head);
                }
                Err(e) => return self.fail_conn(reg, token, &format!("bad response: {e}"), out),
            }
        }
        let Some(body) = ex.body.as_mut() else {
            return;
        };
        let done = match body.feed(&c.rbuf, &mut ex.data) {
            Ok((n, done)) => {
                c.rbuf.drain(..n);
                done
            }
            Err(e) => return self.fail_conn(reg, token, &format!("bad response body: {e}"), out),
        };
        if ex.sse {
            let mut msgs = Vec::new();
            let mut endpoint = None;
            loop {
                match sse::decode(&ex.data, MAX_RESPONSE_BODY) {
                    Ok(Status::Partial) => break,
                    Ok(Status::Complete(ev, n)) => {
                        ex.data.drain(..n);
                        if let Some(id) = ev.id.filter(|id| !id.is_empty()) {
                            if ex.out.kind == Kind::Stream {
                                self.last_event_id = Some(id.clone());
                            }
                            ex.last_event_id = Some(id);
                        }
                        if ev.event == "endpoint" {
                            endpoint = Some(ev.data);
                        } else if (ev.event.is_empty() || ev.event == "message")
                            && !ev.data.trim().is_empty()
                        {
                            msgs.push(ev.data);
                        }
                    }
                    Err(e) => {
                        return self.fail_conn(reg, token, &format!("bad SSE stream: {e}"), out)
                    }
                }
            }
            for m in msgs {
                parse_messages(
                    m.as_bytes(),
                    ex,
                    &self.name,
                    &mut self.protocol_version,
                    self.init_id,
                    out,
                );
            }
            if let Some(ep) = endpoint {
                self.set_endpoint(&ep, out);
            }
        } else if ex.data.len() > MAX_RESPONSE_BODY {
            return self.fail_conn(reg, token, "response body too large", out);
        }
        if done {
            self.finish(reg, token, out);
        }
    }

    /// A response is complete: report what it means, then reuse or close the connection.
    fn finish(&mut self, reg: &mut dyn Registrar, token: Token, out: &mut Vec<LinkEvent>) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let State::Busy(ex) = std::mem::replace(&mut c.state, State::Idle(Instant::now())) else {
            return;
        };
        let mut ex = *ex;
        let head = ex.head.take();
        let status = head.as_ref().map_or(0, |h| h.status);
        let challenge = (head.as_ref())
            .and_then(|h| h.header("www-authenticate"))
            .map(str::to_string);
        let keep = head.as_ref().is_some_and(ResponseHead::keep_alive)
            && ex
                .body
                .as_ref()
                .is_some_and(|b| !matches!(b, BodyDecoder::UntilClose));
        // A 2026-07-28 server answers request errors with a 4xx and the JSON-RPC error.
        let answers = (200..300).contains(&status)
            || (ex.out.modern.is_some() && (400..500).contains(&status));
        if answers
            && !ex.sse
            && !ex.data.is_empty()
            && head
                .as_ref()
                .is_some_and(|h| h.content_type_is("application/json"))
        {
            let data = std::mem::take(&mut ex.data);
            parse_messages(
                &data,
                &mut ex,
                &self.name,
                &mut self.protocol_version,
                self.init_id,
                out,
            );
        }
        self.outcome(reg, ex, status, challenge, out);
        // One idle connection is kept for the next message; more would only hold sockets
        // (and threads, in thread-per-connection upstreams) for nothing.
        let another_idle = self
            .conns
            .iter()
            .any(|(t, c)| *t != token && matches!(c.state, State::Idle(_)));
        let c = self.conns.get_mut(&token);
        match c {
            Some(c) if keep && !self.closing && !another_idle && c.rbuf.is_empty() => {
                c.reused = true;
                c.deadline = None;
            }
            _ => self.drop_conn(reg, token),
        }
    }

    /// What a finished (or broken) exchange means for its request and for the target.
    fn outcome(
        &mut self,
        reg: &mut dyn Registrar,
        ex: Exchange,
        status: u16,
        challenge: Option<String>,
        out: &mut Vec<LinkEvent>,
    ) {
        let name = &self.name;
        match ex.out.kind {
            Kind::Delete => {}
            Kind::Stream => {
                if self.flavor == Flavor::Legacy {
                    out.push(LinkEvent::Fatal(match status {
                        200..=299 => "the upstream closed its SSE stream".to_string(),
                        401 | 403 => auth_failure(name, status, challenge.as_deref()).message,
                        s => format!("the SSE stream was refused with HTTP {s}"),
                    }));
                    return;
                }
                match status {
                    405 => self.stream = StreamState::Unsupported,
                    404 if self.session_id.is_some() => {
                        out.push(LinkEvent::Fatal(
                            "the upstream no longer knows this session (HTTP 404)".into(),
                        ));
                    }
                    200..=299 => {
                        self.stream_delay = STREAM_RETRY_FIRST;
                        self.stream = StreamState::RetryAt(Instant::now() + self.stream_delay);
                    }
                    s => {
                        let why = match s {
                            401 | 403 => auth_failure(name, s, challenge.as_deref()).message,
                            s => format!("{name}: GET stream refused with HTTP {s}"),
                        };
                        out.push(LinkEvent::Log(format!("{why}; retrying")));
                        self.retry_stream_later();
                    }
                }
            }
            Kind::Resume => {
                let Some(id) = ex.out.request_id else {
                    return;
                };
                let tries = ex.out.resume.as_ref().map_or(0, |(_, n)| *n);
                match (status, ex.answered, ex.last_event_id.clone()) {
                    (_, true, _) => {}
                    (200..=299, false, Some(last)) if tries < MAX_RESUMES => {
                        self.resume(reg, id, last, tries + 1, out)
                    }
                    (200..=299, false, _) => out.push(LinkEvent::RequestFailed(
                        id,
                        format!("target {name} ended its stream without an answer").into(),
                    )),
                    (s @ (401 | 403), _, _) => out.push(LinkEvent::RequestFailed(
                        id,
                        auth_failure(name, s, challenge.as_deref()),
                    )),
                    (s, _, _) => out.push(LinkEvent::RequestFailed(
                        id,
                        format!("target {name} refused to resume its stream (HTTP {s})").into(),
                    )),
                }
            }
            Kind::Post => {
                let failed = match status {
                    200..=299 => None,
                    404 if self.session_id.is_some() && ex.out.request_id != self.init_id => {
                        out.push(LinkEvent::Fatal(
                            "the upstream no longer knows this session (HTTP 404)".into(),
                        ));
                        return;
                    }
                    401 | 403 => Some(auth_failure(name, status, challenge.as_deref())),
                    s => Some(Failure::from(format!(
                        "target {name} answered HTTP {s}{}",
                        snippet(&ex.data)
                    ))),
                };
                let Some(id) = ex.out.request_id else {
                    if let Some(why) = failed {
                        out.push(LinkEvent::Log(why.message));
                    }
                    return;
                };
                if ex.answered || self.flavor == Flavor::Legacy && failed.is_none() {
                    return;
                }
                let listed = self
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.codes.contains(&status));
                if let Some(why) = failed {
                    if listed && ex.out.safe && self.can_retry(&ex.out) {
                        return self.try_again(ex.out, &why.message, out);
                    }
                    out.push(LinkEvent::RequestFailed(id, why));
                } else if let (true, Some(last)) = (ex.sse, ex.last_event_id.clone()) {
                    // The server ended the POST stream early (SSE polling, SEP-1699): resume it
                    // from the last event id; the answer comes on the resumed stream.
                    self.resume(reg, id, last, 0, out);
                } else if !ex.sse {
                    out.push(LinkEvent::RequestFailed(
                        id,
                        format!("target {name} sent no answer (HTTP {status})").into(),
                    ));
                } else {
                    out.push(LinkEvent::RequestFailed(
                        id,
                        format!("target {name} ended its stream without an answer").into(),
                    ));
                }
            }
        }
    }

    fn resume(
        &mut self,
        reg: &mut dyn Registrar,
        id: u64,
        last: String,
        tries: u8,
        out: &mut Vec<LinkEvent>,
    ) {
        let mut o = Outgoing::new(Kind::Resume, Vec::new(), Some(id));
        o.resume = Some((last, tries));
        self.dispatch(reg, o, out);
    }

    fn retry_stream_later(&mut self) {
        self.stream_delay = (self.stream_delay * 2).min(STREAM_RETRY_MAX);
        self.stream = StreamState::RetryAt(Instant::now() + self.stream_delay);
    }

    /// The peer closed the connection.
    fn on_eof(&mut self, reg: &mut dyn Registrar, token: Token, out: &mut Vec<LinkEvent>) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        match &mut c.state {
            State::Idle(_) => self.drop_conn(reg, token),
            State::Busy(ex) => {
                if ex.head.is_some() && ex.body.as_ref().is_some_and(BodyDecoder::complete_at_eof) {
                    self.process(reg, token, out);
                    if self.conns.contains_key(&token) {
                        self.finish(reg, token, out);
                    }
                    self.drop_conn(reg, token);
                } else if self.resend_if_stale(reg, token, out) {
                } else {
                    self.fail_conn(
                        reg,
                        token,
                        "the upstream closed the connection mid-response",
                        out,
                    );
                }
            }
        }
    }

    /// A kept-alive connection the server had closed before it read our request (it ended or
    /// was reset before any byte of an answer): the request is sent again on a fresh
    /// connection, once. Whether the server saw it cannot be known, but a server that closes
    /// an idle connection does so between requests. False: not that case.
    fn resend_if_stale(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        out: &mut Vec<LinkEvent>,
    ) -> bool {
        let stale = self.conns.get(&token).is_some_and(|c| {
            c.reused
                && c.rbuf.is_empty()
                && matches!(&c.state, State::Busy(ex) if ex.head.is_none() && !ex.out.retried)
        });
        if !stale {
            return false;
        }
        let Some(mut c) = self.conns.remove(&token) else {
            return false;
        };
        reg.deregister(&mut c.t.sock, token);
        if self.stream == StreamState::Open(token) {
            self.stream = StreamState::RetryAt(Instant::now());
        }
        if let State::Busy(ex) = c.state {
            let mut o = ex.out;
            if o.kind == Kind::Post {
                o.retried = true;
                self.queue.push_front(o);
            }
        }
        self.pump(reg, out);
        true
    }

    /// A write or read failed: a stale kept-alive connection's request goes again, else the
    /// exchange fails.
    fn broken(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        why: &str,
        out: &mut Vec<LinkEvent>,
    ) {
        if !self.resend_if_stale(reg, token, out) {
            self.fail_conn(reg, token, why, out);
        }
    }

    /// A connection broke: its exchange fails.
    fn fail_conn(
        &mut self,
        reg: &mut dyn Registrar,
        token: Token,
        why: &str,
        out: &mut Vec<LinkEvent>,
    ) {
        if self.stream == StreamState::Open(token) {
            self.stream = StreamState::RetryAt(Instant::now());
        }
        let Some(mut c) = self.conns.remove(&token) else {
            return;
        };
        reg.deregister(&mut c.t.sock, token);
        // Nothing reached the upstream if the connection never came up (refused, say).
        let unsent = !c.connected;
        if let State::Busy(ex) = c.state {
            self.fail_outgoing(ex.out, why, unsent, out);
        }
    }

    /// Whether `retry` leaves another attempt for this request.
    fn can_retry(&self, o: &Outgoing) -> bool {
        let left = |r: &Retry| o.attempt + 1 < r.attempts;
        o.kind == Kind::Post && !self.closing && self.retry.as_ref().is_some_and(left)
    }

    /// Queues the next attempt of a failed POST (after `can_retry`), after the backoff.
    fn try_again(&mut self, mut o: Outgoing, why: &str, out: &mut Vec<LinkEvent>) {
        let (attempts, backoff) = match &self.retry {
            Some(r) => (r.attempts, r.backoff),
            None => return,
        };
        o.attempt += 1;
        o.retried = true;
        out.push(LinkEvent::Log(format!(
            "{}: {why}; attempt {} of {attempts} in {} ms",
            self.name,
            o.attempt + 1,
            backoff.as_millis()
        )));
        self.delayed.push((Instant::now() + backoff, o));
    }

    /// A request that could not be sent or answered: tried again if `retry` allows it (a
    /// request safe to repeat, or one that never left), else failed.
    fn fail_outgoing(&mut self, o: Outgoing, why: &str, unsent: bool, out: &mut Vec<LinkEvent>) {
        if o.request_id.is_some() && (o.safe || unsent) && self.can_retry(&o) {
            let why = format!("target {}: {why}", self.name);
            return self.try_again(o, &why, out);
        }
        let name = self.name.clone();
        self.fail_outgoing_now(o, why, &name, out)
    }

    fn fail_outgoing_now(&mut self, o: Outgoing, why: &str, name: &str, out: &mut Vec<LinkEvent>) {
        match o.kind {
            Kind::Post | Kind::Resume => match o.request_id {
                Some(id) => out.push(LinkEvent::RequestFailed(
                    id,
                    format!("target {name}: {why}").into(),
                )),
                None => out.push(LinkEvent::Log(format!(
                    "{name}: a notification was lost: {why}"
                ))),
            },
            Kind::Stream if self.flavor == Flavor::Legacy => {
                out.push(LinkEvent::Fatal(format!("SSE stream: {why}")));
            }
            Kind::Stream => {
                out.push(LinkEvent::Log(format!(
                    "{name}: GET stream: {why}; retrying"
                )));
                self.retry_stream_later();
            }
            Kind::Delete => {}
        }
    }

    fn drop_conn(&mut self, reg: &mut dyn Registrar, token: Token) {
        if self.stream == StreamState::Open(token) {
            self.retry_stream_later();
        }
        if let Some(mut c) = self.conns.remove(&token) {
            reg.deregister(&mut c.t.sock, token);
        }
    }

    /// Legacy: the stream named the URL to POST messages to.
    fn set_endpoint(&mut self, ep: &str, out: &mut Vec<LinkEvent>) {
        let ep = ep.trim();
        let path = if ep.starts_with("http://") || ep.starts_with("https://") {
            match Url::parse(ep) {
                Ok(u) => {
                    if u.host != self.url.host || u.port != self.url.port {
                        out.push(LinkEvent::Log(format!(
                            "{}: endpoint {ep} names another host; posting to {} instead",
                            self.name,
                            self.url.authority()
                        )));
                    }
                    u.path
                }
                Err(e) => return out.push(LinkEvent::Fatal(format!("bad endpoint event: {e}"))),
            }
        } else if ep.starts_with('/') {
            ep.to_string()
        } else {
            // Relative to the SSE URL's directory.
            let base = self.url.path.split('?').next().unwrap_or("/");
            let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{ep}")
        };
        self.post_path = Some(path);
    }

    /// Deadlines: connection attempts, responses, idle connections, GET stream retries.
    pub fn tick(&mut self, reg: &mut dyn Registrar, now: Instant, out: &mut Vec<LinkEvent>) {
        let late: Vec<(Token, bool)> = self
            .conns
            .iter()
            .filter_map(|(t, c)| match &c.state {
                State::Idle(since) if now.duration_since(*since) >= IDLE_TIMEOUT => {
                    Some((*t, false))
                }
                State::Busy(_) if c.deadline.is_some_and(|d| d <= now) => Some((*t, true)),
                _ => None,
            })
            .collect();
        for (token, busy) in late {
            if busy {
                let connecting = self
                    .conns
                    .get(&token)
                    .is_some_and(|c| !c.connected || c.t.handshaking());
                let why = if connecting {
                    "connect timed out"
                } else {
                    "no response in time"
                };
                self.fail_conn(reg, token, why, out);
            } else {
                self.drop_conn(reg, token);
            }
        }
        if self.closing {
            return;
        }
        if !self.delayed.is_empty() {
            let (due, later) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition::<Vec<_>, _>(|(at, _)| *at <= now);
            self.delayed = later;
            for (_, o) in due {
                self.dispatch(reg, o, out);
            }
        }
        if let StreamState::RetryAt(at) = self.stream {
            if at <= now && self.flavor == Flavor::Streamable {
                self.open_stream(reg, out);
            }
        }
        self.pump(reg, out);
    }
}

impl Exchange {
    fn new(out: Outgoing) -> Exchange {
        Exchange {
            out,
            head: None,
            body: None,
            data: Vec::new(),
            sse: false,
            answered: false,
            last_event_id: None,
        }
    }
}

/// Turns a body or SSE data (one message or a batch) into `Message` events, noting the answer
/// to the exchange's own request and the protocol version the target chose.
fn parse_messages(
    bytes: &[u8],
    ex: &mut Exchange,
    name: &str,
    version: &mut Option<String>,
    init_id: Option<u64>,
    out: &mut Vec<LinkEvent>,
) {
    // The common case first: one plain answer, which needs no tree (the initialize answer
    // does: its protocolVersion is read below).
    if let Some(a) = crate::jsonrpc::raw_answer(bytes).filter(|a| Some(a.id) != init_id) {
        if Some(a.id) == ex.out.request_id {
            ex.answered = true;
        }
        out.push(LinkEvent::Answer(a.id, a.result.to_owned()));
        return;
    }
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            out.push(LinkEvent::Log(format!(
                "{name}: ignored a message that is not JSON: {e}"
            )));
            return;
        }
    };
    let msgs = match v {
        Value::Array(items) => items,
        v => vec![v],
    };
    for m in msgs {
        let id = m.get("id").and_then(Value::as_u64);
        let is_response = m.get("method").is_none() && id.is_some();
        if is_response && id == ex.out.request_id {
            ex.answered = true;
        }
        if is_response && id.is_some() && id == init_id {
            if let Some(v) = m.pointer("/result/protocolVersion").and_then(Value::as_str) {
                *version = Some(v.to_string());
            }
        }
        out.push(LinkEvent::Message(m));
    }
}

/// An upstream's 401 or 403: what to configure, and its challenge for the client to see.
fn auth_failure(name: &str, status: u16, challenge: Option<&str>) -> Failure {
    let (reason, hint) = match status {
        401 => ("Unauthorized", "set backendAuth on the route or target"),
        _ => (
            "Forbidden",
            "the credential was refused; check backendAuth on the route or target",
        ),
    };
    Failure {
        message: format!("target {name}: upstream answered {status} {reason}; {hint}"),
        data: Some(serde_json::json!({
            "target": name,
            "status": status,
            "wwwAuthenticate": challenge,
        })),
    }
}

/// `: <first line of the body>` for error messages, short.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        String::new()
    } else {
        let cut: String = line.chars().take(160).collect();
        format!(": {cut}")
    }
}
