"""HTTPS listeners: `protocol: HTTPS` with `tls: {cert, key[, root]}`.

A test CA (openssl CLI) signs a server certificate for localhost/127.0.0.1 and, for mutual
TLS, a client certificate. The official Python SDK (legacy and 2026-07-28 modes), the
TypeScript SDK client and the conformance suite connect over https:// trusting only that CA;
hostile peers (garbage records, a stalled handshake, plaintext HTTP, abandoned handshakes) must
leave the loop serving a well-behaved client; a reload picks up a new certificate.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import NODE22, demo_target, memory_target
from mcp_client import STEP_TIMEOUT_S, step, text_of
from test_conformance import MIN_SCENARIOS, run_suite
from test_front_door import sdk_session
from test_upstream_tls import _openssl, make_certs

TS_CLIENT = Path(__file__).parent / "ts_client.mjs"
MODERN = "2026-07-28"


def make_client_cert(d: Path, name: str = "alice") -> dict[str, Path]:
    """A client certificate (CN=name) signed by the CA in d (from make_certs)."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return {"cert": d / f"{name}.pem", "key": d / f"{name}.key"}


def https_config(certs: dict[str, Path], root: Path | None = None, settings: dict | None = None) -> dict[str, Any]:
    tls: dict[str, Any] = {"cert": str(certs["cert"]), "key": str(certs["key"])}
    if root is not None:
        tls["root"] = str(root)
    cfg: dict[str, Any] = {
        "binds": [
            {"listeners": [{"protocol": "HTTPS", "tls": tls, "routes": [{"backends": [{"mcp": {"targets": [demo_target()]}}]}]}]}
        ]
    }
    if settings:
        cfg["config"] = settings
    return cfg


def https_url(gw: Any, host: str = "localhost") -> str:
    return f"https://{host}:{gw.port}/mcp"


def client_context(ca: Path, cert: dict[str, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert["cert"]), str(cert["key"]))
    return ctx


def sdk_legacy_session(url: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    """One legacy (initialize) session of the Python SDK over https: tools and an echo."""

    async def body(s: ClientSession) -> dict[str, Any]:
        tools = [t.name for t in (await step("tools/list", s.list_tools())).tools]
        r = await step("echo", s.call_tool("echo", {"message": "over tls"}))
        return {"server": s.server_info.name, "tools": tools, "echo": text_of(r.content)}

    out = sdk_session(url, {}, body, verify=ctx)
    return out


def test_python_sdk_legacy_and_modern_over_https(gateway, tmp_path):
    certs = make_certs(tmp_path / "pki")
    gw = gateway(https_config(certs))
    ctx = client_context(certs["ca"])
    for host in ("localhost", "127.0.0.1"):
        out = sdk_legacy_session(https_url(gw, host), ctx)
        assert out["server"] == "mcplex" and "echo" in out["tools"], out
        assert "over tls" in out["echo"], out

    async def modern() -> None:
        async with httpx2.AsyncClient(verify=ctx, timeout=STEP_TIMEOUT_S) as http:
            transport = streamable_http_client(https_url(gw), http_client=http)
            async with Client(transport, mode=MODERN, read_timeout_seconds=STEP_TIMEOUT_S) as c:
                assert c.protocol_version == MODERN
                tools = await step("tools/list", c.list_tools())
                assert "echo" in [t.name for t in tools.tools]
                r = await step("echo", c.call_tool("echo", {"message": "modern tls"}))
                assert "modern tls" in text_of(r.content), r

    anyio.run(modern)


def test_a_client_that_does_not_trust_the_ca_is_refused(gateway, tmp_path):
    certs = make_certs(tmp_path / "pki")
    gw = gateway(https_config(certs))
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    # ALPN: the gateway speaks HTTP/1.1 and says so.
    ctx = client_context(certs["ca"])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _ts_client(url: str, mode: str, ca: Path) -> dict:
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(ca))
    p = subprocess.run([str(NODE22), str(TS_CLIENT), url, mode, ""], capture_output=True, text=True,
                       timeout=90, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"ts_client printed nothing (exit {p.returncode})\nstdout: {p.stdout}\nstderr: {p.stderr}"
    out = json.loads(lines[-1])
    assert p.returncode == 0 and "error" not in out, f"ts_client ({mode}) failed: {out}\nstderr: {p.stderr[-2000:]}"
    return out


@pytest.mark.parametrize("mode", [MODERN, "legacy"])
def test_ts_client_over_https(gateway, tmp_path, mode):
    certs = make_certs(tmp_path / "pki")
    gw = gateway(https_config(certs))
    out = _ts_client(https_url(gw), mode, certs["ca"])
    assert out["server"] == "mcplex" and "echo" in out["tools"], out
    assert "from ts" in out["echo"] and "42" in out["add"], out
    if mode == MODERN:
        assert out["protocolVersion"] == MODERN, out


def test_conformance_suite_over_https(gateway, tmp_path, monkeypatch):
    # The suite's DNS-rebinding check sends `Host: evil.example.com`, and node verifies the
    # certificate against the Host header: the test certificate names it, so the request
    # reaches the gateway, which must refuse it by its Host.
    certs = make_certs(tmp_path / "pki", extra_names=("evil.example.com",))
    gw = gateway(https_config(certs))
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(certs["ca"]))
    results, log = run_suite(https_url(gw), tmp_path / "conformance")
    assert len(results) >= MIN_SCENARIOS, f"only {len(results)} scenarios ran\n{log[-4000:]}"
    failed = {n: r.problems() for n, r in results.items() if not r.passed}
    assert not failed, f"scenarios failing over HTTPS: {json.dumps(failed, indent=1)[:6000]}"


