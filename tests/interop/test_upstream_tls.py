"""TLS to HTTP upstreams (issue #4): `https://` target URLs and the `backendTLS` route policy.

Each test makes a throwaway CA and a server certificate for `localhost` / 127.0.0.1 with the
`openssl` CLI (in the test's tmp dir), and puts a small TLS-terminating TCP proxy (asyncio + ssl,
in a thread of the test process) in front of `mcplex-demo --http`.  The proxy records the SNI
name of every handshake, so the tests can tell which name the gateway verified against.

- `root: ca.pem` trusts the test CA: calls work.
- Without `root` only the webpki roots are trusted: initialize fails (failClosed) with a JSON-RPC
  error naming the target and the certificate problem.
- `insecure: true` works without the CA, and the gateway says loudly that it does not verify.
- `hostname` overrides the name sent as SNI and verified: a URL with 127.0.0.1 and
  `hostname: localhost` works (SNI localhost); `hostname: wrong.example` fails verification.

Raw HTTP (http.client) to the gateway, with a timeout on every request.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, mcp_target

HTTP_TIMEOUT_S = 20.0
PROTOCOL = "2025-06-18"
CERT_PROBLEM = re.compile(r"certificate|UnknownIssuer|NotValidForName|unknown issuer", re.I)


# ---------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"openssl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"


def make_certs(d: Path, extra_names: tuple[str, ...] = ()) -> dict[str, Path]:
    """A CA (ca.pem) and a server certificate signed by it for DNS:localhost, IP:127.0.0.1
    and any `extra_names` (server.pem, server.key): EC P-256, valid for a day."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=mcplex test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=DNS:localhost,IP:127.0.0.1{''.join(',DNS:' + n for n in extra_names)}\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


# ---------------------------------------------------------------- the TLS proxy


class TlsProxy:
    """Terminates TLS on a free port (on every address `localhost` resolves to) and forwards
    the plaintext bytes to 127.0.0.1:backend_port.  Runs its own event loop in a thread."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.backend_port = backend_port
        self.sni: list[str | None] = []
        self.handshakes = 0
        self.errors: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.sni_callback = self._on_sni
        self.ctx = ctx
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, c: self.errors.append(str(c.get("exception") or c)))
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-proxy", daemon=True)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _on_sni(self, _sslobj: Any, name: str | None, _ctx: Any) -> None:
        self.sni.append(name)

    def start(self) -> "TlsProxy":
        self.thread.start()
        hosts = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)})
        for _ in range(5):
            port = free_port()
            fut = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._handle, host=hosts, port=port, ssl=self.ctx), self.loop
            )
            try:
                self.server = fut.result(timeout=10)
                self.port = port
                return self
            except OSError:
                continue  # the port was taken meanwhile (or on one of the addresses)
        raise RuntimeError("TLS proxy could not bind a port")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError as e:
            self.errors.append(f"backend connect: {e}")
            writer.close()
            return
        self.writers.add(up_writer)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, ssl.SSLError, ConnectionError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for w in list(self.writers):
                w.close()

        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=5)


@pytest.fixture
def tls_upstream(demo_http, tmp_path):
    """`mcplex-demo --http` behind a TLS proxy; yields (proxy, certs)."""
    certs = make_certs(tmp_path / "pki")
    demo = demo_http()
    proxy = TlsProxy(certs["cert"], certs["key"], demo.port).start()
    try:
        yield proxy, certs
    finally:
        proxy.stop()


def tls_config(url: str, backend_tls: dict[str, Any] | None) -> dict[str, Any]:
    mcp: dict[str, Any] = {"targets": [mcp_target("demo", url)]}
    if backend_tls is not None:
        mcp["policies"] = {"backendTLS": backend_tls}
    return {"mcp": mcp}


# ---------------------------------------------------------------- a raw MCP client


def _post(port: int, body: dict[str, Any], sid: str | None = None) -> tuple[int, dict[str, str], list[dict]]:
    """POSTs one JSON-RPC message to the gateway; returns (status, headers, messages)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if sid:
            headers["Mcp-Session-Id"] = sid
            headers["MCP-Protocol-Version"] = PROTOCOL
        conn.request("POST", "/mcp", json.dumps(body), headers)
        r = conn.getresponse()
        raw = r.read().decode()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    if not raw.strip():
        return r.status, hdrs, []
    if hdrs.get("content-type", "").startswith("text/event-stream"):
        msgs = []
        for block in raw.replace("\r\n", "\n").split("\n\n"):
            data = [ln[5:].lstrip() for ln in block.split("\n") if ln.startswith("data:")]
            if data:
                msgs.append(json.loads("\n".join(data)))
        return r.status, hdrs, msgs
    v = json.loads(raw)
    return r.status, hdrs, v if isinstance(v, list) else [v]


