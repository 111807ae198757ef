"""agentgateway MCP configs that users already have, loaded by mcplex unchanged (issue #14).

The files are written byte for byte as a user would hand them over (not re-serialised), and
run the way agentgateway's examples run them: stdio targets started with `npx` and `uvx`. The
test puts stand-ins for those two first on PATH (tests have no network): `npx` runs the
locally installed @modelcontextprotocol/server-everything, `uvx` the pinned mcp-server-time of
the test venv; each refuses any other package, so a config that asked for something else
fails loudly.

- The one-target example (bind on 3000, CORS for browsers, `npx` server-everything): loads,
  `echo` is served unprefixed, a browser's preflight gets the CORS grant.
- The multiplexing example (time from `uvx`, everything from `npx`): both targets' tools,
  prefixed, callable.
- Compatibility cases: the `mcp:` shorthand without `port` listens on 3000; `host` without a
  scheme; `config.mcp.sessionTtl`; `dnsRebindingProtection` on the MCP backend; a target that
  names a `backends[]` host entry whose policies carry the credential.
- agentgateway fields mcplex does not implement are refused, each by its path, with "not
  supported yet" (never "unknown field").
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp import ClientSession

from conftest import EVERYTHING_JS, MCPLEX_BIN, MCPLEX_DEMO_BIN, NODE22, free_port
from guarded_upstream import guards  # noqa: F401 (a fixture)
from mcp_client import all_tools, run_client, step, text_of
from test_backend_auth import initialize
from test_front_door import sdk_session

AGW_PORT = 3000
VENV_BIN = Path(sys.executable).parent

# agentgateway's single-target example, in its shape: one bind, a CORS policy for browser
# clients, server-everything started by npx.
MCP_BASIC = """\
binds:
- port: 3000
  listeners:
  - routes:
    - policies:
        cors:
          allowOrigins: ["*"]
          allowHeaders: [mcp-protocol-version, content-type, cache-control]
          exposeHeaders: ["Mcp-Session-Id"]
      backends:
      - mcp:
          targets:
          - name: everything
            stdio:
              cmd: npx
              args: ["@modelcontextprotocol/server-everything"]
"""

# Two stdio servers behind one endpoint, each from its package runner.
MCP_MULTIPLEX = """\
binds:
- port: 3000
  listeners:
  - routes:
    - policies:
        cors:
          allowOrigins: ["*"]
          allowHeaders: ["*"]
      backends:
      - mcp:
          targets:
          - name: time
            stdio:
              cmd: uvx
              args: [mcp-server-time, --local-timezone, UTC]
          - name: everything
            stdio:
              cmd: npx
              args: ["-y", "@modelcontextprotocol/server-everything"]
"""

NPX = f"""#!/bin/sh
# Test stand-in for npx: runs the one package the tests have installed.
while [ $# -gt 0 ]; do
  case "$1" in
    -y|--yes|--quiet|-q) shift ;;
    @modelcontextprotocol/server-everything) shift; exec "{NODE22}" "{EVERYTHING_JS}" stdio "$@" ;;
    *) echo "npx stand-in: no package $1 here" >&2; exit 127 ;;
  esac
done
echo "npx stand-in: no package named" >&2; exit 127
"""

UVX = f"""#!/bin/sh
# Test stand-in for uvx: runs the one tool the test venv has.
while [ $# -gt 0 ]; do
  case "$1" in
    --with|--from|--python) shift 2 ;;
    mcp-server-time) shift; exec "{VENV_BIN / 'mcp-server-time'}" "$@" ;;
    *) echo "uvx stand-in: no tool $1 here" >&2; exit 127 ;;
  esac
