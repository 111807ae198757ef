//! Turns the run script's raw records (JSON lines) into the one results table, as markdown
//! (printed and written) and JSON.
//!
//! Record ids: `GROUP/SYSTEM/PARAM` for load runs (groups `http`, `https`, `stdio`, `sse`, `modern`,
//! `fanout`, `modernfanout`),
//! `mem/SYSTEM/KIND`, `startup/SYSTEM`, `size/WHAT`, `info/SYSTEM` and `meta`.

use serde_json::{json, Map, Value};
use std::fs;

const SYSTEMS: [&str; 4] = ["mcplex", "direct", "supergateway", "mcp-proxy"];

struct Records(Vec<Value>);

impl Records {
    fn get(&self, id: &str) -> Option<&Value> {
        self.0.iter().rev().find(|r| r["id"] == id)
    }

    /// The PARAMs of `group/system/PARAM` load records, in the order they were measured.
    fn params(&self, group: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.0 {
            let id = r["id"].as_str().unwrap_or("");
            let mut parts = id.splitn(3, '/');
            if parts.next() == Some(group) {
                if let (Some(_), Some(p)) = (parts.next(), parts.next()) {
                    if !out.iter().any(|x| x == p) {
                        out.push(p.to_string());
                    }
                }
            }
        }
        out
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Thousands separators for counts; two significant decimals below 10.
fn fmt(x: f64) -> String {
    if x >= 1000.0 {
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Counts: no decimals.
fn int(x: f64) -> String {
    if x >= 1000.0 {
        fmt(x)
    } else {
        format!("{x:.0}")
    }
}

/// mcplex ÷ other, with enough decimals that small ratios (start-up) do not show as 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            let text = match r {
                r if r >= 0.1 => fmt(r),
                r if r >= 0.01 => format!("{r:.3}"),
                r => format!("{r:.4}"),
            };
            format!("{text}×")
        }
        _ => String::new(),
    }
}

/// One table row: a label, one cell per system, ratios of mcplex to the others, and a note.
struct Row {
    label: String,
    cells: Vec<String>,
    ratios: Vec<String>,
    note: String,
}

impl Row {
    /// A row of one number per system; the ratios divide mcplex's number by each other's.
    fn numeric(
        label: String,
        values: [Option<f64>; 4],
        show: impl Fn(f64) -> String,
        note: String,
    ) -> Row {
        let cells = values
            .iter()
            .map(|v| v.map(&show).unwrap_or_else(|| "–".into()))
            .collect();
        let ratios = values[1..].iter().map(|v| ratio(values[0], *v)).collect();
        Row {
            label,
            cells,
            ratios,
            note,
        }
    }
}

