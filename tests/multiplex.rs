//! Multiplexing (issue #3): one gateway session over several stdio targets, seen by a client
//! over raw HTTP. Names are `<target>_<name>`, URIs `<target>+<uri>`; lists fan out and merge
//! with a cursor that carries every target's own cursor; requests route to their owner.
//!
//! Every target is a real `mcplex-demo` child; `--page-size` and `--extra-tools` make the
//! targets' lists differ, so each test can tell which target answered.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A command that cannot be started.
const MISSING_CMD: &str = "/nonexistent/mcplex-no-such-server";

// ---- configs -----------------------------------------------------------------------------------

/// One stdio target for [`config`].
struct Target<'a> {
    name: &'a str,
    cmd: &'a str,
    args: &'a [&'a str],
}

/// A demo target with these command-line arguments.
fn demo<'a>(name: &'a str, args: &'a [&'a str]) -> Target<'a> {
    Target {
        name,
        cmd: demo_bin(),
        args,
    }
}

/// The shorthand config with these targets; `modes` are extra lines of the `mcp:` block
/// (`prefixMode: never`, `failureMode: failOpen`).
fn config(modes: &[&str], targets: &[Target<'_>]) -> String {
    let mut out = String::from("mcp:\n  port: 0\n");
    for m in modes {
        out.push_str(&format!("  {m}\n"));
    }
    out.push_str("  targets:\n");
    for t in targets {
        out.push_str(&format!(
            "  - name: {}\n    stdio: {{cmd: {:?}, args: {}}}\n",
            t.name,
            t.cmd,
            json!(t.args)
        ));
    }
    out
}

#[track_caller]
fn start(modes: &[&str], targets: &[Target<'_>]) -> Gateway {
    Gateway::start(&config(modes, targets))
}

// ---- client helpers ----------------------------------------------------------------------------

/// Every item of a list, following `nextCursor` until it is absent; also the number of pages.
#[track_caller]
fn list_all(s: &Session, method: &str, key: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 100, "{method}: still paging after 100 pages");
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let r = s.call(method, params);
        let result = assert_rpc_ok(&r);
        let page = result[key]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: no {key} array in {r}"));
        items.extend(page.iter().cloned());
        match result.get("nextCursor") {
            None | Some(Value::Null) => return (items, pages),
            Some(Value::String(c)) => cursor = Some(c.clone()),
            Some(other) => panic!("{method}: nextCursor is not a string: {other}"),
        }
    }
}

/// The `field` of every item.
#[track_caller]
fn names(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i[field]
                .as_str()
                .unwrap_or_else(|| panic!("item without {field}: {i}"))
                .to_string()
        })
        .collect()
}

/// The names of the tools/list result in `r`.
#[track_caller]
fn tool_names(r: &Value) -> BTreeSet<String> {
    let tools = assert_rpc_ok(r)["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {r}"));
    names(tools, "name").into_iter().collect()
}