def _answer(msgs: list[dict], rid: int) -> dict:
    for m in msgs:
        if m.get("id") == rid and ("result" in m or "error" in m):
            return m
    raise AssertionError(f"no answer with id {rid} in {msgs}")


def initialize(port: int) -> tuple[str | None, dict]:
    """initialize (and notifications/initialized on success); returns (session id, answer)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "tls-test", "version": "0"}},
    }
    status, hdrs, msgs = _post(port, body)
    ans = _answer(msgs, 1)
    sid = hdrs.get("mcp-session-id")
    if "result" in ans:
        assert status == 200 and sid, (status, hdrs, msgs)
        st, _, _ = _post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        assert st == 202, st
    return sid, ans


def echo_works(gw, text: str) -> None:
    sid, ans = initialize(gw.port)
    assert "result" in ans, f"initialize failed: {ans}\n--- gateway log ---\n{gw.log()}"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": text}}}
    status, _, msgs = _post(gw.port, call, sid)
    ans = _answer(msgs, 2)
    assert status == 200 and "result" in ans, f"tools/call failed: {ans}\n--- gateway log ---\n{gw.log()}"
    assert ans["result"]["content"][0]["text"] == text, ans


def init_fails_on_the_certificate(gw) -> str:
    _, ans = initialize(gw.port)
    assert "error" in ans, f"initialize should fail (untrusted certificate), got {ans}"
    msg = ans["error"].get("message", "")
    assert "demo" in msg, f"the error does not name the target: {msg!r}"
    assert CERT_PROBLEM.search(msg), f"the error does not name the certificate problem: {msg!r}"
    print(f"initialize error: {msg}")
    return msg


# ---------------------------------------------------------------- the tests


def test_root_ca_verifies_the_upstream(gateway, tls_upstream):
    proxy, certs = tls_upstream
    gw = gateway(tls_config(f"https://localhost:{proxy.port}/mcp", {"root": str(certs["ca"])}))
    echo_works(gw, "over TLS \u00e9")
    assert proxy.handshakes >= 1, "the gateway never went through the TLS proxy"
    assert "localhost" in proxy.sni, f"SNI names seen: {proxy.sni}"
    assert "NOT verified" not in gw.log(), gw.log()


def test_webpki_roots_alone_reject_a_private_ca(gateway, tls_upstream):
    proxy, _ = tls_upstream
    # No policy: the https:// URL alone turns TLS on with the webpki roots.
    gw = gateway(tls_config(f"https://localhost:{proxy.port}/mcp", None))
    msg = init_fails_on_the_certificate(gw)
    # The reason as the README shows it.
    assert "target demo: TLS error: invalid peer certificate: UnknownIssuer" in msg, msg
    # The same with a backendTLS policy that names no root.
    gw2 = gateway(tls_config(f"https://localhost:{proxy.port}/mcp", {"hostname": "localhost"}))
    init_fails_on_the_certificate(gw2)


def test_insecure_accepts_any_certificate_and_says_so(gateway, tls_upstream):
    proxy, _ = tls_upstream
    gw = gateway(tls_config(f"https://localhost:{proxy.port}/mcp", {"insecure": True}))
    echo_works(gw, "insecure but working")
    assert proxy.handshakes >= 1
    assert re.search(r"upstream certificates are NOT verified", gw.log()), gw.log()


def test_hostname_overrides_the_verified_name(gateway, tls_upstream):
    proxy, certs = tls_upstream
    url = f"https://127.0.0.1:{proxy.port}/mcp"
    gw = gateway(tls_config(url, {"root": str(certs["ca"]), "hostname": "localhost"}))
    echo_works(gw, "by another name")
    assert proxy.sni and set(proxy.sni) == {"localhost"}, f"SNI should be the override: {proxy.sni}"

    # The override is what gets verified: a name the certificate does not hold fails.
    proxy.sni.clear()
    bad = gateway(tls_config(url, {"root": str(certs["ca"]), "hostname": "wrong.example"}))
    init_fails_on_the_certificate(bad)
    assert "wrong.example" in proxy.sni, f"SNI names seen: {proxy.sni}"
