"""Shared pieces of the adversarial suite: a hardened server per module (small limits, so that
every bomb hits its limit quickly), a canary session that must keep answering while each test
attacks the same server, and helpers that look at a session from the host (its processes,
tasks and directories), never taking the server's word for it.

The canary: for every test, a thread pings `x += 1` in a session of its own on the same server
from before the test starts until it ends; the test fails unless every ping answered the next
integer within LIVENESS_SECONDS (a generous liveness bound, not a speed claim). The slowest
ping of each test is reported in the terminal summary.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import Server, make_server, outputs_of, wait_for
from tests.conftest import run_json as run_json  # the security tests' own, shared
from tests.host import all_pids, children_of, in_session, pid_ns, session_processes

if TYPE_CHECKING:
    from tests.security.netns import Namespace

MiB = 1 << 20
LIVENESS_SECONDS = 5.0
PING_INTERVAL = 0.2
DEADLINE = 30.0
# A value only the server's environment holds: it must never show up inside a sandbox.
SECRET = f"tci-secret-{uuid.uuid4().hex}"

# Small limits so that every bomb hits its limit within a second or two.
LIMITS = {
    "memory_limit_bytes": 256 * MiB,
    "pids_limit": 64,
    "workspace_max_bytes": 64 * MiB,
    "workspace_max_files": 2048,
    "tmp_max_bytes": 16 * MiB,
    "open_files_limit": 256,
    "execute_timeout": 5,
    "interrupt_grace_seconds": 1,
    "max_output_bytes": 1 * MiB,
    "max_request_bytes": 8 * MiB,
    "max_file_bytes": 2 * MiB,
    "max_files_bytes": 4 * MiB,
    "pool_size": 0,
    "test_marker": SECRET,
}

CANARY_REPORT: list[tuple[str, int, float]] = []


def start_hardened(tmp_path_factory: pytest.TempPathFactory, **overrides) -> Server:
    return make_server(tmp_path_factory.mktemp("tci-security"), **{**LIMITS, **overrides})


@pytest.fixture(scope="module")
def hardened(tmp_path_factory) -> Iterator[Server]:
    """The module's own server with LIMITS (a module may override this fixture)."""
    instance = start_hardened(tmp_path_factory)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def server_ns() -> Iterator[Namespace]:
    """A network namespace of the module's own, "the host" of a server started inside it
    (netns.start_namespaced); the egress tests change its network freely."""
    from tests.security.netns import Namespace  # netns.py builds on this module

    namespace = Namespace()
    yield namespace
    namespace.close()


# -- the canary ----------------------------------------------------------------------------


class CanarySession:
    """A session that only ever counts: its `x` must go up by one per ping, forever."""

    def __init__(self, server: Server) -> None:
        self.server = server
        data = server.run("x = 0\nx")
        assert data["outputs"] == [{"type": "execute_result", "data": {"text/plain": "0"}}]
        self.session_id = data["session_id"]
        self.value = 0


class Canary(threading.Thread):
    """Pings the canary session until stopped; records each ping's outcome and duration."""

    def __init__(self, session: CanarySession) -> None:
        super().__init__(daemon=True, name="canary")
        self.session = session
        self.stopping = threading.Event()
        self.durations: list[float] = []
        self.failures: list[str] = []

    def ping(self, client: httpx.Client) -> None:
        expected = self.session.value + 1
        body = {"language": "python", "code": "x += 1\nx", "session_id": self.session.session_id}
        started = time.monotonic()
        try:
            response = client.post("/v1/tci/execute", json=body)
        except httpx.HTTPError as exc:
            self.failures.append(f"ping {expected}: {exc!r}")
            return
        finally:
            self.durations.append(time.monotonic() - started)
        if response.status_code != 200:
            self.failures.append(f"ping {expected}: {response.status_code} {response.text}")
            return
        outputs = response.json()["data"]["outputs"]
        if outputs != [{"type": "execute_result", "data": {"text/plain": str(expected)}}]:
            self.failures.append(f"ping {expected}: {outputs}")
            return
        self.session.value = expected

    def run(self) -> None:
        with self.session.server.client(timeout=60) as client:
            self.ping(client)
            while not self.stopping.wait(PING_INTERVAL):
                self.ping(client)
            self.ping(client)  # one more after the test's last action

    def finish(self) -> tuple[int, float]:
        self.stopping.set()
        self.join(120)
        assert not self.is_alive(), "the canary's last ping never returned"
        slowest = max(self.durations, default=0.0)
        assert not self.failures, f"the canary session stopped answering: {self.failures}"
        assert slowest < LIVENESS_SECONDS, (
            f"a canary ping took {slowest:.2f} s (liveness bound {LIVENESS_SECONDS:g} s)")
        return len(self.durations), slowest


