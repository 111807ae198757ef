//! The loop: one thread, one `mio::Poll` owning every source (listeners, client connections,
//! link sockets and pipes, the signal socket). Each readiness event goes by token to its owner;
//! timers run off the same loop, with the earliest deadline as the poll timeout.
//!
//! The loop moves bytes and knows no MCP: a parsed request goes to the front
//! (`front::serve`), what a link reports goes to the relay (`mcp::relay`), and the loop then
//! carries out the actions the relay queued (`carry_out`): open, write to or close links, and
//! put answers and messages on client connections.

mod tokens;

use crate::client_stream::ClientStream;
use crate::config::Config;
use crate::downstream::{Answered, Conn, ConnState, ReadResult};
use crate::front::serve::{self, Page};
use crate::http::parse::{expects_continue, parse_request, Limits as HttpLimits, Request};
use crate::http::Status;
use crate::idmap::IdMap;
use crate::mcp::relay::{shrink_if_sparse, Action, Relay};
use crate::memory::Trimmer;
use crate::metrics::{self, Gauges};
use crate::signals::Signals;
use crate::timer::Timers;
use crate::upstream::fetch::Fetcher;
use crate::upstream::link::{LinkUse, Links};
use crate::upstream::{LinkEvent, LinkId};
use crate::{log, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokens::{Owner, Reg, Tokens};

/// How often the sweep runs: slow-client and idle checks, stream keep-alives, reaping.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// On shutdown, children get this long to exit on stdin EOF before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(600);
/// A client that lets this much of its responses and stream pile up unread is disconnected.
const MAX_UNWRITTEN: usize = 32 * 1024 * 1024;

const SIGNAL_TOKEN: Token = Token(0);
/// While draining, the loop wakes at least this often to see whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

#[derive(Debug)]
enum Timer {
    Sweep,
}

pub struct Gateway {
    poll: Poll,
    cfg: Config,
    listeners: Vec<Option<TcpListener>>,
    pub local_addrs: Vec<SocketAddr>,
    tokens: Tokens,
    conns: IdMap<usize, Conn>,
    relay: Relay,
    links: Links,
    /// JWKS documents the routes' JWT policies name by URL.
    fetcher: Fetcher,
    timers: Timers<Timer>,
    signals: Signals,
    /// Connections to revisit after the current event (buffered pipelined requests).
    wake: Vec<usize>,
    http_limits: HttpLimits,
    read_limit: usize,
    /// Gives freed memory back to the system after a burst (see `memory`).
    trimmer: Trimmer,
    accepting: bool,
    /// Set by SIGTERM/SIGINT: when the drain ends at the latest.
    draining: Option<Instant>,
    config_path: Option<String>,
    /// With `--watch`: the file's last modification time, checked by the sweep.
    watch: bool,
    config_mtime: Option<std::time::SystemTime>,
    reloads: u64,
    started: Instant,
}

impl Gateway {
    /// Binds every listener and installs signal handling.
    pub fn new(cfg: Config) -> io::Result<Gateway> {
        let poll = Poll::new()?;
        let mut signals = Signals::install()?;
        poll.registry()
            .register(&mut signals.receiver, SIGNAL_TOKEN, Interest::READABLE)?;
        let mut tokens = Tokens {
            owners: IdMap::default(),
            next: 1,
        };
        tokens.owners.insert(SIGNAL_TOKEN, Owner::Signal);
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        // The stats listener, if any, comes last (index binds.len()): /metrics and /healthz.
        let stats = cfg.limits.stats_addr.map(|a| (a, " (statsAddr)"));
        let addrs = cfg.binds.iter().map(|b| (b.addr, "")).chain(stats);
        for (i, (addr, what)) in addrs.enumerate() {
            let mut l = TcpListener::bind(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr}{what}: {e}"))
            })?;
            let token = tokens.add(Owner::Listener(i));
            poll.registry()
                .register(&mut l, token, Interest::READABLE)?;
            local_addrs.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        log::set_level(cfg.limits.log_level);
        log::set_access_log(cfg.limits.access_log);
        let (http_limits, read_limit) = HttpLimits::from_settings(&cfg.limits);
        let mut timers = Timers::default();
        timers.add(Instant::now() + SWEEP_EVERY, Timer::Sweep);
        Ok(Gateway {
            poll,
            relay: Relay::new(cfg.limits.clone()),
            links: Links::new(cfg.limits.max_stdio_line, cfg.limits.request_timeout),
            fetcher: Fetcher::default(),
            cfg,
            listeners,
            local_addrs,
            tokens,
            conns: IdMap::default(),
            timers,
            signals,
            wake: Vec::new(),
            http_limits,
            read_limit,
            trimmer: Trimmer::default(),
            accepting: true,
            draining: None,
            config_path: None,
            watch: false,
            config_mtime: None,
            reloads: 0,
            started: Instant::now(),
        })
    }

    /// `GET /metrics` on the stats listener: Prometheus text format.
    fn render_metrics(&self) -> String {
        let streams = self
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Stream { .. }))
            .count();
        let (children, upstream) = self.links.counts();
        let gauges = Gauges {
            sessions: self.relay.session_count(),
            connections: self.conns.len(),
            streams,
            children,
            http_upstream_connections: upstream,
        };
        metrics::with(|m| m.render(&gauges))
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
            if bind.skips_tls_verification() {
                warn!(
                    "WARNING: backendTLS insecure: true on a route of bind {b} ({}): upstream certificates are NOT verified",
                    bind.addr
                );
            }
            if bind.passes_oauth_tokens_on() {
                warn!(
                    "WARNING: a route of bind {b} ({}) passes its clients' OAuth tokens to a target (mcpAuthentication with backendAuth passthrough); the MCP spec forbids token passthrough",
                    bind.addr
                );
            }
        }
        self.refetch_jwks();
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
                let Some(owner) = self.tokens.owners.get(&token).copied() else {
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
                    Owner::Fetch => {
                        let mut reg = Reg {
                            registry: self.poll.registry(),
                            tokens: &mut self.tokens,
                        };
                        self.fetcher.ready(token, &mut reg, Instant::now());
                    }
                    Owner::Conn => self.conn_ready(token.0, readable, writable, closed),
                    Owner::Link(link) => {
                        let mut reg = Reg {
                            registry: self.poll.registry(),
                            tokens: &mut self.tokens,
                        };
                        let events = self.links.ready(link, token, closed, &mut reg);
                        self.link_events(events.into_iter().map(|e| (link, e)));
                    }
                }
                self.settle();
            }
            let now = Instant::now();
            while let Some(t) = self.timers.pop_expired(now) {
                match t {
                    Timer::Sweep => {
                        self.sweep(now);
                        self.timers.add(now + SWEEP_EVERY, Timer::Sweep);
                    }
                }
                self.settle();
            }
            if let Some(deadline) = self.draining {
                if !self.exchanges_open() || now >= deadline {
                    self.shutdown();
                    return Ok(());
                }
            }
        }
    }

    fn exchanges_open(&self) -> bool {
        let open = |c: &Conn| matches!(c.state, ConnState::Exchange(_));
        self.conns.values().any(open)
    }

    /// Carries out what the relay queued and revisits woken connections, until neither has
    /// anything left.
    fn settle(&mut self) {
        loop {
            self.carry_out();
            let Some(id) = self.wake.pop() else {
                return;
            };
            self.process_conn(id);
        }
    }

    /// Hands what links reported to the relay.
    fn link_events(&mut self, events: impl IntoIterator<Item = (LinkId, LinkEvent)>) {
        for (link, ev) in events {
            self.relay.link_event(link, ev);
        }
    }

    /// Carries out the relay's actions in order; doing one may queue more.
    fn carry_out(&mut self) {
        while let Some(action) = self.relay.next_action() {
            let mut reg = Reg {
                registry: self.poll.registry(),
                tokens: &mut self.tokens,
            };
            match action {
                Action::Open {
                    link,
                    backend,
                    target,
                    policy,
                    credential,
                    shared,
                    principal,
                } => {
                    let opened = match backend.targets.get(target) {
                        Some(t) => {
                            let how = LinkUse {
                                credential: credential.as_deref(),
                                shared,
                                principal: principal.as_deref(),
                            };
                            self.links.open(link, t, &policy, how, &mut reg)
                        }
                        None => Err("no such target".into()),
                    };
                    match opened {
                        Ok(events) => {
                            self.relay.link_opened(link, Ok(()));
                            self.link_events(events.into_iter().map(|e| (link, e)));
                        }
                        Err(why) => self.relay.link_opened(link, Err(why)),
                    }
                }
                Action::Credential { link, credential } => {
                    self.links.set_credential(link, credential.as_deref());
                }
                Action::Send { link, msg, headers } => {
                    let events = self.links.send(link, &msg, headers, &mut reg);
                    self.link_events(events.into_iter().map(|e| (link, e)));
                }
                Action::Abandon { link, uid } => {
                    let events = self.links.abandon(link, uid, &mut reg);
                    self.link_events(events.into_iter().map(|e| (link, e)));
                }
                Action::Close { link } => self.links.close(link, &mut reg),
                Action::Answer { conn, text } => self.answer(conn, text),
                Action::Push { conn, session, msg } => self.push(conn, session, msg),
                Action::EndStream { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.end_stream();
                        c.state = ConnState::Idle;
                        c.closing = true;
                        self.wake.push(conn);
                    }
                }
                Action::NoSessionHeader { conn } => {
                    if let Some(ConnState::Exchange(ex)) =
                        self.conns.get_mut(&conn).map(|c| &mut c.state)
                    {
                        ex.session_header = None;
                    }
                }
                Action::NoteTarget { conn, target } => {
                    if let Some(a) = self.conns.get_mut(&conn).and_then(|c| c.access.as_mut()) {
                        a.target = target;
                    }
                }
            }
        }
    }

    /// One answer for the POST (or legacy stream) on `id`.
    fn answer(&mut self, id: usize, text: Option<String>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.answer(text) {
            Answered::Ignored => {}
            Answered::Pending => {
                let _ = c.flush();
            }
            Answered::Done => self.wake.push(id),
            Answered::Streamed => {
                if c.flush().is_err() || c.unwritten() > MAX_UNWRITTEN {
                    self.close_conn(id);
                }
            }
        }
    }

    /// A message for a session's client on connection `id`; kept by the relay if `id` no
    /// longer serves that session.
    fn push(&mut self, id: usize, session: u64, msg: Value) {
        let Some(c) = self.conns.get_mut(&id) else {
            return self.relay.undelivered(session, msg);
        };
        if !c.push(session, &msg) {
            return self.relay.undelivered(session, msg);
        }
        if c.flush().is_err() || c.unwritten() > MAX_UNWRITTEN {
            self.close_conn(id);
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
        for (&id, c) in self.conns.iter_mut() {
            match c.state {
                ConnState::Stream { .. } => {
                    c.end_stream();
                    c.closing = true;
                }
                ConnState::Idle if c.rbuf.is_empty() => c.closing = true,
                _ => {}
            }
            self.wake.push(id);
        }
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
        if new.addresses() != self.cfg.addresses() {
            log!("{why}: {path} not reloaded: its binds differ; restart mcplex to change ports or addresses");
            return;
        }
        (self.http_limits, self.read_limit) = HttpLimits::from_settings(&new.limits);
        log::set_level(new.limits.log_level);
        log::set_access_log(new.limits.access_log);
        self.relay.set_limits(new.limits.clone());
        self.links.max_line = new.limits.max_stdio_line;
        self.links.request_timeout = new.limits.request_timeout;
        self.cfg = new;
        self.refetch_jwks();
        self.reloads += 1;
        metrics::with(|m| m.reloads += 1);
        log!("{why}: configuration reloaded from {path}; new sessions use it");
    }

    /// Hands the config's JWKS URLs to the fetcher: each is fetched now.
    fn refetch_jwks(&mut self) {
        let mut reg = Reg {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
        };
        (self.fetcher).configure(&self.cfg.jwks, &mut reg, Instant::now());
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
        for (token, owner) in self.tokens.owners.iter() {
            let Owner::Listener(i) = *owner else {
                continue;
            };
            if let Some(Some(l)) = self.listeners.get_mut(i) {
                // Registering a listener with connections already waiting reports it ready.
                if let Err(e) = self.poll.registry().register(l, *token, Interest::READABLE) {
                    log!("cannot resume accepting on bind {i}: {e}");
                }
            }
        }
        log!("accepting connections again ({} open)", self.conns.len());
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
            let Some(Some(l)) = self.listeners.get(i).filter(|_| self.accepting) else {
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
        let token = self.tokens.add(Owner::Conn);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut sock, token, interest) {
            log!("cannot register connection: {e}");
            self.tokens.owners.remove(&token);
            return;
        }
        metrics::with(|m| m.connections_accepted += 1);
        // An HTTPS bind's connections start a TLS session; the handshake runs as they are
        // read and flushed.
        let tls = match self.cfg.binds.get(bind).and_then(|b| b.tls.clone()) {
            Some(cfg) => match rustls::ServerConnection::new(cfg) {
                Ok(t) => Some(t),
                Err(e) => {
                    log!("cannot start TLS for a connection: {e}");
                    let _ = self.poll.registry().deregister(&mut sock);
                    self.tokens.owners.remove(&token);
                    return;
                }
            },
            None => None,
        };
        self.conns
            .insert(token.0, Conn::new(ClientStream::new(sock, tls), bind));
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
                    // Answers found at once (ping, errors) end the exchange before the next
                    // pipelined request is read.
                    self.carry_out();
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
            return self.close_conn(id);
        }
        if c.eof {
            if !matches!(c.state, ConnState::Idle) {
                // The client went away while waiting or streaming: treat it as abandonment.
                return self.close_conn(id);
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
        c.stream.shutdown();
        let _ = self.poll.registry().deregister(&mut c.stream.sock);
        self.tokens.owners.remove(&Token(id));
        match c.state {
            ConnState::Stream { session } => self.relay.stream_closed(session, id),
            // The client gave up on its requests: they are cancelled upstream.
            ConnState::Exchange(ex) => self.relay.exchange_closed(ex.session, id),
            ConnState::Idle => {}
        }
    }

    fn handle_request(&mut self, id: usize, req: Request) {
        let keep_alive = req.keep_alive();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(page) = serve::request(&self.cfg, &mut self.relay, c, id, req) else {
            return;
        };
        let (body, ctype) = match page {
            Page::Metrics => (
                self.render_metrics().into_bytes(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Page::Health => {
                let state = serve::State {
                    draining: self.draining.is_some(),
                    uptime: self.started.elapsed(),
                    connections: self.conns.len(),
                    reloads: self.reloads,
                };
                (serve::healthz(&self.relay, &state), "application/json")
            }
        };
        if let Some(c) = self.conns.get_mut(&id) {
            let headers = [("Content-Type", ctype), ("Cache-Control", "no-store")];
            c.respond(200, &headers, &body, keep_alive);
        }
    }

    // ---- time and children ---------------------------------------------------------------

    /// Reaps exited children: a live link's child that exited fails its target.
    fn reap(&mut self) {
        let events = self.links.reap(Instant::now());
        self.link_events(events);
    }

    fn sweep(&mut self, now: Instant) {
        let header_timeout = self.cfg.limits.header_timeout;
        let close: Vec<usize> = (self.conns.iter_mut())
            .filter_map(|(&id, c)| c.sweep(now, header_timeout).then_some(id))
            .collect();
        for id in close {
            self.close_conn(id);
        }
        self.relay.tick(now);
        if self.links.closing() {
            self.reap();
        }
        let mut reg = Reg {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
        };
        let events = self.links.tick(now, &mut reg);
        self.link_events(events);
        let mut reg = Reg {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
        };
        self.fetcher.tick(now, &mut reg);
        if self.watch {
            if let Some(path) = &self.config_path {
                if file_mtime(path) != self.config_mtime {
                    self.reload("config file changed");
                }
            }
        }
        // After a burst, hand back the tables it grew: a large live table can sit at the top
        // of the heap, and glibc returns memory to the system only from there.
        shrink_if_sparse(&mut self.tokens.owners);
        shrink_if_sparse(&mut self.conns);
        self.relay.shrink();
        self.links.shrink();
        let live = self.relay.session_count() + self.conns.len();
        if self.trimmer.after_sweep(live) {
            log!(
                "returned free memory to the system ({} sessions, {} connections left)",
                self.relay.session_count(),
                self.conns.len()
            );
        }
    }

    /// Stops accepting, ends every session, gives children a moment to exit on stdin EOF
    /// (and HTTP sessions to be DELETEd), kills the rest and reaps them all.
    fn shutdown(&mut self) {
        log!("shutting down");
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        self.relay.end_all("gateway shutting down");
        self.carry_out();
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                let _ = c.flush();
            }
            self.close_conn(id);
        }
        self.carry_out();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut events = Events::with_capacity(64);
        while self.links.settle_closing() && Instant::now() < deadline {
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(20)));
            for e in events.iter() {
                let closed = e.is_read_closed() || e.is_error();
                match self.tokens.owners.get(&e.token()).copied() {
                    Some(Owner::Link(link)) => {
                        let mut reg = Reg {
                            registry: self.poll.registry(),
                            tokens: &mut self.tokens,
                        };
                        self.links.ready(link, e.token(), closed, &mut reg);
                    }
                    Some(Owner::Signal) => {
                        let _ = self.signals.take();
                    }
                    _ => {}
                }
            }
        }
        self.links.kill_all();
        log!("stopped");
    }
}

fn file_mtime(path: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
