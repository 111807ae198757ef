"""The front door (issue #15): client authentication, authorization rules, rate limits and
per-principal links, seen from real clients.

- `apiKey`: keys from the config, the environment and a file; the official Python SDK with
  and without its key; the 401 and its JSON-RPC body; refusals counted in /metrics; no key
  in the log.
- `jwtAuth`: tokens minted here with real RSA, P-256 and Ed25519 keys (PyJWT), the JWKS served
  over https with a test CA; valid, expired, wrong audience, wrong issuer, bad signature,
  `alg: none`, unknown `kid`, and a key rotation the gateway picks up by itself.
- `mcpAuthentication`: a small OAuth authorization server written here; the Python SDK's OAuth
  support (client credentials, and the authorization-code flow with PKCE) discovers the
  protected-resource metadata from the 401 and presents the token it obtained.
- `mcpAuthorization`: two principals see different tools through a multiplexed, paginated
  backend, in both eras; a denied call is refused.
- `localRateLimit`: a burst gets 429 with Retry-After; another principal is unaffected.
- Two principals' stateless requests to @modelcontextprotocol/server-memory keep separate
  graphs (each principal's pool has its own child and memory file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt as pyjwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from mcp import ClientSession, types
from mcp.client import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from conftest import demo_target, free_port, memory_target
from mcp_client import STEP_TIMEOUT_S, step, text_of
from test_upstream_tls import make_certs

MODERN = "2026-07-28"


# ---------------------------------------------------------------- helpers


def route_config(policies: dict[str, Any], targets: list[dict[str, Any]], settings: dict | None = None) -> dict:
    cfg: dict[str, Any] = {
        "binds": [{"listeners": [{"routes": [{"policies": policies, "backends": [{"mcp": {"targets": targets}}]}]}]}]
    }
    if settings:
        cfg["config"] = settings
    return cfg


def post(url: str, body: dict, token: str | None = None, headers: dict | None = None) -> httpx2.Response:
    """One raw POST (a 2026-07-28 request when the body has the envelope)."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if "_meta" in (body.get("params") or {}):
        h["MCP-Protocol-Version"] = MODERN
        h["Mcp-Method"] = body["method"]
        key = "uri" if body["method"] == "resources/read" else "name"
        name = (body.get("params") or {}).get(key)
        if name:
            h["Mcp-Name"] = name
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    return httpx2.post(url, json=body, headers=h, timeout=STEP_TIMEOUT_S)


def modern(method: str, params: dict | None = None, rid: int = 1) -> dict:
    p = dict(params or {})
    p["_meta"] = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": p}


def tool_names_raw(url: str, token: str) -> list[str]:
    """Every tool name over raw 2026-07-28 requests, following nextCursor."""
    names: list[str] = []
    cursor = None
    for _ in range(50):
        r = post(url, modern("tools/list", {"cursor": cursor} if cursor else {}), token)
        assert r.status_code == 200, r.text
        res = r.json()["result"]
        names += [t["name"] for t in res["tools"]]
        cursor = res.get("nextCursor")
        if not cursor:
            return names
    raise AssertionError("still paging after 50 pages")


def sdk_session(url: str, headers: dict[str, str], body, auth: httpx2.Auth | None = None, verify: Any = True) -> Any:
    """A legacy Python SDK session with `headers` on every request (and `auth`, `verify` for
    its HTTP client); returns body(session)."""
    out: list[Any] = []

    async def main() -> None:
        async with httpx2.AsyncClient(headers=headers, auth=auth, verify=verify, timeout=STEP_TIMEOUT_S) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write, read_timeout_seconds=STEP_TIMEOUT_S) as s:
                    await step("initialize", s.initialize())
                    out.append(await body(s))

    anyio.run(main)
    return out[0]