/// Asserts no name occurs twice.
#[track_caller]
fn assert_unique(what: &str, names: &[String]) {
    let mut seen = HashMap::new();
    for n in names {
        *seen.entry(n.as_str()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.into_iter().filter(|(_, c)| *c > 1).collect();
    assert!(dups.is_empty(), "{what}: listed more than once: {dups:?}");
}

/// Starts a session whose client declares `capabilities`.
#[track_caller]
fn session_with(gw: &Gateway, capabilities: Value) -> Session {
    let id = next_id();
    let body = rpc_request(
        &id,
        "initialize",
        json!({
            "protocolVersion": VERSION,
            "capabilities": capabilities,
            "clientInfo": {"name": "mcplex-multiplex-tests", "version": "0"},
        }),
    );
    let r = send_once(gw.port, &mcp_post(None, &body));
    assert_status(&r, 200);
    let sid = r
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("initialize gave no session: {}", r.text()))
        .to_string();
    let init = assert_rpc_ok(&r.rpc(&id)).clone();
    let s = Session {
        port: gw.port,
        id: sid,
        init,
    };
    assert_status(&s.notify("notifications/initialized", json!({})), 202);
    s
}

/// A request in flight on a connection of its own, read message by message.
struct Pending {
    id: Value,
    c: Client,
    head: Head,
    queued: VecDeque<Value>,
    ended: bool,
}

impl Pending {
    #[track_caller]
    fn start(gw: &Gateway, s: &Session, method: &str, params: Value) -> Pending {
        let id = next_id();
        let mut c = gw.connect();
        c.send(&s.post_bytes(&rpc_request(&id, method, params)))
            .expect("send request");
        let head = c.read_head().expect("response head");
        assert_eq!(head.status, 200, "{method}: {head:?}");
        Pending {
            id,
            c,
            head,
            queued: VecDeque::new(),
            ended: false,
        }
    }

    /// The next message of the response; None once it has ended.
    #[track_caller]
    fn next(&mut self) -> Option<Value> {
        if let Some(m) = self.queued.pop_front() {
            return Some(m);
        }
        if self.ended {
            return None;
        }
        if !self.head.content_type().starts_with("text/event-stream") {
            self.ended = true;
            let body = self.c.read_body(&self.head).expect("JSON body");
            let r = Response {
                head: self.head.clone(),
                body,
            };
            self.queued.extend(r.messages());
            return self.queued.pop_front();
        }
        match self.c.next_event(&self.head).expect("read SSE event") {
            Some(ev) => Some(ev.json()),
            None => {
                self.ended = true;
                None
            }
        }
    }

    /// Reads until the answer to this request; returns what came before it and the answer,
    /// or None when the response ended without one.
    #[track_caller]
    fn finish(&mut self) -> (Vec<Value>, Option<Value>) {
        let mut before = Vec::new();
        while let Some(m) = self.next() {
            if m.get("id") == Some(&self.id)
                && (m.get("result").is_some() || m.get("error").is_some())
            {
                return (before, Some(m));
            }
            before.push(m);
        }
        (before, None)
    }

    /// Reads until a message with `method` arrives and returns it.
    #[track_caller]
    fn expect(&mut self, method: &str) -> Value {
        loop {
            let m = self
                .next()
                .unwrap_or_else(|| panic!("response ended before a {method} message"));
            if m["method"] == method {
                return m;
            }
            assert!(
                m.get("id") != Some(&self.id),
                "answered before a {method} message: {m}"
            );
        }
    }
}

/// The progress values of the progress notifications in `msgs`, each checked to carry `token`.
#[track_caller]
fn progress_with(msgs: &[Value], token: &Value) -> Vec<f64> {
    msgs.iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(
                &m["params"]["progressToken"], token,
                "progress with a foreign token: {m}"
            );
            m["params"]["progress"].as_f64().unwrap_or(-1.0)
        })
        .collect()
}

/// The command line of a process.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---- lists and cursors -------------------------------------------------------------------------

mod pagination {
    use super::*;

    /// What one target lists on its own (a single-target gateway is a pure relay).
    fn alone(args: &[&str], method: &str, key: &str, field: &str) -> Vec<String> {
        let gw = start(&[], &[demo("solo", args)]);
        let s = gw.session();
        let (items, _) = list_all(&s, method, key);
        names(&items, field)
    }

    /// Pages through `method` on a two-target gateway and checks that every item of every
    /// target appears exactly once, with its target's prefix.
    fn every_item_once(
        a_args: &[&str],
        b_args: &[&str],
        method: &str,
        key: &str,
        field: &str,
        sep: char,
    ) {
        let want_a = alone(a_args, method, key, field);
        let want_b = alone(b_args, method, key, field);
        let gw = start(&[], &[demo("alpha", a_args), demo("beta", b_args)]);
        let s = gw.session();
        let (items, pages) = list_all(&s, method, key);
        let got = names(&items, field);
        assert_unique(method, &got);
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for n in &got {
            match n.split_once(sep) {
                Some(("alpha", rest)) => got_a.push(rest.to_string()),
                Some(("beta", rest)) => got_b.push(rest.to_string()),
                _ => panic!("{method}: {n:?} has no target prefix (alpha{sep} or beta{sep})"),
            }
        }
        for (t, want, got) in [("alpha", &want_a, &got_a), ("beta", &want_b, &got_b)] {
            let w: BTreeSet<_> = want.iter().collect();
            let g: BTreeSet<_> = got.iter().collect();
            assert_eq!(
                got.len(),
                want.len(),
                "{method}: {t} lists {} items alone but {} through the gateway; missing {:?}, extra {:?}",
                want.len(),
                got.len(),
                w.difference(&g).collect::<Vec<_>>(),
                g.difference(&w).collect::<Vec<_>>()
            );
            assert_eq!(w, g, "{method}: {t}'s items differ");
        }
        assert!(
            pages >= 2,
            "{method}: targets page their lists, the gateway should too ({pages} page)"
        );
        both_serve(&s);
    }

