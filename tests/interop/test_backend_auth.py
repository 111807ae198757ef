"""Upstreams that demand credentials, and what requests to them carry (issue #14).

The upstreams are @modelcontextprotocol/server-everything in `streamableHttp` and `sse` modes,
each behind a `Guard` (guarded_upstream.py): a small proxy, plain or TLS (a throwaway CA from
test_upstream_tls.make_certs), that records every request the gateway makes and answers 401
with a `WWW-Authenticate` challenge unless `Authorization: Bearer <token>` is exact.

- No `backendAuth`: the client's initialize fails with a JSON-RPC error naming the target and
  what to set, with the challenge in `data` (failClosed); under failOpen the rest goes on.
- `backendAuth: {key: ...}` from the environment and from a file: plain and TLS, streamable and
  legacy SSE targets all work; the token is in no log line, nor in /metrics, /healthz or the
  output of --validate.
- `passthrough`: the client's own Authorization reaches that target, and only it, for a legacy
  session and for stateless (2026-07-28) requests.
- `requestHeaderModifier` (route and target): on the POSTs, the GET stream and the DELETE.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import MCPLEX_BIN, demo_target, free_port
from guarded_upstream import CHALLENGE, Guard, guards  # noqa: F401 (a fixture)
from mcp_client import STEP_TIMEOUT_S, all_tools, run_client, step, text_of
from test_upstream_tls import make_certs

TOKEN = "tok-" + secrets.token_hex(16)
MODERN = "2026-07-28"


@pytest.fixture
def everything(everything_http):
    """Both HTTP modes of server-everything, started once per test that asks."""
    return {"mcp": everything_http("streamableHttp"), "sse": everything_http("sse")}


def target(name: str, kind: str, guard: Guard, policies: dict | None = None) -> dict[str, Any]:
    path = "/mcp" if kind == "mcp" else "/sse"
    t: dict[str, Any] = {"name": name, kind: {"host": f"{guard.url}{path}"}}
    if policies:
        t["policies"] = policies
    return t


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    """One JSON-RPC POST; the answer (plain JSON or the last message of an SSE reply)."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=STEP_TIMEOUT_S * 2) as r:
            status, raw, ctype = r.status, r.read().decode(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read().decode(), e.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        data = [ln[5:].strip() for ln in raw.splitlines() if ln.startswith("data:")]
        return status, json.loads(data[-1]) if data else {}
    return status, json.loads(raw) if raw.strip() else {}


def initialize(url: str, headers: dict | None = None) -> tuple[int, dict]:
    return post(
        url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        },
        headers,
    )


def modern(url: str, rid: int, method: str, params: dict, headers: dict | None = None) -> tuple[int, dict]:
    """One stateless 2026-07-28 request, by hand."""
    p = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}
    h = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if "name" in params:
        h["Mcp-Name"] = params["name"]
    h.update(headers or {})
    return post(url, {"jsonrpc": "2.0", "id": rid, "method": method, "params": p}, h)