def sdk_modern(url: str, headers: dict[str, str], body, auth: httpx2.Auth | None = None) -> Any:
    """A 2026-07-28 Python SDK client (`Client`, pinned) with `headers` (or `auth`)."""
    out: list[Any] = []

    async def main() -> None:
        async with httpx2.AsyncClient(headers=headers, auth=auth, timeout=STEP_TIMEOUT_S) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=MODERN, read_timeout_seconds=STEP_TIMEOUT_S) as c:
                assert c.protocol_version == MODERN
                out.append(await body(c))

    anyio.run(main)
    return out[0]


async def all_tool_names(c: Any) -> list[str]:
    """Every tool name, following nextCursor, from a `Client` or a `ClientSession`."""
    names: list[str] = []
    cursor = None
    for _ in range(50):
        if cursor is None:
            page = await step("tools/list", c.list_tools())
        elif isinstance(c, ClientSession):
            page = await step("tools/list", c.list_tools(params=types.PaginatedRequestParams(cursor=cursor)))
        else:
            page = await step("tools/list", c.list_tools(cursor=cursor))
        names += [t.name for t in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return names
    raise AssertionError("still paging after 50 pages")


def scrape(stats_port: int) -> str:
    return httpx2.get(f"http://127.0.0.1:{stats_port}/metrics", timeout=5).text


def refusals(text: str, kind: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'mcplex_auth_refusals_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------- API keys


def test_api_keys_from_config_env_and_file(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("MCPLEX_TEST_BOB_KEY", "bob-key-from-env")
    (tmp_path / "carol.key").write_text("carol-key-from-file\n")
    stats = free_port()
    policies = {
        "apiKey": {
            "mode": "strict",
            "keys": [
                {"key": "alice-key-0123456789", "metadata": {"name": "alice", "role": "admin"}},
                {"key": {"env": "MCPLEX_TEST_BOB_KEY"}, "name": "bob"},
                {"key": {"file": str(tmp_path / "carol.key")}, "name": "carol"},
                {"keyHash": "sha256:" + hashlib.sha256(b"dave-key").hexdigest(), "name": "dave"},
            ],
        }
    }
    gw = gateway(route_config(policies, [demo_target()], {"statsAddr": f"127.0.0.1:{stats}"}))

    async def echo(s: ClientSession) -> str:
        r = await step("echo", s.call_tool("echo", {"message": "keyed"}))
        return text_of(r.content)

    for key in ["alice-key-0123456789", "bob-key-from-env", "carol-key-from-file", "dave-key"]:
        assert "keyed" in sdk_session(gw.mcp, {"Authorization": f"Bearer {key}"}, echo)
    assert "keyed" in sdk_session(gw.mcp, {"Authorization": "bearer bob-key-from-env"}, echo), "scheme is case-insensitive"

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    for token, reason in [(None, "required"), ("alice-key-012345678", "invalid"), ("x", "invalid")]:
        r = post(gw.mcp, init, token)
        assert r.status_code == 401, (token, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
        err = r.json()["error"]
        assert reason in err["message"].lower(), err
    # The SDK hears the 401 as a failure to connect.
    with pytest.raises(Exception):
        sdk_session(gw.mcp, {"Authorization": "Bearer nope"}, echo)
    m = scrape(stats)
    assert refusals(m, "unauthorized") >= 4, m
    log = gw.log()
    assert "alice-key-0123456789" not in log and "bob-key-from-env" not in log and "nope" not in log, log
    assert "invalid API key" in log


def test_api_key_in_a_custom_header(gateway):
    policies = {
        "apiKey": {"mode": "strict", "location": {"header": {"name": "X-Api-Key"}}, "keys": [{"key": "k1", "name": "one"}]}
    }
    gw = gateway(route_config(policies, [demo_target()]))
    body = modern("tools/list")
    assert post(gw.mcp, body, headers={"X-Api-Key": "k1"}).status_code == 200
    assert post(gw.mcp, body, token="k1").status_code == 401, "a Bearer token is not where this route looks"


# ---------------------------------------------------------------- JWTs


class JwksServer:
    """Serves /jwks.json over https (a test CA's certificate) from a dict that tests change."""

    def __init__(self, certs: dict[str, Path]) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.fetches += 1
                body = json.dumps(outer.doc).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs["cert"]), str(certs["key"]))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Signer:
    """A private key, its public JWK (with kid) and the PyJWT algorithm name."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kid = kid
        if kind == "rsa":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg, jwk = "RS256", RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        elif kind == "p256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.alg, jwk = "ES256", ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
            self.alg, jwk = "EdDSA", OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwk = dict(jwk, kid=kid, use="sig")

    def token(self, **claims: Any) -> str:
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 600}
        base.update(claims)
        base = {k: v for k, v in base.items() if v is not None}
        return pyjwt.encode(base, self.key, algorithm=self.alg, headers={"kid": self.kid})


ISSUER = "https://issuer.mcplex.test"
AUDIENCE = "mcplex-tests"


@pytest.fixture
def jwks(tmp_path):
    server = JwksServer(make_certs(tmp_path / "jwks-pki"))
    server.ca = tmp_path / "jwks-pki" / "ca.pem"
    yield server
    server.close()


def test_jwts_signed_with_real_keys_against_a_jwks_over_https(gateway, jwks, tmp_path):
    signers = [Signer("rsa", "r1"), Signer("p256", "e1"), Signer("okp", "o1")]
    jwks.doc = {"keys": [s.jwk for s in signers]}
    policies = {
        "jwtAuth": {
            "mode": "strict",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"url": jwks.url, "backendTLS": {"root": str(jwks.ca)}},
        }
    }
    gw = gateway(route_config(policies, [demo_target()]))
    deadline = time.monotonic() + 10
    while jwks.fetches == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jwks.fetches >= 1, gw.log()

    async def echo(c: Any) -> str:
        return text_of((await step("echo", c.call_tool("echo", {"message": "signed"}))).content)

    for s in signers:
        token = s.token()
        # Retried briefly: the first fetch may still be landing.
        for _ in range(50):
            if post(gw.mcp, modern("tools/list"), token).status_code == 200:
                break
            time.sleep(0.1)
        assert "signed" in sdk_modern(gw.mcp, {"Authorization": f"Bearer {token}"}, echo), s.alg
        assert "signed" in sdk_session(gw.mcp, {"Authorization": f"Bearer {token}"}, echo), s.alg

    rsa_signer = signers[0]
    impostor = Signer("rsa", "r1")  # same kid, another key
    now = int(time.time())
    none_token = pyjwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 600}, None, algorithm="none")
    bad = {
        "expired": rsa_signer.token(exp=now - 3600),
        "wrong audience": rsa_signer.token(aud="someone-else"),
        "wrong issuer": rsa_signer.token(iss="https://evil.example"),
        "bad signature": impostor.token(),
        "signature algorithm": none_token,
        "no key in the JWKS": Signer("okp", "unknown-kid").token(),
        "no `exp`": rsa_signer.token(exp=None),
        "not valid yet": rsa_signer.token(nbf=now + 3600),
        "malformed": "not.a.jwt",
    }
    for reason, token in bad.items():
        r = post(gw.mcp, modern("tools/list"), token)
        assert r.status_code == 401, (reason, r.status_code, r.text)
        assert 'error="invalid_token"' in r.headers["www-authenticate"], (reason, r.headers)
        assert reason.split()[0].strip("`").lower() in r.json()["error"]["message"].lower(), (reason, r.text)
    log = gw.log()
    for token in bad.values():
        assert token[:60] not in log
    assert gw.proc.poll() is None

    # Rotation: a new key appears in the JWKS; a token naming it makes the gateway fetch again.
    before = jwks.fetches
    fresh = Signer("p256", "e2")
    jwks.doc = {"keys": [s.jwk for s in signers] + [fresh.jwk]}
    token = fresh.token(sub="rotated")
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = post(gw.mcp, modern("tools/list"), token).status_code
        if status == 200:
            break
        time.sleep(0.3)
    assert status == 200, f"the rotated key was not picked up\n{gw.log()}"
    assert jwks.fetches > before

    # A reload keeps the keys in force while it fetches the JWKS again: no token fails meanwhile.
    jwks_down = jwks.doc
    jwks.doc = {"keys": []}  # the next fetch finds no usable key; the old ones must stay
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(10):
        assert post(gw.mcp, modern("tools/list"), token).status_code == 200, gw.log()
        time.sleep(0.1)
    jwks.doc = jwks_down


def test_a_jwks_that_cannot_be_fetched_leaves_tokens_refused_not_the_loop_stuck(gateway, tmp_path):
    dead = free_port()
    policies = {"jwtAuth": {"mode": "strict", "issuer": ISSUER, "audiences": [AUDIENCE],
                            "jwks": {"url": f"http://127.0.0.1:{dead}/jwks.json"}}}  # fmt: skip
    gw = gateway(route_config(policies, [demo_target()]))
    token = Signer("okp", "o1").token()
    r = post(gw.mcp, modern("tools/list"), token)
    assert r.status_code == 401 and "no signing keys" in r.json()["error"]["message"], r.text
    assert "JWKS" in gw.log() and "retry" in gw.log()


# ---------------------------------------------------------------- MCP authorization (OAuth)


class AuthServer:
    """A minimal OAuth 2.1 authorization server: metadata, dynamic registration, an
    auto-approving /authorize (PKCE S256), /token (authorization_code and client_credentials)
    issuing Ed25519-signed JWTs whose audience is the RFC 8707 `resource`, and its JWKS."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.signer = Signer("okp", "as-1")
        self.codes: dict[str, dict] = {}
        self.tokens_issued: list[dict] = []
        iss = self.issuer

        async def metadata(_: Request) -> JSONResponse:
            return JSONResponse({
                "issuer": iss, "authorization_endpoint": f"{iss}/authorize", "token_endpoint": f"{iss}/token",
                "registration_endpoint": f"{iss}/register", "jwks_uri": f"{iss}/jwks.json",
                "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
                "scopes_supported": ["mcp:tools"], "authorization_response_iss_parameter_supported": True,
            })  # fmt: skip

        async def register(req: Request) -> JSONResponse:
            body = await req.json()
            return JSONResponse(dict(body, client_id="client-" + secrets.token_hex(4), client_id_issued_at=int(time.time())), status_code=201)

        async def authorize(req: Request) -> RedirectResponse:
            q = dict(req.query_params)
            code = secrets.token_urlsafe(16)
            self.codes[code] = q
            loc = f'{q["redirect_uri"]}?{urllib.parse.urlencode({"code": code, "state": q["state"], "iss": iss})}'
            return RedirectResponse(loc, status_code=302)

        async def token(req: Request) -> JSONResponse:
            f = dict(await req.form())
            if f.get("grant_type") == "authorization_code":
                c = self.codes.pop(f.get("code", ""), None)
                verifier = f.get("code_verifier", "").encode()
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
                if not c or challenge != c["code_challenge"] or f.get("redirect_uri") != c["redirect_uri"]:
                    return JSONResponse({"error": "invalid_grant"}, status_code=400)
                resource, scope, sub = c.get("resource"), c.get("scope"), "code-user"
            elif f.get("grant_type") == "client_credentials":
                basic = req.headers.get("authorization", "")
                if basic != "Basic " + base64.b64encode(b"cc-id:cc-secret").decode():
                    return JSONResponse({"error": "invalid_client"}, status_code=401)
                resource, scope, sub = f.get("resource"), f.get("scope"), "cc-id"
            else:
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            self.tokens_issued.append({"resource": resource, "scope": scope, "sub": sub})
            access = self.signer.token(iss=iss, aud=resource, sub=sub, scope=scope or "")
            return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 600, "scope": scope or ""})

        async def jwks_doc(_: Request) -> JSONResponse:
            return JSONResponse({"keys": [self.signer.jwk]})

        app = Starlette(routes=[
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/register", register, methods=["POST"]),
            Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]),
            Route("/jwks.json", jwks_doc),
        ])  # fmt: skip
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the authorization server did not start"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


class MemStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, t: OAuthToken) -> None:
        self.tokens = t

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, c: OAuthClientInformationFull) -> None:
        self.client = c


@pytest.fixture
def auth_server():
    s = AuthServer()
    yield s
    s.close()


def mcp_auth_gateway(gateway, auth_server: AuthServer) -> Any:
    text = f"""
binds:
- port: {{{{PORT}}}}
  listeners:
  - routes:
    - matches:
      - path: {{exact: /mcp}}
      - path: {{exact: /.well-known/oauth-protected-resource/mcp}}
      policies:
        cors:
          allowOrigins: ["*"]
          allowHeaders: ["*"]
          exposeHeaders: ["Mcp-Session-Id"]
        mcpAuthentication:
          issuer: {auth_server.issuer}
          jwks:
            url: {auth_server.issuer}/jwks.json
          resourceMetadata:
            resource: http://127.0.0.1:{{{{PORT}}}}/mcp
            scopesSupported: [mcp:tools]
            bearerMethodsSupported: [header]
      backends:
      - mcp:
          targets:
          - name: demo
            stdio: {{cmd: {json.dumps(str(demo_target()["stdio"]["cmd"]))}}}
"""
    return gateway(text)


def test_mcp_authentication_challenge_and_protected_resource_metadata(gateway, auth_server):
    gw = mcp_auth_gateway(gateway, auth_server)
    resource = f"http://127.0.0.1:{gw.port}/mcp"
    r = post(gw.mcp, modern("tools/list"), headers={"Origin": "http://app.example"})
    assert r.status_code == 401, r.text
    # A browser client may read the challenge (the route's CORS exposes it).
    assert "www-authenticate" in r.headers.get("access-control-expose-headers", "").lower(), r.headers
    challenge = r.headers["www-authenticate"]
    prm_url = f"http://127.0.0.1:{gw.port}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{prm_url}"' in challenge and 'scope="mcp:tools"' in challenge, challenge
    assert "error=" not in challenge, "no token at all: no error parameter (RFC 6750)"
    prm = httpx2.get(prm_url, headers={"MCP-Protocol-Version": MODERN, "Origin": "https://elsewhere.example"})
    assert prm.status_code == 200, prm.text
    assert prm.headers["access-control-allow-origin"] == "*"
    doc = prm.json()
    assert doc["resource"] == resource and doc["authorization_servers"] == [auth_server.issuer], doc
    assert doc["scopes_supported"] == ["mcp:tools"] and doc["bearer_methods_supported"] == ["header"], doc
    # The bare prefix names the one protected resource too.
    assert httpx2.get(f"http://127.0.0.1:{gw.port}/.well-known/oauth-protected-resource").json() == doc
    # A token the authorization server issued for another resource is refused (RFC 8707).
    other = auth_server.signer.token(iss=auth_server.issuer, aud="http://127.0.0.1:1/mcp")
    r = post(gw.mcp, modern("tools/list"), other)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"], r.text
    assert "audience" in r.json()["error"]["message"]


