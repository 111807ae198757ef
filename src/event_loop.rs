//! The gateway: one thread, one `mio::Poll` owning every source (listeners, client connections,
//! child pipes, the signal socket). Each readiness event is dispatched by token to its owner;
//! timers run off the same loop, with the earliest deadline as the poll timeout.

use crate::config::{
    BackendTls, Config, Cors, FailureMode, Limits, McpBackend, RequestView, Route, Target,
    TargetKind, Url,
};
use crate::downstream::{AccessEntry, Conn, ConnState, Exchange, ReadResult};
use crate::http::parse::{expects_continue, parse_request, Limits as HttpLimits, Request};
use crate::http::Status;
use crate::idmap::IdMap;
use crate::jsonrpc::{self, Kind};
use crate::log::short_id;
use crate::mcp;
use crate::mcp::aggregate::{self, Part};
use crate::mcp::route::Dest;
use crate::mcp::session::{
    new_session_id, Call, CallKind, Phase, Session, TargetSlot, TargetState,
};
use crate::memory::Trimmer;
use crate::metrics::{self, Gauges, Outcome, UpstreamError};
use crate::signals::Signals;
use crate::timer::Timers;
use crate::tls::{self, TlsOptions};
use crate::upstream::http::{Flavor, HttpTarget, Registrar, UpEvent};
use crate::upstream::stdio::{ReadOutcome, StdioChild};
use crate::{log, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::process::Child;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the sweep runs: slow-client and idle checks, stream keep-alives, reaping.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// An idle keep-alive connection with no request in progress is closed after this.
const IDLE_CONN_TIMEOUT: Duration = Duration::from_secs(300);
/// A GET stream gets a comment line after this much silence, so proxies keep it open.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// A child whose stdin was closed gets this long to exit before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(2);
/// On shutdown, children get this long to exit on stdin EOF before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(600);
/// An ended session's HTTP target gets this long to DELETE its upstream session.
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// A client that lets this much of its responses and stream pile up unread is disconnected.
const MAX_UNWRITTEN: usize = 32 * 1024 * 1024;

const SIGNAL_TOKEN: Token = Token(0);
/// While draining, the loop wakes at least this often to see whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Who owns a token.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Listener(usize),
    Conn,
    ChildIn(u64, usize),
    ChildOut(u64, usize),
    ChildErr(u64, usize),
    /// A connection of an HTTP target of a session.
    Http(u64, usize),
    /// A connection of an HTTP target whose session ended (its DELETE).
    Retired(u64),
    Signal,
}

/// Lends the loop's `Poll` and token table to an HTTP target so it can open connections.
struct Reg<'a> {
    registry: &'a mio::Registry,
    owners: &'a mut IdMap<Token, Owner>,
    next_token: &'a mut usize,
    owner: Owner,
}

impl Registrar for Reg<'_> {
    fn register(&mut self, sock: &mut TcpStream) -> io::Result<Token> {
        let token = Token(*self.next_token);
        *self.next_token += 1;
        self.registry
            .register(sock, token, Interest::READABLE | Interest::WRITABLE)?;
        self.owners.insert(token, self.owner);
        Ok(token)
    }

    fn reregister(&mut self, sock: &mut TcpStream, token: Token, writable: bool) -> io::Result<()> {
        let interest = match writable {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        self.registry.reregister(sock, token, interest)
    }

    fn deregister(&mut self, sock: &mut TcpStream, token: Token) {
        let _ = self.registry.deregister(sock);
        self.owners.remove(&token);
    }
}

#[derive(Debug)]
enum Timer {
    Sweep,
}

/// A child on its way out: stdin closed, killed at `kill_at` if still running.
struct Dying {
    child: Child,
    kill_at: Instant,
}

pub struct Gateway {
    poll: Poll,
    cfg: Config,
    listeners: Vec<Option<TcpListener>>,
    pub local_addrs: Vec<SocketAddr>,
    owners: IdMap<Token, Owner>,
    next_token: usize,
    conns: IdMap<usize, Conn>,
    sessions: IdMap<u64, Session>,
    session_ids: HashMap<String, u64>,
    next_session: u64,
    timers: Timers<Timer>,
    signals: Signals,
    dying: Vec<Dying>,
    /// Connections to revisit after the current event (buffered pipelined requests).
    wake: Vec<usize>,
    http_limits: HttpLimits,
    read_limit: usize,
    /// HTTP targets of ended sessions, finishing their DELETE; dropped at the deadline.
    retired: IdMap<u64, (HttpTarget, Instant)>,
    /// Gives freed memory back to the system after a burst (see `memory`).
    trimmer: Trimmer,
    next_retired: u64,
    /// Verified TLS settings for https:// upstreams without a backendTLS policy (built once).
    default_tls: Option<Arc<rustls::ClientConfig>>,
    accepting: bool,
    /// Set by SIGTERM/SIGINT: when the drain ends at the latest.
    draining: Option<Instant>,
    config_path: Option<String>,
    /// With `--watch`: the file's last modification time, checked by the sweep.
    watch: bool,
    config_mtime: Option<std::time::SystemTime>,
    reloads: u64,
    health: HashMap<(String, String), Health>,
    started: Instant,
}

/// What the gateway knows of one target's health, across sessions.
struct Health {
    kind: &'static str,
    ok: Option<bool>,
    failures: u32,
    last_error: Option<String>,
    since: Instant,
    /// With targetBackoff: no new start before this.
    retry_at: Option<Instant>,
}

/// Where a server-to-client message should go.
enum Hint {
    Call(u64),
    Target(usize),
}

