"""The MCP Inspector's CLI (@modelcontextprotocol/inspector-cli) against the gateway.

The CLI opens one streamable-HTTP session per call, runs one method and prints the
result as JSON on stdout.  It must run from its build/ folder (it reads ../package.json)
and has no timeout flag, so each call is bounded by subprocess's timeout.
"""

from __future__ import annotations


import pytest

from conftest import demo_target, single_target_config
from mcp_client import inspector_cli as inspector



@pytest.fixture
def demo_gateway(gateway):
    return gateway(single_target_config(demo_target()))


def test_tools_list(demo_gateway):
    out = inspector(demo_gateway.mcp, "--method", "tools/list")
    names = [t["name"] for t in out["tools"]]
    assert "echo" in names, names
    echo = next(t for t in out["tools"] if t["name"] == "echo")
    assert "message" in echo["inputSchema"].get("properties", {}), echo


def test_tools_call_echo(demo_gateway):
    out = inspector(
        demo_gateway.mcp, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi"
    )
    assert not out.get("isError"), out
    texts = [c["text"] for c in out["content"] if c["type"] == "text"]
    assert texts and any("hi" in t for t in texts), out


def test_resources_read(demo_gateway):
    out = inspector(demo_gateway.mcp, "--method", "resources/read", "--uri", "demo://readme")
    contents = out["contents"]
    assert contents and contents[0]["uri"] == "demo://readme", out
    assert contents[0].get("text") or contents[0].get("blob"), out


def test_prompts_get_greet(demo_gateway):
    out = inspector(
        demo_gateway.mcp, "--method", "prompts/get", "--prompt-name", "greet", "--prompt-args", "name=Ada"
    )
    texts = [m["content"].get("text", "") for m in out["messages"]]
    assert any("Ada" in t for t in texts), out