done
echo "uvx stand-in: no tool named" >&2; exit 127
"""


@pytest.fixture
def runners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """npx and uvx stand-ins first on PATH (the gateway inherits it, and its children)."""
    bindir = tmp_path / "runners"
    bindir.mkdir()
    for name, text in (("npx", NPX), ("uvx", UVX)):
        p = bindir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


@pytest.fixture
def agw(_server_pool, tmp_path: Path):
    """agw(text, port) writes the config exactly as given and serves it with mcplex."""

    def start(text: str, port: int = AGW_PORT):
        if port == AGW_PORT:
            with socket.socket() as s:
                busy = s.connect_ex(("127.0.0.1", port)) == 0
            assert not busy, f"port {port} is taken on this machine; the example configs need it"
        path = tmp_path / f"agw-{_server_pool.count + 1}.yaml"
        path.write_text(text)
        check = validate(path)
        assert check.returncode == 0, check.stderr
        return _server_pool.start("mcplex", [str(MCPLEX_BIN), "-f", str(path)], port)

    return start


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MCPLEX_BIN), "-f", str(path), "--validate"], capture_output=True, text=True, timeout=30, cwd=path.parent
    )


def http(method: str, url: str, headers: dict, body: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


# ---------------------------------------------------------------- the examples


def test_the_single_target_example_serves_unchanged(agw, runners):
    gw = agw(MCP_BASIC)

    async def body(s: ClientSession) -> None:
        names = [t.name for t in await all_tools(s)]
        # One target: its names are not prefixed.
        assert "echo" in names, names
        res = await step("tools/call echo", s.call_tool("echo", {"message": "from agentgateway's example"}))
        assert "from agentgateway's example" in text_of(res.content), res

    run_client(gw.mcp, body)

    # A browser (MCP Inspector's origin) asks before it POSTs.
    origin = "http://localhost:6274"
    status, h, _ = http(
        "OPTIONS",
        gw.mcp,
        {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, mcp-protocol-version",
        },
    )
    assert status in (200, 204), (status, h)
    assert h.get("access-control-allow-origin") in ("*", origin), h
    allowed = h.get("access-control-allow-headers", "").lower()
    assert "mcp-protocol-version" in allowed and "content-type" in allowed, h
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}},
    }
    status, h, _ = http(
        "POST",
        gw.mcp,
        {"Origin": origin, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        json.dumps(init).encode(),
    )
    assert status == 200, status
    assert "mcp-session-id" in h.get("access-control-expose-headers", "").lower(), h


def test_the_multiplexing_example_serves_unchanged(agw, runners):
    gw = agw(MCP_MULTIPLEX)

    async def body(s: ClientSession) -> None:
        names = [t.name for t in await all_tools(s)]
        assert "time_get_current_time" in names and "everything_echo" in names, names
        res = await step("tools/call time_get_current_time", s.call_tool("time_get_current_time", {"timezone": "UTC"}))
        assert not res.is_error, res
        assert "UTC" in text_of(res.content), res
        res = await step("tools/call everything_echo", s.call_tool("everything_echo", {"message": "both"}))
        assert "both" in text_of(res.content), res

    run_client(gw.mcp, body)


# agentgateway's MCP authorization example, as it ships (only the upstream's port differs:
# it points at the test's server-everything): a JWT from a JWKS file, and rules over the tool
# name and the token's claims.
MCP_AUTHZ = """\
# yaml-language-server: $schema=https://agentgateway.dev/schema/config
mcp:
  port: 3000
  policies:
    cors:
      allowOrigins:
      - "*"
      allowHeaders:
      - "*"
      exposeHeaders:
      - "Mcp-Session-Id"
    backendAuth:
      passthrough: {}
    jwtAuth:
      issuer: agentgateway.dev
      audiences: [test.agentgateway.dev]
      jwks:
        # Relative to the folder the binary runs from, not the config file
        file: ./manifests/jwt/pub-key
    mcpAuthorization:
      rules:
      # Allow anyone to call 'echo'
      - 'mcp.tool.name == "echo"'
      # Only the test-user can call 'get-sum'
      - 'jwt.sub == "test-user" && mcp.tool.name == "get-sum"'
      # Any authenticated user with the claim `nested.key == value` can access 'get-env'
      - 'mcp.tool.name == "get-env" && jwt.nested.key == "value"'
  targets:
  - name: mcp2
    mcp:
      host: http://localhost:{PORT}/mcp
