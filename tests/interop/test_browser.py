"""A real browser as an MCP client of the gateway, across origins (CORS).

Debian's headless Chromium, driven by playwright-core (tests/interop/browser/drive.mjs, run by
Node 22), opens a static page served from another origin (http://127.0.0.1:STATIC_PORT, Python's
http.server).  The page loads a bundle of the official TypeScript SDK (`Client` +
`StreamableHTTPClientTransport`, built by browser/build.mjs with esbuild) that initializes, lists
tools, calls `echo` and ends its session (DELETE) at http://localhost:GW_PORT/mcp, then reports
what happened in `window.__mcpResult`.

- With a cors policy that allows the page's origin, every step succeeds, and the page can read
  the Mcp-Session-Id header (the gateway must expose it).
- With a policy that does not allow the origin, or none at all, the browser blocks the
  cross-origin requests and the page reports a failure at `initialize`.

Setup: tests/interop/browser/setup.sh installs Chromium (apt) and this folder's pinned npm
packages.  Every browser run is bounded by the driver's own timeouts and a subprocess timeout.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from conftest import NODE22, demo_target
from test_legacy_sse import _children, _cmdline

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
PAGE_TIMEOUT_MS = 30000
DRIVER_TIMEOUT_S = PAGE_TIMEOUT_MS / 1000 + 40
MESSAGE = "hello from Chromium \u00e9"


def _require_setup() -> None:
    missing = [
        str(p)
        for p in (CHROMIUM, NODE22, BROWSER_DIR / "node_modules" / "playwright-core", BROWSER_DIR / "node_modules" / "esbuild")
        if not p.exists()
    ]
    if missing:
        pytest.fail(
            f"browser test setup missing: {', '.join(missing)}; run tests/interop/browser/setup.sh "
            "(and npm ci in tests/)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built page: index.html + bundle.js (the TS SDK client, bundled by esbuild)."""
    _require_setup()
    out = tmp_path_factory.mktemp("browser-page")
    p = subprocess.run(
        [str(NODE22), str(BROWSER_DIR / "build.mjs"), str(out)],
        cwd=BROWSER_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"bundling the page failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert (out / "bundle.js").stat().st_size > 10000, list(out.iterdir())
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="module")
def page_origin(page_dir: Path) -> Iterator[str]:
    """Serves the page from its own origin, http://127.0.0.1:PORT (not the gateway's)."""
    handler = functools.partial(_QuietHandler, directory=str(page_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_page(page_origin: str, gateway_mcp_url: str, home: Path) -> dict[str, Any]:
    """Opens the page in Chromium against gateway_mcp_url; returns the driver's report.

    Chromium writes ~/.cache, ~/.config and ~/.pki: HOME is a scratch dir of the test's."""
    url = f"{page_origin}/index.html?gw={quote(gateway_mcp_url, safe='')}&message={quote(MESSAGE)}"
    try:
        p = subprocess.run(
            [str(NODE22), str(BROWSER_DIR / "drive.mjs"), url, str(PAGE_TIMEOUT_MS)],
            cwd=BROWSER_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
            env={"CHROMIUM": str(CHROMIUM), "PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home)},
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"browser driver hung for {DRIVER_TIMEOUT_S:.0f} s\n{e.stdout!r}\n{e.stderr!r}") from e
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, f"browser driver printed no report (exit {p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    report = json.loads(lines[-1])
    assert report.get("error") is None, f"browser driver failed: {report['error']}\n{json.dumps(report, indent=1)}"
    assert report.get("result") is not None, json.dumps(report, indent=1)
    return report


def _gateway_config(cors: dict[str, Any] | None) -> dict[str, Any]:
    mcp: dict[str, Any] = {"targets": [demo_target()]}
    if cors is not None:
        mcp["policies"] = {"cors": cors}
    return {"mcp": mcp}


def _localhost_mcp(gw: str) -> str:
    # The gateway's Server value is http://127.0.0.1:PORT; the browser uses the name.
    return gw.replace("http://127.0.0.1:", "http://localhost:") + "/mcp"


def _assert_session_ended(gw: Any) -> None:
    deadline = time.monotonic() + 10
    while _children(gw.proc.pid):
        if time.monotonic() > deadline:
            kids = [(p, _cmdline(p)) for p in _children(gw.proc.pid)]
            raise AssertionError(f"the browser's DELETE did not end the session; children left: {kids}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "policy",
    ["exact-origin", "wildcard-origin"],
)
def test_browser_client_allowed_by_cors(gateway, page_origin, policy, tmp_path):
    if policy == "exact-origin":
        cors = {"allowOrigins": [page_origin], "allowHeaders": ["*"], "maxAge": 60}
    else:
        # agentgateway's documented shape: any origin, the MCP headers listed explicitly.
        cors = {
            "allowOrigins": ["*"],
            "allowHeaders": ["content-type", "accept", "mcp-protocol-version", "mcp-session-id", "last-event-id"],
            "exposeHeaders": ["Mcp-Session-Id"],
        }
    gw = gateway(_gateway_config(cors))
    report = run_page(page_origin, _localhost_mcp(gw), tmp_path)
    res = report["result"]
    shown = json.dumps(report, indent=1)
    assert res["ok"], f"the page failed at {res.get('step')}: {res.get('error')}\n{shown}"
    assert res["origin"] == page_origin, shown
    assert res["serverInfo"] and res["serverInfo"].get("name"), shown
    assert res["sessionId"] and len(res["sessionId"]) >= 32, f"page could not read Mcp-Session-Id: {shown}"
    assert {"echo", "add", "slow"} <= set(res["tools"]), shown
    assert res["echo"] == MESSAGE and not res["isError"], shown
    assert res["terminated"], shown
    # The DOM shows the same report.
    assert json.loads(report["dom"]) == res, shown
    # Every response the page saw from the gateway carried the CORS grant.
    gw_port = gw.split(":")[-1]
    from_gw = [r for r in report["responses"] if f"localhost:{gw_port}" in r["url"]]
    assert from_gw, shown
    for r in from_gw:
        assert r["allowOrigin"] in (page_origin, "*"), f"response without Access-Control-Allow-Origin: {r}"
    # The DELETE went through: the session and its stdio child are gone.
    _assert_session_ended(gw)


@pytest.mark.parametrize("policy", ["other-origin", "no-cors-policy"])
def test_browser_client_refused_without_cors(gateway, page_origin, policy, tmp_path):
    cors = {"allowOrigins": ["http://app.example"], "allowHeaders": ["*"]} if policy == "other-origin" else None
    gw = gateway(_gateway_config(cors))
    report = run_page(page_origin, _localhost_mcp(gw), tmp_path)
    res = report["result"]
    shown = json.dumps(report, indent=1)
    assert not res["ok"], f"the page succeeded though its origin is not allowed: {shown}"
    assert res["step"] == "initialize", shown
    assert res.get("error"), shown
    console = "\n".join(report["console"])
    assert "CORS" in console, f"no CORS error in the browser console:\n{shown}"
