"""Scale-out behind nginx (issue #8): two mcplex instances, one nginx in front, running the
shipped config/nginx/mcplex.conf with only its ports changed.

nginx comes from Debian's packages: tests/interop/scale/setup.sh installs it (idempotent).  It
runs in the foreground as the test user with its prefix, config, pid file, logs and every temp
path under the test's tmp dir (`-e stderr` keeps it off /var/log, `-c` off /etc/nginx).

The official Python SDK's clients (streamable HTTP on /mcp and the legacy transport on /sse) run
whole sessions through nginx.  Session ids start with the owning instance's id, so the test can
tell where each session landed; each instance's /metrics (on its statsAddr) must agree.  Then
instance b is stopped (SIGTERM): b's sessions fail on their next call, a's keep working, and new
sessions through nginx succeed on a.

Each step runs under a timeout inside the client sessions; pytest-timeout bounds the test.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import urllib.request
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import REPO_ROOT, demo_target, free_port
from mcp_client import step as _step, text_of as _text_of

NGINX_CONF = REPO_ROOT / "config" / "nginx" / "mcplex.conf"
SETUP_SH = REPO_ROOT / "tests" / "interop" / "scale" / "setup.sh"
# The instances' addresses and the listen line as they appear in the shipped config.
SHIPPED_A, SHIPPED_B, SHIPPED_LISTEN = "server 127.0.0.1:3101", "server 127.0.0.1:3102", "listen 8080;"

STEP_TIMEOUT_S = 20.0
# How long a call on a dead instance's session may take to fail (legacy clients notice only
# when their stream ends or a POST is refused).
DEAD_CALL_TIMEOUT_S = 10.0


def nginx_bin() -> str:
    path = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"nginx is not installed (looked for {path}): run {SETUP_SH.relative_to(REPO_ROOT)} "
            "(apt-get installs Debian's nginx), or set NGINX_BIN",
            pytrace=False,
        )
    return path


def render_nginx(tmp: Path, port_a: int, port_b: int, listen: int) -> Path:
    """config/nginx/mcplex.conf with the test's ports, wrapped in a minimal nginx.conf whose
    every path is under tmp.  Returns the nginx.conf path."""
    shipped = NGINX_CONF.read_text()
    for needle, want in ((SHIPPED_A, 3), (SHIPPED_B, 3), (SHIPPED_LISTEN, 1)):
        got = shipped.count(needle)
        assert got == want, (
            f"{NGINX_CONF} changed shape: expected {needle!r} {want} time(s), found {got}; "
            "update this test's substitutions"
        )
    conf = (
        shipped.replace(SHIPPED_A, f"server 127.0.0.1:{port_a}")
        .replace(SHIPPED_B, f"server 127.0.0.1:{port_b}")
        .replace(SHIPPED_LISTEN, f"listen 127.0.0.1:{listen};")
    )
    (tmp / "mcplex.conf").write_text(conf)
    # As root the master hands requests to workers running as `user`; keep them the test user so
    # they can use the tmp dirs.  (Not root: the directive is ignored with a warning.)
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temps = "\n".join(
        f"    {kind}_temp_path {tmp / ('tmp-' + kind)};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = f"""# Rendered by tests/interop/test_scale_out.py around config/nginx/mcplex.conf.