def test_python_sdk_oauth_client_credentials_and_authorization_code(gateway, auth_server):
    gw = mcp_auth_gateway(gateway, auth_server)
    url = f"http://127.0.0.1:{gw.port}/mcp"

    async def work(c: Any) -> tuple[list[str], str]:
        names = await all_tool_names(c)
        r = await step("echo", c.call_tool("echo", {"message": "via oauth"}))
        return names, text_of(r.content)

    cc = ClientCredentialsOAuthProvider(url, MemStorage(), "cc-id", "cc-secret", issuer=auth_server.issuer)
    names, echoed = sdk_modern(url, {}, work, auth=cc)
    assert "echo" in names and "via oauth" in echoed
    assert auth_server.tokens_issued[-1] == {"resource": url, "scope": "mcp:tools", "sub": "cc-id"}

    captured: dict[str, str] = {}

    async def redirect_handler(authorize_url: str) -> None:
        async with httpx2.AsyncClient() as h:
            r = await h.get(authorize_url, follow_redirects=False)
        assert r.status_code == 302, r.text
        captured.update({k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query).items()})

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=captured["code"], state=captured.get("state"), iss=captured.get("iss"))

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcplex-test", redirect_uris=["http://127.0.0.1:1/callback"], token_endpoint_auth_method="none"
        ),
        storage=MemStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async def echo(s: ClientSession) -> str:
        return text_of((await step("echo", s.call_tool("echo", {"message": "code flow"}))).content)

    assert "code flow" in sdk_session(url, {}, echo, auth=provider)
    assert auth_server.tokens_issued[-1]["sub"] == "code-user"
    assert auth_server.tokens_issued[-1]["resource"] == url