    /// The session still answers after the paging (a tool of each target).
    fn both_serve(s: &Session) {
        assert_eq!(
            tool_text(&s.tool("alpha_echo", json!({"message": "a"}))),
            "a"
        );
        assert_eq!(
            tool_text(&s.tool("beta_echo", json!({"message": "b"}))),
            "b"
        );
    }

    #[test]
    fn tools_list_cursor_yields_every_tool_of_every_target_once() {
        let a = ["--page-size", "7", "--extra-tools", "40"];
        let b = ["--page-size", "5", "--extra-tools", "12"];
        // The extra tools really are there, so the totals are not trivially equal.
        let want_a = alone(&a, "tools/list", "tools", "name");
        let want_b = alone(&b, "tools/list", "tools", "name");
        assert!(want_a.contains(&"extra_40".to_string()), "{want_a:?}");
        assert_eq!(want_a.len(), want_b.len() + 28, "{want_a:?} vs {want_b:?}");
        every_item_once(&a, &b, "tools/list", "tools", "name", '_');
    }

    #[test]
    fn prompts_resources_and_templates_page_too() {
        let a = ["--page-size", "1"];
        let b = ["--page-size", "2"];
        every_item_once(&a, &b, "prompts/list", "prompts", "name", '_');
        every_item_once(&a, &b, "resources/list", "resources", "uri", '+');
        every_item_once(
            &a,
            &b,
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
            '+',
        );
    }

    #[test]
    fn an_invalid_cursor_is_invalid_params() {
        let gw = start(
            &[],
            &[
                demo("alpha", &["--page-size", "3"]),
                demo("beta", &["--page-size", "3"]),
            ],
        );
        let s = gw.session();
        // A real cursor works...
        let first = s.call("tools/list", json!({}));
        let next = assert_rpc_ok(&first)["nextCursor"]
            .as_str()
            .unwrap_or_else(|| panic!("page 1 has no nextCursor: {first}"))
            .to_string();
        assert_rpc_ok(&s.call("tools/list", json!({ "cursor": next })));
        // ... anything else is -32602.
        for bad in [
            "junk",
            "",
            "[]",
            "[[7,null]]",
            "[[0,\"999999\"]]",
            &format!("{next}x"),
        ] {
            let r = s.call("tools/list", json!({ "cursor": bad }));
            assert_rpc_error(&r, Some(-32602));
            let r = s.call("prompts/list", json!({ "cursor": bad }));
            assert_rpc_error(&r, Some(-32602));
        }
        both_serve(&s);
    }

    /// MCP cursors are strings; a single-target gateway passes the check to the target (the
    /// demo answers -32602), and several targets must not quietly restart the list instead.
    #[test]
    fn a_cursor_that_is_not_a_string_is_invalid_params() {
        let gw = start(
            &[],
            &[
                demo("alpha", &["--page-size", "3"]),
                demo("beta", &["--page-size", "3"]),
            ],
        );
        let s = gw.session();
        for bad in [json!(5), json!({"a": 1}), json!(["x"])] {
            let r = s.call("tools/list", json!({ "cursor": bad }));
            assert_rpc_error(&r, Some(-32602));
        }
    }
}

// ---- routing -----------------------------------------------------------------------------------

mod routing {
    use super::*;

    /// alpha offers extra_1, beta extra_1..extra_3: which target answered is visible.
    fn two() -> Gateway {
        start(
            &[],
            &[
                demo("alpha", &["--extra-tools", "1"]),
                demo("beta", &["--extra-tools", "3"]),
            ],
        )
    }

    #[test]
    fn initialize_merges_the_targets() {
        let gw = two();
        let s = gw.session();
        assert_eq!(s.init["serverInfo"]["name"], "mcplex", "{}", s.init);
        assert!(s.init["capabilities"]["tools"].is_object(), "{}", s.init);
        assert!(s.init["capabilities"]["prompts"].is_object(), "{}", s.init);
        assert!(
            s.init["capabilities"]["resources"].is_object(),
            "{}",
            s.init
        );
        let text = s.init["instructions"].as_str().unwrap_or("");
        assert!(
            text.contains("alpha") && text.contains("beta"),
            "instructions should name both targets: {}",
            s.init
        );
        assert_eq!(gw.children().len(), 2, "one child per target");
    }

