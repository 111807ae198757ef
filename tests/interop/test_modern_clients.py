"""The official Python SDK (`mcp` 2.3.0) as a 2026-07-28 client of the gateway: `Client(url,
mode=...)` pinned to the stateless revision, and in `auto` mode (it probes `server/discover`
and must stay modern), against legacy-only stdio servers (`@modelcontextprotocol/server-everything`
and the demo), alone and multiplexed. The gateway serves these requests without a session,
on links it keeps per backend.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio
import pytest
from mcp import Client

from conftest import demo_target, everything_target, single_target_config
from mcp_client import STEP_TIMEOUT_S, step as _step, text_of as _text_of

MODERN = "2026-07-28"


def _run(url: str, mode: str, body: Callable[[Client], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with Client(url, mode=mode, read_timeout_seconds=STEP_TIMEOUT_S, **kw) as client:
            modern = client.protocol_version == MODERN
            assert modern == (mode != "legacy"), (mode, client.protocol_version)
            await body(client)

    anyio.run(main)


def _multiplexed() -> dict[str, Any]:
    return {
        "binds": [
            {
                "listeners": [
                    {"routes": [{"backends": [{"mcp": {"targets": [demo_target("demo"), everything_target("everything")]}}]}]}
                ],
            }
        ]
    }


@pytest.mark.parametrize("mode", [MODERN, "auto"])
def test_modern_client_through_gateway_to_a_legacy_server(gateway, mode):
    gw = gateway(single_target_config(everything_target()))

    async def body(c: Client) -> None:
        if mode == "auto":
            # The probe found a modern server: the gateway's merged identity.
            assert c.server_info is not None and c.server_info.name == "mcplex", c.server_info
        tools = await _step("tools/list", c.list_tools())
        names = {t.name for t in tools.tools}
        assert "echo" in names, sorted(names)
        res = await _step("tools/call echo", c.call_tool("echo", {"message": "stateless \u00e9"}))
        assert not res.is_error, res
        assert "stateless \u00e9" in _text_of(res.content), res.content
        resources = await _step("resources/list", c.list_resources())
        uri = str(resources.resources[0].uri)
        read = await _step(f"resources/read {uri}", c.read_resource(uri))
        assert read.contents and str(read.contents[0].uri) == uri, read
        prompts = await _step("prompts/list", c.list_prompts())
        assert any(p.name == "args-prompt" for p in prompts.prompts), prompts

    _run(gw.mcp, mode, body)


def test_modern_client_gets_progress_and_a_multiplexed_view(gateway):
    gw = gateway(_multiplexed())
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def body(c: Client) -> None:
        tools = await _step("tools/list", c.list_tools())
        names = {t.name for t in tools.tools}
        assert {"demo_echo", "demo_slow", "everything_echo"} <= names, sorted(names)
        a = await _step("demo_add", c.call_tool("demo_add", {"a": 2, "b": 40}))
        assert _text_of(a.content) == "42", a
        e = await _step("everything_echo", c.call_tool("everything_echo", {"message": "hi"}))
        assert "hi" in _text_of(e.content), e
        slow = await _step(
            "demo_slow", c.call_tool("demo_slow", {"steps": 3, "delayMs": 20}, progress_callback=on_progress)
        )
        assert "done after 3 steps" in _text_of(slow.content), slow
        assert seen == [1, 2, 3], seen

    _run(gw.mcp, MODERN, body)


def test_legacy_and_modern_clients_side_by_side(gateway):
    """A legacy session and stateless requests on the same endpoint, each answered in its era."""
    from mcp_client import run_client

    gw = gateway(single_target_config(demo_target()))

    async def modern(c: Client) -> None:
        r = await _step("echo", c.call_tool("echo", {"message": "modern"}))
        assert _text_of(r.content) == "modern", r

    async def legacy(s) -> None:
        r = await _step("echo", s.call_tool("echo", {"message": "legacy"}))
        assert _text_of(r.content) == "legacy", r

    _run(gw.mcp, MODERN, modern)
    run_client(gw.mcp, legacy)
    _run(gw.mcp, "legacy", _legacy_mode)


async def _legacy_mode(c: Client) -> None:
    assert c.protocol_version != MODERN
    r = await _step("echo", c.call_tool("echo", {"message": "pinned legacy"}))
    assert _text_of(r.content) == "pinned legacy", r


def test_legacy_servers_requests_reach_a_modern_client_as_input_rounds(gateway):
    """Sampling and elicitation asked by legacy stdio servers (the demo, server-everything)
    reach the pinned-modern SDK as input_required rounds, fulfilled by its own callbacks."""
    from mcp import types

    gw = gateway(_multiplexed())
    sampled: list[str] = []
    elicited: list[str] = []

    async def on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = " ".join(getattr(m.content, "text", "") or "" for m in params.messages)
        sampled.append(prompt)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"sampled[{prompt}]"), model="test-model"
        )

    async def on_elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(getattr(params, "message", ""))
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def body(c: Client) -> None:
        res = await _step("demo_test_sampling", c.call_tool("demo_test_sampling", {"prompt": "from demo"}))
        assert not res.is_error, res
        assert _text_of(res.content) == "LLM response: sampled[from demo]", res.content
        res = await _step(
            "everything_trigger-sampling-request",
            c.call_tool("everything_trigger-sampling-request", {"prompt": "from everything"}),
        )
        assert not res.is_error, res
        assert "sampled[" in _text_of(res.content), res.content
        res = await _step("demo_test_elicitation", c.call_tool("demo_test_elicitation", {"message": "Who are you?"}))
        assert not res.is_error, res
        text = _text_of(res.content)
        assert "action=accept" in text and "ada@example.com" in text, text
        assert sampled[0] == "from demo" and "from everything" in sampled[1], sampled
        assert elicited == ["Who are you?"], elicited

    _run(gw.mcp, MODERN, body, sampling_callback=on_sampling, elicitation_callback=on_elicitation)