"""


def test_the_authorization_example_filters_tools_by_token(agw, everything_http, tmp_path):
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), kid="XhO06x8JjWH1wwkWkyeEUxsooGEWoEdidEpwyd_hmuI", alg="RS256")
    (tmp_path / "manifests" / "jwt").mkdir(parents=True)
    (tmp_path / "manifests" / "jwt" / "pub-key").write_text(json.dumps({"keys": [jwk]}))
    up = everything_http("streamableHttp")
    gw = agw(MCP_AUTHZ.replace("{PORT}", str(up.port)))

    def token(**claims) -> str:
        base = {"iss": "agentgateway.dev", "aud": "test.agentgateway.dev", "exp": int(time.time()) + 600}
        return pyjwt.encode(dict(base, **claims), key, algorithm="RS256", headers={"kid": jwk["kid"]})

    def tools(bearer: str | None) -> list[str]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}

        async def body(s: ClientSession) -> list[str]:
            return [t.name for t in await all_tools(s)]

        return sorted(sdk_session(gw.mcp, headers, body))

    assert tools(None) == ["echo"], "no token (jwtAuth's default mode is optional): only echo"
    assert tools(token(sub="test-user")) == ["echo", "get-sum"]
    assert tools(token(sub="someone", nested={"key": "value"})) == ["echo", "get-env"]
    status, _ = initialize(gw.mcp, {"Authorization": "Bearer " + token(iss="elsewhere")})
    assert status == 401, "a token, when given, must be valid"


# ---------------------------------------------------------------- compatibility cases


def test_shorthand_without_a_port_listens_on_3000_and_a_host_needs_no_scheme(agw, everything_http):
    up = everything_http("streamableHttp")
    # agentgateway's form: an authority alone means plain HTTP, on the default MCP path.
    gw = agw(f'mcp:\n  targets:\n  - name: remote\n    mcp:\n      host: "127.0.0.1:{up.port}"\n')
    assert gw.port == AGW_PORT

    async def body(s: ClientSession) -> None:
        res = await step("tools/call echo", s.call_tool("echo", {"message": "schemeless"}))
        assert "schemeless" in text_of(res.content), res

    run_client(gw.mcp, body)


def test_config_mcp_session_ttl_ends_idle_sessions(agw):
    port = free_port()
    gw = agw(
        f"config:\n  mcp:\n    sessionTtl: 1s\nmcp:\n  port: {port}\n  targets:\n"
        f"  - name: demo\n    stdio:\n      cmd: {MCPLEX_DEMO_BIN}\n",
        port,
    )
    status, _h, _ = http(
        "POST",
        gw.mcp,
        {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            }
        ).encode(),
    )
    assert status == 200
    sid = _h.get("mcp-session-id")
    assert sid, _h
    deadline = time.monotonic() + 15
    while "idle for longer than sessionTtl" not in gw.log():
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.2)
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    status, _, raw = http(
        "POST",
        gw.mcp,
        {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": sid,
            "MCP-Protocol-Version": "2025-06-18",
        },
        ping,
    )
    assert status == 404, (status, raw)


@pytest.mark.parametrize("protect", [None, False])
def test_dns_rebinding_protection_on_the_backend(agw, protect):
    port = free_port()
    setting = "" if protect is None else f"          dnsRebindingProtection: {str(protect).lower()}\n"
    gw = agw(
        f"binds:\n- port: {port}\n  listeners:\n  - routes:\n    - backends:\n      - mcp:\n"
        f"{setting}          targets:\n          - name: demo\n            stdio:\n"
        f"              cmd: {MCPLEX_DEMO_BIN}\n",
        port,
    )
    status, msg = initialize(gw.mcp, {"Host": "rebound.example"})
    if protect is None:
        # On by default: a name that does not resolve to this host is refused.
        assert status == 403 and "error" in msg, (status, msg)
    else:
        assert status == 200 and "result" in msg, (status, msg)


def test_a_target_naming_a_host_backend_takes_its_policies(agw, everything_http, guards):
    up = everything_http("streamableHttp")
    token = "agw-compat-" + os.urandom(8).hex()
    g = guards(up.port, token=token)
    port = free_port()
    gw = agw(
        f"""\