    #[test]
    fn calls_go_to_the_target_named_by_the_prefix() {
        let gw = two();
        let s = gw.session();
        let tools = tool_names(&s.call("tools/list", json!({})));
        for want in ["alpha_echo", "beta_echo", "alpha_extra_1", "beta_extra_3"] {
            assert!(tools.contains(want), "tools/list lacks {want}: {tools:?}");
        }
        assert!(!tools.contains("alpha_extra_3"), "{tools:?}");
        assert!(
            tools
                .iter()
                .all(|t| t.starts_with("alpha_") || t.starts_with("beta_")),
            "unprefixed tool: {tools:?}"
        );

        assert_eq!(
            tool_text(&s.tool("alpha_echo", json!({"message": "to alpha"}))),
            "to alpha"
        );
        assert_eq!(
            tool_text(&s.tool("beta_add", json!({"a": 40, "b": 2}))),
            "42"
        );
        assert_eq!(tool_text(&s.tool("beta_extra_3", json!({}))), "extra_3");
        // alpha has no extra_3: the call reached alpha (not beta), which refuses it.
        let r = s.tool("alpha_extra_3", json!({}));
        let why = assert_rpc_error(&r, Some(-32602));
        assert!(why.contains("extra_3"), "{why}");
        // A tool whose own name has an underscore: split at the first `_` only.
        assert_eq!(
            tool_text(&s.tool("beta_test_simple_text", json!({}))),
            "This is a simple text response for testing."
        );
        // Resource URIs inside a tool result carry the target's prefix.
        let r = s.tool("alpha_test_embedded_resource", json!({}));
        assert_eq!(
            assert_rpc_ok(&r)["content"][0]["resource"]["uri"],
            "alpha+test://embedded-resource",
            "{r}"
        );
    }

    #[test]
    fn resources_prompts_and_completions_route_by_prefix() {
        let gw = two();
        let s = gw.session();
        let (resources, _) = list_all(&s, "resources/list", "resources");
        let uris = names(&resources, "uri");
        for want in ["alpha+demo://readme", "beta+demo://readme"] {
            assert!(uris.iter().any(|u| u == want), "{want} missing: {uris:?}");
        }
        let r = s.call("resources/read", json!({"uri": "beta+demo://readme"}));
        let c = &assert_rpc_ok(&r)["contents"][0];
        assert_eq!(c["uri"], "beta+demo://readme", "{r}");
        assert!(
            c["text"].as_str().unwrap_or("").contains("mcplex-demo"),
            "{r}"
        );
        // A URI made from a template.
        let (templates, _) = list_all(&s, "resources/templates/list", "resourceTemplates");
        let t = names(&templates, "uriTemplate");
        assert!(t.iter().any(|u| u == "alpha+demo://notes/{name}"), "{t:?}");
        let r = s.call("resources/read", json!({"uri": "alpha+demo://notes/ada"}));
        let c = &assert_rpc_ok(&r)["contents"][0];
        assert_eq!(c["uri"], "alpha+demo://notes/ada", "{r}");
        assert_eq!(c["text"], "Notes about ada.", "{r}");

        let (prompts, _) = list_all(&s, "prompts/list", "prompts");
        let p = names(&prompts, "name");
        assert!(p.iter().any(|n| n == "alpha_greet"), "{p:?}");
        assert!(p.iter().any(|n| n == "beta_greet"), "{p:?}");
        let r = s.call(
            "prompts/get",
            json!({"name": "beta_greet", "arguments": {"name": "Grace"}}),
        );
        assert_eq!(
            assert_rpc_ok(&r)["messages"][0]["content"]["text"],
            "Please greet Grace warmly.",
            "{r}"
        );

        let r = s.call(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "alpha_greet"}, "argument": {"name": "name", "value": "A"}}),
        );
        assert_eq!(
            assert_rpc_ok(&r)["completion"]["values"],
            json!(["Ada", "Alan"]),
            "{r}"
        );
        let r = s.call(
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "beta+demo://notes/{name}"}, "argument": {"name": "name", "value": "i"}}),
        );
        assert_eq!(
            assert_rpc_ok(&r)["completion"]["values"],
            json!(["ideas"]),
            "{r}"
        );
        // logging/setLevel goes to every target and is answered once.
        assert_eq!(
            assert_rpc_ok(&s.call("logging/setLevel", json!({"level": "warning"}))),
            &json!({})
        );
    }

    #[test]
    fn unknown_prefix_or_bare_name_is_invalid_params() {
        let gw = two();
        let s = gw.session();
        let cases = [
            (
                "tools/call",
                json!({"name": "gamma_echo", "arguments": {"message": "x"}}),
                "gamma",
            ),
            (
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "x"}}),
                "echo",
            ),
            (
                "tools/call",
                json!({"name": "_echo", "arguments": {"message": "x"}}),
                "_echo",
            ),
            (
                "prompts/get",
                json!({"name": "gamma_greet", "arguments": {"name": "x"}}),
                "gamma",
            ),
            (
                "prompts/get",
                json!({"name": "greet", "arguments": {"name": "x"}}),
                "greet",
            ),
            (
                "resources/read",
                json!({"uri": "gamma+demo://readme"}),
                "gamma",
            ),
            (
                "resources/read",
                json!({"uri": "demo://readme"}),
                "demo://readme",
            ),
            (
                "completion/complete",
                json!({"ref": {"type": "ref/prompt", "name": "gamma_greet"}, "argument": {"name": "name", "value": ""}}),
                "gamma",
            ),
        ];
        for (method, params, named) in cases {
            let r = s.call(method, params.clone());
            let why = assert_rpc_error(&r, Some(-32602));
            assert!(
                why.contains(named),
                "{method} {params}: the error should name {named:?}: {why}"
            );
        }
        // The session is fine afterwards.
        assert_eq!(
            tool_text(&s.tool("alpha_echo", json!({"message": "ok"}))),
            "ok"
        );
    }
}

