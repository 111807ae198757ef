"""Client-side helpers shared by the interop tests: bounded steps, SDK sessions over both
transports, and MCP Inspector's CLI."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import anyio
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import INSPECTOR_CLI_BUILD, NODE22

STEP_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30
T = TypeVar("T")


async def step(what: str, coro: Awaitable[T]) -> T:
    """Awaits one client step; a hang fails the test instead of blocking CI. Used *inside* a
    session: the SDK's transport contexts must not be entered in a cancel scope of ours."""
    try:
        with anyio.fail_after(STEP_TIMEOUT_S):
            return await coro
    except TimeoutError as e:
        raise AssertionError(f"{what}: no answer within {STEP_TIMEOUT_S:.0f} s") from e


def run_client(url: str, body: Callable[[ClientSession], Awaitable[None]], sse: bool = False, **session_kw: Any) -> None:
    """One Python SDK session through the gateway (streamable HTTP, or legacy SSE with
    `sse=True`): initializes, checks the gateway answered as one server, then runs `body`."""

    async def main() -> None:
        transport = (
            sse_client(url, timeout=STEP_TIMEOUT_S, sse_read_timeout=60) if sse else streamable_http_client(url)
        )
        async with transport as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, read_timeout_seconds=STEP_TIMEOUT_S, **session_kw) as session:
                init = await step("initialize", session.initialize())
                # One merged server: the gateway's own identity, not one of the targets'.
                assert init.server_info.name == "mcplex", init.server_info
                assert init.capabilities.tools is not None, init.capabilities
                await body(session)

    anyio.run(main)


def text_of(content: list[Any]) -> str:
    return "\n".join(c.text for c in content if getattr(c, "type", None) == "text")


async def all_tools(s: ClientSession) -> list[types.Tool]:
    """Every tool, following nextCursor."""
    out: list[types.Tool] = []
    cursor = None
    for _ in range(50):
        page = await step(
            "tools/list", s.list_tools(params=types.PaginatedRequestParams(cursor=cursor)) if cursor else s.list_tools()
        )
        out.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return out
    raise AssertionError("tools/list still paging after 50 pages")


def by_target(names: Iterable[str], targets: Iterable[str]) -> dict[str, list[str]]:
    """Tool names grouped by their target prefix; asserts every name has a known one."""
    groups: dict[str, list[str]] = {t: [] for t in targets}
    for n in names:
        target, sep, rest = n.partition("_")
        assert sep and target in groups and rest, f"tool {n!r} has no known target prefix"
        groups[target].append(rest)
    return groups


def inspector_cli(url: str, *args: str, transport: str = "http") -> Any:
    """MCP Inspector's CLI mode, one session per call, bounded by a timeout; its JSON output."""
    argv = [str(NODE22), "index.js", url, "--transport", transport, *args]
    what = f"inspector-cli ({transport}) {' '.join(args)}"
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
        raise AssertionError(f"{what} hung for {CALL_TIMEOUT_S} s\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}") from e
    assert p.returncode == 0, f"{what} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{what} printed no JSON:\n{p.stdout}\n{p.stderr}") from e