# ---------------------------------------------------------------- authorization rules


AUTHZ = {
    "apiKey": {
        "mode": "strict",
        "keys": [
            {"key": "alice-k", "metadata": {"name": "alice", "role": "admin"}},
            {"key": "bob-k", "metadata": {"name": "bob", "role": "user"}},
        ],
    },
    "mcpAuthorization": {
        "rules": [
            'apiKey.role == "admin"',
            'mcp.tool.target == "a" && !mcp.tool.name.startsWith("test_")',
            {"deny": 'mcp.tool.name == "fail"'},
        ]
    },
}


def test_two_principals_see_different_tools_through_a_multiplexed_paginated_backend(gateway):
    targets = [demo_target("a", ["--page-size", "3"]), demo_target("b", ["--page-size", "3"])]
    gw = gateway(route_config(AUTHZ, targets))
    alice = tool_names_raw(gw.mcp, "alice-k")
    bob = tool_names_raw(gw.mcp, "bob-k")
    assert "a_echo" in alice and "b_echo" in alice and "b_test_simple_text" in alice, alice
    assert "a_fail" not in alice and "b_fail" not in alice, "deny wins over allow"
    assert len(alice) == len(set(alice)), "pagination repeats nothing"
    want_bob = [n for n in alice if n.startswith("a_") and not n.startswith("a_test_")]
    assert bob == want_bob, bob
    assert len(bob) >= 3

    # The same through the SDK, both eras (the SDK follows the cursors).
    async def names(c: Any) -> list[str]:
        return await all_tool_names(c)

    assert sdk_modern(gw.mcp, {"Authorization": "Bearer bob-k"}, names) == want_bob
    assert sdk_session(gw.mcp, {"Authorization": "Bearer bob-k"}, names) == want_bob
    assert sdk_session(gw.mcp, {"Authorization": "Bearer alice-k"}, names) == alice

    # A denied call is refused as if the tool did not exist; an allowed one works.
    r = post(gw.mcp, modern("tools/call", {"name": "b_echo", "arguments": {"message": "x"}}), "bob-k")
    assert r.status_code == 200 and r.json()["error"]["code"] == -32602, r.text
    assert "Unknown tool" in r.json()["error"]["message"]

    async def calls(s: ClientSession) -> tuple[Any, Any]:
        ok = await step("a_echo", s.call_tool("a_echo", {"message": "mine"}))
        try:
            denied = await step("b_add", s.call_tool("b_add", {"a": 1, "b": 2}))
        except Exception as e:  # noqa: BLE001 - the SDK raises on a JSON-RPC error
            denied = e
        return ok, denied

    ok, denied = sdk_session(gw.mcp, {"Authorization": "Bearer bob-k"}, calls)
    assert "mine" in text_of(ok.content)
    assert "Unknown tool" in str(denied) or getattr(denied, "isError", False), denied
    # Prompts match no rule for bob: none listed.
    async def prompts(s: ClientSession) -> int:
        return len((await step("prompts/list", s.list_prompts())).prompts)

    assert sdk_session(gw.mcp, {"Authorization": "Bearer bob-k"}, prompts) == 0
    assert sdk_session(gw.mcp, {"Authorization": "Bearer alice-k"}, prompts) > 0

    # A resource bob may not read does not exist for him: -32602 in 2026-07-28 (which has no
    # -32002), -32002 for a legacy session.
    uri = post(gw.mcp, modern("resources/list"), "alice-k").json()["result"]["resources"][0]["uri"]
    r = post(gw.mcp, modern("resources/read", {"uri": uri}), "bob-k")
    assert r.json()["error"]["code"] == -32602, r.text
    assert post(gw.mcp, modern("resources/read", {"uri": uri}), "alice-k").json()["result"]["contents"]

    async def read(s: ClientSession) -> Any:
        try:
            return await step("resources/read", s.read_resource(uri))
        except Exception as e:  # noqa: BLE001 - the SDK raises on a JSON-RPC error
            return e

    denied = sdk_session(gw.mcp, {"Authorization": "Bearer bob-k"}, read)
    assert getattr(getattr(denied, "error", None), "code", None) == -32002, repr(denied)