// ---- prefixMode --------------------------------------------------------------------------------

mod prefix_mode {
    use super::*;

    #[test]
    fn always_prefixes_a_single_target() {
        let gw = start(&["prefixMode: always"], &[demo("demo", &[])]);
        let s = gw.session();
        let tools = tool_names(&s.call("tools/list", json!({})));
        assert!(tools.contains("demo_echo"), "{tools:?}");
        assert!(
            tools.iter().all(|t| t.starts_with("demo_")),
            "unprefixed tool with prefixMode always: {tools:?}"
        );
        assert_eq!(
            tool_text(&s.tool("demo_echo", json!({"message": "one"}))),
            "one"
        );
        assert_rpc_error(&s.tool("echo", json!({"message": "x"})), Some(-32602));
        let r = s.call("resources/read", json!({"uri": "demo+demo://readme"}));
        assert_eq!(
            assert_rpc_ok(&r)["contents"][0]["uri"],
            "demo+demo://readme",
            "{r}"
        );
        let (resources, _) = list_all(&s, "resources/list", "resources");
        let uris = names(&resources, "uri");
        assert!(uris.iter().all(|u| u.starts_with("demo+")), "{uris:?}");
        let r = s.call(
            "prompts/get",
            json!({"name": "demo_greet", "arguments": {"name": "Ada"}}),
        );
        assert!(assert_rpc_ok(&r).to_string().contains("Ada"), "{r}");
    }

