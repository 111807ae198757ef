"""Multiplexing (issue #3) as third-party clients see it: one gateway over THREE stdio targets,
the demo (`demo`), @modelcontextprotocol/server-everything (`everything`) and a second demo
(`notes`), served as one MCP server with prefixed names (`<target>_<tool>`, `<target>+<uri>`).

Clients: the official Python SDK (mcp 2.x, with sampling, elicitation and progress callbacks)
and the MCP Inspector CLI.  Timeouts as in test_python_sdk.py / test_inspector_cli.py.
"""

from __future__ import annotations

from typing import Any

import mcp.types as types
from mcp import ClientSession, MCPError

from conftest import demo_target, everything_target
from mcp_client import all_tools as _all_tools, by_target, inspector_cli as inspector, run_client as _run_client, step as _step, text_of as _text_of

TARGETS = ("demo", "everything", "notes")


def three_targets() -> dict[str, Any]:
    """Shorthand config with the three targets (default prefixMode: conditional -> prefixed)."""
    return {"mcp": {"targets": [demo_target("demo"), everything_target("everything"), demo_target("notes")]}}


def test_sdk_sees_three_targets_as_one_server(gateway):
    gw = gateway(three_targets())

    async def body(s: ClientSession) -> None:
        names = [t.name for t in await _all_tools(s)]
        assert len(names) == len(set(names)), f"a tool is listed twice: {sorted(names)}"
        groups = by_target(names, TARGETS)
        for target in TARGETS:
            assert "echo" in groups[target], f"{target}_echo missing: {sorted(names)}"
        assert {"add", "slow", "fail"} <= set(groups["demo"]), groups["demo"]
        assert sorted(groups["demo"]) == sorted(groups["notes"]), "the two demos offer the same tools"
        assert "get-sum" in groups["everything"], groups["everything"]
        assert "add" not in groups["everything"], groups["everything"]

        msg = "hello from three targets \u00e9 \U0001f600"
        res = await _step("tools/call everything_echo", s.call_tool("everything_echo", {"message": msg}))
        assert not res.is_error, res
        assert msg in _text_of(res.content), res.content

        res = await _step("tools/call demo_add", s.call_tool("demo_add", {"a": 19, "b": 23}))
        assert not res.is_error, res
        assert _text_of(res.content) == "42", res.content

        res = await _step("tools/call everything_get-sum", s.call_tool("everything_get-sum", {"a": 2, "b": 3}))
        assert not res.is_error, res
        assert "5" in _text_of(res.content), res.content

        res = await _step("tools/call notes_echo", s.call_tool("notes_echo", {"message": "to notes"}))
        assert _text_of(res.content) == "to notes", res.content

        # Resources: namespaced URIs, and the read answers with the namespaced URI.
        resources = await _step("resources/list", s.list_resources())
        uris = [str(r.uri) for r in resources.resources]
        for want in ("demo+demo://readme", "notes+demo://readme"):
            assert want in uris, f"{want} missing: {uris}"
        assert any(u.startswith("everything+") for u in uris), uris
        read = await _step("resources/read demo+demo://readme", s.read_resource("demo+demo://readme"))
        assert read.contents, read
        assert str(read.contents[0].uri) == "demo+demo://readme", read.contents[0]
        assert "mcplex-demo" in (getattr(read.contents[0], "text", "") or ""), read.contents[0]

        # Prompts: prefixed names from all three.
        prompts = await _step("prompts/list", s.list_prompts())
        pnames = {p.name for p in prompts.prompts}
        for want in ("demo_greet", "notes_greet", "everything_args-prompt"):
            assert want in pnames, f"{want} missing: {sorted(pnames)}"
        got = await _step("prompts/get demo_greet", s.get_prompt("demo_greet", {"name": "Ada"}))
        texts = " ".join(getattr(m.content, "text", "") or "" for m in got.messages)
        assert "Please greet Ada warmly." in texts, got

        # Unknown target prefix: a JSON-RPC error, and the session goes on.
        try:
            res = await _step("tools/call nobody_echo", s.call_tool("nobody_echo", {"message": "x"}))
        except MCPError as e:  # the SDK raises on a JSON-RPC error
            assert e.code == -32602, (e.code, e.message)
            assert "nobody" in e.message, e.message
        else:
            raise AssertionError(f"nobody_echo was answered: {res}")

        # Progress through the multiplexer, with the SDK's own token.
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        res = await _step(
            "tools/call demo_slow",
            s.call_tool("demo_slow", {"steps": 5, "delayMs": 60}, progress_callback=on_progress),
        )
        assert not res.is_error, res
        assert _text_of(res.content) == "done after 5 steps", res.content
        assert len(seen) >= 3, f"expected >= 3 progress notifications, got {seen}"
        assert all(a < b for a, b in zip(seen, seen[1:])), f"progress not increasing: {seen}"

    _run_client(gw.mcp, body)


