"""Shared fixtures: a real `tci serve` process on loopback with a real data directory,
real sandboxes and real workers. Nothing under test is mocked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.process import http_ok, stop_process, wait_until_up

REPO = Path(__file__).resolve().parents[1]
TCI = str(Path(sys.executable).with_name("tci"))
TEST_WORKSPACE_BYTES = 256 << 20
# Deadlines for a server's start and graceful stop: bounds that tell "stuck" from "slow" on a
# busy 2-core machine, not speed claims (both usually take a few seconds).
START_SECONDS = 120
STOP_SECONDS = 60
# How long a background call may take to return: past the client's own 120 s timeout.
CALL_SECONDS = 130


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
    # What starts `tci serve` (argv it is appended to): nothing, or a wrapper that sets up
    # what the server inherits, as `make serve` or a shell would.
    started_by: list[str] = field(default_factory=list)

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

    def argv(self) -> list[str]:
        return [*self.started_by, TCI, "serve", "--port", str(self.port)]

    def start(self) -> None:
        self.log_path = self.data_dir / "server.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), env={**os.environ, "TCI_DATA_DIR": str(self.data_dir), **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        # Generous: the start-up self-check starts a probe session, slow on a loaded machine.
        wait_until_up(self.process, lambda: http_ok(f"{self.url}/health"),
                      timeout=START_SECONDS, what="tci serve", log=self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig, STOP_SECONDS)


class Call(threading.Thread):
    """One execute call running in the background, started at once, so a test can look at or
    act on the session while the code runs (the code says where it is by creating files in
    its workspace); `sent` is set once the whole request is on the wire."""

    def __init__(self, server: Server, code: str, session_id: str) -> None:
        super().__init__(daemon=True)
        self.server, self.code, self.session_id = server, code, session_id
        self.sent = threading.Event()
        self.response: httpx.Response | None = None
        self.failure: BaseException | None = None
        self.start()

    def _trace(self, event_name: str, info: dict) -> None:
        if event_name == "http11.send_request_body.complete":
            self.sent.set()

    def run(self) -> None:
        body = {"language": "python", "code": self.code, "session_id": self.session_id}
        try:
            with self.server.client() as client:
                self.response = client.post("/v1/tci/execute", json=body,
                                            extensions={"trace": self._trace})
        except BaseException as exc:  # reported by result()
            self.failure = exc
            self.sent.set()

    def result(self) -> dict:
        """The call's `data`, asserting it returned (within a generous bound) with 200."""
        self.join(CALL_SECONDS)
        assert not self.is_alive(), "the call did not return"
        assert self.failure is None, repr(self.failure)
        assert self.response is not None
        assert self.response.status_code == 200, self.response.text
        return self.response.json()["data"]


# The server is started as `make serve` starts it, and as `nohup` would: GNU make runs its
# commands with posix_spawn, which leaves glibc's internal signals 32 and 33 ignored, and
# nohup ignores SIGHUP. SIG_IGN survives fork and exec; no program of a run may inherit it.
IGNORING_SIGNALS = [sys.executable, "-c", (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "ignore = ctypes.create_string_buffer(b'\\x01' + bytes(31))  # SIG_IGN\n"
    "for number in (1, 32, 33):\n"
    "    assert libc.syscall(13, ctypes.c_long(number), ignore, None, ctypes.c_long(8)) == 0\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n")]


def make_server(tmp_path: Path, started_by: list[str] | None = None,
                **settings: str) -> Server:
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
    server = Server(data_dir, free_port(), created.stdout.strip().splitlines()[-1], env,
                    started_by=started_by or [])
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


def run_json(server: Server, code: str, session_id: str | None = None) -> tuple[str, object]:
    """Run code whose last line prints one JSON value; return (session id, value)."""
    data = server.run(code, session_id)
    assert not outputs_of(data, "error"), data
    return data["session_id"], json.loads(stdout_of(data))


def assert_streams_while_running(stream_from: Server, release_through: Server,
                                 session_id: str) -> None:
    """A streamed cell prints 'first', then waits for a file 'go': 'first' must arrive, as
    one whole-line output event, while the cell still runs (the test writes 'go' only then,
    through `release_through`), and the stream ends with the result of both lines."""
    code = ("print('first', flush=True)\n"
            "while not os.path.exists('go'):\n    time.sleep(0.05)\nprint('second')")
    body = {"language": "python", "code": code, "stream": True, "session_id": session_id}
    with stream_from.client() as client, \
            client.stream("POST", "/v1/tci/execute", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "event: output"
        # The whole line, as one event (kernel/coalesce.py).
        first = json.loads(next(lines).removeprefix("data: "))
        assert first == {"type": "stdout", "data": "first\n"}
        with release_through.client() as other:
            put = other.put(f"/v1/tci/sessions/{session_id}/files/go", content=b"")
            assert put.status_code < 300, put.text
        rest = [line for line in lines if line]
    assert rest[-2] == "event: result"
    assert stdout_of(json.loads(rest[-1].removeprefix("data: "))["data"]) == "first\nsecond\n"


# What a sandbox's /proc lists, as [pid, comm] pairs: only its own two processes. pid 1 is the
# sandbox's init, bubblewrap's or the fork template's ("tci-init"); pid 2 the worker.
LIST_PROC = (
    "import os, json\n"
    "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
    "print(json.dumps([[p, open(f'/proc/{p}/comm').read().strip()] for p in pids]))"
)
SANDBOX_PROCESSES = ([[1, "bwrap"], [2, "python3.11"]], [[1, "tci-init"], [2, "python3.11"]])


def outputs_of(data: dict, kind: str) -> list:
    return [o["data"] for o in data["outputs"] if o["type"] == kind]


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """A streamed execute's server-sent events, as (event name, JSON payload) pairs."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def stdout_of(data: dict) -> str:
    return "".join(outputs_of(data, "stdout"))