fn load_rows(recs: &Records, group: &str, title: &str, rows: &mut Vec<Row>) {
    for param in recs.params(group) {
        let runs: Vec<Option<&Value>> = SYSTEMS
            .iter()
            .map(|s| recs.get(&format!("{group}/{s}/{param}")))
            .collect();
        let pick = |key: &str| -> [Option<f64>; 4] {
            let mut out = [None; 4];
            for (i, r) in runs.iter().enumerate() {
                out[i] = r.and_then(|r| num(r, key));
            }
            out
        };
        let what = if group.ends_with("fanout") {
            format!(
                "{title}, {param} target{}",
                if param == "1" { "" } else { "s" }
            )
        } else {
            format!("{title}, K={param}")
        };
        let sessions = runs
            .iter()
            .flatten()
            .next()
            .and_then(|r| num(r, "sessions"))
            .unwrap_or(0.0);
        let mut note = String::new();
        if group.ends_with("fanout") {
            note = format!("K={}", int(sessions));
            if let (Some(base), Some(here)) = (
                recs.get("fanout/mcplex/1").and_then(|r| num(r, "p50_ms")),
                runs[0].and_then(|r| num(r, "p50_ms")),
            ) {
                note.push_str(&format!("; p50 {}× of 1 target", fmt(here / base)));
            }
        }
        // The TLS + JWT row beside the plain one: the gateway's CPU per call, both ways.
        if group == "https" {
            let plain = recs
                .get(&format!("http/mcplex/{param}"))
                .and_then(|r| num(r, "cpu_us_per_req"));
            if let (Some(plain), Some(here)) =
                (plain, runs[0].and_then(|r| num(r, "cpu_us_per_req")))
            {
                note.push_str(&format!(
                    "gateway CPU {} µs/call vs {} µs plain (+{})",
                    fmt(here),
                    fmt(plain),
                    fmt((here - plain).max(0.0))
                ));
            }
        }
        let errors: f64 = runs.iter().flatten().filter_map(|r| num(r, "errors")).sum();
        if errors > 0.0 {
            note.push_str(&format!(" **{errors} errors**"));
        }
        rows.push(Row::numeric(
            format!("{what}: req/s"),
            pick("rps"),
            fmt,
            note,
        ));
        // Latency: one cell "p50 / p99 / max", ratios on p50 and p99.
        let (p50, p99, max) = (pick("p50_ms"), pick("p99_ms"), pick("max_ms"));
        let cells = (0..4)
            .map(|i| match (p50[i], p99[i], max[i]) {
                (Some(a), Some(b), Some(c)) => format!("{} / {} / {}", fmt(a), fmt(b), fmt(c)),
                _ => "–".into(),
            })
            .collect();
        let ratios = (1..4)
            .map(|i| match (ratio(p50[0], p50[i]), ratio(p99[0], p99[i])) {
                (a, b) if a.is_empty() || b.is_empty() => String::new(),
                (a, b) => format!("{a} / {b}"),
            })
            .collect();
        rows.push(Row {
            label: format!("{what}: latency ms p50 / p99 / max"),
            cells,
            ratios,
            note: String::new(),
        });
        // What the gateway adds to the direct path (a pipe to the same stdio server, or the
        // same HTTP server called directly): differences of the percentiles.
        // At one session only: with more, the difference is mostly queueing, not the gateway.
        if let (Some(m50), Some(d50), Some(m99), Some(d99), "1") =
            (p50[0], p50[1], p99[0], p99[1], param.as_str())
        {
            let us = |ms: f64| format!("{:.0}", ms * 1000.0);
            let mut cells = vec!["–".to_string(); 4];
            cells[0] = format!("{} / {} µs", us(m50 - d50), us(m99 - d99));
            rows.push(Row {
                label: format!("{what}: latency added over direct, p50 / p99"),
                cells,
                ratios: vec![String::new(); 3],
                note: "mcplex's percentile minus direct's".into(),
            });
        }
        let cpu = pick("cpu_us_per_req");
        if cpu.iter().any(Option::is_some) {
            let mut note = "gateway process only".to_string();
            if let (Some(all), Some(user)) = (cpu[0], pick("cpu_user_us_per_req")[0]) {
                note = format!(
                    "gateway process only; mcplex: {} µs in its own code, {} µs in the kernel",
                    fmt(user),
                    fmt(all - user)
                );
            }
            rows.push(Row::numeric(
                format!("{what}: gateway CPU µs/request"),
                cpu,
                fmt,
                note,
            ));
        }
    }
}

fn mib(kib: f64) -> String {
    format!("{} MiB", fmt(kib / 1024.0))
}

