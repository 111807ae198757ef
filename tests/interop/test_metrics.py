"""Observability (issue #8): /metrics on the stats listener (`statsAddr`), parsed with the
official Prometheus client's parser, and the access log (`accessLog: json | text`).

The tests speak raw HTTP (one connection per request) so that they know exactly which requests
the gateway saw, and compare the counters and log lines with that.  Every request has a socket
timeout; pytest-timeout bounds each test.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections import defaultdict
from typing import Any

import pytest

from conftest import Server, demo_target, free_port

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - reported by the tests themselves
    text_string_to_metric_families = None

HTTP_TIMEOUT_S = 10.0
INSTANCE = "m1"
LATEST = "2025-11-25"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


# ---------------------------------------------------------------- HTTP


def request(port: int, method: str, path: str, body: Any = None, sid: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        headers = dict(JSON_HEADERS) if body is not None else {"Accept": "application/json, text/event-stream"}
        if sid:
            headers["Mcp-Session-Id"] = sid
            headers["MCP-Protocol-Version"] = LATEST
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def rpc_answer(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, whether sent as JSON or as an SSE stream."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        answers = [
            json.loads(line[5:].strip())
            for line in body.decode().splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
        answers = [a for a in answers if "id" in a and ("result" in a or "error" in a)]
        assert len(answers) == 1, body
        return answers[0]
    return json.loads(body)


class McpClient:
    """A streamable-HTTP client that counts what it sent (HTTP requests, MCP methods)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sid: str | None = None
        self.next_id = 1
        # (method, path, status, mcp method, target) for each HTTP request, in order.
        self.sent: list[tuple[str, str, int, str, str]] = []

    def initialize(self) -> None:
        status, headers, body = request(
            self.port,
            "POST",
            "/mcp",
            {
                "jsonrpc": "2.0",
                "id": self._id(),
                "method": "initialize",
                "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "metrics-test", "version": "1"}},
            },
        )
        assert status == 200, (status, body)
        assert "result" in rpc_answer(headers, body), body
        self.sid = headers.get("mcp-session-id")
        assert self.sid and self.sid.startswith(f"{INSTANCE}."), f"session id {self.sid!r} lacks the instance prefix"
        self.sent.append(("POST", "/mcp", 200, "initialize", ""))
        status, _, body = request(self.port, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, self.sid)
        assert status == 202, (status, body)
        self.sent.append(("POST", "/mcp", 202, "notifications/initialized", ""))

    def call(self, method: str, params: dict[str, Any] | None = None, target: str = "") -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._id(), "method": method}
        if params is not None:
            msg["params"] = params
        status, headers, body = request(self.port, "POST", "/mcp", msg, self.sid)
        assert status == 200, (method, status, body)
        self.sent.append(("POST", "/mcp", 200, method, target))
        return rpc_answer(headers, body)

    def get(self, path: str, want: int) -> bytes:
        status, _, body = request(self.port, "GET", path)
        assert status == want, (path, status, body)
        self.sent.append(("GET", path, status, "", ""))
        return body

    def delete(self) -> None:
        status, _, body = request(self.port, "DELETE", "/mcp", sid=self.sid)
        assert status == 200, (status, body)
        self.sent.append(("DELETE", "/mcp", 200, "", ""))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


# ---------------------------------------------------------------- metrics


