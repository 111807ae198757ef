"""The official Python MCP SDK (PyPI `mcp`, 2.x) as a client of the gateway over streamable HTTP.

Each test drives one client session inside anyio.run.  Timeouts: every request has the
session's read timeout, and each step runs under anyio.fail_after *inside* the session
(the SDK's transport contexts must not be entered inside a cancel scope of our own);
pytest-timeout bounds the whole test.
"""

from __future__ import annotations


from mcp import ClientSession

from conftest import demo_target, everything_target, single_target_config
from mcp_client import run_client as _run_client, step as _step, text_of as _text_of



def test_everything_through_gateway(gateway):
    gw = gateway(single_target_config(everything_target()))

    async def body(s: ClientSession) -> None:
        tools = await _step("tools/list", s.list_tools())
        names = {t.name for t in tools.tools}
        assert "echo" in names, f"echo missing from tools/list: {sorted(names)}"

        msg = "hello from mcplex \u00e9\u00e8 \U0001f600"
        res = await _step("tools/call echo", s.call_tool("echo", {"message": msg}))
        assert not res.is_error, res
        assert msg in _text_of(res.content), res.content

        resources = await _step("resources/list", s.list_resources())
        assert resources.resources, "resources/list is empty"
        uri = str(resources.resources[0].uri)
        read = await _step(f"resources/read {uri}", s.read_resource(uri))
        assert read.contents, read
        first = read.contents[0]
        assert str(first.uri) == uri, (first.uri, uri)
        text = getattr(first, "text", None)
        blob = getattr(first, "blob", None)
        assert (text or blob), f"resource {uri} read back empty: {first}"

        prompts = await _step("prompts/list", s.list_prompts())
        by_name = {p.name: p for p in prompts.prompts}
        assert "args-prompt" in by_name, f"args-prompt missing: {sorted(by_name)}"
        arg_names = {a.name for a in by_name["args-prompt"].arguments or []}
        assert "city" in arg_names, by_name["args-prompt"]
        got = await _step(
            "prompts/get args-prompt", s.get_prompt("args-prompt", {"city": "Reykjavik", "state": "Hofudborgarsvaedid"})
        )
        assert got.messages, got
        texts = " ".join(getattr(m.content, "text", "") or "" for m in got.messages)
        assert "Reykjavik" in texts, texts

    _run_client(gw.mcp, body)


def test_demo_add_and_progress_through_gateway(gateway):
    gw = gateway(single_target_config(demo_target()))

    async def body(s: ClientSession) -> None:
        tools = await _step("tools/list", s.list_tools())
        names = {t.name for t in tools.tools}
        assert {"echo", "add", "slow"} <= names, sorted(names)

        res = await _step("tools/call add", s.call_tool("add", {"a": 19, "b": 23}))
        assert not res.is_error, res
        assert "42" in _text_of(res.content) or (res.structured_content or {}).get("result") == 42, res

        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        steps = 5
        res = await _step(
            "tools/call slow",
            s.call_tool("slow", {"steps": steps, "delayMs": 60}, progress_callback=on_progress),
        )
        assert not res.is_error, res
        assert len(seen) >= 3, f"expected >= 3 progress notifications for {steps} steps, got {seen}"
        values = [p for p, _, _ in seen]
        assert all(a < b for a, b in zip(values, values[1:])), f"progress not increasing: {values}"

        # The session still works after the progress stream.
        res = await _step("tools/call echo", s.call_tool("echo", {"message": "after slow"}))
        assert "after slow" in _text_of(res.content), res

    _run_client(gw.mcp, body)