def test_sdk_sampling_and_elicitation_reach_the_client_from_each_target(gateway):
    gw = gateway(three_targets())
    sampled: list[str] = []
    elicited: list[str] = []

    async def on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = " ".join(getattr(m.content, "text", "") or "" for m in params.messages)
        sampled.append(prompt)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled[{prompt}]"),
            model="test-model",
        )

    async def on_elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(getattr(params, "message", ""))
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def body(s: ClientSession) -> None:
        res = await _step(
            "tools/call demo_test_sampling", s.call_tool("demo_test_sampling", {"prompt": "from demo"})
        )
        assert not res.is_error, res
        assert _text_of(res.content) == "LLM response: sampled[from demo]", res.content

        res = await _step(
            "tools/call notes_test_sampling", s.call_tool("notes_test_sampling", {"prompt": "from notes"})
        )
        assert not res.is_error, res
        assert _text_of(res.content) == "LLM response: sampled[from notes]", res.content

        res = await _step(
            "tools/call everything_trigger-sampling-request",
            s.call_tool("everything_trigger-sampling-request", {"prompt": "from everything"}),
        )
        assert not res.is_error, res
        assert "from everything" in _text_of(res.content), res.content
        assert "sampled[" in _text_of(res.content), res.content

        res = await _step(
            "tools/call demo_test_elicitation",
            s.call_tool("demo_test_elicitation", {"message": "Who are you?"}),
        )
        assert not res.is_error, res
        text = _text_of(res.content)
        assert "action=accept" in text and "ada@example.com" in text, text

        assert sampled == ["from demo", "from notes", sampled[2]], sampled
        assert "from everything" in sampled[2], sampled
        assert elicited == ["Who are you?"], elicited

    _run_client(gw.mcp, body, sampling_callback=on_sampling, elicitation_callback=on_elicitation)


def test_inspector_cli_lists_all_three_targets(gateway):
    gw = gateway(three_targets())
    out = inspector(gw.mcp, "--method", "tools/list")
    names = [t["name"] for t in out["tools"]]
    assert "nextCursor" not in out or not out["nextCursor"], out.get("nextCursor")
    groups = by_target(names, TARGETS)
    for target in TARGETS:
        assert "echo" in groups[target], f"{target}_echo missing: {sorted(names)}"
    assert "get-sum" in groups["everything"], groups["everything"]
    echo = next(t for t in out["tools"] if t["name"] == "everything_echo")
    assert "message" in echo["inputSchema"].get("properties", {}), echo


def test_inspector_cli_calls_everything_echo(gateway):
    gw = gateway(three_targets())
    out = inspector(gw.mcp, "--method", "tools/call", "--tool-name", "everything_echo", "--tool-arg", "message=hi")
    assert not out.get("isError"), out
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert texts == ["Echo: hi"], out

    out = inspector(gw.mcp, "--method", "resources/read", "--uri", "notes+demo://readme")
    assert out["contents"][0]["uri"] == "notes+demo://readme", out