def wait_for(what: str, cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---------------------------------------------------------------- no credentials configured


@pytest.mark.parametrize("kind", ["mcp", "sse"])
def test_an_upstreams_401_names_the_target_and_what_to_set(gateway, everything, guards, kind):
    g = guards(everything[kind].port, token=TOKEN)
    gw = gateway({"mcp": {"targets": [target("github", kind, g)]}})
    status, answer = initialize(gw.mcp)
    err = answer.get("error")
    assert err, (status, answer)
    msg = err["message"]
    assert "target github" in msg and "401 Unauthorized" in msg and "backendAuth" in msg, msg
    if kind == "mcp":
        # The challenge of the upstream's POST answer reaches the client.
        assert err.get("data", {}).get("wwwAuthenticate") == CHALLENGE, err
        assert err["data"]["target"] == "github" and err["data"]["status"] == 401, err
    assert g.seen, "the upstream never saw a request"


def test_under_fail_open_the_other_targets_go_on(gateway, everything, guards):
    g = guards(everything["mcp"].port, token=TOKEN)
    cfg = {"mcp": {"failureMode": "failOpen", "targets": [target("github", "mcp", g), demo_target("demo")]}}
    gw = gateway(cfg)

    async def body(s: ClientSession) -> None:
        names = [t.name for t in await all_tools(s)]
        assert "demo_add" in names and not any(n.startswith("github_") for n in names), names
        res = await step("demo_add", s.call_tool("demo_add", {"a": 2, "b": 3}))
        assert "5" in text_of(res.content), res

    run_client(gw.mcp, body)
    assert "401 Unauthorized" in gw.log(), gw.log()


# ---------------------------------------------------------------- backendAuth: key


def test_key_from_env_and_from_a_file_over_plain_and_tls(gateway, everything, guards, tmp_path, monkeypatch):
    certs = make_certs(tmp_path / "pki")
    tls = (certs["cert"], certs["key"])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("MCPLEX_TEST_GUARD_TOKEN", TOKEN)
    from_env = {"key": {"env": "MCPLEX_TEST_GUARD_TOKEN"}}
    from_file = {"key": {"file": str(token_file)}}
    verify = {"root": str(certs["ca"]), "hostname": "localhost"}
    plain_mcp = guards(everything["mcp"].port, token=TOKEN)
    plain_sse = guards(everything["sse"].port, token=TOKEN)
    tls_mcp = guards(everything["mcp"].port, token=TOKEN, tls=tls)
    tls_sse = guards(everything["sse"].port, token=TOKEN, tls=tls)
    stats_port = free_port()
    cfg = {
        "config": {"statsAddr": f"127.0.0.1:{stats_port}"},
        "mcp": {
            "targets": [
                target("plainmcp", "mcp", plain_mcp, {"backendAuth": from_env}),
                target("plainsse", "sse", plain_sse, {"backendAuth": {"key": {"value": {"file": str(token_file)}}}}),
                target("tlsmcp", "mcp", tls_mcp, {"backendAuth": from_file, "backendTLS": verify}),
                target("tlssse", "sse", tls_sse, {"backendAuth": from_env, "backendTLS": verify}),
            ]
        },
    }
    gw = gateway(cfg)
    names = ("plainmcp", "plainsse", "tlsmcp", "tlssse")

    async def body(s: ClientSession) -> None:
        tools = {t.name for t in await all_tools(s)}
        for n in names:
            assert f"{n}_echo" in tools, sorted(tools)
            res = await step(f"{n}_echo", s.call_tool(f"{n}_echo", {"message": f"hi {n}"}))
            assert f"hi {n}" in text_of(res.content), res

    run_client(gw.mcp, body)
    for g in (plain_mcp, plain_sse, tls_mcp, tls_sse):
        assert g.seen and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in g.seen), g.seen

    # The token is nowhere the operator or a scraper looks.
    for path in ("/metrics", "/healthz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}{path}", timeout=10) as r:
            assert TOKEN not in r.read().decode(), path
    assert TOKEN not in gw.log(10_000)
    cfg_files = sorted(tmp_path.glob("gateway-*.yaml"))
    v = subprocess.run([str(MCPLEX_BIN), "-f", str(cfg_files[-1]), "--validate"], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0 and TOKEN not in v.stdout + v.stderr, (v.stdout, v.stderr)
    # A bad key (a file that is not there) is refused at load, without echoing any secret.
    bad = cfg_files[-1].read_text().replace(str(token_file), str(tmp_path / "missing"))
    (tmp_path / "bad.yaml").write_text(bad)
    v = subprocess.run([str(MCPLEX_BIN), "-f", str(tmp_path / "bad.yaml"), "--validate"], capture_output=True, text=True, timeout=30)
    assert v.returncode != 0 and "backendAuth.key" in v.stderr and TOKEN not in v.stderr, v.stderr


# ---------------------------------------------------------------- backendAuth: passthrough


def test_passthrough_forwards_the_clients_credential_to_that_target_only(gateway, everything, guards):
    client_token = "client-" + secrets.token_hex(8)
    guarded = guards(everything["mcp"].port, token=client_token)
    other = guards(everything["mcp"].port)
    cfg = {
        "mcp": {
            "targets": [
                target("mine", "mcp", guarded, {"backendAuth": {"passthrough": {}}}),
                target("other", "mcp", other),
            ]
        }
    }
    gw = gateway(cfg)
    auth = {"Authorization": f"Bearer {client_token}"}

    async def main() -> None:
        http = create_mcp_http_client(headers=auth)
        async with streamable_http_client(gw.mcp, http_client=http) as (read, write, *_):
            async with ClientSession(read, write, read_timeout_seconds=STEP_TIMEOUT_S) as s:
                await step("initialize", s.initialize())
                for n in ("mine", "other"):
                    res = await step(f"{n}_echo", s.call_tool(f"{n}_echo", {"message": n}))
                    assert n in text_of(res.content), res

    anyio.run(main)
    legacy_seen = len(guarded.seen)
    assert legacy_seen and all(r["headers"].get("authorization") == f"Bearer {client_token}" for r in guarded.seen)

    # Stateless requests carry their own credential to the same target.
    status, answer = modern(gw.mcp, 7, "tools/call", {"name": "mine_echo", "arguments": {"message": "stateless"}}, auth)
    assert status == 200 and "stateless" in json.dumps(answer), (status, answer)
    assert len(guarded.seen) > legacy_seen
    assert all(r["headers"].get("authorization") == f"Bearer {client_token}" for r in guarded.seen)
    # ...and a stateless request without one is refused by the upstream, as the client's own.
    status, answer = modern(gw.mcp, 8, "tools/call", {"name": "mine_echo", "arguments": {"message": "x"}})
    assert "401 Unauthorized" in json.dumps(answer), (status, answer)

    assert other.seen and not any("authorization" in r["headers"] for r in other.seen), other.seen
    assert client_token not in gw.log(10_000)


# ---------------------------------------------------------------- requestHeaderModifier


@pytest.mark.parametrize("kind", ["mcp", "sse"])
def test_header_modifier_reaches_every_request(gateway, everything, guards, kind):
    g = guards(everything[kind].port)
    route_mod = {"add": {"X-Route": "r"}, "set": {"X-Team": "blue"}}
    target_mod = {"set": {"X-Team": "green"}, "add": {"X-Target": "t"}}
    cfg = {
        "binds": [
            {
                "listeners": [
                    {
                        "routes": [
                            {
                                "policies": {"requestHeaderModifier": route_mod},
                                "backends": [{"mcp": {"targets": [target("up", kind, g, {"requestHeaderModifier": target_mod})]}}],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    gw = gateway(cfg)

    async def body(s: ClientSession) -> None:
        tools = await all_tools(s)
        assert any(t.name == "echo" for t in tools), [t.name for t in tools]
        if kind == "mcp":
            # The upstream GET stream opens after initialization.
            await anyio.to_thread.run_sync(lambda: wait_for("the upstream GET stream", lambda: "GET" in g.methods()))

    run_client(gw.mcp, body)
    if kind == "mcp":
        # The client's DELETE ends the session, and the gateway DELETEs its upstream session.
        wait_for("the upstream DELETE", lambda: "DELETE" in g.methods())
    wanted = {"POST", "GET", "DELETE"} if kind == "mcp" else {"POST", "GET"}
    assert wanted <= set(g.methods()), g.methods()
    for r in g.seen:
        h = r["headers"]
        assert (h.get("x-route"), h.get("x-team"), h.get("x-target")) == ("r", "green", "t"), r