@pytest.fixture(scope="module")
def canary_session(hardened) -> CanarySession:
    return CanarySession(hardened)


@pytest.fixture(autouse=True)
def canary(canary_session) -> Iterator[Canary]:
    thread = Canary(canary_session)
    thread.start()
    yield thread
    thread.stopping.set()
    thread.join(120)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    thread = getattr(item, "funcargs", {}).get("canary")
    if isinstance(thread, Canary):
        pings, slowest = thread.finish()  # raises: the test fails, not its teardown
        CANARY_REPORT.append((item.nodeid, pings, slowest))
    return result


def pytest_terminal_summary(terminalreporter) -> None:
    if not CANARY_REPORT:
        return
    terminalreporter.section("canary session (a ping every 0.2 s during each test)")
    for nodeid, pings, slowest in CANARY_REPORT:
        terminalreporter.write_line(f"{slowest:6.3f} s max over {pings:3d} pings  {nodeid}")
    overall = max(slowest for _, _, slowest in CANARY_REPORT)
    terminalreporter.write_line(f"slowest canary ping of the run: {overall:.3f} s")


# -- calls ---------------------------------------------------------------------------------


def new_session(server: Server, code: str = "x = 1") -> str:
    data = server.run(code)
    assert not outputs_of(data, "error"), data
    return data["session_id"]


def ended_message(server: Server, session_id: str) -> str:
    response = server.execute("1", session_id)
    assert response.status_code == 410, response.text
    body = response.json()
    assert body["data"] is None and len(body["errors"]) == 1, body
    return body["errors"][0]


# -- the host's view of a session ----------------------------------------------------------


def sandbox_dir(server: Server) -> Path:
    """Where a server keeps its sessions' directories (named by a hash of its data dir)."""
    tag = hashlib.sha256(str(server.data_dir.resolve()).encode()).hexdigest()[:12]
    path = Path("/var/tmp/tci") / tag
    assert path.is_dir(), path
    return path


def session_root(session_id: str) -> Path:
    matches = glob.glob(f"/var/tmp/tci/*/{session_id}")
    assert len(matches) == 1, matches
    return Path(matches[0])


def workspace_of(session_id: str) -> Path:
    return session_root(session_id) / "vol" / "work"


def status_of(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def ids_of(pid: int, field: str = "Uid") -> list[int]:
    value = status_of(pid).get(field)
    return [int(v) for v in value.split()] if value else []


class HostView:
    """A session as the host sees it: its host uid, directory and processes. Its processes are
    those in its pid namespace (told apart from other servers' sessions, which reuse uids),
    plus its outer process (bubblewrap's, or the template's fork)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.directory = session_root(session_id)
        self.workspace = self.directory / "vol" / "work"
        self.uid = self.workspace.stat().st_uid
        assert self.uid >= 200_000, self.uid
        self.outer, self.namespaces = session_processes(session_id)
        # bubblewrap leaves an outer process in the host's pid namespace; a fork does not.
        assert len(self.namespaces) == 1, (self.outer, self.namespaces)

    def processes(self) -> list[int]:
        return [pid for pid in all_pids()
                if pid_ns(pid) in self.namespaces
                or (pid in self.outer and in_session(pid, self.session_id))]

    def inner_processes(self) -> list[int]:
        """Processes inside the sandbox's pid namespace (bwrap's pid 1, the worker, ...)."""
        return [pid for pid in all_pids() if pid_ns(pid) in self.namespaces]

    def tasks(self) -> int:
        """Threads of every process in the sandbox (what the pids limit counts)."""
        total = 0
        for pid in self.inner_processes():
            with contextlib.suppress(KeyError, ValueError):
                total += int(status_of(pid)["Threads"])
        return total

    def worker_pid(self) -> int:
        """The worker: the first child of the sandbox's pid 1 (orphaned daemons the session
        started are reparented to pid 1 too, later)."""
        inner = {pid: status_of(pid).get("NSpid", "").split()[-1:] for pid in
                 self.inner_processes()}
        init = [pid for pid, nspid in inner.items() if nspid == ["1"]]
        assert len(init) == 1, inner
        children = children_of(init[0])
        assert children, f"no worker found on the host for {self.session_id}"
        return min(children, key=lambda pid: int(inner[pid][0]))

    def assert_gone(self) -> None:
        wait_for(lambda: not self.processes(), f"processes of {self.session_id} to end")
        wait_for(lambda: not self.directory.exists(), f"{self.directory} to be removed")
