"""The TypeScript SDK v2 client (@modelcontextprotocol/client 2.4.0) and MCP Inspector 2.12.0's
CLI, in the 2026-07-28 era, through the gateway in front of the legacy-only demo.

ts_client.mjs connects with `versionNegotiation` pinned to 2026-07-28 (no fallback), in `auto`
(it probes server/discover and must stay modern) and in `legacy`; it lists tools, calls echo
and add, slow with progress, and the demo's sampling and elicitation tools, which reach the
client's own handlers (as input_required rounds when it is modern). Inspector's CLI runs with
`--protocol-era modern`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import NODE22, NODE_MODULES, demo_target, everything_target, single_target_config

TS_CLIENT = Path(__file__).parent / "ts_client.mjs"
INSPECTOR_LAUNCHER = NODE_MODULES / "inspector-modern" / "clients" / "launcher" / "build" / "index.js"
MODERN = "2026-07-28"
TIMEOUT_S = 90


def _ts_client(url: str, mode: str, prefix: str = "") -> dict:
    argv = [str(NODE22), str(TS_CLIENT), url, mode, prefix]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"ts_client printed nothing (exit {p.returncode})\nstdout: {p.stdout}\nstderr: {p.stderr}"
    out = json.loads(lines[-1])
    assert p.returncode == 0 and "error" not in out, f"ts_client ({mode}) failed: {out}\nstderr: {p.stderr[-2000:]}"
    return out


def _assert_demo_session(out: dict, mode: str, prefix: str) -> None:
    if mode != "legacy":
        assert out["protocolVersion"] == MODERN, out
    else:
        assert out["protocolVersion"] != MODERN, out
    assert out["server"] == "mcplex", out
    assert f"{prefix}echo" in out["tools"] and f"{prefix}test_sampling" in out["tools"], out["tools"]
    assert out["echo"] == "from ts" and out["add"] == "42", out
    assert out["slow"] == "done after 3 steps" and out["progress"] == [1, 2, 3], out
    assert out["sampling"] == "LLM response: ts[ts asks]", out
    assert "grace@example.com" in out["elicitation"] and "action=accept" in out["elicitation"], out
    assert out["asked"] == {"sampling": ["ts asks"], "elicitation": ["Who is there?"]}, out


@pytest.mark.parametrize("mode", [MODERN, "auto", "legacy"])
def test_ts_client_through_the_gateway(gateway, mode):
    gw = gateway(single_target_config(demo_target()))
    _assert_demo_session(_ts_client(gw.mcp, mode), mode, "")


def test_ts_client_pinned_modern_multiplexed(gateway):
    cfg = {
        "binds": [
            {
                "listeners": [
                    {"routes": [{"backends": [{"mcp": {"targets": [demo_target("demo"), everything_target()]}}]}]}
                ]
            }
        ]
    }
    gw = gateway(cfg)
    out = _ts_client(gw.mcp, MODERN, "demo_")
    _assert_demo_session(out, MODERN, "demo_")
    assert "everything_echo" in out["tools"], out["tools"]


def _inspector(url: str, home: Path, *args: str) -> dict:
    argv = [str(NODE22), str(INSPECTOR_LAUNCHER), "--cli", "--protocol-era", "modern", url, "--format", "json", *args]
    env = {**os.environ, "HOME": str(home)}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 0, f"inspector {args} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr[-2000:]}"
    out = json.loads(p.stdout)
    assert "result" in out, out
    return out["result"]


def test_inspector_2_cli_in_the_modern_era(gateway, tmp_path):
    gw = gateway(single_target_config(demo_target()))
    tools = _inspector(gw.mcp, tmp_path, "--method", "tools/list")
    assert "add" in [t["name"] for t in tools["tools"]], tools
    res = _inspector(gw.mcp, tmp_path, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3")
    assert res["content"][0]["text"] == "5", res
    read = _inspector(gw.mcp, tmp_path, "--method", "resources/read", "--uri", "demo://readme")
    assert read["contents"][0]["uri"] == "demo://readme", read
    prompt = _inspector(gw.mcp, tmp_path, "--method", "prompts/get", "--prompt-name", "greet", "--prompt-args", "name=Ada")
    assert any("Ada" in m["content"].get("text", "") for m in prompt["messages"]), prompt
    # Every request was served statelessly, on the backend's pool: no client session began.
    ready = [ln for ln in gw.log().splitlines() if "session ready" in ln]
    assert ready and all("[pool:" in ln for ln in ready), ready
