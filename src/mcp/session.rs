//! Per-session state (the legacy, stateful kind of client context): the session's targets and
//! the links serving them, the calls in flight, the id and token maps that let answers and
//! notifications find their way back, and where messages to the client go (the GET or legacy
//! SSE stream, or the backlog until one opens).

use super::route::Naming;
use crate::config::{Era, McpBackend, RoutePolicy};
use crate::idmap::IdMap;
use crate::upstream::LinkId;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::rc::Rc;
use std::time::Instant;

/// What a pool is kept under: its backend and route policy (by address), and whose it is
/// (the credential its links pass through, or its principal), when it is not everyone's.
pub type PoolKey = (usize, usize, Option<Partition>);

/// Whose a pool is, when it is not everyone's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Partition {
    /// The credential its links pass through (a passthrough target).
    Credential(Rc<str>),
    /// One authenticated principal's (by `Principal::key`).
    Principal(Rc<str>),
}

/// Server-to-client messages kept for a GET stream that is not open yet.
pub const MAX_BACKLOG: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Spawned; `initialize` sent, answer awaited.
    Starting,
    Ready,
    /// Failed to start, or died; the reason is given to every request for it.
    Failed(String),
}

pub struct TargetSlot {
    pub name: String,
    pub state: TargetState,
    /// The link serving this target for the session, while it is open.
    pub link: Option<LinkId>,
    pub init_result: Option<Value>,
    /// Its label in the metrics (`backend/target`).
    pub metric: u16,
    /// The revision it speaks: `Auto` while the `server/discover` probe is out.
    pub era: Era,
    /// Reached over HTTP (a modern one then gets no notifications: it has no session).
    pub http: bool,
    /// The probe was already repeated once (after a `-32022`).
    pub reprobed: bool,
    /// The tools whose arguments travel as `Mcp-Param-*` headers too (from the `x-mcp-header`
    /// marks in the target's last `tools/list`), by the target's own tool name: a modern HTTP
    /// target's (its calls carry them), and in a pool any target's (a stateless client's
    /// headers are checked by them).
    pub params: HashMap<String, Vec<super::params::Binding>>,
    /// A modern target's change notifications: the id of the gateway's own
    /// `subscriptions/listen` to it while that is open.
    pub watch: Option<u64>,
    /// The target's own resource URIs that listen subscribes to (for the session's clients).
    pub watch_uris: Vec<String>,
    /// The listen ended: when to open it again.
    pub watch_retry: Option<Instant>,
    /// Listens that ended in a row before being acknowledged (the retry delay doubles).
    pub watch_failures: u8,
}

impl TargetSlot {
    pub fn modern(&self) -> bool {
        self.era == Era::Modern
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `initialize` is being fanned out to the targets.
    Initializing,
    Ready,
}

/// What to do with a call's parts once all are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// One target; its answer goes back as it is (URIs rewritten when prefixed).
    Forward,
    /// The client's `initialize`, fanned out to every target.
    Initialize,
    /// A `*/list` or `logging/setLevel` fanned out and merged.
    FanOut,
}

/// A call made by a stateless (2026-07-28) client: its answer is shaped for that revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Modern {
    /// `io.modelcontextprotocol/logLevel`: log notifications reach this request's stream only
    /// when it is set.
    pub log_level: Option<String>,
    /// The client's capabilities, from its envelope: which requests of a legacy server it can
    /// be asked (as an `input_required` round).
    pub capabilities: Value,
    /// The tool, prompt or resource name a `requestState` for this call is bound to, with
    /// its method (digested by `state::binding` only when a state is made or checked).
    pub name: String,
    /// The request's `requestState`, when it carries one (a retry after an input round).
    pub state: Option<String>,
    /// Its `Mcp-Param-*` headers: (name after the prefix, in lower case; value decoded).
    pub param_headers: Vec<(String, String)>,
    /// A round in progress: the server's requests the client is asked, each under its input
    /// key, with its target, the server's own request id and the request itself
    /// (`{method, params}`). Empty when no round is open.
    pub input: Vec<Input>,
    /// `io.modelcontextprotocol/clientInfo`, passed on to modern targets.
    pub client_info: Option<Value>,
    /// Capabilities the server needed in this round and the client did not declare (the
    /// server was told no). A round with nothing else to ask fails the call with them.
    pub missing: Vec<&'static str>,
    /// The request's own `inputResponses`: answers a client may give before it is asked
    /// (keyed as the server's question will be); a legacy server's question they answer
    /// is answered at once, without a round.
    pub offered: Option<Value>,
    /// Who sent the request (the route authenticates), for `mcpAuthorization`.
    pub principal: Option<Rc<crate::auth::Principal>>,
}