backends:
- name: remote
  host: 127.0.0.1:{g.port}
  policies:
    backendAuth:
      key: {token}
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - mcp:
          targets:
          - name: remote
            mcp:
              backend: remote
              path: /mcp
""",
        port,
    )

    async def body(s: ClientSession) -> None:
        res = await step("tools/call echo", s.call_tool("echo", {"message": "via the named backend"}))
        assert "via the named backend" in text_of(res.content), res

    run_client(gw.mcp, body)
    auths = {r["headers"].get("authorization") for r in g.seen}
    assert auths == {f"Bearer {token}"}, auths
    assert token not in gw.log(), "the credential reached a log line"


# ---------------------------------------------------------------- what is not implemented

UNSUPPORTED = """\
frontendPolicies: {}
policies: []
workloads: []
config:
  tracing: {otlpEndpoint: "http://127.0.0.1:4317"}
  logging: {level: debug}
  metrics: {}
  adminAddr: 127.0.0.1:15000
binds:
- port: 3000
  listeners:
  - protocol: TCP
    routes:
    - matches:
      - path: {regex: "^/mcp.*"}
      policies:
        mcpGuardrails: {}
        extAuthz: {}
        basicAuth: {}
        responseHeaderModifier: {set: {x: y}}
        backendAuth: {aws: {}}
        backendTLS: {cert: c.pem, key: k.pem}
        mcpAuthentication: {issuer: me, audiences: [you], jwks: {file: jwks.json}, provider: {keycloak: {}}}
      backends:
      - mcp:
          statefulMode: stateless
          targets:
          - name: spec
            openapi: {schema: {file: openapi.json}, host: 127.0.0.1:8080}
      - mcp:
          targets:
          - name: second
            stdio: {cmd: x}
- port: 3001
  listeners:
  - protocol: HTTPS
    tls: {cert: cert.pem, key: key.pem, minTLSVersion: TLS_V1_3}
    routes:
    - backends:
      - mcp:
          targets:
          - name: third
            stdio: {cmd: x}
"""

UNSUPPORTED_PATHS = [
    "frontendPolicies",
    "policies",
    "workloads",
    "config.tracing",
    "config.logging",
    "config.metrics",
    "config.adminAddr",
    "listeners[0].protocol",
    "listeners[0].tls.minTLSVersion",
    "matches[0].path.regex",
    "policies.mcpGuardrails",
    "policies.extAuthz",
    "policies.basicAuth",
    "policies.responseHeaderModifier",
    "policies.backendAuth.aws",
    "policies.backendTLS.cert",
    "policies.mcpAuthentication.provider",
    "statefulMode",
    "openapi",
    "routes[0].backends",
]


def test_fields_mcplex_does_not_implement_say_not_supported_yet(tmp_path: Path):
    path = tmp_path / "unsupported.yaml"
    path.write_text(UNSUPPORTED)
    out = validate(path)
    assert out.returncode != 0, out
    lines = out.stderr.splitlines()
    assert not any("unknown field" in ln for ln in lines), out.stderr
    # "mcplex: FILE: PATH: what is wrong"
    said = [ln.split(": ", 2)[-1].split(": ", 1) for ln in lines]
    for p in UNSUPPORTED_PATHS:
        hits = [what for where, *what in said if where == p or where.endswith("." + p)]
        assert hits, f"nothing said of {p}:\n{out.stderr}"
        assert any("not supported yet" in w for what in hits for w in what), f"{p}: {hits}"