impl Gateway {
    /// Binds every listener and installs signal handling.
    pub fn new(cfg: Config) -> io::Result<Gateway> {
        let poll = Poll::new()?;
        let mut signals = Signals::install()?;
        poll.registry()
            .register(&mut signals.receiver, SIGNAL_TOKEN, Interest::READABLE)?;
        let mut owners = IdMap::default();
        owners.insert(SIGNAL_TOKEN, Owner::Signal);
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        let mut next_token = 1;
        for (i, b) in cfg.binds.iter().enumerate() {
            let mut l = TcpListener::bind(b.addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", b.addr))
            })?;
            let token = Token(next_token);
            next_token += 1;
            poll.registry()
                .register(&mut l, token, Interest::READABLE)?;
            owners.insert(token, Owner::Listener(i));
            local_addrs.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        if let Some(addr) = cfg.limits.stats_addr {
            // The admin listener: /metrics and /healthz only, index binds.len().
            let mut l = TcpListener::bind(addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (statsAddr): {e}"),
                )
            })?;
            let token = Token(next_token);
            next_token += 1;
            poll.registry()
                .register(&mut l, token, Interest::READABLE)?;
            owners.insert(token, Owner::Listener(cfg.binds.len()));
            local_addrs.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        log::set_level(cfg.limits.log_level);
        log::set_access_log(cfg.limits.access_log);
        let l = &cfg.limits;
        let http_limits = HttpLimits {
            max_head: l.max_header_bytes,
            max_headers: l.max_headers,
            max_body: l.max_body_bytes,
        };
        let read_limit = l.max_header_bytes + l.max_body_bytes + 64 * 1024;
        let mut timers = Timers::default();
        timers.add(Instant::now() + SWEEP_EVERY, Timer::Sweep);
        Ok(Gateway {
            poll,
            cfg,
            listeners,
            local_addrs,
            owners,
            next_token,
            conns: IdMap::default(),
            sessions: IdMap::default(),
            session_ids: HashMap::new(),
            next_session: 1,
            timers,
            signals,
            dying: Vec::new(),
            wake: Vec::new(),
            http_limits,
            read_limit,
            retired: IdMap::default(),
            trimmer: Trimmer::default(),
            next_retired: 1,
            default_tls: None,
            accepting: true,
            draining: None,
            config_path: None,
            watch: false,
            config_mtime: None,
            reloads: 0,
            health: HashMap::new(),
            started: Instant::now(),
        })
    }

    fn token(&mut self, owner: Owner) -> Token {
        // Tokens are never reused, so a late event for a closed source finds no owner.
        let t = Token(self.next_token);
        self.next_token += 1;
        self.owners.insert(t, owner);
        t
    }

    /// Notes a target's start, initialization or death for `/healthz` and the log.
    fn record_health(&mut self, backend: &str, target: &Target, outcome: Result<(), &str>) {
        let now = Instant::now();
        let kind = match target.kind {
            TargetKind::Stdio(_) => "stdio",
            TargetKind::Mcp(_) => "mcp",
            TargetKind::Sse(_) => "sse",
        };
        let h = self
            .health
            .entry((backend.to_string(), target.name.clone()))
            .or_insert(Health {
                kind,
                ok: None,
                failures: 0,
                last_error: None,
                since: now,
                retry_at: None,
            });
        match outcome {
            Ok(()) => {
                if h.ok == Some(false) {
                    log!(
                        "target {} (backend {backend}) is healthy again",
                        target.name
                    );
                }
                if h.ok != Some(true) {
                    h.since = now;
                }
                h.ok = Some(true);
                h.failures = 0;
                h.retry_at = None;
            }
            Err(why) => {
                if h.ok != Some(false) {
                    warn!(
                        "target {} (backend {backend}) is unhealthy: {why}",
                        target.name
                    );
                    h.since = now;
                }
                h.ok = Some(false);
                h.failures = h.failures.saturating_add(1);
                h.last_error = Some(why.to_string());
                let max = self.cfg.limits.target_backoff;
                if !max.is_zero() {
                    let step = Duration::from_secs(1u64 << h.failures.min(16).saturating_sub(1));
                    h.retry_at = Some(now + step.min(max));
                }
            }
        }
    }

    /// `GET /metrics` on the stats listener: Prometheus text format.
    fn render_metrics(&self) -> String {
        let streams = self
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Stream { .. }))
            .count();
        let (mut children, mut upstream) = (0, 0);
        for slot in self.sessions.values().flat_map(|s| s.targets.iter()) {
            children += usize::from(slot.child.is_some());
            upstream += slot.http.as_ref().map_or(0, |h| h.tokens().len());
        }
        let gauges = Gauges {
            sessions: self.sessions.len(),
            connections: self.conns.len(),
            streams,
            children: children + self.dying.len(),
            http_upstream_connections: upstream,
        };
        metrics::with(|m| m.render(&gauges))
    }

    /// `GET /healthz`: targets and their state, as JSON.
    fn healthz(&self) -> Value {
        let mut targets: Vec<Value> = self
            .health
            .iter()
            .map(|((backend, name), h)| {
                json!({
                    "backend": backend,
                    "target": name,
                    "kind": h.kind,
                    "state": match h.ok { Some(true) => "ok", Some(false) => "failing", None => "unknown" },
                    "failures": h.failures,
                    "lastError": h.last_error,
                    "sinceSeconds": h.since.elapsed().as_secs(),
                })
            })
            .collect();
        targets.sort_by_key(|t| t.to_string());
        let failing = self.health.values().any(|h| h.ok == Some(false));
        json!({
            "status": if self.draining.is_some() { "draining" } else if failing { "degraded" } else { "ok" },
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "sessions": self.sessions.len(),
            "connections": self.conns.len(),
            "configReloads": self.reloads,
            "targets": targets,
        })
    }

    /// Remembers the configuration file for SIGHUP reloads; with `watch`, also reloads when
    /// the file changes (checked once a second).
    pub fn set_config_file(&mut self, path: &str, watch: bool) {
        self.config_path = Some(path.to_string());
        self.watch = watch;
        self.config_mtime = file_mtime(path);
    }

    /// Runs until SIGINT/SIGTERM, then shuts down cleanly.
    pub fn run(&mut self) -> io::Result<()> {
        for a in &self.local_addrs {
            log!("listening on {a}");
        }
        for (b, bind) in self.cfg.binds.iter().enumerate() {
            for route in bind.listeners.iter().flat_map(|l| l.routes.iter()) {
                if route
                    .backend_tls
                    .as_ref()
                    .is_some_and(|t| t.options.insecure)
                {
                    warn!(
                        "WARNING: backendTLS insecure: true on a route of bind {b} ({}): upstream certificates are NOT verified",
                        bind.addr
                    );
                }
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::with_capacity(1024);
        loop {
            let mut timeout = self.timers.next_timeout(Instant::now());
            if self.draining.is_some() {
                timeout = Some(timeout.map_or(DRAIN_POLL, |t| t.min(DRAIN_POLL)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            ready.clear();
            ready.extend(events.iter().map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_write_closed() || e.is_error(),
                    e.is_read_closed() || e.is_error(),
                )
            }));
            for &(token, readable, writable, closed) in &ready {
                let Some(owner) = self.owners.get(&token).copied() else {
                    continue;
                };
                match owner {
                    Owner::Signal => {
                        let p = self.signals.take();
                        if p.child_exited {
                            self.reap();
                        }
                        if p.reload {
                            self.reload("SIGHUP");
                        }
                        if p.shutdown {
                            self.start_drain();
                        }
                    }
                    Owner::Listener(i) => self.accept(i),
                    Owner::Conn => self.conn_ready(token.0, readable, writable, closed),
                    Owner::ChildIn(sk, t) => self.child_writable(sk, t),
                    Owner::ChildOut(sk, t) => self.child_stdout(sk, t, !closed),
                    Owner::ChildErr(sk, t) => self.child_stderr(sk, t),
                    Owner::Http(sk, t) => self.http_ready(sk, t, token, closed),
                    Owner::Retired(rid) => self.retired_ready(rid, token, closed),
                }
                self.run_wakes();
            }
            let now = Instant::now();
            while let Some(t) = self.timers.pop_expired(now) {
                match t {
                    Timer::Sweep => {
                        self.sweep(now);
                        self.timers.add(now + SWEEP_EVERY, Timer::Sweep);
                    }
                }
                self.run_wakes();
            }
            if let Some(deadline) = self.draining {
                let busy = self
                    .conns
                    .values()
                    .any(|c| matches!(c.state, ConnState::Exchange(_)));
                if !busy || now >= deadline {
                    self.shutdown();
                    return Ok(());
                }
            }
        }
    }

    /// SIGTERM/SIGINT: stop accepting, end streams and idle connections, and let requests in
    /// flight finish for up to `drainTimeout`; the loop then shuts down.
    fn start_drain(&mut self) {
        if self.draining.is_some() {
            return;
        }
        let in_flight = self
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Exchange(_)))
            .count();
        log!(
            "draining: {in_flight} request(s) in flight, up to {:?}",
            self.cfg.limits.drain_timeout
        );
        self.draining = Some(Instant::now() + self.cfg.limits.drain_timeout);
        self.pause_accepting();
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                match c.state {
                    ConnState::Stream { .. } => {
                        c.end_stream();
                        c.closing = true;
                    }
                    ConnState::Idle if c.rbuf.is_empty() => c.closing = true,
                    _ => {}
                }
            }
            self.wake.push(id);
        }
        self.run_wakes();
    }

    /// Re-reads the configuration file. New sessions use the new configuration; existing
    /// ones keep theirs. An invalid file, or one that changes the binds, is refused.
    fn reload(&mut self, why: &str) {
        let Some(path) = self.config_path.clone() else {
            log!("{why}: no configuration file to reload");
            return;
        };
        self.config_mtime = file_mtime(&path);
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                log!("{why}: {path} not reloaded; the old configuration stays:");
                for e in &errors.0 {
                    log!("  {path}: {e}");
                }
                return;
            }
        };
        let addrs = |c: &Config| {
            let mut a: Vec<_> = c.binds.iter().map(|b| b.addr).collect();
            a.extend(c.limits.stats_addr);
            a
        };
        if addrs(&new) != addrs(&self.cfg) {
            log!("{why}: {path} not reloaded: its binds differ; restart mcplex to change ports or addresses");
            return;
        }
        let l = &new.limits;
        self.http_limits = HttpLimits {
            max_head: l.max_header_bytes,
            max_headers: l.max_headers,
            max_body: l.max_body_bytes,
        };
        self.read_limit = l.max_header_bytes + l.max_body_bytes + 64 * 1024;
        log::set_level(new.limits.log_level);
        log::set_access_log(new.limits.access_log);
        self.cfg = new;
        self.reloads += 1;
        metrics::with(|m| m.reloads += 1);
        log!("{why}: configuration reloaded from {path}; new sessions use it");
    }

    /// Stops accepting connections (at the connection limit, or when draining).
    fn pause_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for l in self.listeners.iter_mut().flatten() {
            let _ = self.poll.registry().deregister(l);
        }
    }

    /// Accepts again once connections fell to 90% of the limit (hysteresis, so a full
    /// gateway does not flap).
    fn maybe_resume_accepting(&mut self) {
        let low = self.cfg.limits.max_connections * 9 / 10;
        if self.accepting || self.draining.is_some() || self.conns.len() > low {
            return;
        }
        self.accepting = true;
        let tokens: Vec<(Token, usize)> = self
            .owners
            .iter()
            .filter_map(|(t, o)| match o {
                Owner::Listener(i) => Some((*t, *i)),
                _ => None,
            })
            .collect();
        for (token, i) in tokens {
            if let Some(Some(l)) = self.listeners.get_mut(i) {
                // Registering a listener with connections already waiting reports it ready.
                if let Err(e) = self.poll.registry().register(l, token, Interest::READABLE) {
                    log!("cannot resume accepting on bind {i}: {e}");
                }
            }
        }
        log!("accepting connections again ({} open)", self.conns.len());
    }

    fn run_wakes(&mut self) {
        while let Some(id) = self.wake.pop() {
            self.process_conn(id);
        }
    }

    // ---- client connections -------------------------------------------------------------

    fn accept(&mut self, i: usize) {
        loop {
            if self.conns.len() >= self.cfg.limits.max_connections {
                // Leave further connections in the kernel's backlog until some close.
                log!(
                    "connection limit ({}) reached; pausing accept",
                    self.cfg.limits.max_connections
                );
                self.pause_accepting();
                return;
            }
            if !self.accepting {
                return;
            }
            let Some(Some(l)) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((sock, _peer)) => self.add_conn(sock, i),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: log and try again on the next readiness event.
                    warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream, bind: usize) {
        let _ = sock.set_nodelay(true);
        if self.conns.len() >= self.cfg.limits.max_connections {
            // Over the limit: refuse politely; the write is best-effort on a fresh socket.
            let mut c = Conn::new(sock, bind);
            c.respond_text(503, "too many connections\n", false);
            let _ = c.flush();
            return;
        }
        let token = self.token(Owner::Conn);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            log!("cannot register connection: {e}");
            self.owners.remove(&token);
            return;
        }
        metrics::with(|m| m.connections_accepted += 1);
        self.conns.insert(token.0, Conn::new(sock, bind));
    }

    fn conn_ready(&mut self, id: usize, readable: bool, writable: bool, closed: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.last_active = Instant::now();
        if writable && c.flush().is_err() {
            self.close_conn(id);
            return;
        }
        if readable && !c.paused {
            c.read(self.read_limit, !closed);
        }
        self.process_conn(id);
    }

    /// Parses and handles buffered requests while the connection is idle, then flushes, and
    /// closes it when it is done.
    fn process_conn(&mut self, id: usize) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if !matches!(c.state, ConnState::Idle) || c.closing || (c.rbuf.is_empty() && !c.paused)
            {
                break;
            }
            match parse_request(&c.rbuf, &self.http_limits) {
                Ok(Status::Complete(req, n)) => {
                    c.rbuf.drain(..n);
                    c.continued = false;
                    c.request_started = (!c.rbuf.is_empty()).then(Instant::now);
                    self.handle_request(id, req);
                }
                Ok(Status::Partial) => {
                    if !c.continued && expects_continue(&c.rbuf, self.http_limits.max_headers) {
                        c.send_continue();
                    }
                    // Reading stopped while a previous answer was pending: resume it now
                    // (edge-triggered readiness will not report bytes already waiting).
                    if c.paused && !c.eof && c.rbuf.len() < self.read_limit {
                        if c.read(self.read_limit, false) == ReadResult::Full {
                            break;
                        }
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    warn!("bad request from client: {e}");
                    c.rbuf.clear();
                    c.respond_text(e.status(), &format!("{e}\n"), false);
                    break;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.flush().is_err() {
            self.close_conn(id);
            return;
        }
        if c.eof {
            if !matches!(c.state, ConnState::Idle) {
                // The client went away while waiting or streaming: treat it as abandonment.
                self.close_conn(id);
                return;
            }
            c.closing = true;
        }
        if self.draining.is_some() && matches!(c.state, ConnState::Idle) {
            c.closing = true;
        }
        if c.closing && c.is_drained() && !matches!(c.state, ConnState::Exchange(_)) {
            self.close_conn(id);
        }
    }

    fn close_conn(&mut self, id: usize) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        self.maybe_resume_accepting();
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.owners.remove(&Token(id));
        match c.state {
            ConnState::Stream { session } => {
                let mut legacy = false;
                if let Some(s) = self.sessions.get_mut(&session) {
                    if s.get_stream == Some(id) {
                        s.get_stream = None;
                        legacy = s.legacy;
                    }
                }
                // A legacy session lives exactly as long as its stream.
                if legacy {
                    self.end_session(session, "the client closed its SSE stream");
                }
            }
            ConnState::Exchange(ex) => {
                // The client gave up on its requests: cancel them upstream.
                if let Some(s) = self.sessions.get_mut(&ex.session) {
                    let orphaned: Vec<u64> = s
                        .calls
                        .iter()
                        .filter(|(_, c)| c.conn == Some(id))
                        .map(|(k, _)| *k)
                        .collect();
                    for call in orphaned {
                        self.cancel_call(ex.session, call, "client disconnected");
                    }
                }
            }
            ConnState::Idle => {}
        }
    }

    fn handle_request(&mut self, id: usize, req: Request) {
        let keep_alive = req.keep_alive();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.extra.clear();
        if log::access_log() != log::AccessLog::Off {
            c.access = Some(AccessEntry {
                method: req.method.clone(),
                path: req.path.clone(),
                start: Instant::now(),
                session: req
                    .header("mcp-session-id")
                    .or(req.query_param("sessionId"))
                    .map(|s| short_id(s).to_string())
                    .unwrap_or_default(),
                mcp_method: String::new(),
                target: String::new(),
            });
        }
        let admin = c.bind >= self.cfg.binds.len();
        if req.method == "GET" && (req.path == "/healthz" || (admin && req.path == "/metrics")) {
            let (body, ctype) = if req.path == "/metrics" {
                (
                    self.render_metrics().into_bytes(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    serde_json::to_vec(&self.healthz()).unwrap_or_default(),
                    "application/json",
                )
            };
            if let Some(c) = self.conns.get_mut(&id) {
                c.respond(
                    200,
                    &[("Content-Type", ctype), ("Cache-Control", "no-store")],
                    &body,
                    keep_alive,
                );
            }
            return;
        }
        if admin {
            c.respond_text(
                404,
                "the stats listener serves /metrics and /healthz\n",
                keep_alive,
            );
            return;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let bind = &self.cfg.binds[c.bind];
        let host = req.header("host").map(strip_port).unwrap_or("");
        let header = |n: &str| req.header(n);
        let query = |n: &str| req.query_param(n);
        let view = RequestView {
            method: &req.method,
            path: &req.path,
            header: &header,
            query: &query,
        };
        let route = find_route(bind, host, &view);
        let cors = route.and_then(|r| r.cors.clone());
        if let Err(why) = check_origin(&req, bind.addr, &self.cfg.limits, cors.as_deref()) {
            warn!("refused {} {}: {why}", req.method, req.path);
            c.respond_text(403, &format!("{why}\n"), keep_alive);
            return;
        }
        let Some(route) = route else {
            c.respond_text(404, "no route\n", keep_alive);
            return;
        };
        let backend = Rc::clone(&route.backend);
        let tls = route.backend_tls.clone();
        if let (Some(cors), Some(origin)) = (cors.as_deref(), req.header("origin")) {
            if cors.allows(origin) {
                c.extra = cors_headers(cors, origin);
            }
        }
        let p = req.path.as_str();
        let legacy_stream = p.ends_with("/sse");
        let legacy_post = legacy_stream || p.ends_with("/message") || p.ends_with("/messages");
        match req.method.as_str() {
            "OPTIONS" => self.preflight(id, &req, cors.as_deref(), keep_alive),
            "GET" if legacy_stream => self.legacy_open(id, req, backend, tls, keep_alive),
            "POST" if legacy_post && req.query_param("sessionId").is_some() => {
                self.legacy_post(id, req, keep_alive)
            }
            "POST" if p.ends_with("/message") || p.ends_with("/messages") => {
                self.legacy_post(id, req, keep_alive)
            }
            "POST" => self.post(id, req, backend, tls, keep_alive),
            "GET" if !legacy_post => self.open_stream(id, req, keep_alive),
            "DELETE" if !legacy_post => self.delete(id, req, keep_alive),
            _ => c.respond(
                405,
                &[
                    ("Allow", "GET, POST, DELETE, OPTIONS"),
                    ("Content-Type", "text/plain"),
                ],
                b"method not allowed\n",
                keep_alive,
            ),
        }
    }

    /// Looks up the request's session: Err is the HTTP status and message to answer with.
    fn session_of(&self, req: &Request) -> Result<u64, (u16, &'static str)> {
        let Some(sid) = req.header("mcp-session-id") else {
            return Err((400, "Bad Request: Mcp-Session-Id header is required"));
        };
        let Some(&sk) = self.session_ids.get(sid) else {
            return Err((404, "Session not found"));
        };
        // Only an unsupported version is refused (the spec's rule). A supported one that differs
        // from the negotiated version is tolerated: the official conformance suite sends
        // 2025-03-26 on sessions that negotiated a later revision.
        if let Some(v) = req.header("mcp-protocol-version") {
            if !mcp::is_supported(v) {
                return Err((400, "Bad Request: Unsupported MCP-Protocol-Version"));
            }
        }
        Ok(sk)
    }

    fn post(
        &mut self,
        id: usize,
        req: Request,
        backend: Rc<McpBackend>,
        tls: Option<Rc<BackendTls>>,
        keep_alive: bool,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !accepts(&req, "application/json") || !accepts(&req, "text/event-stream") {
            c.respond_text(
                406,
                "Accept must include application/json and text/event-stream\n",
                keep_alive,
            );
            return;
        }
        let Some(body) = json_body(c, &req, keep_alive) else {
            return;
        };
        let init = body
            .messages
            .iter()
            .position(|m| jsonrpc::method(m) == "initialize" && m.get("id").is_some());
        if let Some(i) = init {
            if body.messages.len() > 1 {
                let e = jsonrpc::error(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    "initialize must be sent alone",
                );
                c.respond_json(400, &[], &e, keep_alive);
                return;
            }
            let msg = body.messages.into_iter().nth(i).unwrap_or_default();
            self.begin_session(id, msg, backend, tls, req.minor_version > 0, keep_alive);
            return;
        }
        let sk = match self.session_of(&req) {
            Ok(sk) => sk,
            Err((status, why)) => {
                let e = jsonrpc::error(Value::Null, jsonrpc::INVALID_REQUEST, why);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond_json(status, &[], &e, keep_alive);
                }
                return;
            }
        };
        if let Some(s) = self.sessions.get_mut(&sk) {
            s.last_active = Instant::now();
        }
        let mut errors = Vec::new();
        let mut valid = Vec::new();
        for m in body.messages {
            match jsonrpc::classify(&m) {
                Ok(kind) => valid.push((kind, m)),
                Err(why) => {
                    let id = m
                        .get("id")
                        .filter(|i| i.is_string() || i.is_number())
                        .cloned();
                    errors.push(jsonrpc::error(
                        id.unwrap_or(Value::Null),
                        jsonrpc::INVALID_REQUEST,
                        why,
                    ));
                }
            }
        }
        let requests = valid.iter().filter(|(k, _)| *k == Kind::Request).count();
        if requests == 0 {
            for (kind, m) in valid {
                self.client_message(sk, id, kind, m);
            }
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if errors.is_empty() {
                c.respond(202, &[], b"", keep_alive);
            } else {
                let body = if body.batch {
                    Value::Array(errors)
                } else {
                    errors.remove(0)
                };
                c.respond_json(400, &[], &body, keep_alive);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.state = ConnState::Exchange(Exchange {
            session: sk,
            remaining: requests,
            batch: body.batch,
            streaming: false,
            collected: errors.iter().map(Value::to_string).collect(),
            session_header: None,
            keep_alive,
        });
        c.chunked = req.minor_version > 0;
        for (kind, m) in valid {
            self.client_message(sk, id, kind, m);
        }
    }

    fn open_stream(&mut self, id: usize, req: Request, keep_alive: bool) {
        let sk = match self.session_of(&req) {
            Ok(sk) => sk,
            Err((status, why)) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond_text(status, &format!("{why}\n"), keep_alive);
                }
                return;
            }
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !accepts(&req, "text/event-stream") {
            c.respond_text(406, "Accept must include text/event-stream\n", keep_alive);
            return;
        }
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if s.get_stream.is_some() {
            c.respond_text(409, "this session already has a GET stream\n", keep_alive);
            return;
        }
        s.get_stream = Some(id);
        s.last_active = Instant::now();
        c.state = ConnState::Stream { session: sk };
        c.start_sse(&[], req.minor_version > 0);
        while let Some(m) = s.backlog.pop_front() {
            c.sse_message(&m);
        }
        c.last_write = Instant::now();
    }

    fn delete(&mut self, id: usize, req: Request, keep_alive: bool) {
        match self.session_of(&req) {
            Ok(sk) => {
                self.end_session(sk, "deleted by the client");
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond(200, &[], b"", keep_alive);
                }
            }
            Err((status, why)) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond_text(status, &format!("{why}\n"), keep_alive);
                }
            }
        }
    }

    // ---- sessions ------------------------------------------------------------------------

    /// A new session, not yet initialized (no targets started). Err: the JSON-RPC error.
    fn create_session(
        &mut self,
        backend: Rc<McpBackend>,
        tls: Option<Rc<BackendTls>>,
        legacy: bool,
    ) -> Result<u64, (i64, String)> {
        if self.sessions.len() >= self.cfg.limits.max_sessions {
            return Err((jsonrpc::UPSTREAM_ERROR, "too many sessions".into()));
        }
        let random = new_session_id().map_err(|e| {
            (
                jsonrpc::INTERNAL_ERROR,
                format!("cannot create a session id: {e}"),
            )
        })?;
        let sid = match &self.cfg.limits.instance_id {
            Some(instance) => format!("{instance}.{random}"),
            None => random,
        };
        let sk = self.next_session;
        self.next_session += 1;
        let mut s = Session::new(sid.clone(), backend, Value::Null);
        s.tls = tls;
        s.legacy = legacy;
        s.metric_all = metrics::with(|m| {
            m.sessions_started += 1;
            m.target(&format!("{}/*", s.backend.name))
        });
        s.metric_gateway = metrics::with(|m| m.target("gateway"));
        log!(
            "[{}] session started ({} target(s){})",
            short_id(&sid),
            s.backend.targets.len(),
            if legacy { ", legacy SSE" } else { "" }
        );
        self.sessions.insert(sk, s);
        self.session_ids.insert(sid, sk);
        Ok(sk)
    }

    /// Streamable HTTP `initialize`: a new session whose id goes back on this POST's answer.
    fn begin_session(
        &mut self,
        id: usize,
        msg: Value,
        backend: Rc<McpBackend>,
        tls: Option<Rc<BackendTls>>,
        chunked: bool,
        keep_alive: bool,
    ) {
        let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
        let refused = if jsonrpc::classify(&msg).is_err() {
            Err((
                jsonrpc::INVALID_REQUEST,
                "invalid initialize request".to_string(),
            ))
        } else {
            self.create_session(backend, tls, false)
        };
        let sk = match refused {
            Ok(sk) => sk,
            Err((code, why)) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond_json(200, &[], &jsonrpc::error(client_id, code, &why), keep_alive);
                }
                return;
            }
        };
        let sid = self.sessions.get(&sk).map(|s| s.id.clone());
        if let Some(c) = self.conns.get_mut(&id) {
            if let (Some(a), Some(sid)) = (c.access.as_mut(), &sid) {
                a.session = short_id(sid).to_string();
            }
            c.state = ConnState::Exchange(Exchange {
                session: sk,
                remaining: 1,
                batch: false,
                streaming: false,
                collected: Vec::new(),
                session_header: sid,
                keep_alive,
            });
            c.chunked = chunked;
        }
        self.initialize_session(sk, id, msg);
    }

    /// The client's `initialize`: negotiates the version, starts every target and sends each
    /// its `initialize`. The answer goes to connection `reply` (the POST, or the legacy stream).
    fn initialize_session(&mut self, sk: u64, reply: usize, msg: Value) {
        let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if !s.targets.is_empty() {
            let e = jsonrpc::error(
                client_id,
                jsonrpc::INVALID_REQUEST,
                "session is already initialized",
            );
            return self.reply(Some(reply), e);
        }
        let mut params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
        if !params.is_object() {
            params = json!({});
        }
        let asked = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let version = if mcp::is_supported(asked) {
            asked
        } else {
            mcp::LATEST_VERSION
        }
        .to_string();
        params["protocolVersion"] = Value::String(version.clone());
        s.version = version;
        s.init_params = params.clone();
        let backend = Rc::clone(&s.backend);
        let tls = s.tls.clone();
        let sid = s.id.clone();
        let mut parts = Vec::new();
        for (t, target) in backend.targets.iter().enumerate() {
            let (slot, events) = self.start_target(sk, t, target, tls.as_deref(), &sid);
            if slot.state == TargetState::Starting {
                parts.push((t, Some(params.clone())));
            }
            if let Some(s) = self.sessions.get_mut(&sk) {
                s.targets.push(slot);
            }
            self.upstream_events(sk, t, events);
        }
        let timeout = self.cfg.limits.init_timeout;
        self.start_call(
            sk,
            Some(reply),
            client_id,
            "initialize",
            CallKind::Initialize,
            parts,
            timeout,
        );
    }

    /// Legacy HTTP+SSE (2024-11-05): `GET /sse` opens a session whose every message travels on
    /// this stream; the `endpoint` event tells the client where to POST.
    fn legacy_open(
        &mut self,
        id: usize,
        req: Request,
        backend: Rc<McpBackend>,
        tls: Option<Rc<BackendTls>>,
        keep_alive: bool,
    ) {
        let sk = match self.create_session(backend, tls, true) {
            Ok(sk) => sk,
            Err((_, why)) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.respond_text(503, &format!("{why}\n"), keep_alive);
                }
                return;
            }
        };
        let (Some(c), Some(s)) = (self.conns.get_mut(&id), self.sessions.get_mut(&sk)) else {
            return;
        };
        s.get_stream = Some(id);
        c.state = ConnState::Stream { session: sk };
        c.start_sse(&[], req.minor_version > 0);
        c.sse_event("endpoint", &format!("{}?sessionId={}", req.path, s.id));
        c.last_write = Instant::now();
    }

    /// Legacy HTTP+SSE: a message POSTed to the endpoint. Accepted with 202; every answer goes
    /// out on the session's stream.
    fn legacy_post(&mut self, id: usize, req: Request, keep_alive: bool) {
        let found = req
            .query_param("sessionId")
            .and_then(|sid| self.session_ids.get(sid))
            .copied();
        let stream = found
            .and_then(|sk| self.sessions.get(&sk))
            .filter(|s| s.legacy)
            .and_then(|s| s.get_stream);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let (Some(sk), Some(stream)) = (found, stream) else {
            let (status, why) = match req.query_param("sessionId") {
                None => (400, "sessionId query parameter is required\n"),
                Some(_) => (404, "Session not found\n"),
            };
            return c.respond_text(status, why, keep_alive);
        };
        let Some(body) = json_body(c, &req, keep_alive) else {
            return;
        };
        c.respond(
            202,
            &[("Content-Type", "text/plain")],
            b"Accepted",
            keep_alive,
        );
        if let Some(s) = self.sessions.get_mut(&sk) {
            s.last_active = Instant::now();
        }
        for m in body.messages {
            match jsonrpc::classify(&m) {
                Ok(Kind::Request) if jsonrpc::method(&m) == "initialize" => {
                    self.initialize_session(sk, stream, m)
                }
                Ok(kind) => self.client_message(sk, stream, kind, m),
                Err(why) => {
                    let rid = m
                        .get("id")
                        .filter(|i| i.is_string() || i.is_number())
                        .cloned();
                    let e =
                        jsonrpc::error(rid.unwrap_or(Value::Null), jsonrpc::INVALID_REQUEST, why);
                    self.reply(Some(stream), e);
                }
            }
        }
    }

    /// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`), answered here.
    fn preflight(&mut self, id: usize, req: &Request, cors: Option<&Cors>, keep_alive: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let origin = req.header("origin").unwrap_or("");
        let Some(cors) = cors
            .filter(|p| req.header("access-control-request-method").is_some() && p.allows(origin))
        else {
            c.extra.clear();
            return c.respond(
                204,
                &[("Allow", "GET, POST, DELETE, OPTIONS")],
                b"",
                keep_alive,
            );
        };
        let methods = if cors.allow_methods.is_empty() {
            "GET, POST, DELETE, OPTIONS".to_string()
        } else {
            cors.allow_methods.join(", ")
        };
        let headers =
            if cors.allow_headers.iter().any(|h| h == "*") || cors.allow_headers.is_empty() {
                // Echo what the browser asked for: `*` does not cover credentialed requests.
                req.header("access-control-request-headers")
                    .unwrap_or("")
                    .to_string()
            } else {
                cors.allow_headers.join(", ")
            };
        let max_age = cors.max_age.map(|m| m.to_string());
        let mut h: Vec<(&str, &str)> = vec![("Access-Control-Allow-Methods", &methods)];
        if !headers.is_empty() {
            h.push(("Access-Control-Allow-Headers", &headers));
        }
        if let Some(m) = &max_age {
            h.push(("Access-Control-Max-Age", m));
        }
        c.respond(204, &h, b"", keep_alive);
    }

    /// Starts one target for a session: spawns a stdio child, or prepares an HTTP client.
    fn start_target(
        &mut self,
        sk: u64,
        t: usize,
        target: &Target,
        tls: Option<&BackendTls>,
        sid: &str,
    ) -> (TargetSlot, Vec<UpEvent>) {
        let backend_name = self
            .sessions
            .get(&sk)
            .map_or("", |s| s.backend.name.as_str());
        let metric = metrics::with(|m| m.target(&format!("{backend_name}/{}", target.name)));
        let mut slot = TargetSlot {
            name: target.name.clone(),
            state: TargetState::Starting,
            child: None,
            http: None,
            tokens: [Token(usize::MAX); 3],
            init_result: None,
            metric,
        };
        let mut events = Vec::new();
        let backend = self
            .sessions
            .get(&sk)
            .map(|s| s.backend.name.clone())
            .unwrap_or_default();
        let key = (backend.clone(), target.name.clone());
        if let Some(h) = self.health.get(&key) {
            if let Some(at) = h.retry_at.filter(|at| *at > Instant::now()) {
                slot.state = TargetState::Failed(format!(
                    "not started: backing off for {:.1}s after {} failure(s); last: {}",
                    at.saturating_duration_since(Instant::now()).as_secs_f32(),
                    h.failures,
                    h.last_error.as_deref().unwrap_or("unknown")
                ));
                return (slot, events);
            }
        }
        match &target.kind {
            TargetKind::Stdio(cfg) => match StdioChild::spawn(cfg) {
                Ok(mut child) => {
                    slot.tokens = [
                        self.token(Owner::ChildIn(sk, t)),
                        self.token(Owner::ChildOut(sk, t)),
                        self.token(Owner::ChildErr(sk, t)),
                    ];
                    if let Err(e) = self.register_child(&mut child, slot.tokens) {
                        slot.state = TargetState::Failed(format!("cannot watch its pipes: {e}"));
                    }
                    slot.child = Some(child);
                }
                Err(e) => {
                    let why = format!("cannot start command {:?}: {e}", cfg.cmd);
                    log!("[{}] target {}: {why}", short_id(sid), target.name);
                    self.record_health(&backend, target, Err(&why));
                    metrics::with(|m| m.upstream_error(slot.metric, UpstreamError::Start));
                    slot.state = TargetState::Failed(why);
                }
            },
            TargetKind::Mcp(url) | TargetKind::Sse(url) => {
                let flavor = match target.kind {
                    TargetKind::Sse(_) => Flavor::Legacy,
                    _ => Flavor::Streamable,
                };
                let tls = match self.tls_for(url, tls) {
                    Ok(t) => t,
                    Err(why) => {
                        slot.state = TargetState::Failed(why);
                        return (slot, events);
                    }
                };
                let mut http = HttpTarget::new(
                    &target.name,
                    url,
                    flavor,
                    tls,
                    self.cfg.limits.request_timeout,
                );
                let mut reg = Reg {
                    registry: self.poll.registry(),
                    owners: &mut self.owners,
                    next_token: &mut self.next_token,
                    owner: Owner::Http(sk, t),
                };
                http.start(&mut reg, &mut events);
                slot.http = Some(http);
            }
        }
        (slot, events)
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

    /// Acts on what an HTTP target reported.
    fn upstream_events(&mut self, sk: u64, t: usize, events: Vec<UpEvent>) {
        for ev in events {
            match ev {
                UpEvent::Message(m) => self.target_message(sk, t, m),
                UpEvent::Answer(uid, result) => self.target_answer(sk, t, uid, result.get()),
                UpEvent::RequestFailed(uid, why) => {
                    let Some(s) = self.sessions.get_mut(&sk) else {
                        return;
                    };
                    let label = s.targets.get(t).map_or(s.metric_all, |x| x.metric);
                    metrics::with(|m| m.upstream_error(label, UpstreamError::Request));
                    let Some(cid) = s.upstream.remove(&uid) else {
                        continue;
                    };
                    let part = s
                        .calls
                        .get(&cid)
                        .and_then(|c| c.parts.iter().position(|p| p.1 == uid));
                    if let Some(part) = part {
                        let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why});
                        self.finish_part(sk, cid, part, Err(err));
                    }
                }
                UpEvent::Fatal(why) => self.target_failed(sk, t, &why),
                UpEvent::Log(line) => {
                    if let Some(s) = self.sessions.get(&sk) {
                        log!("[{}] {line}", short_id(&s.id));
                    }
                }
            }
        }
    }

    /// Runs `f` on a session's HTTP target with the loop's registry lent to it, then acts on
    /// what the target reported. None when there is no such HTTP target.
    fn with_http<R>(
        &mut self,
        sk: u64,
        t: usize,
        f: impl FnOnce(&mut HttpTarget, &mut Reg<'_>, &mut Vec<UpEvent>) -> R,
    ) -> Option<R> {
        let http = self
            .sessions
            .get_mut(&sk)?
            .targets
            .get_mut(t)?
            .http
            .as_mut()?;
        let mut reg = Reg {
            registry: self.poll.registry(),
            owners: &mut self.owners,
            next_token: &mut self.next_token,
            owner: Owner::Http(sk, t),
        };
        let mut events = Vec::new();
        let r = f(http, &mut reg, &mut events);
        self.upstream_events(sk, t, events);
        Some(r)
    }

    /// Readiness of one of an HTTP target's connections.
    fn http_ready(&mut self, sk: u64, t: usize, token: Token, closed: bool) {
        self.with_http(sk, t, |http, reg, events| {
            http.ready(reg, token, closed, events)
        });
    }

    /// Runs `f` on an ended session's HTTP target (its DELETE in flight) with the registry
    /// lent to it, and forgets the target once it is done.
    fn with_retired(&mut self, rid: u64, f: impl FnOnce(&mut HttpTarget, &mut Reg<'_>, Instant)) {
        let Some((http, deadline)) = self.retired.get_mut(&rid) else {
            return;
        };
        let mut reg = Reg {
            registry: self.poll.registry(),
            owners: &mut self.owners,
            next_token: &mut self.next_token,
            owner: Owner::Retired(rid),
        };
        f(http, &mut reg, *deadline);
        if http.is_done() {
            self.retired.remove(&rid);
        }
    }

    /// Readiness of a shut-down HTTP target's last connection (its DELETE).
    fn retired_ready(&mut self, rid: u64, token: Token, closed: bool) {
        self.with_retired(rid, |http, reg, _| {
            http.ready(reg, token, closed, &mut Vec::new())
        });
    }

    fn register_child(&mut self, child: &mut StdioChild, tokens: [Token; 3]) -> io::Result<()> {
        let r = self.poll.registry();
        if let Some(p) = child.stdin.as_mut() {
            r.register(p, tokens[0], Interest::WRITABLE)?;
        }
        if let Some(p) = child.stdout.as_mut() {
            r.register(p, tokens[1], Interest::READABLE)?;
        }
        if let Some(p) = child.stderr.as_mut() {
            r.register(p, tokens[2], Interest::READABLE)?;
        }
        Ok(())
    }

    /// Ends a session: pending calls get an error, the GET stream ends, children are told to
    /// exit (stdin closed) and killed if they do not.
    fn end_session(&mut self, sk: u64, why: &str) {
        let Some(mut s) = self.sessions.remove(&sk) else {
            return;
        };
        self.session_ids.remove(&s.id);
        log!("[{}] session ended: {why}", short_id(&s.id));
        let calls: Vec<Call> = s.calls.drain().map(|(_, c)| c).collect();
        for call in calls {
            let e = jsonrpc::error(
                call.client_id,
                jsonrpc::UPSTREAM_ERROR,
                &format!("session ended: {why}"),
            );
            self.reply(call.conn, e);
        }
        if let Some(g) = s.get_stream.take() {
            if let Some(c) = self.conns.get_mut(&g) {
                c.end_stream();
                c.state = ConnState::Idle;
                c.closing = true;
                self.wake.push(g);
            }
        }
        for slot in s.targets.iter_mut() {
            self.retire_child(slot);
        }
    }

    /// Deregisters a target's pipes, closes its stdin, and queues the child for reaping.
    fn retire_child(&mut self, slot: &mut TargetSlot) {
        if let Some(mut http) = slot.http.take() {
            let rid = self.next_retired;
            self.next_retired += 1;
            let mut reg = Reg {
                registry: self.poll.registry(),
                owners: &mut self.owners,
                next_token: &mut self.next_token,
                owner: Owner::Retired(rid),
            };
            http.shutdown(&mut reg);
            if !http.is_done() {
                self.retired
                    .insert(rid, (http, Instant::now() + RETIRE_GRACE));
            }
        }
        let Some(mut child) = slot.child.take() else {
            return;
        };
        let r = self.poll.registry();
        if let Some(mut p) = child.stdin.take() {
            let _ = r.deregister(&mut p);
        }
        if let Some(mut p) = child.stdout.take() {
            let _ = r.deregister(&mut p);
        }
        if let Some(mut p) = child.stderr.take() {
            let _ = r.deregister(&mut p);
        }
        for t in slot.tokens {
            self.owners.remove(&t);
        }
        let mut proc = child.child;
        if let Ok(None) = proc.try_wait() {
            self.dying.push(Dying {
                child: proc,
                kill_at: Instant::now() + CHILD_GRACE,
            });
        }
    }

    /// Reaps exited children: targets of live sessions are failed, dying ones forgotten.
    fn reap(&mut self) {
        let now = Instant::now();
        self.dying.retain_mut(|d| match d.child.try_wait() {
            Ok(Some(_)) | Err(_) => false,
            Ok(None) => {
                if now >= d.kill_at {
                    let _ = d.child.kill();
                }
                true
            }
        });
        let mut exited = Vec::new();
        for (&sk, s) in self.sessions.iter_mut() {
            for (t, slot) in s.targets.iter_mut().enumerate() {
                if let Some(ch) = slot.child.as_mut() {
                    if let Ok(Some(status)) = ch.child.try_wait() {
                        exited.push((sk, t, format!("exited ({status})")));
                    }
                }
            }
        }
        for (sk, t, why) in exited {
            // Answers the child wrote just before exiting may still sit in its stdout pipe:
            // read them first, so only requests that really lost their answer fail.
            self.child_stdout(sk, t, false);
            self.target_failed(sk, t, &why);
        }
    }

    /// Marks a target failed: its pending requests get an error naming it, later ones too.
    fn target_failed(&mut self, sk: u64, t: usize, why: &str) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(slot) = s.targets.get_mut(t) else {
            return;
        };
        if matches!(slot.state, TargetState::Failed(_))
            && slot.child.is_none()
            && slot.http.is_none()
        {
            return;
        }
        let name = slot.name.clone();
        warn!("[{}] target {name} failed: {why}", short_id(&s.id));
        let label = slot.metric;
        metrics::with(|m| m.upstream_error(label, UpstreamError::Target));
        if !matches!(slot.state, TargetState::Failed(_)) {
            slot.state = TargetState::Failed(why.to_string());
        }
        let mut slot_taken = std::mem::replace(
            slot,
            TargetSlot {
                name: name.clone(),
                state: TargetState::Failed(why.to_string()),
                child: None,
                http: None,
                metric: slot.metric,
                tokens: [Token(usize::MAX); 3],
                init_result: None,
            },
        );
        s.server_requests.retain(|_, (target, _)| *target != t);
        let mut hits = Vec::new();
        for (&cid, call) in s.calls.iter() {
            for (i, (target, uid, r)) in call.parts.iter().enumerate() {
                if *target == t && r.is_none() {
                    hits.push((cid, i, *uid));
                }
            }
        }
        let was_ready = s.phase == Phase::Ready && slot_taken.state != TargetState::Starting;
        let backend = Rc::clone(&s.backend);
        let all_failed = s.phase == Phase::Ready
            && s.targets
                .iter()
                .all(|x| matches!(x.state, TargetState::Failed(_)));
        if all_failed {
            log!("[{}] session failed: no target left", short_id(&s.id));
        }
        self.retire_child(&mut slot_taken);
        if was_ready {
            if let Some(target) = backend.targets.get(t) {
                self.record_health(&backend.name, target, Err(why));
            }
        }
        let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": format!("target {name} failed: {why}")});
        for (cid, part, uid) in hits {
            if let Some(s) = self.sessions.get_mut(&sk) {
                s.upstream.remove(&uid);
            }
            self.finish_part(sk, cid, part, Err(err.clone()));
        }
    }

    // ---- messages from the client --------------------------------------------------------

    fn client_message(&mut self, sk: u64, conn: usize, kind: Kind, msg: Value) {
        match kind {
            Kind::Request => self.client_request(sk, conn, msg),
            Kind::Notification => self.client_notification(sk, msg),
            Kind::Response => self.client_response(sk, msg),
        }
    }

    fn client_request(&mut self, sk: u64, conn: usize, mut msg: Value) {
        let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).to_string();
        let params = msg.get_mut("params").map(Value::take);
        let Some(s) = self.sessions.get(&sk) else {
            return;
        };
        let gateway = s.metric_gateway;
        // A request the gateway answers with an error itself: counted against `gateway`.
        let refuse = |gw: &mut Gateway, code: i64, why: &str| {
            metrics::with(|m| m.request(&method, gateway, Outcome::Error, Duration::ZERO));
            gw.reply(Some(conn), jsonrpc::error(client_id.clone(), code, why));
        };
        if method == "initialize" {
            return refuse(
                self,
                jsonrpc::INVALID_REQUEST,
                "session is already initialized",
            );
        }
        if s.calls.len() >= self.cfg.limits.max_inflight {
            return refuse(
                self,
                jsonrpc::UPSTREAM_ERROR,
                "too many requests in flight for this session",
            );
        }
        let timeout = self.cfg.limits.request_timeout;
        match s.naming.route(&method, params.as_ref()) {
            Ok(Dest::Local) => {
                metrics::with(|m| m.request(&method, gateway, Outcome::Ok, Duration::ZERO));
                self.reply(Some(conn), jsonrpc::result(client_id.clone(), json!({})))
            }
            Ok(Dest::One(t, p)) => {
                if let Some(a) = self.conns.get_mut(&conn).and_then(|c| c.access.as_mut()) {
                    a.target = s.naming.targets.get(t).cloned().unwrap_or_default();
                }
                if let Some(TargetState::Failed(why)) = s.targets.get(t).map(|x| &x.state) {
                    let why = format!("target {} is unavailable: {why}", s.naming.targets[t]);
                    return refuse(self, jsonrpc::UPSTREAM_ERROR, &why);
                }
                self.start_call(
                    sk,
                    Some(conn),
                    client_id,
                    &method,
                    CallKind::Forward,
                    vec![(t, p)],
                    timeout,
                );
            }
            Ok(Dest::All) => {
                let cursor = match params.as_ref().and_then(|p| p.get("cursor")) {
                    None | Some(Value::Null) => Ok(None),
                    // Shared bare names come as one whole page: no cursor is ever handed out.
                    Some(Value::String(c)) if !s.naming.shared() => Ok(Some(c.as_str())),
                    Some(_) => Err("invalid cursor".to_string()),
                };
                let pages = match cursor.and_then(|c| aggregate::decode_cursor(c, s.targets.len()))
                {
                    Ok(p) => p,
                    Err(why) => return refuse(self, jsonrpc::INVALID_PARAMS, &why),
                };
                let mut parts = Vec::new();
                for (t, cur) in pages {
                    if s.targets.get(t).map(|x| &x.state) != Some(&TargetState::Ready) {
                        continue;
                    }
                    let mut p = params.clone().unwrap_or_else(|| json!({}));
                    if let Value::Object(o) = &mut p {
                        match cur {
                            Some(c) => o.insert("cursor".into(), Value::String(c)),
                            None => o.remove("cursor"),
                        };
                    }
                    parts.push((t, Some(p)));
                }
                self.start_call(
                    sk,
                    Some(conn),
                    client_id,
                    &method,
                    CallKind::FanOut,
                    parts,
                    timeout,
                );
            }
            Err(why) => refuse(self, jsonrpc::INVALID_PARAMS, &why),
        }
    }

    fn client_notification(&mut self, sk: u64, msg: Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        match jsonrpc::method(&msg) {
            "notifications/cancelled" => {
                let Some(rid) = msg.pointer("/params/requestId") else {
                    return;
                };
                if let Some(&call) = s.by_client_id.get(&jsonrpc::id_key(rid)) {
                    let reason = msg
                        .pointer("/params/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("cancelled by the client");
                    let reason = reason.to_string();
                    self.cancel_call(sk, call, &reason);
                }
            }
            m => {
                if m == "notifications/initialized" {
                    s.phase = Phase::Ready;
                }
                let ready: Vec<usize> = (0..s.targets.len())
                    .filter(|&t| s.targets[t].state == TargetState::Ready)
                    .collect();
                for t in ready {
                    self.send_to_target(sk, t, &msg);
                }
            }
        }
    }

    /// The client's answer to a server-to-client request goes back to the target that asked,
    /// with the target's own id.
    fn client_response(&mut self, sk: u64, mut msg: Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(gid) = msg.get("id").and_then(Value::as_u64) else {
            return;
        };
        let Some((t, orig)) = s.server_requests.remove(&gid) else {
            log!(
                "[{}] answer to an unknown request id {gid} dropped",
                short_id(&s.id)
            );
            return;
        };
        msg["id"] = orig;
        self.send_to_target(sk, t, &msg);
    }

    /// Sends one upstream request per part and records the call.
    #[allow(clippy::too_many_arguments)]
    fn start_call(
        &mut self,
        sk: u64,
        conn: Option<usize>,
        client_id: Value,
        method: &str,
        kind: CallKind,
        parts: Vec<(usize, Option<Value>)>,
        timeout: Duration,
    ) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let cid = s.alloc_id();
        let exhaust = (kind == CallKind::FanOut
            && s.naming.shared()
            && aggregate::list_shape(method).is_some())
        .then(|| {
            parts
                .first()
                .and_then(|(_, p)| p.clone())
                .unwrap_or_else(|| json!({}))
        });
        let mut progress = None;
        let mut sends = Vec::new();
        let mut call_parts = Vec::new();
        for (t, mut params) in parts {
            let uid = s.alloc_id();
            // Progress tokens become the upstream request id, so a progress notification
            // finds its call with one lookup and no target sees another's token.
            if let Some(tok) = params
                .as_mut()
                .and_then(|p| p.pointer_mut("/_meta/progressToken"))
            {
                progress = Some(std::mem::replace(tok, json!(uid)));
            }
            s.upstream.insert(uid, cid);
            sends.push((t, jsonrpc::request(json!(uid), method, params)));
            call_parts.push((t, uid, None));
        }
        let remaining = call_parts.len();
        s.by_client_id.insert(jsonrpc::id_key(&client_id), cid);
        s.calls.insert(
            cid,
            Call {
                conn,
                client_id,
                method: method.to_string(),
                kind,
                parts: call_parts,
                remaining,
                progress,
                deadline: Instant::now() + timeout,
                exhaust,
                started: Instant::now(),
            },
        );
        if remaining == 0 {
            self.complete_call(sk, cid);
            return;
        }
        for (i, (t, req)) in sends.into_iter().enumerate() {
            if let Err(why) = self.try_send(sk, t, &req) {
                let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why});
                self.finish_part(sk, cid, i, Err(err));
            }
        }
    }

    fn try_send(&mut self, sk: u64, t: usize, msg: &Value) -> Result<(), String> {
        let s = self.sessions.get_mut(&sk).ok_or("session ended")?;
        let slot = s.targets.get_mut(t).ok_or("no such target")?;
        if slot.http.is_some() {
            let sent = self.with_http(sk, t, |http, reg, events| http.send(reg, msg, events));
            return sent.unwrap_or_else(|| Err("target is not running".into()));
        }
        let Some(child) = slot.child.as_mut() else {
            return Err(format!("target {} is not running", slot.name));
        };
        if let Err(e) = child.send_json(msg) {
            let why = format!("cannot write to target {}: {e}", slot.name);
            self.target_failed(sk, t, &why);
            return Err(why);
        }
        Ok(())
    }

    fn send_to_target(&mut self, sk: u64, t: usize, msg: &Value) {
        let _ = self.try_send(sk, t, msg);
    }

    /// Drops a call: each upstream still working on it is told `notifications/cancelled`.
    fn cancel_call(&mut self, sk: u64, cid: u64, reason: &str) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.remove(&cid) else {
            return;
        };
        s.by_client_id.remove(&jsonrpc::id_key(&call.client_id));
        let mut notes = Vec::new();
        for (t, uid, r) in &call.parts {
            s.upstream.remove(uid);
            if r.is_none() && call.kind != CallKind::Initialize {
                let n = jsonrpc::notification(
                    "notifications/cancelled",
                    Some(json!({"requestId": uid, "reason": reason})),
                );
                notes.push((*t, n));
            }
        }
        for (t, n) in notes {
            self.send_to_target(sk, t, &n);
        }
        // The client will not get an answer for a cancelled request; its POST ends without it.
        if let Some(conn) = call.conn {
            self.settle(conn, None);
        }
    }

    fn call_timeout(&mut self, sk: u64, cid: u64) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.get(&cid) else {
            return;
        };
        let pending: Vec<(usize, usize)> = call
            .parts
            .iter()
            .enumerate()
            .filter(|(_, (_, _, r))| r.is_none())
            .map(|(i, (t, _, _))| (i, *t))
            .collect();
        warn!("[{}] {} timed out", short_id(&s.id), call.method);
        for (i, t) in pending {
            let Some(s) = self.sessions.get_mut(&sk) else {
                return;
            };
            let name = s.naming.targets.get(t).cloned().unwrap_or_default();
            let label = s.targets.get(t).map_or(s.metric_all, |x| x.metric);
            metrics::with(|m| m.upstream_error(label, UpstreamError::Timeout));
            let uid = s.calls.get(&cid).map(|c| c.parts[i].1);
            if let Some(uid) = uid {
                s.upstream.remove(&uid);
                let n = jsonrpc::notification(
                    "notifications/cancelled",
                    Some(json!({"requestId": uid, "reason": "timed out in the gateway"})),
                );
                self.send_to_target(sk, t, &n);
            }
            let err = json!({"code": jsonrpc::REQUEST_TIMEOUT, "message": format!("target {name} did not answer in time")});
            self.finish_part(sk, cid, i, Err(err));
        }
    }

    fn finish_part(&mut self, sk: u64, cid: u64, part: usize, r: Result<Value, Value>) {
        let Some(call) = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.calls.get_mut(&cid))
        else {
            return;
        };
        let Some(slot) = call.parts.get_mut(part) else {
            return;
        };
        if slot.2.is_some() {
            return;
        }
        // With shared bare names, a list is only right once every page of every target is in:
        // follow the target's cursor before answering.
        let next = match (&r, &call.exhaust) {
            (Ok(v), Some(params)) => v
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(|c| (slot.0, c.to_string(), params.clone())),
            _ => None,
        };
        slot.2 = Some(r);
        call.remaining -= 1;
        if let Some((t, cursor, mut params)) = next {
            let method = call.method.clone();
            let Some(s) = self.sessions.get_mut(&sk) else {
                return;
            };
            let uid = s.alloc_id();
            s.upstream.insert(uid, cid);
            let Some(call) = s.calls.get_mut(&cid) else {
                return;
            };
            call.parts.push((t, uid, None));
            call.remaining += 1;
            let index = call.parts.len() - 1;
            params["cursor"] = Value::String(cursor);
            let req = jsonrpc::request(json!(uid), &method, Some(params));
            if let Err(why) = self.try_send(sk, t, &req) {
                let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why});
                self.finish_part(sk, cid, index, Err(err));
            }
            return;
        }
        if call.remaining == 0 {
            self.complete_call(sk, cid);
        }
    }

    fn complete_call(&mut self, sk: u64, cid: u64) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some((call, label)) = s.take_call(cid) else {
            return;
        };
        let failed = call.parts.iter().all(|(_, _, r)| matches!(r, Some(Err(_))));
        let outcome = if failed && !call.parts.is_empty() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        metrics::with(|m| m.request(&call.method, label, outcome, call.started.elapsed()));
        let answer = match call.kind {
            CallKind::Forward => match call.parts.into_iter().next() {
                Some((t, _, Some(Ok(mut v)))) => {
                    aggregate::prefix_result_uris(&mut v, t, &s.naming);
                    jsonrpc::result(call.client_id, v)
                }
                Some((_, _, Some(Err(e)))) => jsonrpc::error_answer(call.client_id, e),
                _ => jsonrpc::error(call.client_id, jsonrpc::INTERNAL_ERROR, "no answer"),
            },
            CallKind::FanOut => {
                let mut ok = Vec::with_capacity(call.parts.len());
                let mut first_err = None;
                for (t, _, r) in call.parts {
                    match r {
                        Some(Ok(v)) => ok.push((t, v)),
                        Some(Err(e)) if first_err.is_none() => first_err = Some(e),
                        _ => {}
                    }
                }
                match (ok.is_empty(), first_err) {
                    (true, Some(e)) => jsonrpc::error_answer(call.client_id, e),
                    _ if call.method == "logging/setLevel" => {
                        jsonrpc::result(call.client_id, json!({}))
                    }
                    _ => jsonrpc::result(
                        call.client_id,
                        aggregate::merge_list(&call.method, ok, &mut s.naming),
                    ),
                }
            }
            CallKind::Initialize => return self.complete_init(sk, call),
        };
        self.reply(call.conn, answer);
    }

    fn complete_init(&mut self, sk: u64, call: Call) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let mut outcomes = Vec::new();
        for (t, _, r) in &call.parts {
            let Some(slot) = s.targets.get_mut(*t) else {
                continue;
            };
            match r {
                Some(Ok(v)) => {
                    slot.state = TargetState::Ready;
                    slot.init_result = Some(v.clone());
                    outcomes.push((*t, None));
                }
                Some(Err(e)) => {
                    let msg = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("initialize failed");
                    slot.state = TargetState::Failed(msg.to_string());
                    outcomes.push((*t, Some(msg.to_string())));
                }
                None => {}
            }
        }
        let backend = Rc::clone(&s.backend);
        for (t, failure) in outcomes {
            if let Some(target) = backend.targets.get(t) {
                self.record_health(
                    &backend.name,
                    target,
                    failure.as_deref().map_or(Ok(()), Err),
                );
            }
        }
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let failed: Vec<String> = s
            .targets
            .iter()
            .filter_map(|slot| match &slot.state {
                // Upstream errors often name the target already.
                TargetState::Failed(why) if why.starts_with(&format!("target {}", slot.name)) => {
                    Some(why.clone())
                }
                TargetState::Failed(why) => Some(format!("target {}: {why}", slot.name)),
                _ => None,
            })
            .collect();
        let ready = s
            .targets
            .iter()
            .filter(|x| x.state == TargetState::Ready)
            .count();
        if ready == 0 || (!failed.is_empty() && s.backend.failure_mode == FailureMode::FailClosed) {
            let why = format!("initialize failed: {}", failed.join("; "));
            let e = jsonrpc::error(call.client_id, jsonrpc::UPSTREAM_ERROR, &why);
            if let Some(c) = call.conn.and_then(|c| self.conns.get_mut(&c)) {
                if let ConnState::Exchange(ex) = &mut c.state {
                    ex.session_header = None;
                }
            }
            self.reply(call.conn, e);
            self.end_session(sk, &why);
            return;
        }
        for f in &failed {
            log!("[{}] continuing without {f} (failOpen)", short_id(&s.id));
        }
        let parts: Vec<Part<'_>> = s
            .targets
            .iter()
            .enumerate()
            .filter_map(|(t, slot)| {
                slot.init_result.as_ref().map(|r| Part {
                    target: t,
                    result: r,
                })
            })
            .collect();
        // One target: keep the version it chose if we speak it; else the client's (or ours).
        let version = match parts.as_slice() {
            [only] => only
                .result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .filter(|v| mcp::is_supported(v))
                .unwrap_or(&s.version)
                .to_string(),
            _ => s.version.clone(),
        };
        let merged = aggregate::merge_initialize(&parts, &s.naming, &version);
        s.version = version;
        log!(
            "[{}] session ready (protocol {})",
            short_id(&s.id),
            s.version
        );
        let backlog: Vec<Value> = s.backlog.drain(..).collect();
        let stream = s.get_stream;
        self.reply(call.conn, jsonrpc::result(call.client_id, merged));
        // What targets said during initialization waits for a stream; a legacy session has
        // had one all along.
        match stream.and_then(|g| self.conns.get_mut(&g)) {
            Some(c) => {
                for m in &backlog {
                    c.sse_message(m);
                }
                let _ = c.flush();
            }
            None => {
                if let Some(s) = self.sessions.get_mut(&sk) {
                    s.backlog.extend(backlog);
                }
            }
        }
    }

    /// Delivers one answer to the POST that asked for it.
    fn reply(&mut self, conn: Option<usize>, msg: Value) {
        if let Some(id) = conn {
            // serde_json's writer, not Display: that goes through fmt::Write, byte run by byte run.
            self.settle(id, Some(serde_json::to_string(&msg).unwrap_or_default()));
        }
    }

    /// Accounts for one answer (or a cancelled request) of a POST; ends the POST's response
    /// when it was the last.
    fn settle(&mut self, id: usize, msg: Option<String>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let ConnState::Stream { .. } = c.state {
            // A legacy session: answers travel on its stream like everything else.
            if let Some(m) = msg {
                c.sse_json(&m);
                c.last_write = Instant::now();
                if c.flush().is_err() || c.unwritten() > MAX_UNWRITTEN {
                    self.close_conn(id);
                }
            }
            return;
        }
        let ConnState::Exchange(ex) = &mut c.state else {
            return;
        };
        if let Some(m) = msg {
            if ex.streaming {
                c.sse_json(&m);
            } else {
                ex.collected.push(m);
            }
        }
        let ConnState::Exchange(ex) = &mut c.state else {
            return;
        };
        ex.remaining = ex.remaining.saturating_sub(1);
        if ex.remaining > 0 {
            let _ = c.flush();
            return;
        }
        let ConnState::Exchange(ex) = std::mem::replace(&mut c.state, ConnState::Idle) else {
            return;
        };
        if ex.streaming {
            c.end_stream();
            if !ex.keep_alive {
                c.closing = true;
            }
        } else {
            let mut headers = Vec::new();
            if let Some(sid) = &ex.session_header {
                headers.push(("Mcp-Session-Id", sid.as_str()));
            }
            let mut collected = ex.collected;
            match (ex.batch, collected.len()) {
                (_, 0) => c.respond(202, &headers, b"", ex.keep_alive),
                (false, _) => {
                    c.respond_json_text(200, &headers, &collected.swap_remove(0), ex.keep_alive)
                }
                (true, _) => {
                    let array = format!("[{}]", collected.join(","));
                    c.respond_json_text(200, &headers, &array, ex.keep_alive)
                }
            }
        }
        self.wake.push(id);
    }

    // ---- messages from targets -----------------------------------------------------------

    fn child_writable(&mut self, sk: u64, t: usize) {
        let Some(child) = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.targets.get_mut(t))
            .and_then(|x| x.child.as_mut())
        else {
            return;
        };
        if let Err(e) = child.flush() {
            self.target_failed(sk, t, &format!("cannot write to it: {e}"));
        }
    }

    fn child_stdout(&mut self, sk: u64, t: usize, short_read_drains: bool) {
        let max = self.cfg.limits.max_stdio_line;
        let Some(child) = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.targets.get_mut(t))
            .and_then(|x| x.child.as_mut())
        else {
            return;
        };
        let mut lines = Vec::new();
        let outcome = child.read_stdout(max, short_read_drains, |l| lines.push(l.to_vec()));
        for l in lines {
            self.target_line(sk, t, &l);
        }
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof => self.target_failed(sk, t, "closed its stdout (exited)"),
            ReadOutcome::LineTooLong => {
                self.target_failed(sk, t, &format!("wrote a line over {max} bytes"))
            }
        }
    }

    fn child_stderr(&mut self, sk: u64, t: usize) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let sid = short_id(&s.id).to_string();
        let Some(slot) = s.targets.get_mut(t) else {
            return;
        };
        let name = slot.name.clone();
        let Some(child) = slot.child.as_mut() else {
            return;
        };
        let outcome = child.read_stderr(|l| log!("[{sid}] {name}: {}", String::from_utf8_lossy(l)));
        if outcome == ReadOutcome::Eof {
            if let Some(mut p) = child.stderr.take() {
                let _ = self.poll.registry().deregister(&mut p);
            }
        }
    }

    fn target_line(&mut self, sk: u64, t: usize, line: &[u8]) {
        if let Some(a) = jsonrpc::raw_answer(line) {
            return self.target_answer(sk, t, a.id, a.result.get());
        }
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        match serde_json::from_slice(line) {
            Ok(msg) => self.target_message(sk, t, msg),
            Err(_) => {
                let name = s.naming.targets.get(t).cloned().unwrap_or_default();
                log!(
                    "[{}] {name}: ignored a stdout line that is not JSON: {}",
                    short_id(&s.id),
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                );
            }
        }
    }

    /// A target's success answer to upstream request `uid`, its result still text: relayed as
    /// it is when it can be, else parsed (the result alone) for the general path.
    fn target_answer(&mut self, sk: u64, t: usize, uid: u64, result: &str) {
        if self.relay_result(sk, t, uid, result) {
            return;
        }
        // It parsed as JSON already, so this cannot fail; if it did, the answer is dropped
        // like any unparsable line.
        if let Ok(v) = serde_json::from_str(result) {
            self.target_message(sk, t, jsonrpc::result(Value::from(uid), v));
        }
    }

    /// The common case without a `Value` tree: a successful answer to a call forwarded to one
    /// target, whose result needs no rewriting, is the client's id spliced in front of the
    /// target's `result` text. Returns false (nothing done) for anything else, which then takes
    /// the general path. `uid` and `result` come from `jsonrpc::raw_answer`.
    fn relay_result(&mut self, sk: u64, t: usize, uid: u64, result: &str) -> bool {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return false;
        };
        let Some(&cid) = s.upstream.get(&uid) else {
            return false;
        };
        let plain = |c: &Call| {
            c.kind == CallKind::Forward
                && c.parts.len() == 1
                && c.parts[0].0 == t
                && c.exhaust.is_none()
                // Only `uri` fields are ever rewritten (see aggregate::prefix_result_uris).
                && (!s.naming.prefixed || !result.contains("\"uri\""))
        };
        if !s.calls.get(&cid).is_some_and(plain) {
            return false;
        }
        s.upstream.remove(&uid);
        let Some((call, label)) = s.take_call(cid) else {
            return false;
        };
        metrics::with(|m| m.request(&call.method, label, Outcome::Ok, call.started.elapsed()));
        if let Some(conn) = call.conn {
            let mut text = String::with_capacity(result.len() + 48);
            text.push_str(r#"{"jsonrpc":"2.0","id":"#);
            text.push_str(&call.client_id.to_string());
            text.push_str(r#","result":"#);
            text.push_str(result);
            text.push('}');
            self.settle(conn, Some(text));
        }
        true
    }

    /// One JSON-RPC message from a target, whatever its transport.
    fn target_message(&mut self, sk: u64, t: usize, mut msg: Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        match jsonrpc::classify(&msg) {
            Ok(Kind::Response) => {
                let Some(uid) = msg.get("id").and_then(Value::as_u64) else {
                    return;
                };
                let Some(&cid) = s.upstream.get(&uid) else {
                    return; // late answer to a cancelled or timed-out request
                };
                // Only the target that was asked can answer (ids are per session, not per
                // target, and easy to guess).
                let Some(part) = s
                    .calls
                    .get(&cid)
                    .and_then(|c| c.parts.iter().position(|p| p.1 == uid && p.0 == t))
                else {
                    return;
                };
                s.upstream.remove(&uid);
                let r = match msg.get_mut("error") {
                    Some(e) => Err(e.take()),
                    None => Ok(msg
                        .get_mut("result")
                        .map(Value::take)
                        .unwrap_or(Value::Null)),
                };
                self.finish_part(sk, cid, part, r);
            }
            Ok(Kind::Request) => {
                let gid = s.alloc_id();
                let orig = std::mem::replace(&mut msg["id"], json!(gid));
                s.server_requests.insert(gid, (t, orig));
                self.deliver(sk, msg, Hint::Target(t));
            }
            Ok(Kind::Notification) => self.target_notification(sk, t, msg),
            Err(why) => log!(
                "[{}] target sent an invalid message ({why}); ignored",
                short_id(&s.id)
            ),
        }
    }

    fn target_notification(&mut self, sk: u64, t: usize, mut msg: Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let mut hint = Hint::Target(t);
        match jsonrpc::method(&msg) {
            "notifications/progress" => {
                let Some(tok) = msg.pointer_mut("/params/progressToken") else {
                    return;
                };
                let call = tok.as_u64().and_then(|u| s.upstream.get(&u)).copied();
                let Some(cid) = call else {
                    return; // a token this session never handed out
                };
                let Some(client_tok) = s.calls.get(&cid).and_then(|c| c.progress.clone()) else {
                    return;
                };
                *tok = client_tok;
                hint = Hint::Call(cid);
            }
            "notifications/cancelled" => {
                // The target withdraws one of its requests to the client: translate its id.
                let rid = msg
                    .pointer("/params/requestId")
                    .cloned()
                    .unwrap_or(Value::Null);
                let gid = s
                    .server_requests
                    .iter()
                    .find(|(_, (tt, o))| *tt == t && *o == rid)
                    .map(|(g, _)| *g);
                let Some(gid) = gid else {
                    return;
                };
                s.server_requests.remove(&gid);
                msg["params"]["requestId"] = json!(gid);
            }
            "notifications/resources/updated" => {
                if let Some(Value::String(u)) = msg.pointer_mut("/params/uri") {
                    *u = s.naming.prefix_uri(t, u);
                }
            }
            _ => {}
        }
        self.deliver(sk, msg, hint);
    }

    /// Sends a server-to-client message on the best stream: the POST it relates to while that
    /// is in flight, else the GET stream, else the backlog for a GET stream to come.
    fn deliver(&mut self, sk: u64, msg: Value, hint: Hint) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let call = match hint {
            Hint::Call(cid) => Some(cid),
            Hint::Target(t) => s.newest_call_on(t),
        };
        let post_conn = call.and_then(|cid| s.calls.get(&cid)).and_then(|c| c.conn);
        let init = s.phase == Phase::Initializing
            && s.calls.values().any(|c| c.kind == CallKind::Initialize);
        let target_conn = if init {
            None
        } else {
            post_conn.or(s.get_stream)
        };
        let Some(id) = target_conn.filter(|id| self.conns.contains_key(id)) else {
            s.push_backlog(msg);
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut c.state {
            ConnState::Exchange(ex) if ex.session == sk => {
                if !ex.streaming {
                    ex.streaming = true;
                    let collected = std::mem::take(&mut ex.collected);
                    let sid = ex.session_header.clone();
                    let headers: Vec<(&str, &str)> =
                        sid.iter().map(|v| ("Mcp-Session-Id", v.as_str())).collect();
                    let chunked = c.chunked;
                    c.start_sse(&headers, chunked);
                    for m in &collected {
                        c.sse_json(m);
                    }
                }
                c.sse_message(&msg);
            }
            ConnState::Stream { session } if *session == sk => {
                c.sse_message(&msg);
                c.last_write = Instant::now();
            }
            _ => {
                s.push_backlog(msg);
                return;
            }
        }
        if c.flush().is_err() || c.unwritten() > MAX_UNWRITTEN {
            self.close_conn(id);
        }
    }

    // ---- time ----------------------------------------------------------------------------

    fn sweep(&mut self, now: Instant) {
        let header_timeout = self.cfg.limits.header_timeout;
        let mut close = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            match c.state {
                ConnState::Idle => {
                    let slow = c
                        .request_started
                        .is_some_and(|t| now.duration_since(t) >= header_timeout);
                    if slow {
                        c.respond_text(408, "request timeout\n", false);
                        let _ = c.flush();
                        close.push(id);
                    } else if c.rbuf.is_empty()
                        && now.duration_since(c.last_active) >= IDLE_CONN_TIMEOUT
                    {
                        close.push(id);
                    }
                }
                ConnState::Stream { .. } => {
                    if now.duration_since(c.last_write) >= STREAM_KEEPALIVE {
                        c.sse_comment("keepalive");
                        c.last_write = now;
                        if c.flush().is_err() {
                            close.push(id);
                        }
                    }
                }
                ConnState::Exchange(_) => {}
            }
        }
        for id in close {
            self.close_conn(id);
        }
        let ttl = self.cfg.limits.session_ttl;
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.get_stream.is_none()
                    && s.calls.is_empty()
                    && now.duration_since(s.last_active) >= ttl
            })
            .map(|(k, _)| *k)
            .collect();
        for sk in expired {
            self.end_session(sk, "idle for longer than sessionTtl");
        }
        // Call deadlines are checked here rather than with one timer per call: a second's
        // precision is plenty, and the timer queue stays small under load.
        let late: Vec<(u64, u64)> = self
            .sessions
            .iter()
            .flat_map(|(&sk, s)| {
                s.calls
                    .iter()
                    .filter(|(_, c)| c.deadline <= now)
                    .map(move |(&cid, _)| (sk, cid))
            })
            .collect();
        for (sk, cid) in late {
            self.call_timeout(sk, cid);
        }
        if !self.dying.is_empty() {
            self.reap();
        }
        self.tick_http(now);
        if self.watch {
            if let Some(path) = &self.config_path {
                if file_mtime(path) != self.config_mtime {
                    self.reload("config file changed");
                }
            }
        }
        // After a burst, hand back the tables it grew: a large live table can sit at the top
        // of the heap, and glibc returns memory to the system only from there.
        shrink_if_sparse(&mut self.owners);
        shrink_if_sparse(&mut self.conns);
        shrink_if_sparse(&mut self.sessions);
        shrink_if_sparse(&mut self.session_ids);
        shrink_if_sparse(&mut self.retired);
        if self
            .trimmer
            .after_sweep(self.sessions.len() + self.conns.len())
        {
            log!(
                "returned free memory to the system ({} sessions, {} connections left)",
                self.sessions.len(),
                self.conns.len()
            );
        }
    }

    /// Deadlines of HTTP targets: connects, responses, idle connections, stream retries.
    fn tick_http(&mut self, now: Instant) {
        let targets: Vec<(u64, usize)> = self
            .sessions
            .iter()
            .flat_map(|(&sk, s)| {
                s.targets
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.http.is_some())
                    .map(move |(t, _)| (sk, t))
            })
            .collect();
        for (sk, t) in targets {
            self.with_http(sk, t, |http, reg, events| http.tick(reg, now, events));
        }
        let rids: Vec<u64> = self.retired.keys().copied().collect();
        for rid in rids {
            self.with_retired(rid, |http, reg, deadline| {
                http.tick(reg, now, &mut Vec::new());
                if deadline <= now {
                    http.abort(reg);
                }
            });
        }
    }

    /// Stops accepting, ends every session, gives children a moment to exit on stdin EOF,
    /// kills the rest and reaps them all.
    fn shutdown(&mut self) {
        log!("shutting down");
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        let keys: Vec<u64> = self.sessions.keys().copied().collect();
        for sk in keys {
            self.end_session(sk, "gateway shutting down");
        }
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                let _ = c.flush();
            }
            self.close_conn(id);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut events = Events::with_capacity(64);
        // Children exit on stdin EOF; HTTP targets finish their DELETE upstream.
        while (!self.dying.is_empty() || !self.retired.is_empty()) && Instant::now() < deadline {
            self.dying
                .retain_mut(|d| matches!(d.child.try_wait(), Ok(None)));
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(20)));
            let ready: Vec<(Token, bool)> = events
                .iter()
                .map(|e| (e.token(), e.is_read_closed() || e.is_error()))
                .collect();
            for (token, closed) in ready {
                match self.owners.get(&token).copied() {
                    Some(Owner::Retired(rid)) => self.retired_ready(rid, token, closed),
                    Some(Owner::Signal) => {
                        let _ = self.signals.take();
                    }
                    _ => {}
                }
            }
        }
        for mut d in self.dying.drain(..) {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        log!("stopped");
    }
}

