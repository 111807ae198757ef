"""A route's `retry` and `timeout` policies against an upstream that misbehaves on purpose
(issue #14): server-everything (streamable HTTP) behind a `Guard` (guarded_upstream.py) that
fails chosen JSON-RPC methods once, with an HTTP status or by never answering, or that refuses
connections until the test lets it listen.

- `retry: {attempts, codes}`: a `tools/list` answered 503 once is sent again and succeeds; a
  `tools/call` answered 503 is not (it is not safe to repeat) and the client gets the error.
- `timeout: {requestTimeout}`: a call the upstream never answers ends with an error in time.
- `timeout: {backendRequestTimeout}` with `retry`: a stalled `tools/list` is tried again.
- A connection refused before anything was sent is retried for any request (`initialize`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from guarded_upstream import guards  # noqa: F401 (a fixture)
from mcp_client import all_tools, run_client, step, text_of
from test_backend_auth import initialize, target, wait_for


@pytest.fixture
def upstream(everything_http):
    return everything_http("streamableHttp")


def route(policies: dict, *targets: dict) -> dict:
    return {"mcp": {"policies": policies, "targets": list(targets)}}


def test_retry_repeats_a_list_but_not_a_call(gateway, upstream, guards):
    g = guards(upstream.port, faults=[["tools/list", 503], ["tools/call", 503]])
    gw = gateway(route({"retry": {"attempts": 2, "backoff": "100ms", "codes": [503]}}, target("up", "mcp", g)))

    async def body(s: ClientSession) -> None:
        tools = await all_tools(s)
        assert any(t.name == "echo" for t in tools), [t.name for t in tools]
        with pytest.raises(MCPError) as e:
            await step("tools/call echo (503)", s.call_tool("echo", {"message": "once"}))
        assert "503" in str(e.value), e.value

    run_client(gw.mcp, body)
    assert len(g.rpc("tools/list")) == 2, g.methods()
    assert len(g.rpc("tools/call")) == 1, "a tools/call was sent twice"
    assert "attempt 2 of 2" in gw.log(), gw.log()


def test_request_timeout_ends_a_stalled_call(gateway, upstream, guards):
    g = guards(upstream.port, faults=[["tools/call", "stall"]])
    gw = gateway(route({"timeout": {"requestTimeout": "2s"}}, target("up", "mcp", g)))
    took: list[float] = []

    async def body(s: ClientSession) -> None:
        t0 = time.monotonic()
        with pytest.raises(MCPError) as e:
            await step("tools/call echo (stalled)", s.call_tool("echo", {"message": "late"}))
        took.append(time.monotonic() - t0)
        assert "did not answer in time" in str(e.value), e.value
        # The session goes on.
        res = await step("tools/call echo", s.call_tool("echo", {"message": "after"}))
        assert "after" in text_of(res.content), res

    run_client(gw.mcp, body)
    assert 1.5 <= took[0] <= 8, f"the stalled call ended after {took[0]:.1f} s, not about 2 s"


def test_backend_timeout_with_retry_gets_past_a_stalled_list(gateway, upstream, guards):
    g = guards(upstream.port, faults=[["tools/list", "stall"]])
    policies = {"timeout": {"backendRequestTimeout": "1s"}, "retry": {"attempts": 2}}
    gw = gateway(route(policies, target("up", "mcp", g)))

    async def body(s: ClientSession) -> None:
        tools = await step("tools/list", s.list_tools())
        assert any(t.name == "echo" for t in tools.tools), tools

    run_client(gw.mcp, body)
    assert len(g.rpc("tools/list")) == 2, g.methods()


def test_a_refused_connection_is_retried_even_for_initialize(gateway, upstream, guards):
    g = guards(upstream.port, listen_later=True)
    gw = gateway(route({"retry": {"attempts": 3, "backoff": "2s"}}, target("up", "mcp", g)))
    answer: list[Any] = []
    t = threading.Thread(target=lambda: answer.append(initialize(gw.mcp)), daemon=True)
    t.start()
    wait_for("the gateway to schedule a second attempt", lambda: "attempt 2 of 3" in gw.log())
    g.listen()
    t.join(timeout=30)
    assert answer, "initialize got no answer"
    status, msg = answer[0]
    assert status == 200 and "result" in msg, (status, msg)
    assert len(g.rpc("initialize")) == 1, g.methods()