    #[test]
    fn never_keeps_bare_names_and_hides_the_ambiguous_ones() {
        let gw = start(
            &["prefixMode: never"],
            &[demo("alpha", &[]), demo("beta", &["--extra-tools", "2"])],
        );
        let s = gw.session();
        let (tools, _) = list_all(&s, "tools/list", "tools");
        let tools: BTreeSet<String> = names(&tools, "name").into_iter().collect();
        // Both offer every base tool, so only beta's extra tools are unambiguous.
        let want: BTreeSet<String> = ["extra_1", "extra_2"].map(String::from).into();
        assert_eq!(tools, want, "tools/list with prefixMode never");

        let r = s.tool("echo", json!({"message": "x"}));
        let why = assert_rpc_error(&r, Some(-32602));
        assert!(why.contains("more than one target"), "{why}");
        assert_eq!(tool_text(&s.tool("extra_2", json!({}))), "extra_2");
        let r = s.tool("alpha_echo", json!({"message": "x"}));
        assert_rpc_error(&r, Some(-32602));
        let r = s.tool("no_such_tool", json!({}));
        assert_rpc_error(&r, Some(-32602));

        // The same for prompts.
        let prompts = s.call("prompts/list", json!({}));
        let listed = assert_rpc_ok(&prompts)["prompts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(listed.is_empty(), "both offer every prompt: {prompts}");
        let r = s.call(
            "prompts/get",
            json!({"name": "greet", "arguments": {"name": "x"}}),
        );
        let why = assert_rpc_error(&r, Some(-32602));
        assert!(why.contains("more than one target"), "{why}");
    }

    /// The same with paged lists: a name both targets offer must stay out of the whole list,
    /// even when the two targets list it on different pages.
    #[test]
    fn never_hides_shared_names_across_pages_too() {
        let gw = start(
            &["prefixMode: never"],
            &[
                demo("alpha", &["--page-size", "2"]),
                demo("beta", &["--page-size", "7", "--extra-tools", "2"]),
            ],
        );
        let s = gw.session();
        let (tools, _) = list_all(&s, "tools/list", "tools");
        let tools = names(&tools, "name");
        assert_unique("tools/list", &tools);
        let tools: BTreeSet<String> = tools.into_iter().collect();
        let want: BTreeSet<String> = ["extra_1", "extra_2"].map(String::from).into();
        assert_eq!(tools, want, "tools/list with prefixMode never, paged");
        // Whatever was listed can be called.
        for t in &tools {
            assert_eq!(tool_text(&s.tool(t, json!({}))), *t);
        }
    }
}

// ---- progress, cancellation and server-to-client requests across targets -------------------------

mod across_targets {
    use super::*;

    fn two() -> Gateway {
        start(
            &[],
            &[demo("alpha", &[]), demo("beta", &["--extra-tools", "1"])],
        )
    }