/// The JSON-RPC body of a POST: 415 for another Content-Type, 400 with a JSON-RPC parse error
/// for bad JSON (both answered here, None returned). Notes the MCP method for the access log.
fn json_body(c: &mut Conn, req: &Request, keep_alive: bool) -> Option<jsonrpc::Body> {
    if !media_type_is(req.header("content-type").unwrap_or(""), "application/json") {
        c.respond_text(415, "Content-Type must be application/json\n", keep_alive);
        return None;
    }
    match jsonrpc::parse_body(&req.body) {
        Ok(body) => {
            note_mcp_method(c, &body);
            Some(body)
        }
        Err(e) => {
            c.respond_json(400, &[], &e, keep_alive);
            None
        }
    }
}

/// Records the MCP method of a POST for the access log.
fn note_mcp_method(c: &mut Conn, body: &jsonrpc::Body) {
    if let Some(a) = c.access.as_mut() {
        a.mcp_method = match body.messages.as_slice() {
            [one] => jsonrpc::method(one).to_string(),
            many => format!("batch({})", many.len()),
        };
    }
}

/// Shrinks a map that uses under a quarter of a large capacity.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    m: &mut HashMap<K, V, S>,
) {
    if m.capacity() > 256 && m.len() * 4 < m.capacity() {
        m.shrink_to_fit();
    }
}

