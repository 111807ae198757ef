//! Prometheus metrics, kept as plain counters and rendered by hand in the text exposition
//! format. The hot path only indexes arrays and bumps integers: labels are interned once
//! (methods from a fixed list, targets on first sight), so a request allocates nothing here.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

/// MCP methods with their own label; everything else counts as `other`.
const METHODS: [&str; 18] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications",
    "other",
];

/// Upper bounds (seconds) of the latency histogram buckets; +Inf is implied.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Error,
}

/// Kinds of upstream failure, for `mcplex_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// A request got no answer in time.
    Timeout,
    /// A request failed on the transport (refused, reset, TLS, HTTP status, bad stream).
    Request,
    /// The target died or broke the protocol for a session.
    Target,
    /// A target could not be started.
    Start,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Timeout => "timeout",
            UpstreamError::Request => "request",
            UpstreamError::Target => "target_failed",
            UpstreamError::Start => "start",
        }
    }
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

/// Gauges read from the gateway's state at scrape time.
pub struct Gauges {
    pub sessions: usize,
    pub connections: usize,
    pub streams: usize,
    pub children: usize,
    pub http_upstream_connections: usize,
}

thread_local! {
    // The gateway is one thread: this is its one metrics registry, reachable from the loop
    // and the connection code alike without threading a handle through every call.
    static METRICS: std::cell::RefCell<Metrics> = std::cell::RefCell::new(Metrics::default());
}

/// Runs `f` with the gateway's metrics.
pub fn with<R>(f: impl FnOnce(&mut Metrics) -> R) -> R {
    METRICS.with(|m| f(&mut m.borrow_mut()))
}

#[derive(Default)]
pub struct Metrics {
    targets: Vec<String>,
    target_index: HashMap<String, u16>,
    requests: HashMap<(u8, u16, Outcome), u64>,
    latency: HashMap<u16, Histogram>,
    upstream_errors: HashMap<(u16, UpstreamError), u64>,
    http_requests: HashMap<u16, u64>,
    /// Front-door refusals, by kind (`unauthorized`, `rate_limited`, `forbidden`).
    refusals: HashMap<&'static str, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reloads: u64,
    pub sessions_started: u64,
    pub connections_accepted: u64,
}

fn method_index(method: &str) -> u8 {
    let i = if method.starts_with("notifications/") {
        METHODS.len() - 2
    } else {
        METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1)
    };
    i as u8
}

impl Metrics {
    /// The label index of a target (`backend/target`), or of `gateway` / `all` pseudo-targets.
    pub fn target(&mut self, label: &str) -> u16 {
        if let Some(&i) = self.target_index.get(label) {
            return i;
        }
        let i = self.targets.len().min(u16::MAX as usize) as u16;
        self.targets.push(label.to_string());
        self.target_index.insert(label.to_string(), i);
        i
    }

    /// One client request answered.
    pub fn request(&mut self, method: &str, target: u16, outcome: Outcome, took: Duration) {
        *self
            .requests
            .entry((method_index(method), target, outcome))
            .or_default() += 1;
        let h = self.latency.entry(target).or_default();
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        h.counts[b] += 1;
        h.sum += secs;
    }

    pub fn upstream_error(&mut self, target: u16, kind: UpstreamError) {
        *self.upstream_errors.entry((target, kind)).or_default() += 1;
    }

    /// A request turned away at the front door (`unauthorized`, `rate_limited`) or an MCP
    /// operation refused by `mcpAuthorization` (`forbidden`).
    pub fn refusal(&mut self, kind: &'static str) {
        *self.refusals.entry(kind).or_default() += 1;
    }