    #[test]
    fn progress_keeps_each_clients_token_and_cancel_stops_only_its_call() {
        let gw = two();
        let s = gw.session();
        let tok_a = json!("token-of-a");
        let tok_b = json!(7);
        let mut a = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "alpha_slow", "arguments": {"steps": 100, "delayMs": 100}, "_meta": {"progressToken": tok_a}}),
        );
        let first_a = a.expect("notifications/progress");
        assert_eq!(first_a["params"]["progressToken"], tok_a, "{first_a}");
        let started_b = Instant::now();
        let mut b = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "beta_slow", "arguments": {"steps": 6, "delayMs": 150}, "_meta": {"progressToken": tok_b}}),
        );
        let first_b = b.expect("notifications/progress");
        assert_eq!(first_b["params"]["progressToken"], tok_b, "{first_b}");
        assert_eq!(first_b["params"]["progress"], 1, "{first_b}");

        // Cancel alpha's call while beta's runs.
        let n = s.notify(
            "notifications/cancelled",
            json!({"requestId": a.id, "reason": "only a"}),
        );
        assert_status(&n, 202);
        let cancelled = Instant::now();
        a.c.set_timeout(Duration::from_secs(3));
        let (after, answer) = a.finish();
        assert!(
            answer.is_none(),
            "the cancelled call was answered: {answer:?}"
        );
        progress_with(&after, &tok_a);
        assert!(
            cancelled.elapsed() < Duration::from_secs(2),
            "cancelled stream ended after {:?}",
            cancelled.elapsed()
        );

        // Beta's call runs to the end with all its progress.
        let (before, answer) = b.finish();
        let answer = answer.expect("beta's call ended without an answer");
        assert_eq!(tool_text(&answer), "done after 6 steps");
        let mut values = vec![1.0];
        values.extend(progress_with(&before, &tok_b));
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(
            started_b.elapsed() >= Duration::from_millis(800),
            "beta's call was cut short"
        );
        // Alpha is free again and both targets still serve.
        let r = s.tool("alpha_slow", json!({"steps": 2, "delayMs": 10}));
        assert_eq!(tool_text(&r), "done after 2 steps");
        assert_eq!(
            tool_text(&s.tool("beta_echo", json!({"message": "b"}))),
            "b"
        );
    }

    #[test]
    fn sampling_from_two_targets_reaches_the_client_and_each_answer_goes_back() {
        let gw = two();
        let s = session_with(&gw, json!({"sampling": {}, "elicitation": {}}));
        let mut a = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "alpha_test_sampling", "arguments": {"prompt": "question for alpha"}}),
        );
        let req_a = a.expect("sampling/createMessage");
        let mut b = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "beta_test_sampling", "arguments": {"prompt": "question for beta"}}),
        );
        let req_b = b.expect("sampling/createMessage");
        assert_eq!(
            req_a["params"]["messages"][0]["content"]["text"], "question for alpha",
            "{req_a}"
        );
        assert_eq!(
            req_b["params"]["messages"][0]["content"]["text"], "question for beta",
            "{req_b}"
        );
        // Both demos number their first request 1; the client must see two distinct ids.
        assert_ne!(req_a["id"], req_b["id"], "{req_a} {req_b}");

        // Answer in the other order.
        for (req, text) in [(&req_b, "answer for beta"), (&req_a, "answer for alpha")] {
            let body = json!({"jsonrpc": "2.0", "id": req["id"], "result": {
                "role": "assistant", "model": "test-model",
                "content": {"type": "text", "text": text},
            }});
            assert_status(&s.post(&body.to_string()), 202);
        }
        let (_, ans_a) = a.finish();
        let (_, ans_b) = b.finish();
        let ans_a = ans_a.expect("alpha's sampling call ended without an answer");
        let ans_b = ans_b.expect("beta's sampling call ended without an answer");
        assert_eq!(tool_text(&ans_a), "LLM response: answer for alpha");
        assert_eq!(tool_text(&ans_b), "LLM response: answer for beta");

        // Elicitation, from beta.
        let mut e = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "beta_test_elicitation", "arguments": {"message": "who are you?"}}),
        );
        let req = e.expect("elicitation/create");
        assert_eq!(req["params"]["message"], "who are you?", "{req}");
        let body = json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "action": "accept", "content": {"username": "ada", "email": "ada@example.com"},
        }});
        assert_status(&s.post(&body.to_string()), 202);
        let (_, ans) = e.finish();
        let text = tool_text(&ans.expect("elicitation call ended without an answer"));
        assert!(
            text.contains("action=accept") && text.contains("ada@example.com"),
            "{text}"
        );
    }
}

// ---- failures ------------------------------------------------------------------------------------

mod failures {
    use super::*;

    #[test]
    fn fail_closed_initialize_names_the_failed_target_and_command() {
        let gw = start(
            &[],
            &[
                demo("live", &[]),
                Target {
                    name: "dead",
                    cmd: MISSING_CMD,
                    args: &[],
                },
            ],
        );
        let id = next_id();
        let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
        let why = assert_rpc_error(&r.rpc(&id), None);
        assert!(why.contains("dead"), "should name the target: {why}");
        assert!(why.contains(MISSING_CMD), "should name the command: {why}");
        assert!(!why.contains("live"), "the live target did not fail: {why}");
        assert!(
            r.header("mcp-session-id").is_none(),
            "a failed initialize gave a session: {:?}",
            r.head
        );
        // The live target's child of the failed session is stopped.
        assert!(
            wait_until(Duration::from_secs(5), || gw.children().is_empty()),
            "children left after a failed initialize: {:?}",
            gw.children()
        );
    }

    #[test]
    fn fail_closed_names_a_target_that_exits_at_once() {
        let gw = start(
            &["failureMode: failClosed"],
            &[
                demo("live", &[]),
                Target {
                    name: "quitter",
                    cmd: "/bin/sh",
                    args: &["-c", "exit 3"],
                },
            ],
        );
        let id = next_id();
        let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
        let why = assert_rpc_error(&r.rpc(&id), None);
        assert!(why.contains("quitter"), "should name the target: {why}");
        assert!(r.header("mcp-session-id").is_none(), "{:?}", r.head);
    }