/// One server request put to a stateless client in an input round.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub key: String,
    pub target: usize,
    pub server_id: Value,
    pub request: Value,
}

/// A stateless request that waits for its pool to finish initializing.
pub struct Waiting {
    pub conn: usize,
    pub msg: Value,
    pub modern: Modern,
}

/// An upstream's answer: Ok(result) or Err(the JSON-RPC error object).
pub type Answer = Result<Value, Value>;

/// One client request being served by one or more upstream requests.
pub struct Call {
    /// The connection the answer goes to: the POST that asked, or a legacy session's stream.
    pub conn: Option<usize>,
    pub client_id: Value,
    pub method: String,
    pub kind: CallKind,
    /// Per part: the target, the upstream request id, and the answer once it came
    /// (Ok(result) or Err(error object)).
    pub parts: Vec<(usize, u64, Option<Answer>)>,
    pub remaining: usize,
    /// The client's progress token, when it asked for progress.
    pub progress: Option<Value>,
    /// When the call times out (checked by the loop's sweep).
    pub deadline: Instant,
    /// For a list over shared bare names: the params to fetch further pages with, until every
    /// target's list is complete.
    pub exhaust: Option<Value>,
    pub started: Instant,
    /// Set for a stateless client's call.
    pub modern: Option<Modern>,
    /// A legacy client's call to a modern target: what to send again once the client has
    /// answered the target's `input_required` round, and the round in progress.
    pub asking: Option<Box<Asking>>,
    /// A pool's list request: where its merged answer is cached.
    pub list_key: Option<(String, Option<String>)>,
}

/// A modern target's `input_required` round, put to a legacy client as real requests.
#[derive(Debug, Default)]
pub struct Asking {
    /// The request's params as first sent (envelope included).
    pub params: Value,
    /// Rounds so far (capped).
    pub rounds: u8,
    /// The round's keys not answered yet (with the method asked), and the answers so far.
    pub waiting: Vec<(String, String)>,
    pub responses: serde_json::Map<String, Value>,
    /// The target's `requestState`, echoed on the retry.
    pub state: Option<Value>,
}

pub struct Session {
    pub id: String,
    pub backend: Rc<McpBackend>,
    pub naming: Naming,
    pub targets: Vec<TargetSlot>,
    pub phase: Phase,
    /// Negotiated protocol version.
    pub version: String,
    /// The client's `initialize` params, passed on to every target.
    pub init_params: Value,
    pub calls: IdMap<u64, Call>,
    /// Upstream request id -> call id. Ids are unique within the session across targets.
    pub upstream: IdMap<u64, u64>,
    /// Client request id key (`jsonrpc::id_key`) -> call id, for cancellation (a legacy
    /// session's calls only).
    pub by_client_id: HashMap<String, u64>,
    /// Id given to the client for a server-to-client request -> (target, the target's own id).
    pub server_requests: IdMap<u64, (usize, Value)>,
    /// Id given to the client for a request of a modern target's input round -> (call, key).
    pub input_requests: IdMap<u64, (u64, String)>,
    /// The connection of the session's GET stream (legacy: its SSE stream), while open.
    pub get_stream: Option<usize>,
    pub backlog: VecDeque<Value>,
    pub next_id: u64,
    pub last_active: Instant,
    /// Links still being opened for `initialize`; the client's `initialize` (where its answer
    /// goes, and its id) waits for them.
    pub opening: usize,
    pub init_request: Option<(Option<usize>, Value)>,
    /// The route's policies for the session's upstreams.
    pub policy: Rc<RoutePolicy>,
    /// The client's `Authorization`, kept when the route passes it through to a target.
    pub credential: Option<Rc<str>>,
    /// Who opened the session (the route authenticates): every later request on it must
    /// come from the same principal, and `mcpAuthorization` rules see it.
    pub principal: Option<Rc<crate::auth::Principal>>,
    /// A pool: what it is kept under (and shares change notifications with).
    pub pool_key: Option<PoolKey>,
    /// The `data` of the error the session's `initialize` failed with, for the stateless
    /// requests that waited on it.
    pub fail_data: Option<Value>,
    /// Legacy HTTP+SSE session: every message to the client goes on `get_stream`, and the
    /// session ends with it.
    pub legacy: bool,
    /// A backend's pool: the shared session whose links serve stateless (2026-07-28)
    /// requests, initialized with the gateway's own identity. No client names it; it ends
    /// when idle for `sessionTtl`, like any session.
    pub pool: bool,
    /// Stateless requests that arrived while the pool was initializing.
    pub waiting: Vec<Waiting>,
    /// The merged `initialize` result, once ready (the pool answers `server/discover` from it).
    pub merged: Option<Value>,
    /// Metrics labels: the backend as a whole (`backend/*`) and the gateway itself.
    pub metric_all: u16,
    pub metric_gateway: u16,
    /// The level a legacy client set with `logging/setLevel`: stamped on its requests to
    /// modern targets, which have no such method.
    pub log_level: Option<String>,
    /// When targets still probing their era are taken to be legacy.
    pub probe_deadline: Option<Instant>,
    /// A pool's merged list pages, by (method, cursor): the result text and when it expires.
    /// Emptied when a target says its list changed, or fails.
    pub lists: HashMap<(String, Option<String>), (Rc<str>, Instant)>,
    /// A pool's open `subscriptions/listen` streams.
    pub listens: Vec<Listen>,
    /// Resource URIs (as clients see them) subscribed upstream for listens, with how many
    /// listens want each.
    pub subscribed: HashMap<String, usize>,
}

