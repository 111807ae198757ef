//! mcplex-loadgen: the load client of mcplex's benchmark (tests/bench/run).
//!
//! Each mode prints one JSON line on stdout (for the run script) and one human line on stderr.
//! A run that saw any error exits with status 1.

mod http;
mod mcp;
mod report;

use mcp::{Session, Transport};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  loadgen call  --url URL [--sessions K] [--seconds S] [--tool echo|add] [--sse] [--cpu-pid PID] [--id ID]
  loadgen list  --url URL [--sessions K] [--seconds S] [--sse] [--cpu-pid PID] [--id ID]
                      closed loop of tools/call (call) or tools/list (list), one thread per session
  loadgen call  [--sessions K] [--seconds S] [--tool echo|add] [--id ID] -- CMD [ARGS...]
                      the same over stdio: each session spawns CMD and talks to it over pipes
                      (the direct path that a gateway's stdio relay adds to)
  loadgen hold  --url URL --sessions N [--streams] [--id ID]
                      opens N sessions (one connection each), prints a line, holds them until
                      stdin closes, then DELETEs them; --streams: each also opens its GET
                      stream on that connection
  loadgen startup --addr HOST:PORT [--path /healthz] [--runs 10] [--id ID] -- CMD [ARGS...]
                      time from spawn to first accepted connection and first HTTP response
  loadgen wait --addr HOST:PORT [--timeout S]     wait until something accepts on HOST:PORT
  loadgen free-port                               print a free TCP port on 127.0.0.1
  loadgen report --raw FILE --md FILE --json FILE [--date D]
                      turn the run script's raw records into the results table";

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match mode.as_str() {
        "call" | "list" => load(mode, &opts),
        "hold" => hold(&opts),
        "startup" => startup(&opts),
        "wait" => wait_port(&opts),
        "free-port" => free_port(),
        "report" => report::run(
            &opts.get("raw"),
            &opts.get("md"),
            &opts.get("json"),
            &opts.get("date"),
        ),
        _ => Err(format!("unknown mode {mode:?}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` options, plus the command after `--`.
struct Opts {
    pairs: Vec<(String, String)>,
    command: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                return Ok(Opts {
                    pairs,
                    command: it.cloned().collect(),
                });
            }
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}"))?;
            // Flags without a value.
            if name == "sse" || name == "streams" || name == "modern" {
                pairs.push((name.to_string(), "1".to_string()));
                continue;
            }
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            pairs.push((name.to_string(), value.clone()));
        }
        Ok(Opts {
            pairs,
            command: Vec::new(),
        })
    }

    fn get(&self, name: &str) -> String {
        self.opt(name).unwrap_or_default()
    }

    fn opt(&self, name: &str) -> Option<String> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.opt(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
            None => Ok(default),
        }
    }

    fn url(&self) -> Result<http::Url, String> {
        http::Url::parse(&self.opt("url").ok_or("--url is required")?)
    }

    fn transport(&self) -> Transport {
        if self.opt("sse").is_some() {
            Transport::LegacySse
        } else if self.opt("modern").is_some() {
            Transport::Modern
        } else {
            Transport::Streamable
        }
    }
}

