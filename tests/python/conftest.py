"""Fixtures for the Python client suite: real corestate servers on 127.0.0.1.

Every server a test starts gets a fresh port and a fresh data directory.
glommio's listener sets SO_REUSEPORT, so a leftover server on a reused port
would silently steal connections: fresh ports, and a server counts as ready
only once its own log says it listens on its port (`Server._wait_ready`). Each
server is killed by its own PID (SIGKILL, then wait) when the test ends,
and the tail of its stderr is attached to the report of a failing test.

Coroutine tests (`async def test_...`) are run by a small hook below with
`asyncio.run` under a per-test time limit, so the suite needs no asyncio
plugin.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from rstmdb import Client

HOST = "127.0.0.1"
SHARDS = 2
READY_TIMEOUT_S = 20.0
READY_POLL_INTERVAL_S = 0.05
# Starts in a row on fresh ports that another process answered first (see
# Server._wait_ready) before a test fails.
FOREIGN_LISTENER_RETRIES_MAX = 5
TEST_TIMEOUT_S = 60.0
LOG_TAIL_BYTES = 6000

# The server reads these; a developer's shell must not change what we test.
_SCRUBBED_ENV_PREFIXES = ("RSTMDB_", "CORESTATE_")

# The token and its SHA-256 hash (docs/PROTOCOL.md §3.3).
AUTH_TOKEN = "secret"
AUTH_TOKEN_HASH = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"


def server_binary() -> str:
    binary = os.environ.get("CORESTATE_BIN")
    if not binary:
        binary = str(Path(__file__).resolve().parents[2] / "target" / "debug" / "corestate")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"corestate binary not found or not executable: {binary} "
                    "(build it with `cargo build --bins` or set CORESTATE_BIN)")
    return binary


_HANDED_OUT_PORTS: set[int] = set()
FRESH_PORT_ATTEMPTS_MAX = 1000


def fresh_port() -> int:
    """A free port this test session has never handed out (a port picked
    earlier but not bound yet may be offered again by the kernel)."""
    for _ in range(FRESH_PORT_ATTEMPTS_MAX):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port
    raise RuntimeError("no port left that this session has not handed out already")


def listener_pids(port: int) -> list[int] | None:
    """The processes listening on `port` as `ss` names them; None when it
    cannot tell (not installed, or no process named)."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pids = [int(m) for m in re.findall(r"pid=(\d+)", out)]
    return pids or None


class Server:
    """One corestate process. `restart()` keeps the data directory."""

    def __init__(self, data_dir: Path, log_dir: Path, config_file: Path | None, name: str):
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.config_file = config_file
        self.name = name
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_paths: list[Path] = []

    @property
    def log_path(self) -> Path:
        return self.log_paths[-1]

    def start(self) -> None:
        assert self.proc is None, "server already running"
        for _ in range(FOREIGN_LISTENER_RETRIES_MAX):
            if self._start_once():
                return
        pytest.fail(f"{FOREIGN_LISTENER_RETRIES_MAX} fresh ports in a row were taken by "
                    "another process before corestate listened on them")

    def _start_once(self) -> bool:
        self.port = fresh_port()
        log_path = self.log_dir / f"{self.name}-{len(self.log_paths)}.stderr"
        self.log_paths.append(log_path)
        args = [
            server_binary(),
            "--bind", f"{HOST}:{self.port}",
            "--data-dir", str(self.data_dir),
            "--shards", str(SHARDS),
            "--fsync", "every_write",
            # No test here uses the HTTP API: keep its fixed default port free.
            "--http-listen", "off",
        ]
        if self.config_file is not None:
            args += ["--config", str(self.config_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        env.setdefault("RUST_BACKTRACE", "1")
        # Readiness reads the start-up line, an info-level log.
        env["RUST_LOG"] = "info"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self._wait_ready()

    def _listens(self) -> bool:
        """Whether this run has logged that it listens on its own port."""
        line = f"listening on {HOST}:{self.port} ".encode()
        try:
            return line in self.log_path.read_bytes()
        except OSError:
            return False

    def _wait_ready(self) -> bool:
        """True once the port takes a connection, no process but this run
        listens on it (as `ss` tells), and this run logged that it listens
        there. A connection alone proves nothing: glommio sets SO_REUSEPORT,
        so another process that bound the same port first would answer.
        A port another process also holds is given up (the run is killed
        and False returned) and the caller starts again on another."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                pytest.fail(f"corestate exited with status {code} before accepting "
                            f"connections\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    pass
                answered = True
            except OSError:
                answered = False
            if answered:
                pids = listener_pids(self.port)
                if pids is not None and any(pid != self.proc.pid for pid in pids):
                    self.kill()
                    return False
                if self._listens():
                    return True
                # Ours, bound but not done logging its start: poll again.
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"corestate did not accept connections on port {self.port} "
                            f"within {READY_TIMEOUT_S} s\n{self.log_tail()}")
            time.sleep(READY_POLL_INTERVAL_S)

    def kill(self) -> None:
        """SIGKILL exactly the process this object started, then reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self) -> None:
        """Crash the server (SIGKILL) and start it again on the same data dir."""
        self.kill()
        self.start()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, token: str | None = None, **kwargs) -> Client:
        """An unconnected client; use as `async with server.client() as c:`."""
        kwargs.setdefault("connect_timeout", 5.0)
        kwargs.setdefault("request_timeout", 10.0)
        return Client(HOST, self.port, token=token, **kwargs)

    def log_tail(self) -> str:
        parts = []
        for path in self.log_paths:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            tail = data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
            parts.append(f"--- {path.name} (last {len(tail)} chars) ---\n{tail}")
        return "\n".join(parts) or "(no server output)"


@pytest.fixture
def start_server(request, tmp_path):
    """Factory: `start_server(config_yaml=None)` returns a running Server."""
    servers: list[Server] = []
    request.node.corestate_servers = servers

    def start(config_yaml: str | None = None) -> Server:
        index = len(servers)
        config_file = None
        if config_yaml is not None:
            config_file = tmp_path / f"config-{index}.yaml"
            config_file.write_text(config_yaml)
        data_dir = tmp_path / f"data-{index}"
        data_dir.mkdir()
        server = Server(data_dir, tmp_path, config_file, f"server-{index}")
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def server(start_server) -> Server:
    """A running server without auth."""
    return start_server()


@pytest.fixture
def auth_server(start_server) -> Server:
    """A running server that requires the bearer token `secret`."""
    return start_server(
        "auth:\n"
        "  required: true\n"
        "  token_hashes:\n"
        f"    - \"{AUTH_TOKEN_HASH}\"\n"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in getattr(item, "corestate_servers", []):
            report.sections.append((f"corestate {server.name} stderr", server.log_tail()))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    coro = pyfuncitem.obj(**kwargs)
    asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))
    return True
