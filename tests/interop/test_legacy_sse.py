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

import os
import time
from typing import Any

from mcp import ClientSession

from conftest import demo_target, everything_target, single_target_config
from mcp_client import inspector_cli, run_client, step as _step, text_of as _text_of

# How long the gateway may take to stop a session's children once its stream closed
# (it closes their stdin, waits about 1 s, then kills).
CHILD_EXIT_S = 10.0


def multiplexed() -> dict[str, Any]:
    """Shorthand config with two targets (prefixed names): the demo and server-everything."""
    return {"mcp": {"targets": [demo_target("demo"), everything_target("everything")]}}


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

    run_client(f"{gw}/sse", body, sse=True)
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

    run_client(f"{gw}/sse", body, sse=True)
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

    run_client(f"{gw}/sse", again, sse=True)
    _wait_no_children(gw.proc.pid)


# ---------------------------------------------------------------- Inspector CLI


def test_inspector_cli_sse_single_target(gateway):
    gw = gateway(single_target_config(demo_target()))
    url = f"{gw}/sse"
    out = inspector_cli(url, "--method", "tools/list", transport="sse")
    names = [t["name"] for t in out["tools"]]
    assert {"echo", "add", "slow"} <= set(names), names

    out = inspector_cli(url, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi-sse", transport="sse")
    assert not out.get("isError"), out
    assert [c["text"] for c in out["content"] if c["type"] == "text"] == ["hi-sse"], out

    out = inspector_cli(url, "--method", "resources/read", "--uri", "demo://readme", transport="sse")
    assert out["contents"] and out["contents"][0]["uri"] == "demo://readme", out
    # Each CLI call was one session; all of them have ended with their streams.
    _wait_no_children(gw.proc.pid)


def test_inspector_cli_sse_multiplexed(gateway):
    gw = gateway(multiplexed())
    url = f"{gw}/sse"
    out = inspector_cli(url, "--method", "tools/list", transport="sse")
    names = {t["name"] for t in out["tools"]}
    assert {"demo_echo", "demo_add", "everything_echo"} <= names, sorted(names)

    out = inspector_cli(
        url, "--method", "tools/call", "--tool-name", "everything_echo", "--tool-arg", "message=from-inspector", transport="sse")
    assert not out.get("isError"), out
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert any("from-inspector" in t for t in texts), out

    out = inspector_cli(url, "--method", "tools/call", "--tool-name", "demo_add", "--tool-arg", "a=2", "b=40", transport="sse")
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert texts == ["42"], out
    _wait_no_children(gw.proc.pid)
