"""The tci server under test: started on a free loopback port with a temporary data dir,
stopped (with every sandbox it started) when the run ends, however it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tests.process import http_ok, stop_process, wait_until_up

from . import footprint
from .http import HOST, Connection, encode_json, encode_request

# Enough room for the 50-creation burst on top of the warm pool and any other live session;
# an explicit TCI_MAX_SESSIONS in the environment wins.
_BENCH_MAX_SESSIONS = "200"
_BENCH_PIDS_LIMIT = "64"
_BENCH_WORKSPACE_BYTES = str(128 * 1024 * 1024)
# Ends a session through the public API: the worker exits, the server sees it die and
# frees its sandbox (the API has no "end session" call).
END_SESSION_CODE = "import os; os._exit(0)"


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tci_command() -> list[str]:
    script = Path(sys.executable).with_name("tci")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tci.cli"]


def check_data(status: int, body: bytes, expect_stdout: str | None = None) -> dict[str, Any]:
    """The `data` of a successful execute response; BenchError for anything else."""
    if status != 200:
        raise BenchError(f"HTTP {status}: {body[:300]!r}")
    data = json.loads(body)["data"]
    for output in data["outputs"]:
        if output["type"] == "error":
            raise BenchError(f"the code failed: {str(output['data'])[:300]}")
    if expect_stdout is not None:
        stdout = "".join(o["data"] for o in data["outputs"] if o["type"] == "stdout")
        if stdout != expect_stdout:
            raise BenchError(f"expected stdout {expect_stdout!r}, got {stdout!r}")
    return data


T = TypeVar("T")


def to_stderr(text: str) -> None:
    """A part's progress, when it runs alone (`python -m bench.<part>`)."""
    print(text, file=sys.stderr, flush=True)


def on_own_server(work: Path, name: str, measure: Callable[[TciServer], T],
                  env: dict[str, str] | None = None) -> T:
    """`measure` against a server of its own (the environment's settings, `env` over them),
    started and settled first and stopped whatever happens."""
    server = TciServer(work, env=env, name=name)
    try:
        server.start()
        server.settle(timeout=120)
        return measure(server)
    finally:
        server.stop()


class TciServer:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None,
                 name: str = "tci-server") -> None:
        """`env`: settings that override the environment's (a configuration under test)."""
        self.log_dir = log_dir
        self.port = free_port()
        self.key = ""
        self.process: subprocess.Popen | None = None
        self._data = tempfile.TemporaryDirectory(prefix="tci-bench-")
        self.data_dir = Path(self._data.name)
        self.env = {**os.environ, **(env or {}), "TCI_DATA_DIR": str(self.data_dir)}
        self.env.setdefault("TCI_MAX_SESSIONS", _BENCH_MAX_SESSIONS)
        # So many sessions at once must fit the host's pids (TCI_HOST_PIDS_RESERVE) and disk
        # (each volume's quota is reserved): smaller per-session quotas than the defaults.
        self.env.setdefault("TCI_PIDS_LIMIT", _BENCH_PIDS_LIMIT)
        self.env.setdefault("TCI_WORKSPACE_MAX_BYTES", _BENCH_WORKSPACE_BYTES)
        self.log_path = log_dir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        created = subprocess.run(
            [*_tci_command(), "keys", "create", "--name", "bench"],
            env=self.env, capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0:
            raise BenchError(f"tci keys create failed: {created.stderr.strip()}")
        self.key = created.stdout.strip().splitlines()[-1]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*_tci_command(), "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_until_up(self.process, lambda: http_ok(f"{self.url}/health"), timeout=timeout,
                      what="tci serve", log=lambda: f"see {self.log_path}", error=BenchError)

    def stop(self) -> None:
        """SIGTERM (the server ends its sessions), then SIGKILL to its process group."""
        stop_process(self.process, signal.SIGTERM, timeout=60)
        self._data.cleanup()

    # -- API -------------------------------------------------------------------------------

    def execute_request(self, code: str, session_id: str | None = None) -> bytes:
        body: dict[str, Any] = {"language": "python", "code": code}
        if session_id:
            body["session_id"] = session_id
        return encode_json("POST", "/v1/tci/execute", self.port, self.auth, body)

    def get_request(self, path: str, authorized: bool = True) -> bytes:
        return encode_request("GET", path, self.port, self.auth if authorized else {})

    def execute(self, conn: Connection, code: str, session_id: str | None = None,
                expect_stdout: str | None = None) -> dict[str, Any]:
        status, body = conn.roundtrip(self.execute_request(code, session_id))
        return check_data(status, body, expect_stdout)

    def end_session(self, conn: Connection, session_id: str) -> None:
        status, body = conn.roundtrip(self.execute_request(END_SESSION_CODE, session_id))
        if status not in (200, 404, 410):
            raise BenchError(f"ending {session_id}: HTTP {status}: {body[:200]!r}")

    def delete_request(self, session_id: str) -> bytes:
        return encode_request("DELETE", f"/v1/tci/sessions/{session_id}", self.port, self.auth)

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def pool_state(self) -> tuple[int, int] | None:
        """(ready, size) of the warm pool if /health reports one."""
        pool = self.health().get("pool")
        if isinstance(pool, dict) and isinstance(pool.get("ready"), int):
            size = pool.get("size", pool.get("target"))
            if isinstance(size, int):
                return pool["ready"], size
        return None

    def settle(self, timeout: float = 60.0, fallback_sleep: float | None = None) -> bool:
        """Wait until the warm pool is full again, so that background refills neither steal
        the CPU from the next measurement nor leave it a cold start. False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.pool_state()
            if state is None:  # no pool info: sleep a little, longer if a pool is configured
                configured = int(self.env.get("TCI_POOL_SIZE", "0") or 0)
                time.sleep(fallback_sleep if fallback_sleep is not None else
                           (2.0 if configured > 0 else 0.2))
                return True
            ready, size = state
            if ready >= size:
                time.sleep(0.1)
                return True
            time.sleep(0.05)
        return False

    # -- resources ---------------------------------------------------------------------------

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server process (all its threads) and by the processes
        of its sandboxes (those alive now)."""
        assert self.process is not None
        return _cpu_seconds(self.process.pid), sum(map(_cpu_seconds, self._descendants()))


    def processes(self) -> list[int]:
        """The server process and every descendant of it."""
        assert self.process is not None
        return [self.process.pid, *self._descendants()]

    def session_processes(self) -> dict[int, tuple[int | None, bool]]:
        """Every descendant of the server: pid -> (PSS in bytes or None, is a worker). A
        session's worker is the largest process in its cgroup (bwrap or fork alike)."""
        pss = {pid: _pss(pid) for pid in self._descendants()}
        largest: dict[str, int] = {}
        for pid, value in pss.items():
            session = footprint.session_of(pid)
            if session is not None and (session not in largest
                                        or (value or 0) > (pss[largest[session]] or 0)):
                largest[session] = pid
        workers = set(largest.values())
        return {pid: (value, pid in workers) for pid, value in pss.items()}

    def _descendants(self) -> list[int]:
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            found.append(pid)
        return found


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None