fn memory_rows(recs: &Records, rows: &mut Vec<Row>) {
    let mem = |system: &str, kind: &str| recs.get(&format!("mem/{system}/{kind}"));
    let per_system = |kind: &str, f: &dyn Fn(&Value) -> Option<f64>| -> [Option<f64>; 4] {
        let mut out = [None; 4];
        for (i, s) in SYSTEMS.iter().enumerate() {
            out[i] = mem(s, kind).and_then(f);
        }
        out
    };
    let per_session = |key: &str, r: &Value| -> Option<f64> {
        Some(
            (num(r, &format!("held_{key}"))? - num(r, &format!("idle_{key}"))?)
                / num(r, "sessions")?,
        )
    };
    let idle = per_system("stdio", &|r| num(r, "idle_kib"));
    rows.push(Row::numeric(
        "RSS idle (stdio-target config)".into(),
        idle,
        mib,
        "dynamically linked: includes shared glibc and ld.so pages".into(),
    ));
    if let Some(kib) = recs
        .get("mem/mcplex-static/idle")
        .and_then(|r| num(r, "idle_kib"))
    {
        let size = recs
            .get("size/mcplex-static")
            .and_then(|r| num(r, "bytes"))
            .map(|b| format!("; binary {}", mib(b / 1024.0)))
            .unwrap_or_default();
        rows.push(Row::numeric(
            "RSS idle, static-pie build (crt-static)".into(),
            [Some(kib), None, None, None],
            mib,
            format!("same config{size}"),
        ));
    }
    if let Some(r) = mem("mcplex", "http") {
        let n = num(r, "sessions").unwrap_or(0.0);
        let note = format!(
            "{} KiB and {} fds per session (incl. its client connection); {} after DELETE of all",
            per_session("kib", r).map(fmt).unwrap_or_default(),
            per_session("fds", r).map(fmt).unwrap_or_default(),
            num(r, "after_kib").map(mib).unwrap_or_default()
        );
        let held = [num(r, "held_kib"), None, None, None];
        rows.push(Row::numeric(
            format!("RSS with {} open sessions, HTTP upstream", int(n)),
            held,
            mib,
            note,
        ));
    }
    if let Some(r) = mem("mcplex", "streams") {
        let hold = recs.get("hold/mcplex/streams");
        let opened = hold.and_then(|h| num(h, "opened")).unwrap_or(0.0);
        let errors = hold.and_then(|h| num(h, "errors")).unwrap_or(f64::NAN);
        let note = format!(
            "{} streams open, {} errors; {} KiB and {} fds per session with its stream; upstream without GET stream",
            int(opened),
            int(errors),
            per_session("kib", r).map(fmt).unwrap_or_default(),
            per_session("fds", r).map(fmt).unwrap_or_default(),
        );
        rows.push(Row::numeric(
            format!(
                "RSS holding {} idle GET streams (one thread)",
                int(num(r, "sessions").unwrap_or(0.0))
            ),
            [num(r, "held_kib"), None, None, None],
            mib,
            note,
        ));
    }
    if let Some(n) = mem("mcplex", "stdio").and_then(|r| num(r, "sessions")) {
        let kib = per_system("stdio", &|r| per_session("kib", r));
        let note = "children excluded; ratio < 1 = mcplex smaller".to_string();
        rows.push(Row::numeric(
            format!("RSS per stdio session ({} open), KiB", int(n)),
            kib,
            fmt,
            note,
        ));
        let fds = per_system("stdio", &|r| per_session("fds", r));
        // How many children each gateway ran for those sessions: one each, or one shared.
        let children: Vec<String> = SYSTEMS
            .iter()
            .filter_map(|s| {
                Some(format!(
                    "{s} {}",
                    int(num(mem(s, "stdio")?, "held_children")?)
                ))
            })
            .collect();
        let note = format!(
            "incl. the client connection; children while held: {}",
            children.join(", ")
        );
        rows.push(Row::numeric(
            "file descriptors per stdio session".into(),
            fds,
            fmt,
            note,
        ));
        let after = per_system("stdio", &|r| num(r, "after_kib"));
        rows.push(Row::numeric(
            "RSS after those sessions ended".into(),
            after,
            mib,
            String::new(),
        ));
    }
}

fn other_rows(recs: &Records, rows: &mut Vec<Row>) {
    let startup = |key: &str| -> [Option<f64>; 4] {
        let mut out = [None; 4];
        for (i, s) in SYSTEMS.iter().enumerate() {
            out[i] = recs.get(&format!("startup/{s}")).and_then(|r| num(r, key));
        }
        out
    };
    let note = "median of 10 spawns".to_string();
    rows.push(Row::numeric(
        "start-up: first accepted connection, ms".into(),
        startup("connect_ms"),
        fmt,
        note.clone(),
    ));
    rows.push(Row::numeric(
        "start-up: first HTTP response, ms".into(),
        startup("response_ms"),
        fmt,
        note,
    ));
    if let Some(r) = recs.get("size/mcplex") {
        let mut row = Row::numeric(
            "release binary size (stripped)".into(),
            [num(r, "bytes").map(|b| b / 1024.0), None, None, None],
            mib,
            String::new(),
        );
        if let Some(node) = recs.get("size/node") {
            let peers = format!(
                "Node {} + {} node_modules",
                num(node, "bytes")
                    .map(|b| mib(b / 1024.0))
                    .unwrap_or_default(),
                num(node, "modules_bytes")
                    .map(|b| mib(b / 1024.0))
                    .unwrap_or_default()
            );
            row.cells[2] = peers.clone();
            row.cells[3] = peers;
        }
        rows.push(row);
    }
}