/// What one session thread measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// (utime, stime) of a process in milliseconds (children excluded: those are in cutime/cstime).
fn cpu_ms(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Some((user as f64 * 10.0, system as f64 * 10.0))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The closed-loop load run: K sessions, each on its own thread and connection, send the next
/// request as soon as the previous answer arrives.
fn load(mode: &str, opts: &Opts) -> Result<bool, String> {
    // With a command after `--`, each session spawns it and speaks stdio: no URL.
    let url = match opts.command.is_empty() {
        true => Some(opts.url()?),
        false => None,
    };
    let transport = opts.transport();
    let sessions: usize = opts.num("sessions", 1)?;
    let seconds: f64 = opts.num("seconds", 5.0)?;
    let cpu_pid: Option<u32> = opts
        .opt("cpu-pid")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| "--cpu-pid: not a pid")?;
    let (method, params) = if mode == "list" {
        ("tools/list", json!({}))
    } else {
        match opts.opt("tool").as_deref().unwrap_or("echo") {
            "echo" => (
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "hello"}}),
            ),
            "add" => (
                "tools/call",
                json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
            ),
            other => return Err(format!("--tool {other:?}: choose echo or add")),
        }
    };
    // Every session is opened before the clock starts, so set-up cost stays out of the numbers.
    let ready = Arc::new(Barrier::new(sessions + 1));
    let duration = Duration::from_secs_f64(seconds);
    let mut threads = Vec::new();
    for _ in 0..sessions {
        let (url, ready, params) = (url.clone(), Arc::clone(&ready), params.clone());
        let cmd = opts.command.clone();
        let spawned = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut tally = Tally::default();
                let session = match &url {
                    Some(url) => Session::open(url, transport, REQUEST_TIMEOUT),
                    None => Session::spawn(&cmd),
                };
                ready.wait();
                let mut session = match session {
                    Ok(s) => s,
                    Err(e) => {
                        tally.error(format!("opening the session: {e}"));
                        return tally;
                    }
                };
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let outcome = session.request(method, params.clone());
                    let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    match outcome.and_then(|r| check(method, &r)) {
                        Ok(()) => tally.latencies_us.push(us),
                        Err(e) => tally.error(e),
                    }
                }
                if let Err(e) = session.close() {
                    tally.error(format!("closing the session: {e}"));
                }
                tally
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => return Err(format!("cannot start session thread: {e}")),
        }
    }
    ready.wait();
    let start = Instant::now();
    let cpu_before = cpu_pid.and_then(cpu_ms);
    let mut all = Tally::default();
    for t in threads {
        match t.join() {
            Ok(t) => {
                all.latencies_us.extend(t.latencies_us);
                all.errors += t.errors;
                if let Some(e) = t.first_error {
                    all.first_error.get_or_insert(e);
                }
            }
            Err(_) => all.error("a session thread panicked".into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu_used, cpu_user) = match (cpu_before, cpu_pid.and_then(cpu_ms)) {
        (Some(a), Some(b)) => (Some(b.0 + b.1 - a.0 - a.1), Some(b.0 - a.0)),
        _ => (None, None),
    };
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    let rps = n as f64 / elapsed;
    let (p50, p99, max) = (
        percentile(&all.latencies_us, 50.0),
        percentile(&all.latencies_us, 99.0),
        all.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    let mut out = json!({
        "id": opts.get("id"),
        "mode": mode,
        "transport": match (&url, transport) {
            (None, _) => "stdio",
            (_, Transport::LegacySse) => "sse",
            (_, Transport::Modern) => "modern",
            _ => "streamable",
        },
        "url": opts.get("url"),
        "sessions": sessions,
        "seconds": round(elapsed, 3),
        "requests": n,
        "rps": round(rps, 1),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": percentile(&all.latencies_us, 99.9),
        "over_10ms": all.latencies_us.iter().filter(|us| **us > 10_000).count(),
        "max_ms": max,
        "errors": all.errors,
        "first_error": all.first_error,
    });
    if let (Some(user), true) = (cpu_user, n > 0) {
        // The gateway's own code; the rest of its CPU time is the kernel working for it.
        out["cpu_user_us_per_req"] = json!(round(user * 1000.0 / n as f64, 1));
    }
    if let Some(cpu) = cpu_used {
        out["cpu_ms"] = json!(round(cpu, 0));
        out["cpu_us_per_req"] = json!(if n > 0 {
            round(cpu * 1000.0 / n as f64, 1)
        } else {
            0.0
        });
    }
    println!("{out}");
    let cpu_text = match cpu_used {
        Some(cpu) if n > 0 => format!(", server CPU {:.1} µs/req", cpu * 1000.0 / n as f64),
        _ => String::new(),
    };
    eprintln!(
        "{:<28} {mode} K={sessions}: {n} requests in {elapsed:.2} s = {rps:.0} req/s, \
         p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms{cpu_text}, errors {}{}",
        opts.get("id"),
        all.errors,
        all.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(all.errors == 0 && n > 0)
}

/// A successful JSON-RPC answer can still report failure (`isError`) or be empty.
fn check(method: &str, result: &Value) -> Result<(), String> {
    if method == "tools/list" {
        return match result.get("tools").and_then(Value::as_array) {
            Some(t) if !t.is_empty() => Ok(()),
            _ => Err("tools/list returned no tools".into()),
        };
    }
    if result.get("isError") == Some(&Value::Bool(true)) {
        return Err(format!("tool call reported isError: {result}"));
    }
    Ok(())
}

/// Opens N sessions and keeps them (and their connections) open until stdin closes, so the run
/// script can measure the server's memory and file descriptors meanwhile.
fn hold(opts: &Opts) -> Result<bool, String> {
    let url = opts.url()?;
    let n: usize = opts.num("sessions", 100)?;
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut tally = Tally::default();
    let streams = opts.opt("streams").is_some();
    for _ in 0..n {
        let opened = Session::open(&url, opts.transport(), REQUEST_TIMEOUT).and_then(|mut s| {
            if streams {
                s.open_stream()?;
            }
            Ok(s)
        });
        match opened {
            Ok(s) => held.push(s),
            Err(e) => tally.error(e),
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let out = json!({
        "id": opts.get("id"), "mode": "hold", "sessions": n, "opened": held.len(), "streams": streams,
        "open_seconds": round(open_s, 3), "errors": tally.errors, "first_error": tally.first_error,
    });
    println!("{out}");
    // The run script waits for this line; make sure it is not stuck in a buffer.
    let _ = io::stdout().flush();
    eprintln!(
        "{:<28} hold: {} of {n} sessions open after {open_s:.2} s",
        opts.get("id"),
        held.len()
    );
    let _ = io::stdin().read_to_end(&mut Vec::new());
    for s in held {
        if let Err(e) = s.close() {
            tally.error(e);
        }
    }
    if let Some(e) = &tally.first_error {
        eprintln!("loadgen hold: {} errors, first: {e}", tally.errors);
    }
    Ok(tally.errors == 0)
}

/// Spawns the command `runs` times and times the first accepted TCP connection and the first
/// HTTP response (any status) on `--path`; reports the medians.
fn startup(opts: &Opts) -> Result<bool, String> {
    let addr = opts.opt("addr").ok_or("--addr is required")?;
    let path = opts.opt("path").unwrap_or_else(|| "/".into());
    let runs: usize = opts.num("runs", 10)?;
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let (cmd, args) = opts
        .command
        .split_first()
        .ok_or("startup needs a command after --")?;
    let url = http::Url::parse(&format!("http://{addr}{path}"))?;
    let (mut connect_ms, mut response_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {cmd}: {e}"))?;
        let outcome = first_response(&url, t0);
        // SIGTERM first, so gateways that own children can stop them; then make sure.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        let (c, r) = outcome?;
        connect_ms.push(c);
        response_ms.push(r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, r) = (median(&mut connect_ms), median(&mut response_ms));
    println!(
        "{}",
        json!({"id": opts.get("id"), "mode": "startup", "runs": runs,
               "connect_ms": round(c, 2), "response_ms": round(r, 2),
               "connect_all_ms": connect_ms.iter().map(|x| round(*x, 2)).collect::<Vec<_>>()})
    );
    eprintln!(
        "{:<28} startup: first connection {c:.2} ms, first response {r:.2} ms (median of {runs})",
        opts.get("id")
    );
    Ok(true)
}

fn first_response(url: &http::Url, t0: Instant) -> Result<(f64, f64), String> {
    let give_up = t0 + Duration::from_secs(30);
    let mut conn = loop {
        match http::connect(url, Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < give_up => thread::sleep(Duration::from_micros(500)),
            Err(e) => {
                return Err(format!(
                    "nothing accepted on {} within 30 s: {e}",
                    url.authority()
                ))
            }
        }
    };
    let connected = t0.elapsed().as_secs_f64() * 1000.0;
    http::write_request(&mut conn, "GET", url, &[("Connection", "close")], b"")
        .and_then(|_| http::read_head(&mut conn))
        .map_err(|e| format!("first request: {e}"))?;
    Ok((connected, t0.elapsed().as_secs_f64() * 1000.0))
}

fn wait_port(opts: &Opts) -> Result<bool, String> {
    let addr = opts.opt("addr").ok_or("--addr is required")?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.num("timeout", 20.0)?);
    while Instant::now() < deadline {
        if TcpStream::connect(&addr).is_ok() {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr}"))
}

fn free_port() -> Result<bool, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
    Ok(true)
}