class Scrape:
    """One /metrics scrape, parsed by prometheus_client."""

    def __init__(self, text: str) -> None:
        if text_string_to_metric_families is None:
            pytest.fail(
                "prometheus_client is not installed in tests/.venv: add prometheus-client==0.26.0 "
                "to tests/requirements.txt (or pip install it)",
                pytrace=False,
            )
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), s.value))

    def get(self, name: str, **labels: str) -> float:
        found = [v for n, l, v in self.samples if n == name and l == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples\n{self.text}"
        return found[0]

    def all(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for n, l, v in self.samples if n == name]


def scrape(stats_port: int) -> Scrape:
    status, headers, body = request(stats_port, "GET", "/metrics")
    assert status == 200, (status, body)
    assert headers.get("content-type", "").startswith("text/plain"), headers
    return Scrape(body.decode())


def check_histograms(m: Scrape) -> dict[str, float]:
    """Each target's latency histogram is well formed; returns its _count by target."""
    counts = {l["target"]: v for l, v in m.all("mcplex_request_duration_seconds_count")}
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for l, v in m.all("mcplex_request_duration_seconds_bucket"):
        buckets[l["target"]].append((float(l["le"]), v))
    assert set(buckets) == set(counts), (buckets.keys(), counts)
    for target, bs in buckets.items():
        bs.sort()
        values = [v for _, v in bs]
        assert values == sorted(values), f"{target}: buckets not cumulative: {bs}"
        assert bs[-1][0] == float("inf") and bs[-1][1] == counts[target], f"{target}: +Inf {bs[-1]} != count {counts[target]}"
        assert m.get("mcplex_request_duration_seconds_sum", target=target) >= 0
    return counts


# ---------------------------------------------------------------- access log


def access_lines(gw: Server, mode: str, want: int) -> list[Any]:
    """The gateway's access-log lines, once at least `want` are there (or 5 s passed)."""
    deadline = time.monotonic() + 5
    while True:
        lines = gw.log_path.read_text(errors="replace").splitlines()
        if mode == "json":
            out = [json.loads(l) for l in lines if l.startswith("{") and '"access":true' in l.replace(" ", "")]
        else:
            out = [l for l in lines if l.startswith("mcplex: access ")]
        if len(out) >= want or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


TEXT_LINE = re.compile(
    r"mcplex: access (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<ms>[0-9.]+)ms "
    r"session=(?P<session>\S+) mcp=(?P<mcp>\S+) target=(?P<target>\S+)$"
)


# ---------------------------------------------------------------- tests


def start(gateway, stats: int, access_log: str, targets: list[dict[str, Any]] | None = None) -> Server:
    return gateway(
        {
            "mcp": {"targets": targets or [demo_target()]},
            "config": {"instanceId": INSTANCE, "statsAddr": f"127.0.0.1:{stats}", "accessLog": access_log},
        }
    )


@pytest.mark.timeout(60)
def test_metrics_count_what_the_client_did(gateway):
    stats = free_port()
    gw = start(gateway, stats, "json")
    c = McpClient(gw.port)
    c.initialize()
    tools = c.call("tools/list", {}, target="demo")
    assert {"echo", "add", "slow"} <= {t["name"] for t in tools["result"]["tools"]}, tools
    for i in range(3):
        r = c.call("tools/call", {"name": "add", "arguments": {"a": i, "b": 2}}, target="demo")
        assert not r["result"].get("isError"), r
    for _ in range(2):
        assert c.call("ping")["result"] == {}
    r = c.call("tools/call", {"name": "no_such_tool", "arguments": {}}, target="demo")
    assert "error" in r, r
    # /metrics is only on the stats listener; /healthz is on every bind.
    c.get("/metrics", 404)
    health = json.loads(c.get("/healthz", 200))
    assert health["sessions"] == 1, health

    m = scrape(stats)
    c.sent.append(("GET", "/metrics", 200, "", ""))
    assert m.types.get("mcplex_requests") == "counter", m.types
    assert m.types.get("mcplex_request_duration_seconds") == "histogram", m.types
    assert m.types.get("mcplex_sessions") == "gauge", m.types

    requests = {(l["method"], l["target"], l["outcome"]): v for l, v in m.all("mcplex_requests_total")}
    assert requests == {
        ("initialize", "mcp/*", "ok"): 1,
        ("tools/list", "mcp/demo", "ok"): 1,
        ("tools/call", "mcp/demo", "ok"): 3,
        ("tools/call", "mcp/demo", "error"): 1,
        ("ping", "gateway", "ok"): 2,
    }, m.text

    counts = check_histograms(m)
    by_target: dict[str, float] = defaultdict(float)
    for (_, target, _), v in requests.items():
        by_target[target] += v
    assert counts == by_target, (counts, dict(by_target))
    # The gateway answers ping itself: no time to speak of.
    assert m.get("mcplex_request_duration_seconds_bucket", target="gateway", le="0.0005") == 2
    assert m.get("mcplex_request_duration_seconds_sum", target="mcp/demo") > 0

    assert m.get("mcplex_sessions") == 1
    assert m.get("mcplex_sessions_started_total") == 1
    assert m.get("mcplex_stdio_children") == 1
    assert m.get("mcplex_streams") == 0
    assert m.get("mcplex_config_reloads_total") == 0
    # Every response before this scrape, by status.
    codes = {l["code"]: v for l, v in m.all("mcplex_http_responses_total")}
    assert codes == {"200": 9, "202": 1, "404": 1}, m.text
    assert m.get("mcplex_received_bytes_total") > 0 and m.get("mcplex_sent_bytes_total") > 0
    # Each request came on its own connection (plus the fixture's readiness probe, the scrape).
    assert m.get("mcplex_connections_accepted_total") >= len(c.sent)

    # The stats listener serves nothing else.
    for method, path in (("GET", "/mcp"), ("POST", "/metrics")):
        status, _, body = request(stats, method, path, {} if method == "POST" else None)
        assert status == 404, (method, path, status, body)
        c.sent.append((method, path, 404, "", ""))
    status, _, body = request(stats, "GET", "/healthz")
    assert status == 200 and json.loads(body)["sessions"] == 1, body
    c.sent.append(("GET", "/healthz", 200, "", ""))

    c.delete()
    deadline = time.monotonic() + 5
    while True:
        m = scrape(stats)
        c.sent.append(("GET", "/metrics", 200, "", ""))
        if m.get("mcplex_stdio_children") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m.get("mcplex_sessions") == 0, m.text
    assert m.get("mcplex_stdio_children") == 0, "the session's child outlived its DELETE by 5 s"
    assert m.get("mcplex_sessions_started_total") == 1

    # One JSON access-log line per HTTP request, in order.
    lines = access_lines(gw, "json", len(c.sent))
    short = c.sid[: len(INSTANCE) + 1 + 8]
    got = [(l["method"], l["path"], l["status"], l["mcpMethod"], l["target"]) for l in lines]
    assert got == c.sent, "access log does not match the requests:\n" + "\n".join(map(str, lines))
    for l in lines:
        assert isinstance(l["durationMs"], (int, float)) and l["durationMs"] >= 0, l
        want_session = short if l["path"] == "/mcp" and l["status"] < 400 else ""
        assert l["session"] == want_session, l
        assert c.sid not in json.dumps(l), f"the full session id (a credential) leaked into the log: {l}"


@pytest.mark.timeout(60)
def test_access_log_text(gateway):
    stats = free_port()
    gw = start(gateway, stats, "text")
    c = McpClient(gw.port)
    c.initialize()
    r = c.call("tools/call", {"name": "echo", "arguments": {"message": "hi"}}, target="demo")
    assert not r["result"].get("isError"), r
    c.call("ping")
    c.get("/metrics", 404)
    c.delete()
    lines = access_lines(gw, "text", len(c.sent))
    assert len(lines) == len(c.sent), "\n".join(lines)
    short = c.sid[: len(INSTANCE) + 1 + 8]
    for line, (method, path, status, mcp_method, target) in zip(lines, c.sent):
        m = TEXT_LINE.match(line)
        assert m, f"access line in an unexpected shape: {line!r}"
        assert (m["method"], m["path"], int(m["status"])) == (method, path, status), line
        assert m["mcp"] == (mcp_method or "-"), line
        assert m["target"] == (target or "-"), line
        assert m["session"] == (short if path == "/mcp" else "-"), line
    assert c.sid not in gw.log(), "the full session id (a credential) leaked into the log"
    # With accessLog text, no JSON lines.
    assert not access_lines(gw, "json", 0)


@pytest.mark.timeout(60)
def test_requests_the_gateway_refuses_are_counted(gateway):
    """With two targets (prefixed names), a tool name that names no target is refused by the
    gateway itself, without asking a target: it is still an MCP request answered with an
    error, and must show in mcplex_requests_total.  accessLog is off here: no access lines."""
    stats = free_port()
    gw = start(gateway, stats, "off", [demo_target("d1"), demo_target("d2")])
    c = McpClient(gw.port)
    c.initialize()
    r = c.call("tools/call", {"name": "d1_add", "arguments": {"a": 1, "b": 2}})
    assert not r["result"].get("isError"), r
    r = c.call("tools/call", {"name": "d2_no_such_tool", "arguments": {}})
    assert "error" in r, r
    r = c.call("tools/call", {"name": "no_such_tool", "arguments": {}})
    assert "error" in r, r
    c.call("tools/list", {})

    m = scrape(stats)
    requests = {(l["method"], l["target"], l["outcome"]): v for l, v in m.all("mcplex_requests_total")}
    assert requests.get(("tools/call", "mcp/d1", "ok")) == 1, m.text
    assert requests.get(("tools/call", "mcp/d2", "error")) == 1, m.text
    assert requests.get(("tools/list", "mcp/*", "ok")) == 1, m.text
    calls_failed = sum(v for (meth, _, outcome), v in requests.items() if meth == "tools/call" and outcome == "error")
    assert calls_failed == 2, (
        "tools/call answered with an error by the gateway itself (unknown tool, no target "
        f"prefix) is missing from mcplex_requests_total:\n{m.text}"
    )
    counts = check_histograms(m)
    assert sum(counts.values()) == sum(requests.values()), (counts, requests)
    assert not access_lines(gw, "text", 0) and not access_lines(gw, "json", 0), gw.log()
