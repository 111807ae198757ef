"""Upstreams of the 2026-07-28 revision behind the gateway, for clients of either era.

- modern_server.mjs: a modern-only server on the TS SDK 2.4.0 (`legacy: 'reject'`: a legacy
  `initialize` gets -32022), over stdio and over streamable HTTP;
- mcp-server-time 2026.10.19 (PyPI): a real dual-era stdio server.

The Python SDK (mcp 2.3.0) talks to the gateway in `legacy`, `2026-07-28` and `auto` modes.
The gateway finds each target's era with a server/discover probe, builds the request envelope
for legacy clients from their `initialize` (what `whoami` echoes back), and turns the modern
server's input_required rounds into real sampling/elicitation requests for a legacy client
(answered by the SDK's callbacks), or passes them through to a modern one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types

from conftest import NODE22, demo_target, free_port, mcp_target
from mcp_client import STEP_TIMEOUT_S, step, text_of

MODERN_SERVER = Path(__file__).parent / "modern_server.mjs"
MODES = ["legacy", "2026-07-28", "auto"]


def modern_stdio_target(name: str) -> dict[str, Any]:
    return {"name": name, "stdio": {"cmd": str(NODE22), "args": [str(MODERN_SERVER), "stdio"], "env": {}}}


def time_target(name: str = "time") -> dict[str, Any]:
    args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
    return {"name": name, "stdio": {"cmd": sys.executable, "args": args, "env": {}}}


def _config(*targets: dict[str, Any]) -> dict[str, Any]:
    return {"binds": [{"listeners": [{"routes": [{"backends": [{"mcp": {"targets": list(targets)}}]}]}]}]}


@pytest.fixture
def modern_http(_server_pool):
    def start():
        port = free_port()
        return _server_pool.start("modern-server", [str(NODE22), str(MODERN_SERVER), "http", str(port)], port)

    return start


class Asked:
    def __init__(self) -> None:
        self.elicited: list[str] = []
        self.sampled: list[str] = []

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicited.append(getattr(params, "message", ""))
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = " ".join(getattr(m.content, "text", "") or "" for m in params.messages)
        self.sampled.append(prompt)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"re:{prompt}"), model="test-model"
        )


def _run(url: str, mode: str, body, asked: Asked | None = None) -> None:
    asked = asked or Asked()

    async def main() -> None:
        async with Client(
            url,
            mode=mode,
            read_timeout_seconds=STEP_TIMEOUT_S,
            elicitation_callback=asked.elicitation,
            sampling_callback=asked.sampling,
        ) as c:
            assert (c.protocol_version == "2026-07-28") == (mode != "legacy"), (mode, c.protocol_version)
            await body(c)

    anyio.run(main)


async def _exercise_modern_server(c: Client, p: str, mode: str, asked: Asked) -> None:
    names = {t.name for t in (await step("tools/list", c.list_tools())).tools}
    assert {f"{p}echo", f"{p}add", f"{p}ask_name", f"{p}ask_llm"} <= names, sorted(names)
    r = await step("add", c.call_tool(f"{p}add", {"a": 20, "b": 22}))
    assert text_of(r.content) == "42", r
    # The modern server asks for input: a legacy client is asked for real, a modern one gets
    # the round; either way the SDK's callbacks answer and the call completes.
    r = await step("ask_name", c.call_tool(f"{p}ask_name", {}))
    assert not r.is_error and text_of(r.content) == "Hello, Ada!", r
    r = await step("ask_llm", c.call_tool(f"{p}ask_llm", {"prompt": f"from {mode}"}))
    assert text_of(r.content) == f"LLM said: re:from {mode}", r
    assert asked.elicited == ["What is your name?"] and asked.sampled == [f"from {mode}"], vars(asked)
    # What the server learnt of its client: a legacy client's initialize, carried over.
    who = json.loads(text_of((await step("whoami", c.call_tool(f"{p}whoami", {}))).content))
    assert who["clientInfo"]["name"] == "mcp", who
    assert "sampling" in who["clientCapabilities"] and "elicitation" in who["clientCapabilities"], who
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    r = await step("slow", c.call_tool(f"{p}slow", {"steps": 3}, progress_callback=on_progress))
    assert text_of(r.content) == "done after 3 steps" and progress == [1, 2, 3], (r, progress)
    res = await step("resources/list", c.list_resources())
    uri = next(str(x.uri) for x in res.resources if str(x.uri).endswith("greeting"))
    read = await step("resources/read", c.read_resource(uri))
    assert "modern era" in read.contents[0].text, read
    prompt = await step("prompts/get", c.get_prompt(f"{p}greet", {"name": "Ada"}))
    assert "Ada" in prompt.messages[0].content.text, prompt


@pytest.mark.parametrize("mode", MODES)
def test_modern_stdio_server_alone(gateway, mode):
    gw = gateway(_config(modern_stdio_target("modern")))
    asked = Asked()
    _run(gw.mcp, mode, lambda c: _exercise_modern_server(c, "", mode, asked), asked)
    assert "target modern speaks 2026-07-28" in gw.log(), gw.log()


@pytest.mark.parametrize("mode", MODES)
def test_modern_http_server_multiplexed_with_a_legacy_one(gateway, modern_http, mode):
    upstream = modern_http()
    gw = gateway(_config(mcp_target("mh", upstream.mcp), demo_target("demo")))
    asked = Asked()

    async def body(c: Client) -> None:
        await _exercise_modern_server(c, "mh_", mode, asked)
        r = await step("demo_add", c.call_tool("demo_add", {"a": 1, "b": 2}))
        assert text_of(r.content) == "3", r
        r = await step("demo_test_sampling", c.call_tool("demo_test_sampling", {"prompt": "legacy side"}))
        assert text_of(r.content) == "LLM response: re:legacy side", r

    _run(gw.mcp, mode, body, asked)


@pytest.mark.parametrize("mode", MODES)
def test_dual_era_time_server(gateway, mode):
    gw = gateway(_config(time_target()))

    async def body(c: Client) -> None:
        names = {t.name for t in (await step("tools/list", c.list_tools())).tools}
        assert {"get_current_time", "convert_time"} <= names, names
        args = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        r = await step("convert_time", c.call_tool("convert_time", args))
        out = json.loads(text_of(r.content))
        assert out["target"]["datetime"].startswith(out["source"]["datetime"][:10]), out
        assert out["target"]["datetime"][11:16] == "21:00", out

    _run(gw.mcp, mode, body)
    assert "target time speaks 2026-07-28" in gw.log(), gw.log()


def test_era_legacy_skips_the_probe(gateway):
    """`era: legacy` on the dual-era server: no probe, the plain initialize handshake."""
    gw = gateway(_config({**time_target(), "era": "legacy"}))

    async def body(c: Client) -> None:
        names = {t.name for t in (await step("tools/list", c.list_tools())).tools}
        assert "get_current_time" in names, names

    _run(gw.mcp, "legacy", body)
    assert "speaks 2026-07-28" not in gw.log(), gw.log()


@pytest.mark.parametrize("transport", ["stdio", "mcp"])
def test_legacy_client_hears_a_modern_servers_list_changes(gateway, demo_http, transport):
    """A 2026-07-28 server tells of changes only on a subscriptions/listen stream: the gateway
    holds one on the dual-era demo, and its list_changed reaches a legacy client's session."""
    if transport == "stdio":
        target = demo_target("demo", args=["--dual-era"])
    else:
        target = mcp_target("demo", demo_http("--dual-era").mcp)
    gw = gateway(_config(target))
    heard: list[str] = []
    changed = anyio.Event()

    async def on_message(m: Any) -> None:
        root = getattr(m, "root", m)
        method = getattr(root, "method", "")
        heard.append(method or type(root).__name__)
        if method == "notifications/tools/list_changed":
            changed.set()

    async def main() -> None:
        async with Client(gw.mcp, mode="legacy", read_timeout_seconds=STEP_TIMEOUT_S, message_handler=on_message) as c:
            await step("tools/list", c.list_tools())
            r = await step("trigger", c.call_tool("test_trigger_tool_change", {}))
            assert "changed" in text_of(r.content), r
            with anyio.fail_after(10):
                await changed.wait()

    try:
        anyio.run(main)
    except TimeoutError:
        pytest.fail(f"no tools/list_changed reached the legacy client; it heard {heard}\n{gw.log()[-3000:]}")
    assert "target demo speaks 2026-07-28" in gw.log(), gw.log()
    assert "listen failed" not in gw.log(), gw.log()


