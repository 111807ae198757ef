//! The relay: the state machine per MCP session feeding the aggregation table, without I/O.
//!
//! The loop feeds it what clients and links said (`client_message`, `link_event`, ...) and the
//! time (`tick`); the relay updates its sessions and calls and queues [`Action`]s, which the
//! loop carries out in order (`next_action`): open, write to or close a link; answer a request
//! of a POST; push a message on a POST's reply stream or a GET/legacy stream. Carrying out an
//! action can feed the relay again (a link that could not be opened, a send that failed), which
//! queues more. Nothing here touches a socket, a pipe or a process, so every path can be driven
//! from unit tests.
//!
//! Ownership runs one way: a session holds its targets' links by id (`TargetSlot::link`), and
//! the relay's `links` table says which holder each link serves, so a link never owns a client.

use super::aggregate::{self, Part};
use super::era::{self, Probe};
use super::health::Health;
use super::route::Dest;
use super::session::{
    new_session_id, Asking, Call, CallKind, Input, Listen, Modern, Partition, Phase, PoolKey,
    Session, TargetSlot, TargetState, Waiting,
};
use super::state::{self, Resume, Signer};
use crate::auth::Principal;
use crate::config::{Era, FailureMode, Limits, McpBackend, RoutePolicy, TargetKind};
use crate::idmap::IdMap;
use crate::jsonrpc::Path;
use crate::jsonrpc::{self, Kind};
use crate::log::short_id;
use crate::metrics::{self, Outcome, UpstreamError};
use crate::upstream::{LinkEvent, LinkId};
use crate::{log, warn};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A client connection, as the loop numbers them.
pub type ConnId = usize;

/// What the loop is to do.
#[derive(Debug)]
pub enum Action {
    /// Open link `link` to target `target` of `backend`, then report with `link_opened`.
    Open {
        link: LinkId,
        backend: Rc<McpBackend>,
        target: usize,
        /// The route's policies for its upstreams.
        policy: Rc<RoutePolicy>,
        /// The client's `Authorization`, for a target that passes it through.
        credential: Option<Rc<str>>,
        /// The link serves a pool (many stateless clients at once), not one session.
        shared: bool,
        /// The principal the link serves alone (see `Principal::tag`), if any.
        principal: Option<Rc<str>>,
    },
    /// The session's client presented another credential: the link passes it through from
    /// now on (if its target does).
    Credential {
        link: LinkId,
        credential: Option<Rc<str>>,
    },
    /// Write one JSON-RPC message to a link (with its 2026-07-28 HTTP headers, if any).
    Send {
        link: LinkId,
        msg: Value,
        headers: Vec<(String, String)>,
    },
    /// Stop waiting for request `uid` on an HTTP link: its response stream is closed (the
    /// 2026-07-28 way to cancel a request over HTTP).
    Abandon { link: LinkId, uid: u64 },
    /// Close a link (stdin EOF and a grace period; an HTTP session is DELETEd).
    Close { link: LinkId },
    /// One answer for the exchange on `conn` (None: a request that will get none, such as a
    /// cancelled one), already serialized. On a legacy stream it is sent as an event.
    Answer { conn: ConnId, text: Option<String> },
    /// A message for session `session`'s client on `conn`: a POST's reply (which turns into
    /// an SSE stream) or the session's stream. If `conn` is not serving that session any more,
    /// hand it back with `undelivered`.
    Push {
        conn: ConnId,
        session: u64,
        msg: Value,
    },
    /// The session ended: end its GET stream on `conn`.
    EndStream { conn: ConnId },
    /// The POST on `conn` must not hand out its session id (its `initialize` failed).
    NoSessionHeader { conn: ConnId },
    /// For the access log: the target the request on `conn` went to.
    NoteTarget { conn: ConnId, target: String },
}

/// Who a link serves. Today a link always serves one target of one client session, which
/// opened it and closes it; a link shared by stateless requests (a target's pool) is the
/// other kind the 2026-07-28 revision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Session { session: u64, target: usize },
}

/// Where a server-to-client message should go.
enum Hint {
    Call(u64),
    Target(usize),
}

pub struct Relay {
    sessions: IdMap<u64, Session>,
    session_ids: HashMap<String, u64>,
    next_session: u64,
    /// Link -> the holder it serves.
    links: IdMap<LinkId, Holder>,
    next_link: LinkId,
    /// Each backend's pool (by the address of its config), for stateless requests.
    pools: HashMap<PoolKey, Vec<u64>>,
    /// The pool `pool_for` gave last, for the common case (one pool, nobody's own): backend and
    /// policy (as pointers, kept alive by the pool's session) and the pool. A hash of the
    /// whole key per request is skipped while that session lives.
    last_pool: Option<(usize, usize, u64)>,
    pub health: Health,
    /// Signs the `requestState` of input rounds.
    signer: Signer,
    limits: Limits,
    actions: VecDeque<Action>,
    /// Input rounds to answer (pool, call) once every server request that arrived with the
    /// first one is in (see `next_action`).
    rounds: Vec<(u64, u64)>,
    /// Each `auto` target's era once probed, by (backend, target) name: probed again only
    /// after it failed.
    eras: HashMap<(String, String), Era>,
}

impl Relay {
    pub fn new(limits: Limits) -> Relay {
        Relay {
            sessions: IdMap::default(),
            session_ids: HashMap::new(),
            next_session: 1,
            links: IdMap::default(),
            next_link: 1,
            pools: HashMap::new(),
            last_pool: None,
            health: Health::default(),
            signer: signer_for(&limits),
            limits,
            actions: VecDeque::new(),
            rounds: Vec::new(),
            eras: HashMap::new(),
        }
    }

    /// New settings (a reload); sessions keep their backends, new limits apply at once.
    pub fn set_limits(&mut self, limits: Limits) {
        // A new shared key (or instance id) signs from now on; states already handed out
        // under the old one are refused.
        if limits.state_key != self.limits.state_key
            || limits.instance_id != self.limits.instance_id
        {
            self.signer = signer_for(&limits);
        }
        self.limits = limits;
    }

    /// How long a call of session `sk` may take: its route's `timeout.requestTimeout`, else
    /// `config.requestTimeout`.
    fn deadline_for(&self, sk: u64) -> Duration {
        (self.sessions.get(&sk))
            .and_then(|s| s.policy.request_timeout)
            .unwrap_or(self.limits.request_timeout)
    }

