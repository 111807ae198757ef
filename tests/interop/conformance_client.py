"""mcplex as the client of the conformance suite's client scenarios.

`conformance client --command "python conformance_client.py" --scenario S` starts a scenario
server and runs this with its URL as the last argument (and MCP_CONFORMANCE_SCENARIO set).
This starts mcplex with that URL as its one `mcp` target and drives mcplex with the Python
SDK, so what the suite checks is what mcplex sends upstream: era detection, the request
envelope and headers, requestState round trips. The driving client is a legacy one by
default (mcplex builds the envelope from its `initialize` and turns input rounds into real
requests); MCPLEX_DRIVER_MODE=2026-07-28 drives it with a stateless client instead.

Actions, the same for every scenario: list tools, resources and prompts; call every tool
with arguments made from its input schema; read each resource and get each prompt. Requests
the scenario refuses are expected; only a hang or a crash fails this script.

Env: MCPLEX_BIN (the gateway), MCPLEX_DRIVER_MODE (legacy | 2026-07-28 | auto).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, types

STEP_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example(schema: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("number", "integer"):
        return 2
    if kind == "boolean":
        return True
    if kind == "array":
        return [example(schema.get("items") or {"type": "string"})]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {k: example(props.get(k) or {}) for k in required}
    return "x"


async def on_elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    schema = getattr(params, "requested_schema", None) or {}
    content = example(schema if isinstance(schema, dict) else {})
    return types.ElicitResult(action="accept", content=content if isinstance(content, dict) else {})


async def on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="ok"), model="conformance-driver"
    )


async def drive(url: str, mode: str) -> None:
    async with Client(
        url,
        mode=mode,
        read_timeout_seconds=STEP_S,
        elicitation_callback=on_elicitation,
        sampling_callback=on_sampling,
    ) as c:

        async def attempt(what: str, coro: Any) -> Any:
            try:
                with anyio.fail_after(STEP_S):
                    return await coro
            except Exception as e:  # noqa: BLE001 - scenarios refuse some requests on purpose
                print(f"driver: {what}: {type(e).__name__}: {e}", file=sys.stderr)
                return None

        tools = await attempt("tools/list", c.list_tools())
        # A scenario may name the calls to make (MCP_CONFORMANCE_CONTEXT); else every tool is
        # called with arguments made from its schema.
        context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
        calls = [(tc["name"], tc.get("arguments") or {}) for tc in context.get("toolCalls") or []]
        listed = tools.tools if tools else []
        schemas = {t.name: t.input_schema for t in listed if isinstance(t.input_schema, dict)}
        if not calls:
            for t in listed:
                schema = schemas.get(t.name, {})
                args = example(schema)
                # A tool taking a `schema` object gets another tool's inputSchema as listed:
                # what the scenario checks is that nothing on the way stripped a keyword.
                if (schema.get("properties") or {}).get("schema", {}).get("type") == "object":
                    other = next((v for k, v in schemas.items() if k != t.name), {})
                    args = {**args, "schema": other}
                calls.append((t.name, args))
        for name, args in calls:
            await attempt(f"tools/call {name}", c.call_tool(name, args))
        resources = await attempt("resources/list", c.list_resources())
        for r in resources.resources if resources else []:
            await attempt(f"resources/read {r.uri}", c.read_resource(str(r.uri)))
        prompts = await attempt("prompts/list", c.list_prompts())
        for p in prompts.prompts if prompts else []:
            args = {a.name: "x" for a in (p.arguments or []) if a.required}
            await attempt(f"prompts/get {p.name}", c.get_prompt(p.name, args))


def main() -> int:
    upstream = sys.argv[-1]
    mcplex = os.environ.get("MCPLEX_BIN") or str(Path(__file__).resolve().parents[2] / "target/debug/mcplex")
    mode = os.environ.get("MCPLEX_DRIVER_MODE", "legacy")
    port = free_port()
    config = {
        "binds": [
            {
                "port": port,
                "listeners": [{"routes": [{"backends": [{"mcp": {"targets": [{"name": "suite", "mcp": {"host": upstream}}]}}]}]}],
            }
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mcplex.json"
        cfg.write_text(json.dumps(config))
        gw = subprocess.Popen([mcplex, "-f", str(cfg)], stdin=subprocess.DEVNULL, stderr=sys.stderr)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            try:
                anyio.run(drive, f"http://127.0.0.1:{port}/mcp", mode)
            except Exception as e:  # noqa: BLE001 - e.g. an upstream that wants credentials
                print(f"driver: the session failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            gw.terminate()
            try:
                gw.wait(timeout=5)
            except subprocess.TimeoutExpired:
                gw.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