def test_an_http_targets_change_reaches_a_listen_once_with_several_pools(gateway, demo_http):
    """With `pool: {max: 2}` both pools hold a listen to the same HTTP server; its change must
    reach a client's subscriptions/listen once, not once per pool."""
    import threading
    import time

    import httpx2
    from test_front_door import modern, post

    cfg = _config(mcp_target("demo", demo_http("--dual-era").mcp))
    cfg["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]["pool"] = {"max": 2}
    gw = gateway(cfg)
    assert post(gw.mcp, modern("tools/list")).status_code == 200
    # A slow call keeps the first pool busy, so the next request opens a second one.
    slow = threading.Thread(target=post, args=(gw.mcp, modern("tools/call", {"name": "slow", "arguments": {"steps": 20, "delayMs": 100}})))
    slow.start()
    time.sleep(0.3)
    assert post(gw.mcp, modern("tools/list")).status_code == 200
    deadline = time.monotonic() + 10
    while gw.log().count("pool ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.log().count("pool ready") == 2, gw.log()
    slow.join(timeout=10)
    time.sleep(0.5)  # both pools' upstream listens open

    heard: list[dict] = []

    def listen() -> None:
        body = modern("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, rid=9)
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "subscriptions/listen"}  # fmt: skip
        try:
            with httpx2.stream("POST", gw.mcp, json=body, headers=headers, timeout=8) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        heard.append(json.loads(line[5:]))
        except httpx2.TimeoutException:
            pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(0.5)
    r = post(gw.mcp, modern("tools/call", {"name": "test_trigger_tool_change", "arguments": {}}))
    assert r.status_code == 200, r.text
    t.join(timeout=12)
    changes = [m for m in heard if m.get("method") == "notifications/tools/list_changed"]
    assert len(changes) == 1, f"{len(changes)} list_changed for one change: {heard}\n{gw.log()[-3000:]}"
