"""A guard in front of a real MCP server over HTTP, for the upstream-credential tests (issue #14).

`Guard(backend_port, token=...)` listens on a free port (plain, or TLS with `tls=(cert, key)`)
and, for each HTTP request the gateway makes:

- records it (`.seen`: method, path, lower-cased headers, and the JSON-RPC method of a POST body);
- with a `token`, answers 401 with a `WWW-Authenticate` challenge unless `Authorization` is
  exactly `Bearer <token>`;
- applies the first matching fault, if any (`faults`: a list of [jsonrpc method, action]; an
  action is an HTTP status to answer with, or "stall" to never answer), each used once;
- else forwards the request to 127.0.0.1:backend_port and streams the answer back (SSE
  included). One request per connection: the answer the gateway gets says `Connection: close`
  and the guard closes after it.

`listen_later=True` reserves the port without listening, so connections are refused until
`.listen()` (the retry test's "refused before anything was sent").  Runs its own event loop in a
thread; `.stop()` ends it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port

CHALLENGE = 'Bearer realm="guard", error="invalid_token"'
HEAD_LIMIT = 64 * 1024


class Guard:
    def __init__(
        self,
        backend_port: int,
        token: str | None = None,
        tls: tuple[Path, Path] | None = None,
        faults: list[list[Any]] | None = None,
        listen_later: bool = False,
    ) -> None:
        self.backend_port = backend_port
        self.token = token
        self.faults = [list(f) for f in faults or []]
        self.seen: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.ctx: ssl.SSLContext | None = None
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.ctx = ctx
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _l, c: self.errors.append(str(c.get("exception") or c)))
        self.thread = threading.Thread(target=self.loop.run_forever, name="guard", daemon=True)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = free_port()
        self.thread.start()
        if not listen_later:
            self.listen()

    @property
    def url(self) -> str:
        scheme = "https" if self.ctx else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def listen(self) -> "Guard":
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, host="127.0.0.1", port=self.port, ssl=self.ctx), self.loop
        )
        self.server = fut.result(timeout=10)
        return self

    def methods(self) -> list[str]:
        """The HTTP methods seen, in order."""
        return [r["method"] for r in self.seen]

    def rpc(self, method: str) -> list[dict[str, Any]]:
        """The POSTs whose body was a JSON-RPC `method`."""
        return [r for r in self.seen if r.get("rpc") == method]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        lower = {k.lower(): v for k, v in headers}
        body = b""
        if "content-length" in lower:
            body = await reader.readexactly(int(lower["content-length"]))
        rpc = None
        if body:
            try:
                rpc = json.loads(body).get("method")
            except (ValueError, AttributeError):
                rpc = None
        self.seen.append({"method": method, "path": path, "headers": lower, "rpc": rpc})

        if self.token is not None and lower.get("authorization") != f"Bearer {self.token}":
            msg = json.dumps({"error": "invalid_token"}).encode()
            writer.write(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                + f"WWW-Authenticate: {CHALLENGE}\r\nContent-Length: {len(msg)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + msg
            )
            await writer.drain()
            return
        for f in self.faults:
            if f[0] == rpc:
                self.faults.remove(f)
                if f[1] == "stall":
                    await asyncio.sleep(3600)
                    return
                status = int(f[1])
                writer.write(
                    f"HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                return

        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        self.writers.add(up_writer)
        try:
            out = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.backend_port}"]
            out += [f"{k}: {v}" for k, v in headers if k.lower() not in ("host", "connection")]
            out.append("Connection: close")
            up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            await relay_response(up_reader, writer)
        finally:
            self.writers.discard(up_writer)
            up_writer.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for w in list(self.writers):
                w.close()
            # Handlers still waiting (a stalled request, an open stream) end here, not with
            # the loop.
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=5)


async def relay_response(up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies one HTTP response, its head saying `Connection: close` whatever the upstream
    said, and returns at its end (by Content-Length, chunked framing, or the upstream closing):
    an upstream may keep the connection alive even when asked not to."""
    head = await up.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith("connection:")]
    lower = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in kept)}
    out = "\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n"
    writer.write(out.encode("latin-1"))
    status = int(lines[0].split(" ", 2)[1])
    if status in (204, 304) or 100 <= status < 200:
        await writer.drain()
        return
    if "chunked" in lower.get("transfer-encoding", "").lower():
        while True:
            size_line = await up.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            writer.write(size_line)
            if size == 0:
                # Trailers (usually none), then the blank line that ends the message.
                while (line := await up.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(line)
                writer.write(b"\r\n")
                break
            writer.write(await up.readexactly(size + 2))
            await writer.drain()
    elif "content-length" in lower:
        writer.write(await up.readexactly(int(lower["content-length"])))
    else:
        while data := await up.read(65536):
            writer.write(data)
            await writer.drain()
    await writer.drain()


@pytest.fixture
def guards():
    """guards(backend_port, ...) makes a Guard that is stopped when the test ends."""
    made: list[Guard] = []

    def make(*args: Any, **kw: Any) -> Guard:
        g = Guard(*args, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def port_is_closed(port: int) -> bool:
    """Whether nothing accepts on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True