    #[test]
    fn fail_open_goes_on_without_the_failed_targets() {
        let gw = start(
            &["failureMode: failOpen"],
            &[
                demo("live", &[]),
                Target {
                    name: "dead",
                    cmd: MISSING_CMD,
                    args: &[],
                },
                Target {
                    name: "quitter",
                    cmd: "/bin/sh",
                    args: &["-c", "exit 3"],
                },
            ],
        );
        let s = gw.session();
        let tools = tool_names(&s.call("tools/list", json!({})));
        assert!(tools.contains("live_echo"), "{tools:?}");
        assert!(
            tools.iter().all(|t| t.starts_with("live_")),
            "only the live target's tools: {tools:?}"
        );
        let (prompts, _) = list_all(&s, "prompts/list", "prompts");
        let p = names(&prompts, "name");
        assert!(
            !p.is_empty() && p.iter().all(|n| n.starts_with("live_")),
            "{p:?}"
        );
        assert_eq!(
            tool_text(&s.tool("live_echo", json!({"message": "alive"}))),
            "alive"
        );
        for dead in ["dead", "quitter"] {
            let r = s.tool(&format!("{dead}_x"), json!({}));
            let why = assert_rpc_error(&r, None);
            assert!(why.contains(dead), "the error should name {dead}: {why}");
            let r = s.call(
                "resources/read",
                json!({"uri": format!("{dead}+demo://readme")}),
            );
            let why = assert_rpc_error(&r, None);
            assert!(why.contains(dead), "the error should name {dead}: {why}");
        }
        let r = s.tool("dead_x", json!({}));
        let why = assert_rpc_error(&r, None);
        assert!(why.contains(MISSING_CMD), "and say why: {why}");
        assert_eq!(tool_text(&s.tool("live_add", json!({"a": 1, "b": 2}))), "3");
    }

    #[test]
    fn a_target_killed_mid_session_fails_only_its_own_requests() {
        let gw = start(
            &[],
            &[demo("alpha", &[]), demo("beta", &["--extra-tools", "1"])],
        );
        let s = gw.session();
        let kids = gw.children();
        assert_eq!(kids.len(), 2, "one child per target: {kids:?}");
        let beta = *kids
            .iter()
            .find(|&&p| cmdline(p).iter().any(|a| a == "--extra-tools"))
            .unwrap_or_else(|| panic!("beta's child not found among {kids:?}"));

        // A call running on each target.
        let mut on_b = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "beta_slow", "arguments": {"steps": 100, "delayMs": 100}, "_meta": {"progressToken": "b"}}),
        );
        on_b.expect("notifications/progress");
        let mut on_a = Pending::start(
            &gw,
            &s,
            "tools/call",
            json!({"name": "alpha_slow", "arguments": {"steps": 5, "delayMs": 150}, "_meta": {"progressToken": "a"}}),
        );
        on_a.expect("notifications/progress");

        kill(beta, "KILL");
        let killed = Instant::now();
        on_b.c.set_timeout(Duration::from_secs(3));
        let (_, answer) = on_b.finish();
        let answer = answer.expect("beta's call ended without an answer");
        let why = assert_rpc_error(&answer, None);
        assert!(why.contains("beta"), "the error should name beta: {why}");
        assert!(
            killed.elapsed() < Duration::from_millis(1500),
            "error came after {:?}",
            killed.elapsed()
        );

        // Alpha's call finishes normally.
        let (before, answer) = on_a.finish();
        let answer = answer.expect("alpha's call ended without an answer");
        assert_eq!(tool_text(&answer), "done after 5 steps");
        assert_eq!(progress_with(&before, &json!("a")).last(), Some(&5.0));

        // Later: alpha serves, beta fails fast and by name, lists still answer.
        assert_eq!(
            tool_text(&s.tool("alpha_echo", json!({"message": "still"}))),
            "still"
        );
        let why = assert_rpc_error(&s.tool("beta_echo", json!({"message": "x"})), None);
        assert!(why.contains("beta"), "{why}");
        let tools = tool_names(&s.call("tools/list", json!({})));
        assert!(tools.contains("alpha_echo"), "{tools:?}");
        assert!(!tools.iter().any(|t| t.starts_with("beta_")), "{tools:?}");
        // The killed child is reaped, the other one lives on.
        assert!(
            wait_until(Duration::from_secs(3), || {
                let now = gw.children();
                !now.contains(&beta) && now.len() == 1
            }),
            "children after the kill: {:?}",
            gw.children()
        );
        // Another session gets both targets again.
        let fresh = gw.session();
        assert_eq!(tool_text(&fresh.tool("beta_extra_1", json!({}))), "extra_1");
    }
}