worker_processes 1;
{user}
events {{ worker_connections 512; }}
http {{
{temps}
    include {tmp / 'mcplex.conf'};
    log_format mcplex '$request_method $request_uri $status sid=$mcplex_session '
                      'instance=$mcplex_instance group=$mcplex_upstream upstream=$upstream_addr';
    access_log {tmp / 'access.log'} mcplex;
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(main)
    return path


def nginx_argv(nginx: str, tmp: Path, conf: Path) -> list[str]:
    return [
        nginx, "-e", "stderr", "-p", str(tmp), "-c", str(conf),
        "-g", f"daemon off; pid {tmp / 'nginx.pid'};",
    ]


def scrape(stats_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics:\n{text}"
    return float(m.group(1))


@dataclass
class Client:
    name: str
    transport: str  # "http" or "sse"
    session: ClientSession | None = None
    ids: list[str] = field(default_factory=list)  # session ids seen (first = this session's)

    @property
    def sid(self) -> str:
        assert self.ids, f"{self.name}: no session id seen"
        return self.ids[0]

    @property
    def instance(self) -> str:
        return self.sid.split(".", 1)[0] if "." in self.sid else "?"


async def open_client(stack: AsyncExitStack, base: str, name: str, transport: str) -> Client:
    c = Client(name, transport)
    if transport == "http":

        async def on_response(resp: httpx2.Response) -> None:
            sid = resp.headers.get("mcp-session-id")
            if sid and sid not in c.ids:
                c.ids.append(sid)

        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(STEP_TIMEOUT_S, read=120), event_hooks={"response": [on_response]}
            )
        )
        read, write = await stack.enter_async_context(streamable_http_client(f"{base}/mcp", http_client=http))
    else:
        read, write = await stack.enter_async_context(
            sse_client(f"{base}/sse", timeout=STEP_TIMEOUT_S, sse_read_timeout=120, on_session_created=c.ids.append)
        )
    c.session = await stack.enter_async_context(ClientSession(read, write, read_timeout_seconds=STEP_TIMEOUT_S))
    init = await _step(f"{name}: initialize", c.session.initialize())
    assert init.server_info.name, init
    assert c.ids, f"{name}: the gateway's session id never reached the client"
    assert re.fullmatch(r"[ab]\.[0-9A-Za-z_-]+", c.sid), f"{name}: session id {c.sid!r} lacks an instance prefix"
    return c


async def full_session(c: Client) -> None:
    """Everything a client does in a session; every call must succeed."""
    s = c.session
    assert s is not None
    tools = await _step(f"{c.name}: tools/list", s.list_tools())
    names = {t.name for t in tools.tools}
    assert {"echo", "add", "slow"} <= names, f"{c.name}: {sorted(names)}"
    for i in range(3):
        msg = f"{c.name} says hello #{i}"
        res = await _step(f"{c.name}: echo #{i}", s.call_tool("echo", {"message": msg}))
        assert not res.is_error and msg in _text_of(res.content), (c.name, res)
        res = await _step(f"{c.name}: add #{i}", s.call_tool("add", {"a": i, "b": 40}))
        assert not res.is_error, (c.name, res)
        assert str(i + 40) in _text_of(res.content) or (res.structured_content or {}).get("result") == i + 40, res
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    res = await _step(
        f"{c.name}: slow", s.call_tool("slow", {"steps": 3, "delayMs": 40}, progress_callback=on_progress)
    )
    assert not res.is_error, (c.name, res)
    assert len(seen) >= 2 and seen == sorted(seen), f"{c.name}: progress through nginx: {seen}"


async def add_works(c: Client, a: int) -> None:
    assert c.session is not None
    res = await _step(f"{c.name}: add after b stopped", c.session.call_tool("add", {"a": a, "b": 1}))
    assert not res.is_error and str(a + 1) in _text_of(res.content), (c.name, res)


async def add_fails(c: Client) -> str:
    """The next call of a session whose instance is gone: must fail (error, or no answer)."""
    assert c.session is not None
    try:
        with anyio.fail_after(DEAD_CALL_TIMEOUT_S + 2):
            res = await c.session.call_tool("add", {"a": 1, "b": 1}, read_timeout_seconds=DEAD_CALL_TIMEOUT_S)
    except TimeoutError:
        return "timeout"
    except Exception as e:  # noqa: BLE001 - any error is the expected outcome
        return f"{type(e).__name__}: {e}"
    if res.is_error:
        return f"isError result: {_text_of(res.content)}"
    raise AssertionError(f"{c.name} (session {c.sid}) still answered after instance b stopped: {res}")


@pytest.mark.timeout(180)
def test_sessions_follow_their_instance_through_nginx(gateway, _server_pool, tmp_path):
    nginx = nginx_bin()
    stats = {"a": free_port(), "b": free_port()}
    gws = {
        i: gateway(
            {
                "mcp": {"targets": [demo_target()]},
                "config": {"instanceId": i, "statsAddr": f"127.0.0.1:{stats[i]}"},
            }
        )
        for i in ("a", "b")
    }
    ngx_dir = tmp_path / "nginx"
    ngx_dir.mkdir()
    listen = free_port()
    conf = render_nginx(ngx_dir, gws["a"].port, gws["b"].port, listen)
    check = subprocess.run(nginx_argv(nginx, ngx_dir, conf) + ["-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"nginx -t refused the rendered config:\n{check.stdout}{check.stderr}"
    front = _server_pool.start("nginx", nginx_argv(nginx, ngx_dir, conf), listen)
    base = str(front)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            # Sessions are opened one after another, so round-robin alternates within each transport.
            clients = [await open_client(stack, base, f"http-{n}", "http") for n in range(4)]
            clients += [await open_client(stack, base, f"sse-{n}", "sse") for n in range(4)]
            where = {c.name: c.sid for c in clients}
            for transport in ("http", "sse"):
                got = {c.instance for c in clients if c.transport == transport}
                assert got == {"a", "b"}, f"{transport} sessions did not land on both instances: {where}"

            async with anyio.create_task_group() as tg:
                for c in clients:
                    tg.start_soon(full_session, c)

            # Each instance counts exactly the sessions whose ids carry its prefix.
            for i in ("a", "b"):
                text = scrape(stats[i])
                mine = sum(1 for c in clients if c.instance == i)
                assert metric(text, "mcplex_sessions") == mine, (i, where, text)
                assert metric(text, "mcplex_sessions_started_total") == mine, (i, where, text)

            # Stop instance b.
            b = gws["b"].proc
            b.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                while b.poll() is None:
                    await anyio.sleep(0.05)
            assert b.returncode == 0, f"instance b exited {b.returncode} after SIGTERM:\n{gws['b'].log()}"

            outcomes: dict[str, str] = {}

            async def after(c: Client, n: int) -> None:
                if c.instance == "a":
                    await add_works(c, n)
                    outcomes[c.name] = "ok"
                else:
                    outcomes[c.name] = await add_fails(c)

            async with anyio.create_task_group() as tg:
                for n, c in enumerate(clients):
                    tg.start_soon(after, c, n)
            print("after stopping b:", outcomes)

            # New sessions through nginx work, on the instance that is left.
            fresh = [await open_client(stack, base, f"new-http-{n}", "http") for n in range(2)]
            fresh += [await open_client(stack, base, f"new-sse-{n}", "sse") for n in range(2)]
            assert {c.instance for c in fresh} == {"a"}, {c.name: c.sid for c in fresh}
            async with anyio.create_task_group() as tg:
                for c in fresh:
                    tg.start_soon(full_session, c)
            text = scrape(stats["a"])
            assert metric(text, "mcplex_sessions_started_total") == sum(
                1 for c in clients + fresh if c.instance == "a"
            ), text

    anyio.run(main)
    assert front.proc.poll() is None, f"nginx died:\n{front.log()}"


def _modern_post(url: str, rid: int, name: str, arguments: dict, extra: dict | None = None) -> tuple[int, dict]:
    """One 2026-07-28 tools/call, by hand (the test must choose which instance gets it)."""
    import json as _json

    params = {
        "name": name,
        "arguments": arguments,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        },
        **(extra or {}),
    }
    body = _json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}).encode()
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    req = urllib.request.Request(f"{url}/mcp", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=STEP_TIMEOUT_S) as r:
            return r.status, _json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _json.loads(e.read() or b"{}")