def test_mutual_tls_asks_for_a_certificate_the_ca_signed(gateway, tmp_path):
    pki = tmp_path / "pki"
    certs = make_certs(pki)
    alice = make_client_cert(pki)
    gw = gateway(https_config(certs, root=certs["ca"]))
    out = sdk_legacy_session(https_url(gw), client_context(certs["ca"], alice))
    assert "over tls" in out["echo"], out
    # Without a certificate the handshake fails (TLS 1.3 reports it at the first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
            with client_context(certs["ca"]).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n")
                if not tls.recv(100):
                    raise ConnectionError("closed")
    # A certificate from another CA is refused too.
    other = make_certs(tmp_path / "other")
    stranger = make_client_cert(tmp_path / "other", "mallory")
    assert other
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
            with client_context(certs["ca"], stranger).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n")
                if not tls.recv(100):
                    raise ConnectionError("closed")


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Reads until the gateway closes the connection; fails after `seconds`."""
    sock.settimeout(seconds)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"connection still open after {seconds} s (got {got[:200]!r})")


def test_hostile_tls_peers_leave_the_loop_serving_others(gateway, tmp_path):
    certs = make_certs(tmp_path / "pki")
    gw = gateway(https_config(certs, settings={"headerTimeout": "1s"}))
    ctx = client_context(certs["ca"])

    # A stalled handshake: half a ClientHello, then silence.
    stalled = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    stalled.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]))
    # Many handshakes started and abandoned.
    abandoned = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(bytes([0x16, 0x03, 0x01]))
        abandoned.append(s)
    # Garbage that claims to be a handshake record.
    garbage = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    garbage.sendall(bytes([0x16, 0x03, 0x03, 0x00, 0x05]) + b"\xff" * 5 + os.urandom(200))
    # A record type TLS does not have.
    nonsense = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    nonsense.sendall(b"\x00" * 64)

    # Meanwhile a well-behaved client is served.
    out = sdk_legacy_session(https_url(gw), ctx)
    assert "over tls" in out["echo"], out

    got = _closed_within(garbage, 5)
    assert not got.startswith(b"HTTP"), got  # an alert at most, never plaintext
    _closed_within(nonsense, 5)
    # The stalled handshake is cut off after headerTimeout, like a stalled request head.
    start = time.monotonic()
    _closed_within(stalled, 5)
    assert time.monotonic() - start < 4.5
    for s in abandoned:
        s.close()
    stalled.close()
    garbage.close()
    nonsense.close()

    # Plaintext HTTP on the TLS port gets a readable 400, then the close.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as plain:
        plain.sendall(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        got = _closed_within(plain, 5)
        assert got.startswith(b"HTTP/1.1 400 "), got
        assert b"https://" in got, got

    # A client that goes away mid-response (a large tools/list) costs nobody else anything.
    for _ in range(5):
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})  # fmt: skip
        tls.sendall(
            f"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        raw.close()

    out = sdk_legacy_session(https_url(gw), ctx)
    assert "over tls" in out["echo"], out
    assert gw.proc.poll() is None, gw.log()


def test_reload_reads_a_new_certificate(gateway, tmp_path):
    first = make_certs(tmp_path / "one")
    gw = gateway(https_config(first))
    assert "over tls" in sdk_legacy_session(https_url(gw), client_context(first["ca"]))["echo"]
    second = make_certs(tmp_path / "two")
    # Same paths in the config: the files change under it, and a reload reads them again.
    for k in ("cert", "key"):
        first[k].write_bytes(second[k].read_bytes())
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            out = sdk_legacy_session(https_url(gw), client_context(second["ca"]))
            break
        except Exception:  # noqa: BLE001 - the old certificate is still served until the reload lands
            time.sleep(0.2)
    else:
        raise AssertionError(f"the new certificate was not served after SIGHUP\n{gw.log()}")
    assert "over tls" in out["echo"], out
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
            client_context(first["ca"]).wrap_socket(raw, server_hostname="localhost")


def test_a_client_certificate_names_the_principal(gateway, tmp_path):
    """Mutual TLS without other authentication: the certificate's CN is the principal, so
    two clients' stateless requests to server-memory get separate children and files."""
    pki = tmp_path / "pki"
    certs = make_certs(pki)
    people = {name: make_client_cert(pki, name) for name in ("alice", "bob")}
    cfg = https_config(certs, root=certs["ca"])
    cfg["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]["targets"] = [memory_target(tmp_path)]
    gw = gateway(cfg)

    def call(who: str, name: str, args: dict) -> str:
        ctx = client_context(certs["ca"], people[who])
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args,
                "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}}  # fmt: skip
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": name}  # fmt: skip
        r = httpx2.post(https_url(gw), json=body, headers=headers, verify=ctx, timeout=STEP_TIMEOUT_S)
        assert r.status_code == 200, r.text
        return json.dumps(r.json()["result"])

    for who in people:
        call(who, "create_entities", {"entities": [{"name": f"{who}-note", "entityType": "note", "observations": ["x"]}]})
    assert "alice-note" in call("alice", "read_graph", {}) and "bob-note" not in call("alice", "read_graph", {})
    assert "bob-note" in call("bob", "read_graph", {}) and "alice-note" not in call("bob", "read_graph", {})
    files = sorted(p.name for p in tmp_path.glob("memory-*.jsonl"))
    assert [f.startswith("memory-cert_alice-") for f in files] == [True, False], files
    assert files[1].startswith("memory-cert_bob-"), files