def test_a_session_belongs_to_its_principal(gateway):
    gw = gateway(route_config(AUTHZ, [demo_target("a")]))
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    r = post(gw.mcp, init, "alice-k")
    sid = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert post(gw.mcp, ping, "alice-k", {"Mcp-Session-Id": sid}).status_code == 200
    stolen = post(gw.mcp, ping, "bob-k", {"Mcp-Session-Id": sid})
    assert stolen.status_code == 404, stolen.text


def test_bad_rules_are_refused_at_load_with_their_column(tmp_path):
    from conftest import MCPLEX_BIN
    import subprocess

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "mcp:\n  port: 1\n  policies:\n    mcpAuthorization:\n      rules:\n"
        "      - 'mcp.tool.name = \"echo\"'\n      - 'request.path == \"/\"'\n"
        "  targets:\n  - name: d\n    stdio: {cmd: x}\n"
    )
    p = subprocess.run([str(MCPLEX_BIN), "--validate", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "rules[0]: column 15: `=` is not an operator" in p.stderr, p.stderr
    assert "rules[1]: column 1: unknown variable `request`" in p.stderr, p.stderr


# ---------------------------------------------------------------- rate limits


def test_a_burst_gets_429_with_retry_after_and_others_are_unaffected(gateway):
    policies = dict(AUTHZ, localRateLimit=[{"maxTokens": 3, "tokensPerFill": 1, "fillInterval": "60s"}])
    gw = gateway(route_config(policies, [demo_target("a")]))
    codes = [post(gw.mcp, modern("tools/list"), "alice-k") for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429], [r.status_code for r in codes]
    limited = codes[3]
    assert 1 <= int(limited.headers["retry-after"]) <= 60, limited.headers
    assert limited.json()["error"]["message"].startswith("Too Many Requests"), limited.text
    assert post(gw.mcp, modern("tools/list"), "bob-k").status_code == 200, "bob has his own bucket"
    assert "429" in gw.log()


# ---------------------------------------------------------------- per-principal links


def test_two_principals_keep_separate_memory_graphs(gateway, tmp_path):
    policies = {"apiKey": AUTHZ["apiKey"]}
    gw = gateway(route_config(policies, [memory_target(tmp_path)]))

    def call(token: str, name: str, args: dict) -> dict:
        r = post(gw.mcp, modern("tools/call", {"name": name, "arguments": args}), token)
        assert r.status_code == 200, r.text
        return r.json()["result"]

    for who in ("alice", "bob"):
        entity = {"name": f"{who}-secret", "entityType": "note", "observations": [f"only {who} knows"]}
        call(f"{who}-k", "create_entities", {"entities": [entity]})
    for who, other in (("alice", "bob"), ("bob", "alice")):
        graph = json.dumps(call(f"{who}-k", "read_graph", {}))
        assert f"{who}-secret" in graph and f"{other}-secret" not in graph, (who, graph)
    files = sorted(p.name for p in tmp_path.glob("memory-*.jsonl"))
    assert len(files) == 2 and any("alice" in f for f in files) and any("bob" in f for f in files), files
    assert gw.log().count("pool opened for stateless requests") == 2, gw.log()
