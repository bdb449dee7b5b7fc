"""Shared fixtures: a real `tci serve` process on loopback with a real data directory,
real sandboxes and real workers. Nothing under test is mocked."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TCI = str(Path(sys.executable).with_name("tci"))
TEST_WORKSPACE_BYTES = 256 << 20
# Deadlines for a server's start and graceful stop: bounds that tell "stuck" from "slow" on a
# busy 2-core machine, not speed claims (both usually take a few seconds).
START_SECONDS = 120
STOP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TCI_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run([TCI, *args], env=full_env, capture_output=True, text=True, timeout=60)


@dataclass
class Server:
    """A running `tci serve` and what a client needs to reach it."""

    data_dir: Path
    port: int
    key: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path = field(default=Path("/dev/null"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, key: str | None = None, timeout: float = 120) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=timeout,
            headers={"Authorization": f"Bearer {key or self.key}"},
        )

    def new_key(self, name: str) -> str:
        result = cli(self.data_dir, "keys", "create", "--name", name, env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def execute(self, code: str, session_id: str | None = None, key: str | None = None,
                **extra) -> httpx.Response:
        body = {"language": "python", "code": code, **extra}
        if session_id:
            body["session_id"] = session_id
        with self.client(key) as client:
            return client.post("/v1/tci/execute", json=body)

    def run(self, code: str, session_id: str | None = None, **extra) -> dict:
        """Execute and return `data`, asserting the call itself succeeded."""
        response = self.execute(code, session_id, **extra)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["errors"] is None
        return body["data"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        self.log_path = self.data_dir / "server.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [TCI, "serve", "--port", str(self.port)],
            env={**os.environ, "TCI_DATA_DIR": str(self.data_dir), **self.env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # Generous: the start-up self-check starts a probe session, slow on a loaded machine.
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tci serve exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"tci serve did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def make_server(tmp_path: Path, **settings: str) -> Server:
    data_dir = tmp_path / f"data-{free_port()}"
    data_dir.mkdir(parents=True)
    env = {f"TCI_{name.upper()}": str(value) for name, value in settings.items()}
    # Warm workers import numpy, pandas and matplotlib: on two cores, every test server
    # filling a pool would slow the whole suite. Only the shared server keeps one.
    env.setdefault("TCI_POOL_SIZE", "0")
    # Each session's volume is reserved in full on the disk: at the default 1 GiB, the shared
    # server's sessions of a whole run would commit more disk than a CI machine has free.
    env.setdefault("TCI_WORKSPACE_MAX_BYTES", str(TEST_WORKSPACE_BYTES))
    # Likewise each session's TCI_PIDS_LIMIT is kept for it out of the host's pids: half the
    # default lets the shared server hold twice the sessions a run leaves alive.
    env.setdefault("TCI_PIDS_LIMIT", "128")
    created = cli(data_dir, "keys", "create", "--name", "test", env=env)
    assert created.returncode == 0, created.stderr
    server = Server(data_dir, free_port(), created.stdout.strip().splitlines()[-1], env)
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests that need only default settings."""
    instance = make_server(tmp_path_factory.mktemp("tci"), pool_size="2")
    yield instance
    instance.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with specific settings, e.g. server_factory(execute_timeout=2)."""
    started: list[Server] = []

    def factory(**settings: str) -> Server:
        instance = make_server(tmp_path, **settings)
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll for an observable event, failing after a bounded deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")


def outputs_of(data: dict, kind: str) -> list:
    return [o["data"] for o in data["outputs"] if o["type"] == kind]


def stdout_of(data: dict) -> str:
    return "".join(outputs_of(data, "stdout"))
