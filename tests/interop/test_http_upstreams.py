"""HTTP upstreams (issue #4) as third-party clients see them: one gateway over THREE targets of
the three kinds, served as one MCP server with prefixed names:

- `streamable`: @modelcontextprotocol/server-everything in `streamableHttp` mode (an `mcp:` target),
- `legacy`: server-everything in `sse` mode, the 2024-11-05 HTTP+SSE transport (an `sse:` target),
- `demo`: the project's demo over stdio.

Both server-everything instances are forced onto 127.0.0.1 by the listen_localhost.cjs preload
(checked below).  Clients: the official Python SDK (mcp 2.x, with a sampling callback) and the
MCP Inspector CLI.  Timeouts as in test_python_sdk.py / test_inspector_cli.py.
"""

from __future__ import annotations

from typing import Any

import mcp.types as types
import pytest
from mcp import ClientSession

from conftest import LOOPBACK_V4_HEX, demo_target, listening_addresses, mcp_target, sse_target
from mcp_client import all_tools as _all_tools, by_target, inspector_cli as inspector, run_client as _run_client, step as _step, text_of as _text_of

TARGETS = ("streamable", "legacy", "demo")
HTTP_TARGETS = ("streamable", "legacy")


@pytest.fixture
def three_kinds(gateway, everything_http):
    """A gateway over a streamable-HTTP, a legacy-SSE and a stdio target."""
    streamable = everything_http("streamableHttp")
    legacy = everything_http("sse")
    for srv in (streamable, legacy):
        addrs = listening_addresses(srv.port)
        assert addrs == {LOOPBACK_V4_HEX}, (
            f"{srv.name} must listen on 127.0.0.1 only, listens on {addrs} (hex, /proc/net/tcp*)"
        )
    cfg = {
        "mcp": {
            "targets": [
                mcp_target("streamable", streamable.mcp),
                sse_target("legacy", f"{legacy}/sse"),
                demo_target("demo"),
            ]
        }
    }
    return gateway(cfg)


async def _on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = " ".join(getattr(m.content, "text", "") or "" for m in params.messages)
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled[{prompt}]"),
        model="test-model",
    )


def test_sdk_lists_and_calls_every_kind_of_target(three_kinds):
    async def body(s: ClientSession) -> None:
        names = [t.name for t in await _all_tools(s)]
        assert len(names) == len(set(names)), f"a tool is listed twice: {sorted(names)}"
        groups = by_target(names, TARGETS)
        for target in TARGETS:
            assert "echo" in groups[target], f"{target}_echo missing: {sorted(names)}"
        for target in HTTP_TARGETS:
            assert "get-sum" in groups[target], f"{target}_get-sum missing: {sorted(groups[target])}"
        assert {"add", "slow"} <= set(groups["demo"]), groups["demo"]

        for target in TARGETS:
            msg = f"hello {target} \u00e9 \U0001f600"
            res = await _step(f"tools/call {target}_echo", s.call_tool(f"{target}_echo", {"message": msg}))
            assert not res.is_error, res
            assert msg in _text_of(res.content), (target, res.content)

        for target in HTTP_TARGETS:
            res = await _step(f"{target}_get-sum", s.call_tool(f"{target}_get-sum", {"a": 20, "b": 22}))
            assert not res.is_error, res
            assert "42" in _text_of(res.content), (target, res.content)

        # Resources of both HTTP targets, read back under their namespaced URIs.
        resources = await _step("resources/list", s.list_resources())
        uris = [str(r.uri) for r in resources.resources]
        for target in HTTP_TARGETS:
            mine = [u for u in uris if u.startswith(f"{target}+")]
            assert mine, f"no resources of {target}: {uris}"
            read = await _step(f"resources/read {mine[0]}", s.read_resource(mine[0]))
            assert read.contents, read
            first = read.contents[0]
            assert str(first.uri) == mine[0], (first.uri, mine[0])
            assert getattr(first, "text", None) or getattr(first, "blob", None), first

    _run_client(three_kinds.mcp, body)


def test_sdk_sampling_through_both_http_targets(three_kinds):
    async def body(s: ClientSession) -> None:
        groups = by_target([t.name for t in await _all_tools(s)], TARGETS)
        for target in HTTP_TARGETS:
            # server-everything offers it only to clients that declared sampling.
            assert "trigger-sampling-request" in groups[target], sorted(groups[target])
            prompt = f"from {target}"
            res = await _step(
                f"tools/call {target}_trigger-sampling-request",
                s.call_tool(f"{target}_trigger-sampling-request", {"prompt": prompt}),
            )
            assert not res.is_error, res
            text = _text_of(res.content)
            assert "sampled[" in text and prompt in text, (target, text)
        res = await _step("demo_test_sampling", s.call_tool("demo_test_sampling", {"prompt": "from demo"}))
        assert _text_of(res.content) == "LLM response: sampled[from demo]", res.content

    _run_client(three_kinds.mcp, body, sampling_callback=_on_sampling)


def test_inspector_cli_lists_and_calls_every_kind_of_target(three_kinds):
    out = inspector(three_kinds.mcp, "--method", "tools/list")
    assert not out.get("nextCursor"), out.get("nextCursor")
    groups = by_target([t["name"] for t in out["tools"]], TARGETS)
    for target in TARGETS:
        assert "echo" in groups[target], f"{target}_echo missing: {groups}"

    for target in TARGETS:
        out = inspector(
            three_kinds.mcp, "--method", "tools/call", "--tool-name", f"{target}_echo", "--tool-arg", "message=hi"
        )
        assert not out.get("isError"), out
        texts = [c["text"] for c in out["content"] if c["type"] == "text"]
        want = ["hi"] if target == "demo" else ["Echo: hi"]
        assert texts == want, (target, out)

    for target in HTTP_TARGETS:
        uri = f"{target}+demo://resource/static/document/architecture.md"
        out = inspector(three_kinds.mcp, "--method", "resources/read", "--uri", uri)
        assert out["contents"][0]["uri"] == uri, out
        assert out["contents"][0].get("text"), out