pub fn run(raw: &str, md: &str, json_out: &str, date: &str) -> Result<bool, String> {
    let text = fs::read_to_string(raw).map_err(|e| format!("{raw}: {e}"))?;
    let mut all = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        all.push(serde_json::from_str::<Value>(line).map_err(|e| format!("{raw}:{}: {e}", i + 1))?);
    }
    let recs = Records(all);
    let mut rows = Vec::new();
    load_rows(&recs, "http", "HTTP upstream, tools/call echo", &mut rows);
    load_rows(
        &recs,
        "https",
        "HTTP upstream, HTTPS listener + JWT (jwtAuth), echo",
        &mut rows,
    );
    load_rows(&recs, "stdio", "stdio upstream, tools/call echo", &mut rows);
    load_rows(
        &recs,
        "sse",
        "stdio upstream via legacy /sse, echo",
        &mut rows,
    );
    load_rows(
        &recs,
        "modern",
        "stdio upstream, 2026-07-28 client, echo",
        &mut rows,
    );
    load_rows(&recs, "fanout", "tools/list fan-out", &mut rows);
    load_rows(
        &recs,
        "modernfanout",
        "tools/list fan-out, 2026-07-28 client",
        &mut rows,
    );
    memory_rows(&recs, &mut rows);
    other_rows(&recs, &mut rows);

    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meta = recs.get("meta").cloned().unwrap_or(json!({}));
    let errors: f64 = recs
        .0
        .iter()
        .filter(|r| r.get("rps").is_some() || r["mode"] == "hold")
        .filter_map(|r| num(r, "errors"))
        .sum();

    let mut out = String::new();
    out.push_str("# mcplex benchmark\n\n");
    out.push_str(&format!("- date: {date}\n- machine: {nproc} CPUs, {cpu}\n"));
    if let Some(m) = meta.as_object() {
        for (k, v) in m.iter().filter(|(k, _)| *k != "id") {
            out.push_str(&format!(
                "- {k}: {}\n",
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            ));
        }
    }
    for s in &SYSTEMS[2..] {
        if let Some(i) = recs.get(&format!("info/{s}")) {
            out.push_str(&format!("- {s}: {}\n", i["how"].as_str().unwrap_or("")));
        }
    }
    out.push_str(&format!("- errors across all load runs: {errors}\n"));
    out.push_str("- ratios are mcplex ÷ other: above 1 is better for req/s, below 1 is better for everything else\n\n");
    out.push_str("| measurement | mcplex | direct | supergateway | mcp-proxy | ÷ direct | ÷ supergateway | ÷ mcp-proxy | notes |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|---|\n");
    let mut json_rows = Vec::new();
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.label,
            r.cells.join(" | "),
            r.ratios.join(" | "),
            r.note.trim()
        ));
        let mut o = Map::new();
        o.insert("measurement".into(), json!(r.label));
        for (s, c) in SYSTEMS.iter().zip(&r.cells) {
            o.insert((*s).into(), json!(c));
        }
        for (s, c) in SYSTEMS[1..].iter().zip(&r.ratios) {
            o.insert(format!("mcplex_vs_{s}"), json!(c));
        }
        o.insert("notes".into(), json!(r.note.trim()));
        json_rows.push(Value::Object(o));
    }
    print!("{out}");
    fs::write(md, &out).map_err(|e| format!("{md}: {e}"))?;
    let doc = json!({"date": date, "machine": {"nproc": nproc, "cpu": cpu}, "meta": meta,
                     "errors": errors, "table": json_rows, "records": recs.0});
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    fs::write(json_out, pretty + "\n").map_err(|e| format!("{json_out}: {e}"))?;
    Ok(errors == 0.0)
}
