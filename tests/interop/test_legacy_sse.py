"""The legacy HTTP+SSE transport (MCP 2024-11-05) served by the gateway, as real clients use it.

`GET /sse` opens a session; its first event (`endpoint`) names the URL to POST messages to,
and every answer, notification and server-to-client request arrives on that stream.  The
session (and its stdio children) ends when the client closes the stream.

Clients: the official Python SDK's `sse_client` (mcp 2.x) and the MCP Inspector CLI with
`--transport sse`.  Each step of the Python client runs under anyio.fail_after *inside* the
session (the SDK's transport contexts must not be entered inside a cancel scope of our own);
Inspector calls are bounded by subprocess timeouts; pytest-timeout bounds each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Awaitable, Callable, TypeVar

import anyio
from mcp import ClientSession
from mcp.client.sse import sse_client

from conftest import INSPECTOR_CLI_BUILD, NODE22, demo_target, everything_target, single_target_config

STEP_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30
# How long the gateway may take to stop a session's children once its stream closed
# (it closes their stdin, waits about 1 s, then kills).
CHILD_EXIT_S = 10.0
T = TypeVar("T")


def multiplexed() -> dict[str, Any]:
    """Shorthand config with two targets (prefixed names): the demo and server-everything."""
    return {"mcp": {"targets": [demo_target("demo"), everything_target("everything")]}}


async def _step(what: str, coro: Awaitable[T]) -> T:
    try:
        with anyio.fail_after(STEP_TIMEOUT_S):
            return await coro
    except TimeoutError as e:
        raise AssertionError(f"{what}: no answer within {STEP_TIMEOUT_S:.0f} s") from e


def _run_sse_client(url: str, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with sse_client(url, timeout=STEP_TIMEOUT_S, sse_read_timeout=60) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=STEP_TIMEOUT_S) as session:
                init = await _step("initialize", session.initialize())
                assert init.server_info.name, init
                await body(session)

    anyio.run(main)


def _text_of(content: list[Any]) -> str:
    return "\n".join(c.text for c in content if getattr(c, "type", None) == "text")


# ---------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    """Live (non-zombie) child pids of pid, from /proc/<pid>/task/*/children."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return sorted(p for p in out if _state(p) not in (None, "Z"))


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _wait_no_children(gw_pid: int, limit: float = CHILD_EXIT_S) -> None:
    deadline = time.monotonic() + limit
    while True:
        kids = _children(gw_pid)
        if not kids:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the gateway's stdio children outlived the closed SSE stream by {limit:.0f} s: "
                + "; ".join(f"{p} {_cmdline(p)}" for p in kids)
            )
        time.sleep(0.05)


# ---------------------------------------------------------------- Python SDK


def test_python_sdk_sse_single_target(gateway):
    gw = gateway(single_target_config(demo_target()))

    async def body(s: ClientSession) -> None:
        tools = await _step("tools/list", s.list_tools())
        names = {t.name for t in tools.tools}
        assert {"echo", "add", "slow"} <= names, sorted(names)

        msg = "hello over legacy SSE \u00e9 \U0001f600"
        res = await _step("tools/call echo", s.call_tool("echo", {"message": msg}))
        assert not res.is_error, res
        assert _text_of(res.content) == msg, res.content

        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        steps = 4
        res = await _step(
            "tools/call slow",
            s.call_tool("slow", {"steps": steps, "delayMs": 50}, progress_callback=on_progress),
        )
        assert not res.is_error, res
        assert len(seen) >= 3, f"expected >= 3 progress notifications for {steps} steps, got {seen}"
        assert all(a < b for a, b in zip(seen, seen[1:])), f"progress not increasing: {seen}"

        res = await _step("tools/call add", s.call_tool("add", {"a": 40, "b": 2}))
        assert "42" in _text_of(res.content), res

    _run_sse_client(f"{gw}/sse", body)
    _wait_no_children(gw.proc.pid)


def test_python_sdk_sse_multiplexed_and_children_end_with_stream(gateway):
    gw = gateway(multiplexed())
    during: list[list[int]] = []

    async def body(s: ClientSession) -> None:
        tools = await _step("tools/list", s.list_tools())
        names = {t.name for t in tools.tools}
        assert {"demo_echo", "demo_slow", "everything_echo"} <= names, sorted(names)
        assert "echo" not in names, sorted(names)

        res = await _step(
            "tools/call everything_echo", s.call_tool("everything_echo", {"message": "via everything"})
        )
        assert not res.is_error, res
        assert "via everything" in _text_of(res.content), res.content

        res = await _step("tools/call demo_echo", s.call_tool("demo_echo", {"message": "via demo"}))
        assert _text_of(res.content) == "via demo", res.content
        # One child per stdio target while the session lives.
        during.append(_children(gw.proc.pid))

    _run_sse_client(f"{gw}/sse", body)
    assert len(during) == 1 and len(during[0]) == 2, (
        f"expected 2 stdio children during the session, saw {[(p, _cmdline(p)) for p in during[0]]}"
    )
    # The client closed its stream: the session ends and both children are stopped.
    _wait_no_children(gw.proc.pid)
    for pid in during[0]:
        assert _state(pid) in (None, "Z"), f"child {pid} ({_cmdline(pid)}) still running"

    # The gateway serves a new SSE session afterwards.
    async def again(s: ClientSession) -> None:
        res = await _step("tools/call demo_add", s.call_tool("demo_add", {"a": 1, "b": 2}))
        assert "3" in _text_of(res.content), res

    _run_sse_client(f"{gw}/sse", again)
    _wait_no_children(gw.proc.pid)


# ---------------------------------------------------------------- Inspector CLI


def inspector_sse(url: str, *args: str) -> Any:
    argv = [str(NODE22), "index.js", url, "--transport", "sse", *args]
    try:
        p = subprocess.run(
            argv,
            cwd=INSPECTOR_CLI_BUILD,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"inspector-cli (sse) {' '.join(args)} hung for {CALL_TIMEOUT_S} s\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from e
    assert p.returncode == 0, (
        f"inspector-cli (sse) {' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    )
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"inspector-cli (sse) {' '.join(args)} printed no JSON:\n{p.stdout}\n{p.stderr}") from e


def test_inspector_cli_sse_single_target(gateway):
    gw = gateway(single_target_config(demo_target()))
    url = f"{gw}/sse"
    out = inspector_sse(url, "--method", "tools/list")
    names = [t["name"] for t in out["tools"]]
    assert {"echo", "add", "slow"} <= set(names), names

    out = inspector_sse(url, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi-sse")
    assert not out.get("isError"), out
    assert [c["text"] for c in out["content"] if c["type"] == "text"] == ["hi-sse"], out

    out = inspector_sse(url, "--method", "resources/read", "--uri", "demo://readme")
    assert out["contents"] and out["contents"][0]["uri"] == "demo://readme", out
    # Each CLI call was one session; all of them have ended with their streams.
    _wait_no_children(gw.proc.pid)


def test_inspector_cli_sse_multiplexed(gateway):
    gw = gateway(multiplexed())
    url = f"{gw}/sse"
    out = inspector_sse(url, "--method", "tools/list")
    names = {t["name"] for t in out["tools"]}
    assert {"demo_echo", "demo_add", "everything_echo"} <= names, sorted(names)

    out = inspector_sse(
        url, "--method", "tools/call", "--tool-name", "everything_echo", "--tool-arg", "message=from-inspector"
    )
    assert not out.get("isError"), out
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert any("from-inspector" in t for t in texts), out

    out = inspector_sse(url, "--method", "tools/call", "--tool-name", "demo_add", "--tool-arg", "a=2", "b=40")
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert texts == ["42"], out
    _wait_no_children(gw.proc.pid)