fn file_mtime(path: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The route for a request on a bind: first match in config order.
fn find_route<'a>(
    bind: &'a crate::config::Bind,
    host: &str,
    req: &RequestView<'_>,
) -> Option<&'a Route> {
    bind.listeners
        .iter()
        .filter(|l| l.hostname.as_deref().is_none_or(|h| host_matches(h, host)))
        .flat_map(|l| l.routes.iter())
        .find(|r| {
            (r.hostnames.is_empty() || r.hostnames.iter().any(|h| host_matches(h, host)))
                && r.matches(req)
        })
}

/// The CORS headers for an allowed origin's actual (non-preflight) request.
fn cors_headers(cors: &Cors, origin: &str) -> Vec<(&'static str, String)> {
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    let mut h = vec![(
        "Access-Control-Allow-Origin",
        if wildcard {
            "*".to_string()
        } else {
            origin.to_string()
        },
    )];
    if !wildcard {
        h.push(("Vary", "Origin".to_string()));
    }
    // Browsers may read only exposed headers; a client needs the session id.
    let mut expose = cors.expose_headers.clone();
    for needed in ["Mcp-Session-Id", "MCP-Protocol-Version"] {
        if !expose
            .iter()
            .any(|e| e.eq_ignore_ascii_case(needed) || e == "*")
        {
            expose.push(needed.to_string());
        }
    }
    h.push(("Access-Control-Expose-Headers", expose.join(", ")));
    if cors.allow_credentials {
        h.push(("Access-Control-Allow-Credentials", "true".to_string()));
    }
    h
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// `host:port` or `[v6]:port` -> host.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

fn is_local_host(h: &str) -> bool {
    matches!(strip_port(h), "localhost" | "127.0.0.1" | "::1")
}

/// DNS-rebinding protection (MCP spec, transports). With it on (the default):
/// - on a loopback bind, `Host` must be a loopback name or one of `allowedHosts`; on other
///   binds it must be one of `allowedHosts` when that list is given;
/// - a browser's `Origin`, when sent, must be allowed by the route's CORS policy, be a
///   loopback origin on a loopback bind, or match `Host` (same origin).
fn check_origin(
    req: &Request,
    addr: SocketAddr,
    limits: &Limits,
    cors: Option<&Cors>,
) -> Result<(), &'static str> {
    if !limits.dns_rebinding_protection {
        return Ok(());
    }
    let loopback = addr.ip().is_loopback();
    let allowed_host = |h: &str| {
        let name = strip_port(h);
        limits.allowed_hosts.iter().any(|a| host_matches(a, name))
    };
    if let Some(h) = req.header("host") {
        let ok = if loopback {
            is_local_host(h) || allowed_host(h)
        } else {
            limits.allowed_hosts.is_empty() || allowed_host(h)
        };
        if !ok {
            return Err("Host is not allowed");
        }
    }
    if let Some(o) = req.header("origin") {
        let hostport = o.split_once("://").map_or("", |(_, rest)| rest);
        let same_origin = req
            .header("host")
            .is_some_and(|h| h.eq_ignore_ascii_case(hostport));
        let ok = o == "null"
            || cors.is_some_and(|c| c.allows(o))
            || (loopback && is_local_host(hostport))
            || same_origin;
        if !ok {
            return Err("Origin is not allowed");
        }
    }
    Ok(())
}

/// Whether a Content-Type names `want` (parameters such as charset allowed).
fn media_type_is(value: &str, want: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

/// Whether the Accept header allows `want` (`*/*` and `type/*` count).
fn accepts(req: &Request, want: &str) -> bool {
    let major = want.split('/').next().unwrap_or("");
    req.header_values("accept").any(|v| {
        let t = v.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case(want)
            || t == "*/*"
            || t.strip_suffix("/*")
                .is_some_and(|m| m.eq_ignore_ascii_case(major))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_helpers() {
        assert_eq!(strip_port("localhost:3000"), "localhost");
        assert_eq!(strip_port("[::1]:3000"), "::1");
        assert!(is_local_host("127.0.0.1:80") && !is_local_host("evil.example.com"));
        assert!(
            host_matches("*.example.com", "a.example.com")
                && !host_matches("*.example.com", "example.com")
        );
    }
}