    /// One HTTP response sent, by status code.
    pub fn http_response(&mut self, status: u16) {
        *self.http_requests.entry(status).or_default() += 1;
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let target = |i: &u16| self.targets.get(*i as usize).map_or("", String::as_str);

        help(
            &mut out,
            "mcplex_requests_total",
            "counter",
            "MCP requests answered, by method, target and outcome.",
        );
        let mut rows: Vec<_> = self.requests.iter().collect();
        rows.sort_by_key(|((m, t, o), _)| (*m, target(t), *o == Outcome::Error));
        for ((m, t, o), n) in rows {
            let outcome = if *o == Outcome::Ok { "ok" } else { "error" };
            let _ = writeln!(
                out,
                "mcplex_requests_total{{method=\"{}\",target=\"{}\",outcome=\"{outcome}\"}} {n}",
                METHODS[*m as usize],
                escape(target(t))
            );
        }

        help(
            &mut out,
            "mcplex_request_duration_seconds",
            "histogram",
            "Time from a client request to its answer, by target.",
        );
        let mut hists: Vec<_> = self.latency.iter().collect();
        hists.sort_by_key(|(t, _)| target(t));
        for (t, h) in hists {
            let label = escape(target(t));
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(out, "mcplex_request_duration_seconds_bucket{{target=\"{label}\",le=\"{le}\"}} {cumulative}");
            }
            cumulative += h.counts[BUCKETS.len()];
            let _ = writeln!(out, "mcplex_request_duration_seconds_bucket{{target=\"{label}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "mcplex_request_duration_seconds_sum{{target=\"{label}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mcplex_request_duration_seconds_count{{target=\"{label}\"}} {cumulative}"
            );
        }

        help(
            &mut out,
            "mcplex_upstream_errors_total",
            "counter",
            "Upstream failures, by target and kind.",
        );
        let mut errs: Vec<_> = self.upstream_errors.iter().collect();
        errs.sort_by_key(|((t, k), _)| (target(t), k.label()));
        for ((t, k), n) in errs {
            let _ = writeln!(
                out,
                "mcplex_upstream_errors_total{{target=\"{}\",kind=\"{}\"}} {n}",
                escape(target(t)),
                k.label()
            );
        }

        help(
            &mut out,
            "mcplex_http_responses_total",
            "counter",
            "HTTP responses sent to clients, by status code.",
        );
        let mut statuses: Vec<_> = self.http_requests.iter().collect();
        statuses.sort();
        for (status, n) in statuses {
            let _ = writeln!(out, "mcplex_http_responses_total{{code=\"{status}\"}} {n}");
        }

        help(
            &mut out,
            "mcplex_auth_refusals_total",
            "counter",
            "Requests refused by authentication (unauthorized), rate limits (rate_limited) and MCP authorization (forbidden).",
        );
        let mut refusals: Vec<_> = self.refusals.iter().collect();
        refusals.sort();
        for (kind, n) in refusals {
            let _ = writeln!(out, "mcplex_auth_refusals_total{{kind=\"{kind}\"}} {n}");
        }

        let gauges: [(&str, &str, usize); 5] = [
            ("mcplex_sessions", "Open MCP sessions.", g.sessions),
            (
                "mcplex_connections",
                "Open client connections.",
                g.connections,
            ),
            (
                "mcplex_streams",
                "Open server-to-client SSE streams (GET and legacy).",
                g.streams,
            ),
            (
                "mcplex_stdio_children",
                "Live stdio child processes.",
                g.children,
            ),
            (
                "mcplex_upstream_connections",
                "Open connections to HTTP upstreams.",
                g.http_upstream_connections,
            ),
        ];
        for (name, text, v) in gauges {
            help(&mut out, name, "gauge", text);
            let _ = writeln!(out, "{name} {v}");
        }
        let counters: [(&str, &str, u64); 5] = [
            (
                "mcplex_received_bytes_total",
                "Bytes read from clients.",
                self.bytes_in,
            ),
            (
                "mcplex_sent_bytes_total",
                "Bytes written to clients.",
                self.bytes_out,
            ),
            (
                "mcplex_config_reloads_total",
                "Successful configuration reloads.",
                self.reloads,
            ),
            (
                "mcplex_sessions_started_total",
                "MCP sessions started.",
                self.sessions_started,
            ),
            (
                "mcplex_connections_accepted_total",
                "Client connections accepted.",
                self.connections_accepted,
            ),
        ];
        for (name, text, v) in counters {
            help(&mut out, name, "counter", text);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Label values escape backslash, quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let mut m = Metrics::default();
        let t = m.target("mcp/demo");
        assert_eq!(m.target("mcp/demo"), t);
        m.request("tools/call", t, Outcome::Ok, Duration::from_millis(3));
        m.request("tools/call", t, Outcome::Error, Duration::from_secs(60));
        m.request("notifications/initialized", t, Outcome::Ok, Duration::ZERO);
        m.upstream_error(t, UpstreamError::Timeout);
        m.http_response(200);
        let text = m.render(&Gauges {
            sessions: 1,
            connections: 2,
            streams: 0,
            children: 1,
            http_upstream_connections: 0,
        });
        assert!(
            text.contains(
                "mcplex_requests_total{method=\"tools/call\",target=\"mcp/demo\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("method=\"notifications\""), "{text}");
        assert!(
            text.contains(
                "mcplex_request_duration_seconds_bucket{target=\"mcp/demo\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "mcplex_request_duration_seconds_bucket{target=\"mcp/demo\",le=\"+Inf\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("mcplex_upstream_errors_total{target=\"mcp/demo\",kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("mcplex_sessions 1\n"), "{text}");
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