    /// The next thing the loop must do.
    pub fn next_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            // What a link said in one read has all been handed over by now: a round answers
            // with every request its server sent together (several inputs in one round).
            for (sk, cid) in std::mem::take(&mut self.rounds) {
                self.finish_round(sk, cid);
            }
        }
        self.actions.pop_front()
    }

    /// Client sessions (pools not counted).
    pub fn session_count(&self) -> usize {
        self.sessions.len() - self.pools.values().map(Vec::len).sum::<usize>()
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    // ---- sessions ------------------------------------------------------------------------

    /// A new session, not yet initialized (no targets started): its key and its id.
    pub fn create_session(
        &mut self,
        backend: Rc<McpBackend>,
        policy: Rc<RoutePolicy>,
        credential: Option<&str>,
        principal: Option<Rc<Principal>>,
        legacy: bool,
    ) -> Result<(u64, String), (i64, String)> {
        if self.session_count() >= self.limits.max_sessions {
            return Err((jsonrpc::UPSTREAM_ERROR, "too many sessions".into()));
        }
        let random = new_session_id().map_err(|e| {
            (
                jsonrpc::INTERNAL_ERROR,
                format!("cannot create a session id: {e}"),
            )
        })?;
        let sid = match &self.limits.instance_id {
            Some(instance) => format!("{instance}.{random}"),
            None => random,
        };
        let sk = self.next_session;
        self.next_session += 1;
        let mut s = Session::new(sid.clone(), backend, Value::Null);
        s.credential = credential.filter(|_| policy.passthrough).map(Rc::from);
        s.principal = principal;
        s.policy = policy;
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
        self.session_ids.insert(sid.clone(), sk);
        Ok((sk, sid))
    }

    /// The session a client names by id.
    pub fn session_key(&self, sid: &str) -> Option<u64> {
        self.session_ids.get(sid).copied()
    }

    /// A legacy session and the connection of its stream.
    pub fn legacy_stream(&self, sid: &str) -> Option<(u64, ConnId)> {
        let sk = self.session_key(sid)?;
        let s = self.sessions.get(&sk).filter(|s| s.legacy)?;
        Some((sk, s.get_stream?))
    }

    /// The credential the session's client sent with a request: when the route passes it
    /// through and it changed, the session's links use the new one.
    pub fn credential(&mut self, sk: u64, credential: Option<&str>) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if !s.policy.passthrough || s.pool || s.credential.as_deref() == credential {
            return;
        }
        let credential: Option<Rc<str>> = credential.map(Rc::from);
        s.credential = credential.clone();
        let links: Vec<LinkId> = s.targets.iter().filter_map(|t| t.link).collect();
        for link in links {
            let credential = credential.clone();
            self.push(Action::Credential { link, credential });
        }
    }

    /// The client was heard from (the idle TTL starts again).
    /// Whether a request from `principal` may use session `sk`: only its opener's may.
    pub fn same_principal(&self, sk: u64, principal: Option<&Principal>) -> bool {
        let Some(s) = self.sessions.get(&sk) else {
            return false;
        };
        match (&s.principal, principal) {
            (None, None) => true,
            (Some(a), Some(b)) => a.key() == b.key(),
            _ => false,
        }
    }

    pub fn touch(&mut self, sk: u64) {
        if let Some(s) = self.sessions.get_mut(&sk) {
            s.last_active = Instant::now();
        }
    }

    /// `conn` becomes the session's stream. Some: what was kept for it, to send first; None:
    /// the session has a stream already (or is gone).
    pub fn open_stream(&mut self, sk: u64, conn: ConnId) -> Option<Vec<Value>> {
        let s = self.sessions.get_mut(&sk)?;
        if s.get_stream.is_some() {
            return None;
        }
        s.get_stream = Some(conn);
        s.last_active = Instant::now();
        Some(s.backlog.drain(..).collect())
    }

    /// A message a `Push` could not deliver: kept for the session's next stream.
    pub fn undelivered(&mut self, sk: u64, msg: Value) {
        if let Some(s) = self.sessions.get_mut(&sk) {
            s.push_backlog(msg);
        }
    }

    /// The session's stream on `conn` closed. A legacy session lives exactly as long as it.
    pub fn stream_closed(&mut self, sk: u64, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if s.get_stream != Some(conn) {
            return;
        }
        s.get_stream = None;
        if s.legacy {
            self.end_session(sk, "the client closed its SSE stream");
        }
    }

    /// The POST on `conn` went away before its answers: its calls are cancelled upstream.
    pub fn exchange_closed(&mut self, sk: u64, conn: ConnId) {
        let Some(s) = self.sessions.get(&sk) else {
            return;
        };
        let orphaned: Vec<u64> = s
            .calls
            .iter()
            .filter(|(_, c)| c.conn == Some(conn))
            .map(|(k, _)| *k)
            .collect();
        for call in orphaned {
            self.cancel_call(sk, call, "client disconnected");
        }
        self.unlisten(sk, conn);
    }

    /// The client's `initialize`: negotiates the version and opens a link to every target;
    /// once all are open (or failed), each gets its `initialize`. The answer goes to `reply`
    /// (none for a pool, which keeps the merged result instead).
    pub fn initialize(&mut self, sk: u64, reply: Option<ConnId>, msg: Value) {
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
            return self.reply(reply, e);
        }
        let mut params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
        if !params.is_object() {
            params = json!({});
        }
        let asked = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let version = if super::is_supported(asked) {
            asked
        } else {
            super::LATEST_VERSION
        }
        .to_string();
        params["protocolVersion"] = Value::String(version.clone());
        s.version = version;
        s.init_params = params;
        s.init_request = Some((reply, client_id));
        let backend = Rc::clone(&s.backend);
        let policy = Rc::clone(&s.policy);
        let credential = s.credential.clone();
        let shared = s.pool;
        let principal = s.principal.as_ref().map(|p| Rc::<str>::from(p.tag()));
        for (t, target) in backend.targets.iter().enumerate() {
            let metric = metrics::with(|m| m.target(&format!("{}/{}", backend.name, target.name)));
            let era = match target.era {
                Era::Auto => self
                    .eras
                    .get(&(backend.name.clone(), target.name.clone()))
                    .copied()
                    .unwrap_or(Era::Auto),
                e => e,
            };
            let mut slot = TargetSlot {
                name: target.name.clone(),
                state: TargetState::Starting,
                link: None,
                init_result: None,
                metric,
                era,
                http: !matches!(target.kind, TargetKind::Stdio(_)),
                reprobed: false,
                params: HashMap::new(),
                watch: None,
                watch_uris: Vec::new(),
                watch_retry: None,
                watch_failures: 0,
            };
            match self.health.backing_off(&backend.name, &target.name) {
                Some(why) => slot.state = TargetState::Failed(why),
                None => {
                    let link = self.next_link;
                    self.next_link += 1;
                    let holder = Holder::Session {
                        session: sk,
                        target: t,
                    };
                    self.links.insert(link, holder);
                    slot.link = Some(link);
                    s.opening += 1;
                    self.actions.push_back(Action::Open {
                        link,
                        backend: Rc::clone(&backend),
                        target: t,
                        policy: Rc::clone(&policy),
                        credential: credential.clone(),
                        shared,
                        principal: principal.clone(),
                    });
                }
            }
            s.targets.push(slot);
        }
        if s.opening == 0 {
            self.start_initialize(sk);
        }
    }

    /// The loop opened link `link`, or could not (`Err`: why).
    pub fn link_opened(&mut self, link: LinkId, result: Result<(), String>) {
        let Some(&Holder::Session {
            session: sk,
            target: t,
        }) = self.links.get(&link)
        else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if let Err(why) = result {
            self.links.remove(&link);
            if let Some(slot) = s.targets.get_mut(t) {
                log!("[{}] target {}: {why}", short_id(&s.id), slot.name);
                metrics::with(|m| m.upstream_error(slot.metric, UpstreamError::Start));
                slot.link = None;
                slot.state = TargetState::Failed(why.clone());
            }
            if let Some(target) = s.backend.targets.get(t) {
                let backoff = self.limits.target_backoff;
                self.health
                    .record(&s.backend.name, target, Err(&why), backoff);
            }
        }
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        s.opening = s.opening.saturating_sub(1);
        if s.opening == 0 {
            self.start_initialize(sk);
        }
    }

    /// Every link of a new session is open (or failed): `initialize` to each that started.
    fn start_initialize(&mut self, sk: u64) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some((reply, client_id)) = s.init_request.take() else {
            return;
        };
        let parts = (0..s.targets.len())
            .filter(|&t| s.targets[t].state == TargetState::Starting)
            .map(|t| (t, Some(s.init_params.clone())))
            .collect();
        if s.targets.iter().any(|x| x.era == Era::Auto) {
            s.probe_deadline = Some(Instant::now() + era::PROBE_TIMEOUT);
        }
        let timeout = self.limits.init_timeout;
        self.start_call(
            sk,
            reply,
            client_id,
            "initialize",
            CallKind::Initialize,
            parts,
            timeout,
            None,
        );
    }

    /// Ends a session: pending calls get an error, the GET stream ends, links are closed.
    pub fn end_session(&mut self, sk: u64, why: &str) {
        let Some(mut s) = self.sessions.remove(&sk) else {
            return;
        };
        self.session_ids.remove(&s.id);
        log!("[{}] session ended: {why}", short_id(&s.id));
        // A pool's callers never had a session: they are told why their request failed.
        let why = match s.pool {
            true => {
                for v in self.pools.values_mut() {
                    v.retain(|p| *p != sk);
                }
                self.pools.retain(|_, v| !v.is_empty());
                why.to_string()
            }
            false => format!("session ended: {why}"),
        };
        for w in s.waiting.drain(..) {
            let id = w.msg.get("id").cloned().unwrap_or(Value::Null);
            let mut e = jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &why);
            if let Some(d) = &s.fail_data {
                e["error"]["data"] = d.clone();
            }
            self.actions.push_back(Action::Answer {
                conn: w.conn,
                text: Some(serde_json::to_string(&e).unwrap_or_default()),
            });
        }
        for (_, call) in s.calls.drain() {
            let e = jsonrpc::error(call.client_id, jsonrpc::UPSTREAM_ERROR, &why);
            if let Some(conn) = call.conn {
                self.push(Action::Answer {
                    conn,
                    text: Some(serde_json::to_string(&e).unwrap_or_default()),
                });
            }
        }
        if let Some(conn) = s.get_stream.take() {
            self.push(Action::EndStream { conn });
        }
        // Listen streams end gracefully: a result for the listen request.
        for l in s.listens.drain(..) {
            let end =
                json!({"resultType": "complete", "_meta": {super::META_SUBSCRIPTION_ID: l.id}});
            self.reply(Some(l.conn), jsonrpc::result(l.id, end));
        }
        for slot in s.targets.iter_mut() {
            if let Some(link) = slot.link.take() {
                self.links.remove(&link);
                self.push(Action::Close { link });
            }
        }
    }

    /// Ends every session (shutdown).
    pub fn end_all(&mut self, why: &str) {
        let keys: Vec<u64> = self.sessions.keys().copied().collect();
        for sk in keys {
            self.end_session(sk, why);
        }
    }

    /// Marks a target failed: its link is closed, its pending requests get an error naming
    /// it, later ones too.
    fn target_failed(&mut self, sk: u64, t: usize, why: &str) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(slot) = s.targets.get_mut(t) else {
            return;
        };
        // Its era is found out again next time (it may have been replaced by another).
        self.eras
            .remove(&(s.backend.name.clone(), slot.name.clone()));
        s.lists.clear();
        if matches!(slot.state, TargetState::Failed(_)) && slot.link.is_none() {
            return;
        }
        let name = slot.name.clone();
        warn!("[{}] target {name} failed: {why}", short_id(&s.id));
        metrics::with(|m| m.upstream_error(slot.metric, UpstreamError::Target));
        let was_starting = slot.state == TargetState::Starting;
        if !matches!(slot.state, TargetState::Failed(_)) {
            slot.state = TargetState::Failed(why.to_string());
        }
        slot.init_result = None;
        slot.watch = None;
        slot.watch_retry = None;
        if let Some(link) = slot.link.take() {
            self.links.remove(&link);
            self.actions.push_back(Action::Close { link });
        }
        s.server_requests.retain(|_, (target, _)| *target != t);
        let mut hits = Vec::new();
        for (&cid, call) in s.calls.iter() {
            for (i, (target, uid, r)) in call.parts.iter().enumerate() {
                if *target == t && r.is_none() {
                    hits.push((cid, i, *uid));
                }
            }
        }
        let was_ready = s.phase == Phase::Ready && !was_starting;
        let all_failed = s.phase == Phase::Ready
            && s.targets
                .iter()
                .all(|x| matches!(x.state, TargetState::Failed(_)));
        if all_failed {
            log!("[{}] session failed: no target left", short_id(&s.id));
        }
        if was_ready {
            if let Some(target) = s.backend.targets.get(t) {
                let backoff = self.limits.target_backoff;
                self.health
                    .record(&s.backend.name, target, Err(why), backoff);
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

    // ---- stateless (2026-07-28) requests ------------------------------------------------

    /// A pool to serve a stateless request for `backend`: the least busy one if it is idle
    /// or no more may be opened (`pool.max`), else a new one (links started and initialized
    /// with the gateway's own identity), shared from then on.
    /// With a passthrough target on the route, requests share a pool only with requests
    /// carrying the same `credential`: an upstream session belongs to whoever authenticated it.
    pub fn pool_for(
        &mut self,
        backend: &Rc<McpBackend>,
        policy: &Rc<RoutePolicy>,
        credential: Option<&str>,
        principal: Option<&Rc<Principal>>,
    ) -> u64 {
        let credential = credential
            .filter(|_| policy.passthrough)
            .map(Rc::<str>::from);
        // Authenticated principals get pools of their own: a server's process state (a
        // memory graph, a working directory) is never shared between them, unless every
        // target of the backend is marked shareable.
        let own = principal.filter(|_| !backend.shareable());
        let partition = match (&credential, own) {
            (Some(c), _) => Some(Partition::Credential(Rc::clone(c))),
            (None, Some(p)) => Some(Partition::Principal(Rc::clone(p.key()))),
            _ => None,
        };
        let ptrs = (Rc::as_ptr(backend) as usize, Rc::as_ptr(policy) as usize);
        let single = partition.is_none() && backend.pool_max == 1;
        if let Some((b, p, sk)) = self.last_pool.filter(|_| single) {
            // A pool leaves `pools` only when its session ends.
            if (b, p) == ptrs && self.sessions.contains_key(&sk) {
                return sk;
            }
        }
        let key: PoolKey = (ptrs.0, ptrs.1, partition.clone());
        let open = self.pools.get(&key).map_or(&[][..], Vec::as_slice);
        if let ([only], 1) = (open, backend.pool_max) {
            if single {
                self.last_pool = Some((ptrs.0, ptrs.1, *only));
            }
            return *only; // the default: one pool, nothing to weigh
        }
        // Calls running (with a client waiting on them) count first: a call parked in an
        // input round asks nothing more until its retry, so it cannot be confused with a
        // newcomer's questions.
        let load = |sk: &u64| {
            self.sessions.get(sk).map_or((usize::MAX, usize::MAX), |s| {
                let running = s.calls.values().filter(|c| c.conn.is_some()).count();
                (running + s.waiting.len(), s.calls.len())
            })
        };
        let least = open.iter().min_by_key(|sk| load(sk)).copied();
        match least {
            Some(sk) if load(&sk).0 == 0 || open.len() >= backend.pool_max => return sk,
            _ => {}
        }
        let n = open.len() + 1;
        let sk = self.next_session;
        self.next_session += 1;
        let id = match (n, &partition) {
            (_, Some(_)) => format!("pool:{}@{sk}", backend.name),
            (1, None) => format!("pool:{}", backend.name),
            (n, None) => format!("pool:{}#{n}", backend.name),
        };
        let mut s = Session::new(id, Rc::clone(backend), Value::Null);
        s.policy = Rc::clone(policy);
        s.credential = credential;
        // A pool of one principal's own: its children learn whose it is.
        if let Some(Partition::Principal(_)) = partition {
            s.principal = own.cloned();
        }
        s.pool_key = Some(key.clone());
        s.pool = true;
        s.metric_all = metrics::with(|m| m.target(&format!("{}/*", backend.name)));
        s.metric_gateway = metrics::with(|m| m.target("gateway"));
        log!(
            "[{}] pool opened for stateless requests ({} target(s))",
            s.id,
            backend.targets.len()
        );
        self.sessions.insert(sk, s);
        self.pools.entry(key).or_default().push(sk);
        // The capabilities are the ones the gateway can bridge to stateless clients, as
        // input_required rounds (a request outside any call, such as roots/list right after
        // initialization, gets an error: there is no one to ask).
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": super::LATEST_VERSION,
            "capabilities": {"sampling": {}, "elicitation": {"form": {}}, "roots": {}},
            "clientInfo": {"name": "mcplex", "version": env!("CARGO_PKG_VERSION")},
        }});
        self.initialize(sk, None, init);
        sk
    }

    /// A pool finished initializing: its targets hear `notifications/initialized`, and the
    /// requests that waited run.
    fn pool_ready(&mut self, sk: u64) {
        let note = jsonrpc::notification("notifications/initialized", None);
        self.client_notification(sk, note);
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        log!("[{}] pool ready", s.id);
        for w in std::mem::take(&mut s.waiting) {
            self.modern_request(sk, w.conn, w.msg, w.modern);
        }
    }

    /// A legacy server's request to its client, on a pool. A stateless client cannot be asked
    /// directly: the call it belongs to is answered with `input_required` instead, carrying the
    /// request, and the server's answer waits for the client's retry (`resume`). Nothing in the
    /// request says which call it belongs to, so it is attributed only while exactly one call
    /// is in flight on that child; otherwise, or when that client cannot be asked this kind of
    /// request, the server gets an error and the client hears nothing.
    fn pool_server_request(&mut self, sk: u64, t: usize, msg: Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).to_string();
        let refuse = |why: &str| jsonrpc::error(id.clone(), jsonrpc::METHOD_NOT_FOUND, why);
        let kind = match method.as_str() {
            "ping" => return drop(self.send(sk, t, jsonrpc::result(id, json!({})))),
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            "roots/list" => "roots",
            m => {
                let e = refuse(&format!("mcplex does not relay {m} to 2026-07-28 clients"));
                return drop(self.send(sk, t, e));
            }
        };
        let waiting: Vec<u64> = s
            .calls
            .iter()
            .filter(|(_, c)| c.conn.is_some() && c.parts.iter().any(|p| p.0 == t && p.2.is_none()))
            .map(|(k, _)| *k)
            .collect();
        let [cid] = waiting.as_slice() else {
            let why = format!(
                "{method} cannot be attributed: {} stateless calls are in flight on this server",
                waiting.len()
            );
            return drop(self.send(sk, t, refuse(&why)));
        };
        let cid = *cid;
        let Some(call) = s.calls.get_mut(&cid) else {
            return;
        };
        // An answer the client gave before being asked (under the server's own id as key)
        // needs no round, nor the capability a round would need.
        let offered = call.modern.as_ref().and_then(|m| m.offered.as_ref());
        let offered = id.as_str().and_then(|k| offered?.get(k));
        if let Some(answer) = offered.filter(|a| answers(&method, a)) {
            let answer = jsonrpc::result(id.clone(), answer.clone());
            return drop(self.send(sk, t, answer));
        }
        let able = call
            .modern
            .as_ref()
            .is_some_and(|m| m.capabilities.get(kind).is_some_and(Value::is_object));
        if !able {
            // The server hears no at once. If it asked nothing the client can answer in this
            // round, the call fails with the revision's MissingRequiredClientCapability
            // (`finish_round`); otherwise the client is asked the rest.
            let why = format!("the client did not declare the {kind} capability");
            if let Some(m) = call.modern.as_mut() {
                if m.input.is_empty() && m.missing.is_empty() {
                    self.rounds.push((sk, cid));
                }
                if !m.missing.contains(&kind) {
                    m.missing.push(kind);
                }
            }
            return drop(self.send(sk, t, refuse(&why)));
        }
        // The server's own request id names the input when it is a string (unique among the
        // server's requests in flight); otherwise the gateway numbers it.
        let taken = |k: &str| {
            call.modern
                .as_ref()
                .is_some_and(|m| m.input.iter().any(|i| i.key == k))
        };
        let key = match id.as_str() {
            Some(k) if input_key_ok(k) && !taken(k) => k.to_string(),
            _ => {
                s.next_id += 1;
                format!("{kind}-{}", s.next_id - 1)
            }
        };
        let mut params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
        if kind == "elicitation" && params.get("mode").is_none() {
            params["mode"] = "form".into(); // the legacy default, which 2026-07-28 spells out
        }
        let Some(modern) = call.modern.as_mut() else {
            return;
        };
        if modern.input.is_empty() && modern.missing.is_empty() {
            self.rounds.push((sk, cid));
        }
        modern.input.push(Input {
            key,
            target: t,
            server_id: id,
            request: json!({"method": method, "params": params}),
        });
    }

    /// Fails a stateless call whose server needs a capability its client did not declare:
    /// `-32021` with the capability named (HTTP 400), and the server is told to stop.
    fn refuse_call(&mut self, sk: u64, cid: u64, kinds: &[&str]) {
        let Some(call) = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.calls.get_mut(&cid))
        else {
            return;
        };
        let conn = call.conn.take();
        let mut e = jsonrpc::error(
            call.client_id.clone(),
            jsonrpc::MISSING_CLIENT_CAPABILITY,
            &format!(
                "this request needs client capabilities the request did not declare: {}",
                kinds.join(", ")
            ),
        );
        let required: serde_json::Map<String, Value> =
            kinds.iter().map(|k| (k.to_string(), json!({}))).collect();
        e["error"]["data"] = json!({ "requiredCapabilities": required });
        self.cancel_call(sk, cid, "the client lacks a required capability");
        self.reply(conn, e);
    }

    /// Answers a call's POST with `input_required`: every server request gathered for the
    /// round, and a signed `requestState`. The call goes on waiting upstream without a client;
    /// a retry that never comes times it out.
    fn finish_round(&mut self, sk: u64, cid: u64) {
        let ttl = self.deadline_for(sk);
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.get_mut(&cid) else {
            return;
        };
        let Some(modern) = call.modern.as_mut() else {
            return;
        };
        let missing = std::mem::take(&mut modern.missing);
        if modern.input.is_empty() {
            if !missing.is_empty() {
                self.refuse_call(sk, cid, &missing);
            }
            return;
        }
        let Some(conn) = call.conn.take() else {
            return;
        };
        let requests: serde_json::Map<String, Value> = modern
            .input
            .iter()
            .map(|i| (i.key.clone(), i.request.clone()))
            .collect();
        let expires = state::now_ms() + ttl.as_millis() as u64;
        let resume = Resume {
            pool: sk,
            call: cid,
        };
        let binding = state::binding(&call.method, &modern.name);
        let token = self.signer.sign(resume, expires, &binding);
        call.deadline = Instant::now() + ttl;
        let client_id = call.client_id.clone();
        let result = json!({
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": token,
        });
        self.reply(Some(conn), jsonrpc::result(client_id, result));
    }

    /// A retry carrying `requestState`: the client's `inputResponses` answer the server's
    /// waiting requests, and the call, still running upstream, now answers this request.
    fn resume(&mut self, sk: u64, conn: ConnId, msg: &Value, modern: Modern, token: &str) {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let binding = state::binding(jsonrpc::method(msg), &modern.name);
        let found = self
            .signer
            .verify(token, state::now_ms(), &binding)
            .map_err(|e| e.to_string())
            .and_then(|r| match self.siblings(sk).contains(&r.pool) {
                true => Ok((r.pool, r.call)),
                false => Err("requestState belongs to another backend".into()),
            });
        // The round waits in the pool that opened it, which may not be the one picked.
        let sk = found.as_ref().map_or(sk, |(pool, _)| *pool);
        let found = found.map(|(_, call)| call);
        let s = self.sessions.get_mut(&sk);
        let call = found.and_then(|cid| {
            let call = s.and_then(|s| s.calls.get_mut(&cid));
            call.filter(|c| c.conn.is_none() && c.modern.as_ref().is_some_and(|m| !m.input.is_empty()))
                .map(|_| cid)
                .ok_or_else(|| "the request this requestState belongs to is no longer waiting (answered, timed out or failed)".to_string())
        });
        let cid = match call {
            Ok(cid) => cid,
            Err(why) => {
                let e = jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &why);
                return self.reply(Some(conn), e);
            }
        };
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.get_mut(&cid) else {
            return;
        };
        let asked = call
            .modern
            .as_mut()
            .map(|m| std::mem::take(&mut m.input))
            .unwrap_or_default();
        call.conn = Some(conn);
        call.client_id = id.clone();
        call.modern = Some(modern);
        let responses = msg.at("/params/inputResponses");
        let mut missing = Vec::new();
        for input in asked {
            let method = input.request["method"].as_str().unwrap_or("");
            let answer = match responses.and_then(|r| r.get(&input.key)) {
                // An error object in place of a result: the client could not fulfil it.
                Some(e) if e.get("code").is_some() && e.get("message").is_some() => {
                    jsonrpc::error_answer(input.server_id.clone(), e.clone())
                }
                Some(r) if answers(method, r) => {
                    jsonrpc::result(input.server_id.clone(), r.clone())
                }
                // Missing or malformed: asked again in a new round.
                _ => {
                    missing.push(input);
                    continue;
                }
            };
            let _ = self.send(sk, input.target, answer);
        }
        if missing.is_empty() {
            return;
        }
        let call = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.calls.get_mut(&cid));
        if let Some(m) = call.and_then(|c| c.modern.as_mut()) {
            m.input = missing;
            self.rounds.push((sk, cid));
        }
    }

    /// A stateless request (already checked by the front) on pool `sk`; its answer goes to
    /// `conn`, shaped for the 2026-07-28 revision.
    pub fn modern_request(&mut self, sk: u64, conn: ConnId, msg: Value, modern: Modern) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        s.last_active = Instant::now();
        if s.phase == Phase::Initializing {
            s.waiting.push(Waiting { conn, msg, modern });
            return;
        }
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        if let Some(token) = modern.state.clone().filter(|t| Signer::is_ours(t)) {
            return self.resume(sk, conn, &msg, modern, &token);
        }
        match jsonrpc::method(&msg) {
            "subscriptions/listen" => self.listen(sk, conn, &msg),
            "server/discover" => {
                let mut r = discover_result(s.merged.as_ref());
                shape_modern("server/discover", &mut r);
                self.reply(Some(conn), jsonrpc::result(id, r));
            }
            // The front took the envelope out of `_meta` (it is for the gateway).
            _ => self.client_request(sk, conn, msg, Some(modern)),
        }
    }

    /// A stateless client's `subscriptions/listen` on pool `sk`: the reply stream stays open,
    /// starts with the acknowledgement of what the pool's targets can tell (their
    /// `listChanged` and `subscribe` capabilities), and carries their change notifications
    /// until the client closes it. Resource subscriptions become upstream
    /// `resources/subscribe`, one per URI however many listens want it.
    fn listen(&mut self, sk: u64, conn: ConnId, msg: &Value) {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let want = msg.at("/params/notifications");
        let asked = |k: &str| want.and_then(|w| w.get(k)).and_then(Value::as_bool) == Some(true);
        let caps = s.merged.as_ref().and_then(|m| m.get("capabilities"));
        let can = |kind: &str, flag: &str| {
            caps.and_then(|c| c.at(&format!("/{kind}/{flag}"))) == Some(&Value::Bool(true))
        };
        let uris: Vec<String> = match can("resources", "subscribe") {
            true => want
                .and_then(|w| w.get("resourceSubscriptions"))
                .and_then(Value::as_array)
                .map(|a| {
                    // Each becomes an upstream subscription: a bound on what one request opens.
                    let uris = a.iter().filter_map(|u| u.as_str().map(str::to_string));
                    uris.take(MAX_LISTEN_URIS).collect()
                })
                .unwrap_or_default(),
            false => Vec::new(),
        };
        let l = Listen {
            conn,
            id: id.clone(),
            tools: asked("toolsListChanged") && can("tools", "listChanged"),
            prompts: asked("promptsListChanged") && can("prompts", "listChanged"),
            resources: asked("resourcesListChanged") && can("resources", "listChanged"),
            uris,
        };
        let mut accepted = serde_json::Map::new();
        for (on, key) in [
            (l.tools, "toolsListChanged"),
            (l.prompts, "promptsListChanged"),
            (l.resources, "resourcesListChanged"),
        ] {
            if on {
                accepted.insert(key.into(), true.into());
            }
        }
        if !l.uris.is_empty() {
            accepted.insert("resourceSubscriptions".into(), json!(l.uris));
        }
        let mut fresh = Vec::new();
        for u in &l.uris {
            let n = s.subscribed.entry(u.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                fresh.push(u.clone());
            }
        }
        s.listens.push(l);
        let ack = jsonrpc::notification(
            "notifications/subscriptions/acknowledged",
            Some(json!({"_meta": {super::META_SUBSCRIPTION_ID: id}, "notifications": accepted})),
        );
        self.push(Action::Push {
            conn,
            session: sk,
            msg: ack,
        });
        for uri in fresh {
            self.resource_subscription(sk, "resources/subscribe", &uri);
        }
    }

    /// The pools serving the same backend as pool `sk` (itself included).
    fn siblings(&self, sk: u64) -> Vec<u64> {
        let Some(s) = self.sessions.get(&sk) else {
            return Vec::new();
        };
        let found = s.pool_key.as_ref().and_then(|k| self.pools.get(k));
        found.cloned().unwrap_or_else(|| vec![sk])
    }

    /// Sends `resources/subscribe` or `unsubscribe` for a client-facing URI to the target
    /// that owns it (a modern target has neither; its updates come with its own listen).
    fn resource_subscription(&mut self, sk: u64, method: &str, uri: &str) {
        let Some(s) = self.sessions.get(&sk) else {
            return;
        };
        let params = json!({ "uri": uri });
        let Ok(Dest::One(t, p)) = s.naming.route(method, Some(&params)) else {
            return;
        };
        if s.targets.get(t).is_none_or(TargetSlot::modern) {
            let own = p
                .as_ref()
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str);
            let own = own.unwrap_or(uri).to_string();
            return self.watch_uri(sk, t, &own, method == "resources/subscribe");
        }
        let timeout = self.deadline_for(sk);
        let _ = self.start_call(
            sk,
            None,
            Value::Null,
            method,
            CallKind::Forward,
            vec![(t, p)],
            timeout,
            None,
        );
    }

    /// The client closed a listen stream: its subscriptions are dropped (upstream too, for
    /// URIs no other listen wants).
    fn unlisten(&mut self, sk: u64, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(i) = s.listens.iter().position(|l| l.conn == conn) else {
            return;
        };
        let l = s.listens.swap_remove(i);
        let mut gone = Vec::new();
        for u in l.uris {
            if let Some(n) = s.subscribed.get_mut(&u) {
                *n -= 1;
                if *n == 0 {
                    s.subscribed.remove(&u);
                    gone.push(u);
                }
            }
        }
        for uri in gone {
            self.resource_subscription(sk, "resources/unsubscribe", &uri);
        }
    }

    /// Opens (or opens again, with the filter it needs now) the gateway's own
    /// `subscriptions/listen` to modern target `t`: a modern server tells of changes only on
    /// such a stream, so without it neither the session's clients nor the pool's list cache
    /// would hear of them. It asks for what the target offers (`listChanged`, and the
    /// resources the session's clients subscribed to); a listen it replaces is cancelled. It
    /// is no call: no deadline, and it keeps nothing alive.
    fn watch(&mut self, sk: u64, t: usize) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        if !s
            .targets
            .get(t)
            .is_some_and(|x| x.modern() && x.state == TargetState::Ready)
        {
            return; // (every target of a session is offered one, at initialization)
        }
        let envelope = era::envelope(s, None);
        let uid = s.next_id;
        let Some(slot) = s.targets.get_mut(t) else {
            return;
        };
        slot.watch_retry = None;
        let caps = slot
            .init_result
            .as_ref()
            .and_then(|r| r.get("capabilities"));
        let offers = |p: &str| caps.and_then(|c| c.at(p)) == Some(&Value::Bool(true));
        let mut filter = serde_json::Map::new();
        for (flag, key) in [
            ("/tools/listChanged", "toolsListChanged"),
            ("/prompts/listChanged", "promptsListChanged"),
            ("/resources/listChanged", "resourcesListChanged"),
        ] {
            if offers(flag) {
                filter.insert(key.into(), true.into());
            }
        }
        if offers("/resources/subscribe") && !slot.watch_uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(slot.watch_uris));
        }
        let old = slot.watch.take();
        if !filter.is_empty() {
            slot.watch = Some(uid);
            s.next_id += 1;
        }
        if let Some(old) = old {
            let n = jsonrpc::notification(
                "notifications/cancelled",
                Some(json!({"requestId": old, "reason": "listen replaced"})),
            );
            let _ = self.send(sk, t, n);
        }
        if filter.is_empty() {
            return;
        }
        let mut params = Some(json!({ "notifications": filter }));
        era::stamp(&mut params, &envelope);
        let req = jsonrpc::request(json!(uid), "subscriptions/listen", params);
        if let Err(why) = self.send(sk, t, req) {
            self.watch_ended(sk, t, uid, WatchEnd::Failed(why));
        }
    }

    /// The gateway's listen to target `t` ended (an answer, an error, a broken stream, the
    /// server's `notifications/cancelled`). It is opened again a little later, unless the
    /// target refused it.
    fn watch_ended(&mut self, sk: u64, t: usize, uid: u64, end: WatchEnd) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let id = short_id(&s.id).to_string();
        let Some(slot) = s.targets.get_mut(t).filter(|x| x.watch == Some(uid)) else {
            return;
        };
        slot.watch = None;
        let name = &slot.name;
        match &end {
            WatchEnd::Refused(why) => {
                return log!("[{id}] target {name}: listen refused: {why}");
            }
            WatchEnd::Ended => log!("[{id}] target {name}: listen ended; opening it again"),
            WatchEnd::Failed(why) => log!("[{id}] target {name}: listen failed ({why}); retrying"),
        }
        let delay = WATCH_RETRY * (1 << slot.watch_failures.min(5));
        slot.watch_failures = slot.watch_failures.saturating_add(1);
        slot.watch_retry = Some(Instant::now() + delay);
    }

    /// A client subscribed to (or unsubscribed from) resource `uri` of modern target `t`
    /// (the target's own URI): that target has no `resources/subscribe`; its listen is
    /// opened again with the new set.
    fn watch_uri(&mut self, sk: u64, t: usize, uri: &str, on: bool) {
        let Some(slot) = self
            .sessions
            .get_mut(&sk)
            .and_then(|s| s.targets.get_mut(t))
        else {
            return;
        };
        let had = slot.watch_uris.iter().position(|u| u == uri);
        match (on, had) {
            (true, None) if slot.watch_uris.len() < MAX_LISTEN_URIS => {
                slot.watch_uris.push(uri.to_string())
            }
            (false, Some(i)) => drop(slot.watch_uris.swap_remove(i)),
            _ => return,
        }
        self.watch(sk, t);
    }

    /// A change notification from a pool's target: to every listen whose accepted filter
    /// covers it, tagged with that listen's id.
    fn notify_listens(&mut self, sk: u64, msg: &Value) {
        let method = jsonrpc::method(msg);
        let uri = msg.at("/params/uri").and_then(Value::as_str);
        let mut pushes = Vec::new();
        // Every pool of the backend runs the same servers: a change one of its children
        // reports reaches the listens of all of them.
        let pools = self.siblings(sk);
        let listens = pools
            .iter()
            .filter_map(|p| self.sessions.get(p).map(|s| (*p, s)))
            .flat_map(|(p, s)| s.listens.iter().map(move |l| (p, l)));
        for (sk, l) in listens {
            let wanted = match method {
                "notifications/tools/list_changed" => l.tools,
                "notifications/prompts/list_changed" => l.prompts,
                "notifications/resources/list_changed" => l.resources,
                "notifications/resources/updated" => {
                    uri.is_some_and(|u| l.uris.iter().any(|x| x == u))
                }
                _ => false,
            };
            if wanted {
                let mut m = msg.clone();
                if !m.get("params").is_some_and(Value::is_object) {
                    m["params"] = json!({});
                }
                m["params"]["_meta"][super::META_SUBSCRIPTION_ID] = l.id.clone();
                pushes.push((sk, l.conn, m));
            }
        }
        for (sk, conn, msg) in pushes {
            self.push(Action::Push {
                conn,
                session: sk,
                msg,
            });
        }
    }

    // ---- messages from the client --------------------------------------------------------

    /// One valid JSON-RPC message from a session's client; answers go to `conn`.
    pub fn client_message(&mut self, sk: u64, conn: ConnId, kind: Kind, msg: Value) {
        match kind {
            Kind::Request => self.client_request(sk, conn, msg, None),
            Kind::Notification => self.client_notification(sk, msg),
            Kind::Response => self.client_response(sk, msg),
        }
    }

    fn client_request(&mut self, sk: u64, conn: ConnId, mut msg: Value, modern: Option<Modern>) {
        let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).to_string();
        let params = msg.get_mut("params").map(Value::take);
        let Some(s) = self.sessions.get(&sk) else {
            return;
        };
        let gateway = s.metric_gateway;
        // A request the gateway answers with an error itself: counted against `gateway`.
        let refuse = |relay: &mut Relay, code: i64, why: &str| {
            metrics::with(|m| m.request(&method, gateway, Outcome::Error, Duration::ZERO));
            relay.reply(Some(conn), jsonrpc::error(client_id.clone(), code, why));
        };
        if method == "initialize" {
            return refuse(
                self,
                jsonrpc::INVALID_REQUEST,
                "session is already initialized",
            );
        }
        if s.calls.len() >= self.limits.max_inflight {
            return refuse(
                self,
                jsonrpc::UPSTREAM_ERROR,
                "too many requests in flight for this session",
            );
        }
        let timeout = self.deadline_for(sk);
        let level = params
            .as_ref()
            .and_then(|p| p.get("level"))
            .and_then(Value::as_str);
        if let Some(level) = level.filter(|_| method == "logging/setLevel") {
            // Kept for the modern targets, which take the level with each request instead.
            let level = level.to_string();
            if let Some(s) = self.sessions.get_mut(&sk) {
                s.log_level = Some(level);
            }
        }
        let Some(s) = self.sessions.get(&sk) else {
            return;
        };
        match s.naming.route(&method, params.as_ref()) {
            Ok(Dest::Local) => {
                metrics::with(|m| m.request(&method, gateway, Outcome::Ok, Duration::ZERO));
                let mut empty = json!({});
                if modern.is_some() {
                    shape_modern(&method, &mut empty);
                }
                self.reply(Some(conn), jsonrpc::result(client_id.clone(), empty))
            }
            Ok(Dest::One(t, p)) => {
                let principal = caller(modern.as_ref(), s);
                let stateless = modern.is_some();
                if let Some((code, why)) =
                    forbidden(s, principal, &method, t, p.as_ref(), stateless)
                {
                    metrics::with(|m| m.refusal("forbidden"));
                    warn!(
                        "[{}] {method} refused by mcpAuthorization for {}",
                        short_id(&s.id),
                        principal.map_or("an anonymous client", |p| &**p.key())
                    );
                    return refuse(self, code, &why);
                }
                // After authorization: a tool the caller may not use answers as a missing one,
                // whatever its headers.
                if let Some(why) = param_mismatch(s, t, &method, p.as_ref(), modern.as_ref()) {
                    return refuse(self, jsonrpc::HEADER_MISMATCH, &why);
                }
                if crate::log::access_log() != crate::log::AccessLog::Off {
                    let target = s.naming.targets.get(t).cloned().unwrap_or_default();
                    self.actions.push_back(Action::NoteTarget { conn, target });
                }
                if let Some(TargetState::Failed(why)) = s.targets.get(t).map(|x| &x.state) {
                    let why = format!("target {} is unavailable: {why}", s.naming.targets[t]);
                    return refuse(self, jsonrpc::UPSTREAM_ERROR, &why);
                }
                let slot = s.targets.get(t);
                let subscribable = slot
                    .and_then(|x| x.init_result.as_ref())
                    .and_then(|r| r.at("/capabilities/resources/subscribe")?.as_bool());
                let on = method == "resources/subscribe";
                let uri = p
                    .as_ref()
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str);
                if let (Some(uri), true, Some(true)) = (
                    uri.filter(|_| on || method == "resources/unsubscribe"),
                    slot.is_some_and(TargetSlot::modern),
                    subscribable,
                ) {
                    // A modern target has no such method: its listen subscribes instead.
                    let uri = uri.to_string();
                    self.watch_uri(sk, t, &uri, on);
                    metrics::with(|m| m.request(&method, gateway, Outcome::Ok, Duration::ZERO));
                    return self.reply(Some(conn), jsonrpc::result(client_id, json!({})));
                }
                if method == "logging/setLevel" && s.targets.get(t).is_some_and(TargetSlot::modern)
                {
                    // Kept above; a modern target takes the level with each request.
                    metrics::with(|m| m.request(&method, gateway, Outcome::Ok, Duration::ZERO));
                    return self.reply(Some(conn), jsonrpc::result(client_id, json!({})));
                }
                self.start_call(
                    sk,
                    Some(conn),
                    client_id,
                    &method,
                    CallKind::Forward,
                    vec![(t, p)],
                    timeout,
                    modern,
                );
            }
            Ok(Dest::All) => {
                // Lists filtered by mcpAuthorization differ per principal: not cached.
                let filtered = s.rules().is_some();
                let key = list_key(&method, params.as_ref()).filter(|_| !filtered);
                let cached = key
                    .as_ref()
                    .filter(|_| s.pool && modern.is_some())
                    .and_then(|k| s.lists.get(k))
                    .filter(|(_, until)| *until > Instant::now())
                    .map(|(text, _)| Rc::clone(text));
                if let Some(text) = cached {
                    metrics::with(|m| m.request(&method, gateway, Outcome::Ok, Duration::ZERO));
                    let mut answer = String::with_capacity(text.len() + 48);
                    answer.push_str(r#"{"jsonrpc":"2.0","id":"#);
                    answer.push_str(&client_id.to_string());
                    answer.push_str(r#","result":"#);
                    answer.push_str(&text);
                    answer.push('}');
                    return self.push(Action::Answer {
                        conn,
                        text: Some(answer),
                    });
                }
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
                    if method == "logging/setLevel" && s.targets[t].modern() {
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
                let pooled = s.pool && modern.is_some();
                let cid = self.start_call(
                    sk,
                    Some(conn),
                    client_id,
                    &method,
                    CallKind::FanOut,
                    parts,
                    timeout,
                    modern,
                );
                // A pool's answer to it is kept for the next stateless client.
                let call = cid.and_then(|c| self.sessions.get_mut(&sk)?.calls.get_mut(&c));
                if let (Some(call), true) = (call, pooled) {
                    call.list_key = key;
                }
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
                let Some(rid) = msg.at("/params/requestId") else {
                    return;
                };
                if let Some(&call) = s.by_client_id.get(&jsonrpc::id_key(rid)) {
                    let reason = msg
                        .at("/params/reason")
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
                let initialized = m == "notifications/initialized";
                let ready: Vec<usize> = (0..s.targets.len())
                    .filter(|&t| s.targets[t].state == TargetState::Ready)
                    .collect();
                for t in ready {
                    let _ = self.send(sk, t, msg.clone());
                    if initialized {
                        self.watch(sk, t);
                    }
                }
            }
        }
    }

    /// A modern target answered a legacy client's call with `input_required`: each of its
    /// input requests goes to the client as a real request; once all are answered, the call
    /// goes to the target again with the answers (`retry_with_input`). Err: the error the
    /// call ends with instead (not a legacy client's call, too many rounds, nothing asked).
    fn ask_legacy_client(&mut self, sk: u64, cid: u64, v: &Value) -> Result<(), Value> {
        let fail = |why: &str| Err(json!({"code": jsonrpc::INTERNAL_ERROR, "message": why}));
        let timeout = self.deadline_for(sk);
        let Some(s) = self.sessions.get_mut(&sk) else {
            return fail("session ended");
        };
        let Some(call) = s.calls.get_mut(&cid) else {
            return fail("call ended");
        };
        let Some(asking) = call.asking.as_mut() else {
            return fail("not a legacy client's call");
        };
        let requests = v.get("inputRequests").and_then(Value::as_object);
        let Some(requests) = requests.filter(|r| !r.is_empty()) else {
            return fail("the target asked for input but named no input request");
        };
        asking.rounds += 1;
        if asking.rounds > MAX_INPUT_ROUNDS {
            return fail("the target asked for input more than 8 times in one request");
        }
        asking.state = v.get("requestState").cloned();
        asking.waiting = requests
            .iter()
            .map(|(k, r)| (k.clone(), r["method"].as_str().unwrap_or("").to_string()))
            .collect();
        asking.responses = serde_json::Map::new();
        // The client may take its time (a person answers an elicitation).
        call.deadline = Instant::now() + timeout;
        let mut asks = Vec::new();
        for (key, req) in requests {
            let method = req.get("method").and_then(Value::as_str).unwrap_or("");
            let gid = s.next_id;
            s.next_id += 1;
            s.input_requests.insert(gid, (cid, key.clone()));
            asks.push(jsonrpc::request(
                json!(gid),
                method,
                req.get("params").cloned(),
            ));
        }
        for a in asks {
            self.deliver(sk, a, Hint::Call(cid));
        }
        Ok(())
    }

    /// The legacy client answered one request of a modern target's input round; with the
    /// last one, the call goes to the target again, carrying every answer.
    fn input_answered(&mut self, sk: u64, cid: u64, key: String, msg: &Value) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.get_mut(&cid) else {
            return;
        };
        let Some(asking) = call.asking.as_mut() else {
            return;
        };
        let Some(i) = asking.waiting.iter().position(|(k, _)| *k == key) else {
            return;
        };
        let (_, method) = asking.waiting.swap_remove(i);
        // The revision has no error answer to an input request: a failed elicitation is a
        // cancelled one; for anything else the error object goes back in its place.
        let answer = match (msg.get("result"), msg.get("error")) {
            (Some(r), _) => r.clone(),
            (None, Some(_)) if method == "elicitation/create" => json!({"action": "cancel"}),
            (None, Some(e)) => e.clone(),
            _ => json!({}),
        };
        asking.responses.insert(key, answer);
        if !asking.waiting.is_empty() {
            return;
        }
        let mut params = asking.params.clone();
        params["inputResponses"] = Value::Object(std::mem::take(&mut asking.responses));
        match asking.state.take() {
            Some(st) => params["requestState"] = st,
            None => {
                if let Some(o) = params.as_object_mut() {
                    o.remove("requestState");
                }
            }
        }
        let Some((t, _, None)) = call.parts.first().cloned() else {
            return;
        };
        let method = call.method.clone();
        let Some(new) = s.reissue(cid, 0) else {
            return Default::default();
        };
        let req = jsonrpc::request(json!(new), &method, Some(params));
        if let Err(why) = self.send(sk, t, req) {
            let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why});
            self.finish_part(sk, cid, 0, Err(err));
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
        if let Some((cid, key)) = s.input_requests.remove(&gid) {
            return self.input_answered(sk, cid, key, &msg);
        }
        let Some((t, orig)) = s.server_requests.remove(&gid) else {
            log!(
                "[{}] answer to an unknown request id {gid} dropped",
                short_id(&s.id)
            );
            return;
        };
        msg["id"] = orig;
        let _ = self.send(sk, t, msg);
    }

    /// Sends one upstream request per part and records the call.
    #[allow(clippy::too_many_arguments)]
    fn start_call(
        &mut self,
        sk: u64,
        conn: Option<ConnId>,
        client_id: Value,
        method: &str,
        kind: CallKind,
        parts: Vec<(usize, Option<Value>)>,
        timeout: Duration,
        modern: Option<Modern>,
    ) -> Option<u64> {
        let s = self.sessions.get_mut(&sk)?;
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
        let mut asking = None;
        // Targets of the stateless revision get the envelope on every request, and
        // `server/discover` (the probe, for `auto` ones) instead of `initialize`.
        let envelope = s
            .targets
            .iter()
            .any(|x| x.era != Era::Legacy)
            .then(|| era::envelope(s, modern.as_ref()));
        for (t, mut params) in parts {
            let uid = s.alloc_id();
            let mut part_method = method;
            if let Some(env) = envelope
                .as_ref()
                .filter(|_| s.targets[t].era != Era::Legacy)
            {
                if kind == CallKind::Initialize {
                    part_method = "server/discover";
                    params = None;
                }
                era::stamp(&mut params, env);
            }
            // Progress tokens become the upstream request id, so a progress notification
            // finds its call with one lookup and no target sees another's token.
            if let Some(tok) = params
                .as_mut()
                .and_then(|p| p.at_mut("/_meta/progressToken"))
            {
                progress = Some(std::mem::replace(tok, json!(uid)));
            }
            if kind == CallKind::Forward && modern.is_none() && s.targets[t].modern() {
                asking = Some(Box::new(Asking {
                    params: params.clone().unwrap_or_else(|| json!({})),
                    ..Asking::default()
                }));
            }
            s.upstream.insert(uid, cid);
            sends.push((t, jsonrpc::request(json!(uid), part_method, params)));
            call_parts.push((t, uid, None));
        }
        let remaining = call_parts.len();
        // A stateless client cancels by closing its stream, never by id (and ids from
        // different clients meet in one pool): only a session's calls are found by theirs.
        if modern.is_none() {
            s.by_client_id.insert(jsonrpc::id_key(&client_id), cid);
        }
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
                list_key: None,
                modern,
                asking,
            },
        );
        if remaining == 0 {
            self.complete_call(sk, cid);
            return None;
        }
        for (i, (t, req)) in sends.into_iter().enumerate() {
            if let Err(why) = self.send(sk, t, req) {
                let err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why});
                self.finish_part(sk, cid, i, Err(err));
            }
        }
        Some(cid)
    }

    /// Queues a message for a target's link. Err: the target has none.
    fn send(&mut self, sk: u64, t: usize, msg: Value) -> Result<(), String> {
        let s = self.sessions.get(&sk).ok_or("session ended")?;
        let slot = s.targets.get(t).ok_or("no such target")?;
        let Some(link) = slot.link else {
            // Why it stopped says more than that it did (an upstream's 401, say).
            return Err(match &slot.state {
                TargetState::Failed(why) if why.starts_with(&format!("target {}", slot.name)) => {
                    why.clone()
                }
                TargetState::Failed(why) => format!("target {}: {why}", slot.name),
                _ => format!("target {} is not running", slot.name),
            });
        };
        // A modern target has no session to be told about, and over HTTP no way to take a
        // notification at all (a call is cancelled there by closing its stream).
        let note = msg.get("id").is_none();
        if note && slot.modern() && slot.http && jsonrpc::method(&msg) == "notifications/cancelled"
        {
            if let Some(uid) = msg.at("/params/requestId").and_then(Value::as_u64) {
                self.push(Action::Abandon { link, uid });
            }
            return Ok(());
        }
        if note && slot.modern() && (slot.http || era::session_notification(jsonrpc::method(&msg)))
        {
            return Ok(());
        }
        // (An `auto` target still being probed gets only `server/discover`, enveloped.)
        let headers = match slot.era != Era::Legacy && slot.http && !note {
            true => {
                // For a tool whose marks the gateway has not seen listed, a stateless client's
                // own Mcp-Param-* headers travel on.
                let call = (msg.get("id").and_then(Value::as_u64))
                    .and_then(|uid| s.upstream.get(&uid))
                    .and_then(|cid| s.calls.get(cid));
                let given = call.and_then(|c| c.modern.as_ref());
                let given = given.map_or(&[][..], |m| &m.param_headers[..]);
                era::http_headers(&msg, &slot.params, given)
            }
            false => Vec::new(),
        };
        self.push(Action::Send { link, msg, headers });
        Ok(())
    }

    /// Drops a call: each upstream still working on it is told `notifications/cancelled`.
    fn cancel_call(&mut self, sk: u64, cid: u64, reason: &str) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(call) = s.calls.remove(&cid) else {
            return;
        };
        s.forget_client_id(&call);
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
            let _ = self.send(sk, t, n);
        }
        // The client will not get an answer for a cancelled request; its POST ends without it.
        if let Some(conn) = call.conn {
            self.push(Action::Answer { conn, text: None });
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
                let _ = self.send(sk, t, n);
            }
            let err = json!({"code": jsonrpc::REQUEST_TIMEOUT, "message": format!("target {name} did not answer in time")});
            self.finish_part(sk, cid, i, Err(err));
        }
    }

    /// What the answer to `server/discover`, sent in place of `initialize`, says of the
    /// target's era. A legacy answer (or none in time) falls back to `initialize` on the same
    /// link, and the era is remembered for the target's next sessions.
    fn era_answer(
        &mut self,
        sk: u64,
        cid: u64,
        part: usize,
        r: &Result<Value, Value>,
    ) -> EraAnswer {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return EraAnswer::NotProbe;
        };
        let Some(&(t, _, None)) = s
            .calls
            .get(&cid)
            .filter(|c| c.kind == CallKind::Initialize)
            .and_then(|c| c.parts.get(part))
        else {
            return EraAnswer::NotProbe;
        };
        let configured = s.backend.targets.get(t).map(|x| x.era);
        let Some(slot) = s.targets.get_mut(t).filter(|x| x.era != Era::Legacy) else {
            return EraAnswer::NotProbe;
        };
        let key = (s.backend.name.clone(), slot.name.clone());
        let mut outcome = era::probe_outcome(r);
        if outcome == Probe::Retry {
            outcome = match std::mem::replace(&mut slot.reprobed, true) {
                false => Probe::Retry,
                true => Probe::Legacy,
            };
        }
        match outcome {
            Probe::Retry => {
                let Some(new) = s.reissue(cid, part) else {
                    return EraAnswer::NotProbe;
                };
                let mut params = None;
                era::stamp(&mut params, &era::envelope(s, None));
                let req = jsonrpc::request(json!(new), "server/discover", params);
                if let Err(why) = self.send(sk, t, req) {
                    return EraAnswer::Failed(
                        json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why}),
                    );
                }
                EraAnswer::FellBack
            }
            Probe::Modern(init) => {
                if slot.era == Era::Auto {
                    log!(
                        "[{}] target {} speaks {}",
                        short_id(&s.id),
                        slot.name,
                        super::MODERN_VERSION
                    );
                }
                slot.era = Era::Modern;
                self.eras.insert(key, Era::Modern);
                EraAnswer::Modern(init)
            }
            Probe::Legacy if configured == Some(Era::Modern) => {
                let why = match r {
                    Err(e) => e.clone(),
                    Ok(_) => json!({"code": jsonrpc::UPSTREAM_ERROR,
                        "message": format!("target {} is configured era: modern but its server/discover does not offer {}", slot.name, super::MODERN_VERSION)}),
                };
                EraAnswer::Failed(why)
            }
            Probe::Legacy => {
                slot.era = Era::Legacy;
                self.eras.insert(key, Era::Legacy);
                let Some(new) = s.reissue(cid, part) else {
                    return EraAnswer::NotProbe;
                };
                let req = jsonrpc::request(json!(new), "initialize", Some(s.init_params.clone()));
                if let Err(why) = self.send(sk, t, req) {
                    return EraAnswer::Failed(
                        json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why}),
                    );
                }
                EraAnswer::FellBack
            }
        }
    }

    /// A target's `tools/list` page, read for its `x-mcp-header` marks: kept for the
    /// `Mcp-Param-*` headers of later calls to a modern HTTP target, and in a pool for
    /// checking a stateless client's. A modern HTTP target's tools whose marks are invalid
    /// are dropped (a client must not call them); another target's are kept, unmarked.
    fn learn_params(&mut self, sk: u64, cid: u64, part: usize, r: &mut Result<Value, Value>) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let Some(&(t, _, _)) = s
            .calls
            .get(&cid)
            .filter(|c| c.method == "tools/list")
            .and_then(|c| c.parts.get(part))
        else {
            return;
        };
        let pool = s.pool;
        let Some(slot) = s
            .targets
            .get_mut(t)
            .filter(|x| (x.modern() && x.http) || pool)
        else {
            return;
        };
        let strict = slot.modern() && slot.http;
        let Ok(Value::Object(page)) = r else {
            return;
        };
        let Some(Value::Array(tools)) = page.get_mut("tools") else {
            return;
        };
        tools.retain(|tool| {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            let schema = tool.get("inputSchema").unwrap_or(&Value::Null);
            match super::params::bindings(schema) {
                Ok(b) if b.is_empty() => {
                    slot.params.remove(name);
                    true
                }
                Ok(b) => {
                    slot.params.insert(name.to_string(), b);
                    true
                }
                Err(why) if strict => {
                    log!(
                        "[{}] target {}: tool {name:?} left out: {why}",
                        short_id(&s.id),
                        slot.name
                    );
                    false
                }
                Err(_) => {
                    slot.params.remove(name);
                    true
                }
            }
        });
    }

    /// The probe deadline passed: targets that have not answered `server/discover` are legacy.
    fn probe_timeout(&mut self, sk: u64) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        s.probe_deadline = None;
        let pending: Vec<(u64, usize)> = s
            .calls
            .iter()
            .filter(|(_, c)| c.kind == CallKind::Initialize)
            .flat_map(|(&cid, c)| {
                c.parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.2.is_none() && s.targets.get(p.0).is_some_and(|x| x.era == Era::Auto)
                    })
                    .map(move |(i, _)| (cid, i))
            })
            .collect();
        for (cid, part) in pending {
            let no = json!({"code": jsonrpc::REQUEST_TIMEOUT, "message": "no answer to server/discover"});
            self.finish_part(sk, cid, part, Err(no));
        }
    }

    fn finish_part(&mut self, sk: u64, cid: u64, part: usize, mut r: Result<Value, Value>) {
        match self.era_answer(sk, cid, part, &r) {
            EraAnswer::NotProbe => {}
            EraAnswer::Modern(init) => r = Ok(init),
            EraAnswer::Failed(e) => r = Err(e),
            EraAnswer::FellBack => return, // the answer to `initialize` finishes the part
        }
        self.learn_params(sk, cid, part, &mut r);
        let asks_legacy = |s: &Session| s.calls.get(&cid).is_some_and(|c| c.asking.is_some());
        if let (Ok(v), true) = (&r, self.sessions.get(&sk).is_some_and(asks_legacy)) {
            if v.get("resultType").and_then(Value::as_str) == Some("input_required") {
                match self.ask_legacy_client(sk, cid, v) {
                    Ok(()) => return,
                    Err(e) => r = Err(e),
                }
            }
        }
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
            if let Err(why) = self.send(sk, t, req) {
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
        let Some((mut call, label)) = s.take_call(cid) else {
            return;
        };
        // What mcpAuthorization hides leaves each target's list page before anything else
        // (merging, prefixes, cursors) sees it.
        if let Some(rules) = s.rules() {
            let principal = caller(call.modern.as_ref(), s);
            for (t, _, r) in call.parts.iter_mut() {
                if let Some(Ok(page)) = r {
                    let target = s.naming.targets.get(*t).map_or("", String::as_str);
                    filter_list(rules, principal, &call.method, target, page);
                }
            }
        }
        let failed = call.parts.iter().all(|(_, _, r)| matches!(r, Some(Err(_))));
        let outcome = if failed && !call.parts.is_empty() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        metrics::with(|m| m.request(&call.method, label, outcome, call.started.elapsed()));
        let modern = call.modern.is_some();
        // Only a list every target answered is worth keeping.
        let whole = call.parts.iter().all(|p| matches!(p.2, Some(Ok(_))));
        // A legacy client hears a modern target's results without the 2026-07-28 fields.
        let legacy_view = |t: usize, v: &mut Value| {
            if !modern && s.targets.get(t).is_some_and(TargetSlot::modern) {
                era::legacy_result(v);
            }
        };
        let mut answer = match call.kind {
            CallKind::Forward => match call.parts.into_iter().next() {
                Some((t, _, Some(Ok(mut v)))) => {
                    legacy_view(t, &mut v);
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
                        Some(Ok(mut v)) => {
                            legacy_view(t, &mut v);
                            ok.push((t, v))
                        }
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
        if modern {
            modernize_answer(&call.method, &mut answer);
        }
        if let Some(key) = call
            .list_key
            .filter(|_| whole && answer.get("result").is_some())
        {
            if s.lists.len() < MAX_CACHED_PAGES {
                let text: Rc<str> = serde_json::to_string(&answer["result"])
                    .unwrap_or_default()
                    .into();
                s.lists.insert(key, (text, Instant::now() + LIST_CACHE_TTL));
            }
        }
        self.reply(call.conn, answer);
    }

    fn complete_init(&mut self, sk: u64, call: Call) {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return;
        };
        let mut outcomes = Vec::new();
        // What the failed targets' errors carried (an upstream's challenge, say).
        let mut data = Vec::new();
        for (t, _, r) in &call.parts {
            let Some(slot) = s.targets.get_mut(*t) else {
                continue;
            };
            match r {
                Some(Ok(v)) if slot.link.is_some() => {
                    slot.state = TargetState::Ready;
                    slot.init_result = Some(v.clone());
                    outcomes.push((*t, None));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let msg = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("initialize failed");
                    slot.state = TargetState::Failed(msg.to_string());
                    outcomes.push((*t, Some(msg.to_string())));
                    data.extend(e.get("data").cloned());
                }
                None => {}
            }
        }
        let backoff = self.limits.target_backoff;
        for (t, failure) in outcomes {
            if let Some(target) = s.backend.targets.get(t) {
                let outcome = failure.as_deref().map_or(Ok(()), Err);
                self.health
                    .record(&s.backend.name, target, outcome, backoff);
            }
        }
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
            let mut e = jsonrpc::error(call.client_id, jsonrpc::UPSTREAM_ERROR, &why);
            let data = match data.len() {
                0 => None,
                1 => data.pop(),
                _ => Some(json!({ "targets": data })),
            };
            if let Some(d) = &data {
                e["error"]["data"] = d.clone();
            }
            s.fail_data = data;
            if let Some(conn) = call.conn {
                self.push(Action::NoSessionHeader { conn });
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
                .filter(|v| super::is_supported(v))
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
        if s.pool {
            s.merged = Some(merged);
            return self.pool_ready(sk);
        }
        let stream = s.get_stream;
        // What targets said during initialization waits for a stream; a legacy session has
        // had one all along.
        let backlog: Vec<Value> = match stream {
            Some(_) => s.backlog.drain(..).collect(),
            None => Vec::new(),
        };
        self.reply(call.conn, jsonrpc::result(call.client_id, merged));
        if let Some(conn) = stream {
            for msg in backlog {
                self.push(Action::Push {
                    conn,
                    session: sk,
                    msg,
                });
            }
        }
    }

    /// Queues an answer the front made (an invalid message on a legacy session's endpoint).
    pub fn answer(&mut self, conn: ConnId, msg: &Value) {
        let text = Some(serde_json::to_string(msg).unwrap_or_default());
        self.push(Action::Answer { conn, text });
    }

    /// Queues one answer for the connection that asked.
    fn reply(&mut self, conn: Option<ConnId>, msg: Value) {
        if let Some(conn) = conn {
            // serde_json's writer, not Display: that goes through fmt::Write, byte run by byte run.
            let text = Some(serde_json::to_string(&msg).unwrap_or_default());
            self.push(Action::Answer { conn, text });
        }
    }

    // ---- what links said -----------------------------------------------------------------

    /// Something a link reported.
    pub fn link_event(&mut self, link: LinkId, ev: LinkEvent) {
        let Some(&Holder::Session {
            session: sk,
            target: t,
        }) = self.links.get(&link)
        else {
            return; // a link that no longer serves anyone
        };
        match ev {
            LinkEvent::Message(m) => self.target_message(sk, t, m),
            LinkEvent::Answer(uid, result) => self.target_answer(sk, t, uid, result.get()),
            LinkEvent::RequestFailed(uid, why) => {
                let Some(s) = self.sessions.get_mut(&sk) else {
                    return;
                };
                if s.targets.get(t).is_some_and(|x| x.watch == Some(uid)) {
                    return self.watch_ended(sk, t, uid, WatchEnd::Failed(why.message));
                }
                let label = s.targets.get(t).map_or(s.metric_all, |x| x.metric);
                metrics::with(|m| m.upstream_error(label, UpstreamError::Request));
                let Some(cid) = s.upstream.remove(&uid) else {
                    return;
                };
                let part = s
                    .calls
                    .get(&cid)
                    .and_then(|c| c.parts.iter().position(|p| p.1 == uid));
                if let Some(part) = part {
                    let mut err = json!({"code": jsonrpc::UPSTREAM_ERROR, "message": why.message});
                    if let Some(data) = why.data {
                        err["data"] = data;
                    }
                    self.finish_part(sk, cid, part, Err(err));
                }
            }
            LinkEvent::Fatal(why) => self.target_failed(sk, t, &why),
            LinkEvent::Log(line) => {
                if let Some(s) = self.sessions.get(&sk) {
                    log!("[{}] {line}", short_id(&s.id));
                }
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
    /// the general path.
    fn relay_result(&mut self, sk: u64, t: usize, uid: u64, result: &str) -> bool {
        let Some(s) = self.sessions.get_mut(&sk) else {
            return false;
        };
        let Some(&cid) = s.upstream.get(&uid) else {
            return false;
        };
        // A stateless client's result gets its `resultType` (and cache fields) spliced in,
        // unless its target (a modern one) put them there; a legacy client's result from a
        // modern target needs them taken out (the general path).
        // (Scanned only for a stateless client's call: a legacy one's result goes as it is.)
        let stateless = s.calls.get(&cid).is_some_and(|c| c.modern.is_some());
        let typed = stateless && result.contains("\"resultType\"");
        let modern_target = s.targets.get(t).is_some_and(|x| x.modern());
        let splice = |c: &Call| match c.modern {
            None => !modern_target,
            Some(_) => result.starts_with('{') && (!typed || modern_target),
        };
        // A tool list is read for its parameter headers (general path) from a modern HTTP
        // target (its calls carry them), and in a pool from a target with marks (a stateless
        // client's headers are checked by them); the scan only runs for a pool's lists.
        let learns = |c: &Call| {
            c.method == "tools/list"
                && s.targets.get(t).is_some_and(|x| {
                    (x.modern() && x.http)
                        || (s.pool && (!x.params.is_empty() || result.contains("x-mcp-header")))
                })
        };
        // Lists that mcpAuthorization filters take the general path too.
        let filtered = s.rules().is_some();
        let plain = |c: &Call| {
            splice(c)
                && !learns(c)
                && !(filtered && aggregate::list_shape(&c.method).is_some())
                && c.kind == CallKind::Forward
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
            // The envelope's text, the id, and the fields a stateless answer gains.
            let mut text = String::with_capacity(result.len() + 48 + 64);
            text.push_str(r#"{"jsonrpc":"2.0","id":"#);
            text.push_str(&call.client_id.to_string());
            text.push_str(r#","result":"#);
            match call.modern {
                None => text.push_str(result),
                Some(_) if typed => text.push_str(result),
                Some(_) => {
                    let rest = &result[1..];
                    text.push('{');
                    text.push_str(modern_fields(&call.method));
                    if !rest.trim_start().starts_with('}') {
                        text.push(',');
                    }
                    text.push_str(rest);
                }
            }
            text.push('}');
            self.push(Action::Answer {
                conn,
                text: Some(text),
            });
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
                if s.targets.get(t).is_some_and(|x| x.watch == Some(uid)) {
                    let end = match msg.get("error") {
                        Some(e) => WatchEnd::Refused(
                            e.get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .into(),
                        ),
                        None => WatchEnd::Ended,
                    };
                    return self.watch_ended(sk, t, uid, end);
                }
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
            Ok(Kind::Request) if s.pool => self.pool_server_request(sk, t, msg),
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
        // What comes on the gateway's own listen is tagged with it: the tag is the
        // gateway's, not the client's (a pool's listens get their own).
        let meta = msg.at_mut("/params/_meta").and_then(Value::as_object_mut);
        if let Some(meta) = meta.filter(|m| m.contains_key(super::META_SUBSCRIPTION_ID)) {
            meta.remove(super::META_SUBSCRIPTION_ID);
            if meta.is_empty() {
                if let Some(p) = msg.get_mut("params").and_then(Value::as_object_mut) {
                    p.remove("_meta");
                }
            }
        }
        let watch = s.targets.get(t).and_then(|x| x.watch);
        match jsonrpc::method(&msg) {
            "notifications/subscriptions/acknowledged" => {
                if let Some(slot) = s.targets.get_mut(t) {
                    slot.watch_failures = 0;
                }
                return;
            }
            "notifications/cancelled"
                if watch.is_some()
                    && msg.at("/params/requestId").and_then(Value::as_u64) == watch =>
            {
                return self.watch_ended(sk, t, watch.unwrap_or_default(), WatchEnd::Ended);
            }
            _ => {}
        }
        let mut hint = Hint::Target(t);
        match jsonrpc::method(&msg) {
            "notifications/progress" => {
                let Some(tok) = msg.at_mut("/params/progressToken") else {
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
                let rid = msg.at("/params/requestId").cloned().unwrap_or(Value::Null);
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
                if let Some(Value::String(u)) = msg.at_mut("/params/uri") {
                    *u = s.naming.prefix_uri(t, u);
                }
            }
            m if m.ends_with("/list_changed") => s.lists.clear(),
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
        if s.pool {
            // Stateless clients hear nothing outside their own requests: progress, and log
            // messages for a request that asked for them; changes go to listen streams.
            let method = jsonrpc::method(&msg);
            if method.ends_with("/list_changed") || method == "notifications/resources/updated" {
                // An HTTP target is one server behind all the pools of a backend, each with its
                // own listen to it: its change is told once, by the first pool.
                let http = match hint {
                    Hint::Target(t) => s.targets.get(t).is_some_and(|x| x.http),
                    Hint::Call(_) => false,
                };
                if http && self.siblings(sk).first().is_some_and(|first| *first != sk) {
                    return;
                }
                return self.notify_listens(sk, &msg);
            }
            let Some(c) = call.and_then(|cid| s.calls.get(&cid)) else {
                return;
            };
            let wanted = match jsonrpc::method(&msg) {
                "notifications/progress" => true,
                "notifications/message" => c.modern.as_ref().is_some_and(|m| m.log_level.is_some()),
                _ => false,
            };
            if let (true, Some(conn)) = (wanted, c.conn) {
                self.push(Action::Push {
                    conn,
                    session: sk,
                    msg,
                });
            }
            return;
        }
        let post_conn = call.and_then(|cid| s.calls.get(&cid)).and_then(|c| c.conn);
        let init = s.phase == Phase::Initializing
            && s.calls.values().any(|c| c.kind == CallKind::Initialize);
        let conn = if init {
            None
        } else {
            post_conn.or(s.get_stream)
        };
        match conn {
            Some(conn) => self.push(Action::Push {
                conn,
                session: sk,
                msg,
            }),
            None => s.push_backlog(msg),
        }
    }

    // ---- time ----------------------------------------------------------------------------

    /// Idle sessions (`sessionTtl`) end; calls past their deadline fail and are cancelled
    /// upstream. The loop calls this about once a second: that precision is plenty, and no
    /// timer per call is needed.
    pub fn tick(&mut self, now: Instant) {
        let ttl = self.limits.session_ttl;
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.get_stream.is_none()
                    && s.calls.is_empty()
                    && s.listens.is_empty()
                    && now.duration_since(s.last_active) >= ttl
            })
            .map(|(k, _)| *k)
            .collect();
        for sk in expired {
            self.end_session(sk, "idle for longer than sessionTtl");
        }
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
        let rewatch: Vec<(u64, usize)> = self
            .sessions
            .iter()
            .flat_map(|(&sk, s)| {
                let due = |x: &TargetSlot| x.watch_retry.is_some_and(|d| d <= now);
                (0..s.targets.len())
                    .filter(move |&t| due(&s.targets[t]))
                    .map(move |t| (sk, t))
            })
            .collect();
        for (sk, t) in rewatch {
            self.watch(sk, t);
        }
        let probing: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.probe_deadline.is_some_and(|d| d <= now))
            .map(|(&sk, _)| sk)
            .collect();
        for sk in probing {
            self.probe_timeout(sk);
        }
    }

    /// Hands back the tables a burst grew (see `memory`).
    pub fn shrink(&mut self) {
        shrink_if_sparse(&mut self.sessions);
        shrink_if_sparse(&mut self.session_ids);
        shrink_if_sparse(&mut self.links);
    }
}

/// The `requestState` signer the settings ask for: the shared key, else a random one.
fn signer_for(limits: &Limits) -> Signer {
    let instance = limits.instance_id.as_deref().unwrap_or("-");
    match &limits.state_key {
        Some(k) => Signer::with_key(instance, &k.0),
        None => Signer::new(instance),
    }
}

/// How long a pool serves a merged list page from memory when no target says it changed.
/// Lists from servers that never send `list_changed` are at most this stale.
const LIST_CACHE_TTL: Duration = Duration::from_secs(30);
/// How the gateway's own listen to a modern target ended (see `Relay::watch_ended`).
enum WatchEnd {
    /// The server's result or `notifications/cancelled`: open it again.
    Ended,
    /// The request or its stream failed: open it again, later each time.
    Failed(String),
    /// The server answered it with an error: it is not asked again.
    Refused(String),
}

/// How long after the gateway's own listen to a modern target ended it is opened again.
const WATCH_RETRY: Duration = Duration::from_secs(2);

/// Resource URIs one `subscriptions/listen` may subscribe to.
const MAX_LISTEN_URIS: usize = 256;
/// Merged list pages a pool keeps.
const MAX_CACHED_PAGES: usize = 64;

/// The cache key of a list request (method and cursor), for the four `*/list` methods only.
fn list_key(method: &str, params: Option<&Value>) -> Option<(String, Option<String>)> {
    if !matches!(
        method,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
    ) {
        return None;
    }
    match params.and_then(|p| p.get("cursor")) {
        None | Some(Value::Null) => Some((method.to_string(), None)),
        Some(Value::String(c)) => Some((method.to_string(), Some(c.clone()))),
        Some(_) => None,
    }
}

/// Input rounds a modern target may ask of a legacy client within one request.
const MAX_INPUT_ROUNDS: u8 = 8;

/// What the answer to an era probe led to (see `Relay::era_answer`).
enum EraAnswer {
    /// Not a probe: an ordinary answer.
    NotProbe,
    /// A modern target: its discover result, shaped like an `initialize` result.
    Modern(Value),
    /// A target configured modern that did not answer as one.
    Failed(Value),
    /// A legacy target: `initialize` went out in its place.
    FellBack,
}

/// The fields every result to a stateless client starts with, as JSON text (no braces):
/// `resultType`, and the cache fields on cacheable methods. Proxied results are never
/// cached publicly: routing can change under them with no invalidation signal.
fn modern_fields(method: &str) -> &'static str {
    match super::is_cacheable(method) {
        true => r#""resultType":"complete","ttlMs":0,"cacheScope":"private""#,
        false => r#""resultType":"complete""#,
    }
}

/// A stateless `tools/call` whose `Mcp-Param-*` headers disagree with its arguments, by the
/// `x-mcp-header` marks its target listed for the tool: why (answered `-32020`, HTTP 400).
fn param_mismatch(
    s: &Session,
    t: usize,
    method: &str,
    params: Option<&Value>,
    modern: Option<&Modern>,
) -> Option<String> {
    let (Some(m), Some(slot)) = (modern, s.targets.get(t)) else {
        return None;
    };
    // Most targets mark nothing: no lookup then.
    if method != "tools/call" || slot.params.is_empty() {
        return None;
    }
    let params = params?;
    let marks = slot.params.get(params.get("name")?.as_str()?)?;
    let args = params.get("arguments").unwrap_or(&Value::Null);
    super::params::check(marks, args, &m.param_headers).err()
}

/// Adds `modern_fields` to a result object that lacks them.
fn shape_modern(method: &str, v: &mut Value) {
    let Value::Object(o) = v else {
        return;
    };
    o.entry("resultType").or_insert_with(|| "complete".into());
    if super::is_cacheable(method) {
        o.entry("ttlMs").or_insert_with(|| 0.into());
        o.entry("cacheScope").or_insert_with(|| "private".into());
    }
}

/// A whole answer for a stateless client: results shaped, and the legacy "resource not
/// found" code replaced by the one the 2026-07-28 revision uses.
fn modernize_answer(method: &str, answer: &mut Value) {
    if let Some(r) = answer.get_mut("result") {
        shape_modern(method, r);
    }
    if let Some(code) = answer.at_mut("/error/code") {
        if code.as_i64() == Some(jsonrpc::RESOURCE_NOT_FOUND) {
            *code = jsonrpc::INVALID_PARAMS.into();
        }
    }
}

/// Whether a server's request id can name an input as it is: short, printable, and not
/// one of the names the gateway gives (`sampling-7`), so the two never meet.
fn input_key_ok(k: &str) -> bool {
    let numbered = ["sampling-", "elicitation-", "roots-"].iter().any(|p| {
        k.strip_prefix(p)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    });
    !k.is_empty() && k.len() <= 128 && !numbered && k.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `r` has the shape of a result to a server's `method` request.
fn answers(method: &str, r: &Value) -> bool {
    match method {
        "elicitation/create" => r.get("action").is_some_and(Value::is_string),
        "sampling/createMessage" => r.get("content").is_some() && r.get("role").is_some(),
        "roots/list" => r.get("roots").is_some_and(Value::is_array),
        _ => r.is_object(),
    }
}

/// `server/discover` for a pool: what its targets said at `initialize`, merged.
fn discover_result(merged: Option<&Value>) -> Value {
    let merged = merged.cloned().unwrap_or_else(|| json!({}));
    let mut caps = merged
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Value::Object(c) = &mut caps {
        // Core tasks do not exist in this revision (`listChanged` and `subscribe` stay: the
        // pool relays them on `subscriptions/listen`).
        c.remove("tasks");
    }
    let mut r = json!({
        "supportedVersions": super::ALL_VERSIONS,
        "capabilities": caps,
        "_meta": {super::META_SERVER_INFO: merged.get("serverInfo").cloned().unwrap_or(Value::Null)},
    });
    if let Some(i) = merged.get("instructions") {
        r["instructions"] = i.clone();
    }
    r
}

/// Shrinks a map that uses under a quarter of a large capacity.
/// Who sent a request: a stateless client's own principal, else the session's.
fn caller<'a>(modern: Option<&'a Modern>, s: &'a Session) -> Option<&'a Principal> {
    (modern.and_then(|m| m.principal.as_deref())).or(s.principal.as_deref())
}

/// What `mcpAuthorization` says of a request for one target's tool, prompt or resource:
/// None (allowed), or the error that refuses it: the same error as for one that does not
/// exist, so a client learns nothing of what it may not use (for a `stateless` client,
/// whose revision has no -32002, a missing resource is invalid params).
fn forbidden(
    s: &Session,
    principal: Option<&Principal>,
    method: &str,
    t: usize,
    params: Option<&Value>,
    stateless: bool,
) -> Option<(i64, String)> {
    let rules = s.rules()?;
    let field = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
    let (kind, name) = match method {
        "tools/call" => ("tool", field("name")?),
        "prompts/get" => ("prompt", field("name")?),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            ("resource", field("uri")?)
        }
        "completion/complete" => {
            let r = params?.get("ref")?;
            match r.get("type").and_then(Value::as_str)? {
                "ref/prompt" => ("prompt", r.get("name")?.as_str()?),
                _ => ("resource", r.get("uri")?.as_str()?),
            }
        }
        _ => return None,
    };
    let target = s.naming.targets.get(t).map_or("", String::as_str);
    if crate::auth::permits(rules, principal, kind, name, target) {
        return None;
    }
    Some(match (kind, stateless) {
        ("tool", _) => (jsonrpc::INVALID_PARAMS, format!("Unknown tool: {name}")),
        ("prompt", _) => (jsonrpc::INVALID_PARAMS, format!("Unknown prompt: {name}")),
        (_, true) => (
            jsonrpc::INVALID_PARAMS,
            format!("Resource not found: {name}"),
        ),
        (_, false) => (
            jsonrpc::RESOURCE_NOT_FOUND,
            format!("Resource not found: {name}"),
        ),
    })
}

/// Drops from one target's list page what `rules` do not let `principal` see.
fn filter_list(
    rules: &crate::auth::rules::RuleSet,
    principal: Option<&Principal>,
    method: &str,
    target: &str,
    page: &mut Value,
) {
    let (array, field, kind) = match method {
        "tools/list" => ("tools", "name", "tool"),
        "prompts/list" => ("prompts", "name", "prompt"),
        "resources/list" => ("resources", "uri", "resource"),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate", "resource"),
        _ => return,
    };
    if let Some(Value::Array(items)) = page.get_mut(array) {
        items.retain(|item| {
            let name = item.get(field).and_then(Value::as_str).unwrap_or("");
            crate::auth::permits(rules, principal, kind, name, target)
        });
    }
}

pub fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    m: &mut HashMap<K, V, S>,
) {
    if m.capacity() > 256 && m.len() * 4 < m.capacity() {
        m.shrink_to_fit();
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