def _requests_served(stats_port: int, method: str) -> float:
    text = scrape(stats_port)
    pat = rf'^mcplex_requests_total\{{method="{re.escape(method)}",target="[^"]*",outcome="ok"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pat, text, re.M))


@pytest.mark.timeout(180)
def test_modern_requests_need_no_affinity(gateway, _server_pool, tmp_path):
    """Stateless (2026-07-28) requests through the same nginx, which round-robins them (they
    carry no session): one modern client is served by both instances. The exception is an
    input round waiting on a legacy child: its requestState names the instance holding it
    (both share requestStateKey, so each can read the other's), and a retry sent to the other
    instance is refused at once with that instance's name."""
    import urllib.error  # noqa: F401 - used by _modern_post

    from mcp import Client

    nginx = nginx_bin()
    stats = {"a": free_port(), "b": free_port()}
    key = "shared-input-round-key-" + "x" * 16
    gws = {
        i: gateway(
            {
                "mcp": {"targets": [demo_target()]},
                "config": {"instanceId": i, "statsAddr": f"127.0.0.1:{stats[i]}", "requestStateKey": key},
            }
        )
        for i in ("a", "b")
    }
    ngx_dir = tmp_path / "nginx"
    ngx_dir.mkdir()
    listen = free_port()
    conf = render_nginx(ngx_dir, gws["a"].port, gws["b"].port, listen)
    front = _server_pool.start("nginx", nginx_argv(nginx, ngx_dir, conf), listen)
    base = str(front)

    async def main() -> None:
        async with Client(f"{base}/mcp", mode="2026-07-28", read_timeout_seconds=STEP_TIMEOUT_S) as c:
            names = {t.name for t in (await _step("tools/list", c.list_tools())).tools}
            assert {"echo", "add"} <= names, names
            for i in range(8):
                res = await _step(f"add #{i}", c.call_tool("add", {"a": i, "b": 100}))
                assert _text_of(res.content) == str(i + 100), res

    anyio.run(main)
    served = {i: _requests_served(stats[i], "tools/call") for i in ("a", "b")}
    assert served["a"] >= 2 and served["b"] >= 2, f"round-robin should spread stateless calls: {served}"
    for i in ("a", "b"):
        assert metric(scrape(stats[i]), "mcplex_sessions") == 0, "stateless requests start no session"

    # An input round on instance a (the demo's elicitation tool asks its client).
    a, b = (f"http://127.0.0.1:{gws[i].port}" for i in ("a", "b"))
    status, first = _modern_post(a, 1, "test_elicitation", {"message": "Who?"})
    assert status == 200 and first["result"]["resultType"] == "input_required", first
    state = first["result"]["requestState"]
    (key_name,) = first["result"]["inputRequests"]
    answer = {"action": "accept", "content": {"username": "ada", "email": "ada@example.com"}}
    retry = {"requestState": state, "inputResponses": {key_name: answer}}
    # Sent to b: refused at once, naming a.
    status, wrong = _modern_post(b, 2, "test_elicitation", {"message": "Who?"}, retry)
    assert "error" in wrong and 'instance "a"' in wrong["error"]["message"], (status, wrong)
    # The same retry on a completes the call; the state is then used up.
    status, done = _modern_post(a, 3, "test_elicitation", {"message": "Who?"}, retry)
    assert status == 200 and "ada@example.com" in _text_of_raw(done), done
    status, again = _modern_post(a, 4, "test_elicitation", {"message": "Who?"}, retry)
    assert "error" in again, again
    assert front.proc.poll() is None, f"nginx died:\n{front.log()}"


def _text_of_raw(answer: dict) -> str:
    return "".join(c.get("text", "") for c in answer.get("result", {}).get("content", []))