/// One stateless client's `subscriptions/listen`: what it accepted to hear, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub conn: usize,
    /// The listen request's id: every message on the stream is tagged with it.
    pub id: Value,
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    pub uris: Vec<String>,
}

impl Session {
    /// The route's `mcpAuthorization` rules, if it has any.
    pub fn rules(&self) -> Option<&crate::auth::rules::RuleSet> {
        self.policy.door.as_ref()?.rules.as_ref()
    }

    pub fn new(id: String, backend: Rc<McpBackend>, init_params: Value) -> Session {
        let naming = Naming::new(
            backend.targets.iter().map(|t| t.name.clone()).collect(),
            backend.prefixed(),
        );
        Session {
            id,
            backend,
            naming,
            targets: Vec::new(),
            phase: Phase::Initializing,
            version: super::LATEST_VERSION.to_string(),
            init_params,
            calls: IdMap::default(),
            upstream: IdMap::default(),
            by_client_id: HashMap::new(),
            server_requests: IdMap::default(),
            input_requests: IdMap::default(),
            get_stream: None,
            backlog: VecDeque::new(),
            next_id: 1,
            last_active: Instant::now(),
            opening: 0,
            init_request: None,
            policy: Rc::default(),
            credential: None,
            principal: None,
            pool_key: None,
            fail_data: None,
            legacy: false,
            pool: false,
            waiting: Vec::new(),
            merged: None,
            metric_all: 0,
            metric_gateway: 0,
            log_level: None,
            probe_deadline: None,
            lists: HashMap::new(),
            listens: Vec::new(),
            subscribed: HashMap::new(),
        }
    }

    /// Gives part `part` of call `cid` a new upstream id (its request goes out again: a
    /// retry, or `initialize` after the era probe); the old id is forgotten, so a late answer
    /// to it is dropped. None: no such call or part.
    pub fn reissue(&mut self, cid: u64, part: usize) -> Option<u64> {
        let new = self.next_id;
        let p = self.calls.get_mut(&cid)?.parts.get_mut(part)?;
        let old = std::mem::replace(&mut p.1, new);
        self.next_id += 1;
        self.upstream.remove(&old);
        self.upstream.insert(new, cid);
        Some(new)
    }

    pub fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Drops a session call's entry in `by_client_id` (a stateless call has none).
    pub fn forget_client_id(&mut self, call: &Call) {
        if call.modern.is_none() {
            self.by_client_id
                .remove(&crate::jsonrpc::id_key(&call.client_id));
        }
    }

    /// Ends a call: forgets it and its client id, and returns it with its metrics label (its
    /// one target for a forwarded call, the backend as a whole otherwise).
    pub fn take_call(&mut self, cid: u64) -> Option<(Call, u16)> {
        let call = self.calls.remove(&cid)?;
        self.forget_client_id(&call);
        let label = match (call.kind == CallKind::Forward, call.parts.first()) {
            (true, Some((t, _, _))) => self.targets.get(*t).map_or(self.metric_all, |x| x.metric),
            _ => self.metric_all,
        };
        Some((call, label))
    }

    /// Keeps a message for the GET stream, dropping the oldest past the limit.
    pub fn push_backlog(&mut self, msg: Value) {
        if self.backlog.len() >= MAX_BACKLOG {
            self.backlog.pop_front();
        }
        self.backlog.push_back(msg);
    }

    /// The newest call in flight on `target` whose client connection is still waiting: where a
    /// target's unsolicited messages most likely belong.
    pub fn newest_call_on(&self, target: usize) -> Option<u64> {
        self.calls
            .iter()
            .filter(|(_, c)| {
                c.conn.is_some() && c.parts.iter().any(|(t, _, r)| *t == target && r.is_none())
            })
            .map(|(id, _)| *id)
            .max()
    }
}

/// A new session id: 128 random bits from the kernel's CSPRNG, hex-encoded. The read of
/// /dev/urandom never blocks once the system has booted.
pub fn new_session_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
