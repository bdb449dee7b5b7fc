"""A real Ray cluster on this machine for the tests and the benchmark: a head and host nodes,
each a `ray start --block` process with its own temp dir, explicit ports and worker port
range, inside the caller's private network namespace (tests/cluster/netns.py).

A node is killed as a machine would die: its whole process tree (raylet, agents, workers,
the host actor and its sandboxes) at once, by SIGKILL. On two busy cores Ray's own start-up
waits can run out: a node starts at a higher priority (STARTING_NICENESS) and one that fails
to start is started again, up to NODE_START_ATTEMPTS times.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
NODE_START_ATTEMPTS = 4
NODE_START_TIMEOUT = 180.0
# A node starts ahead of the machine's other work (tests running beside): its raylet gives
# its Python agents 30 s to come up, which two busy cores can miss. Reset to 0 once it is up.
STARTING_NICENESS = -19
CLOSED_PORT = 9  # discard: nothing listens there in the namespace, so reports go nowhere


def ray_env() -> dict[str, str]:
    """Ray's usage reports off and aimed at a closed loopback port; node loss detected in
    seconds (the defaults take ~30 s, made for real networks: docs/deploy.md)."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_REPORT_URL": f"http://127.0.0.1:{CLOSED_PORT}/",
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_DEDUP_LOGS": "0",
        # How long a raylet waits for its agents to come up (two busy cores can be slow).
        "RAY_raylet_start_wait_time_s": "120",
    }


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, found before any dies (orphans would
    be re-parented out of reach)."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


@dataclass
class Node:
    name: str
    argv: list[str]
    env: dict[str, str]
    temp_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir.mkdir(parents=True)
            with self.log_path.open("ab") as log:
                log.write(f"--- start attempt {attempt}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    self.argv, env={**os.environ, **ray_env(), **self.env}, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=lambda: os.nice(STARTING_NICENESS))
            started = self._wait_started()
            self._renice(0)  # started or not: what runs from now on runs as anything else
            if started:
                return
            self.kill()
        raise RuntimeError(f"ray node {self.name} did not start:\n{self.log()[-4000:]}")

    def _wait_started(self) -> bool:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log().rsplit("--- start attempt", 1)[-1]:
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def _renice(self, niceness: int) -> None:
        assert self.process is not None
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.setpriority(os.PRIO_PROCESS, pid, niceness)

    def kill(self) -> None:
        if self.process is not None:
            kill_tree(self.process.pid)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def node_id(self) -> str:
        """Ray's id of this node, as its raylet logged it."""
        raylet_log = self.temp_dir / "session_latest" / "logs" / "raylet.out"
        for line in raylet_log.read_text(errors="replace").splitlines():
            if "Setting node ID node_id=" in line:
                return line.split("node_id=")[1].split()[0]
        raise LookupError(f"no node id in {raylet_log}")


class RayCluster:
    """A head (no CPUs: nothing of ours runs there) and host nodes offering `tci_host`."""

    def __init__(self, root: Path, port_base: int = 30000) -> None:
        self.root = root
        self.port_base = port_base
        self.nodes: list[Node] = []
        self.address = f"127.0.0.1:{port_base}"
        # Ray's sockets live in its temp dirs: their paths must fit AF_UNIX's 107 bytes.
        self.short_root = Path(tempfile.mkdtemp(prefix="tray", dir="/tmp"))

    def _ports(self, index: int) -> list[str]:
        base = self.port_base + 1000 * index + 10
        return ["--node-ip-address", "127.0.0.1",
                "--node-manager-port", str(base), "--object-manager-port", str(base + 1),
                "--dashboard-agent-listen-port", str(base + 2),
                "--dashboard-agent-grpc-port", str(base + 3),
                "--runtime-env-agent-port", str(base + 4), "--metrics-export-port", str(base + 5),
                "--min-worker-port", str(base + 100), "--max-worker-port", str(base + 399),
                "--object-store-memory", str(80 * 2**20), "--disable-usage-stats",
                "--include-log-monitor=false"]

    def _node(self, name: str, argv: list[str], env: dict[str, str]) -> Node:
        index = len(self.nodes)
        temp_dir = self.short_root / name
        node = Node(name, [RAY, "start", "--block", "--temp-dir", str(temp_dir),
                           *self._ports(index), *argv],
                    env, temp_dir, self.root / f"{name}.log")
        node.start()
        self.nodes.append(node)
        return node

    def start_head(self) -> Node:
        # No autoscaler monitor (nothing to scale): one Python process fewer to start.
        return self._node("head", ["--head", "--port", str(self.port_base), "--num-cpus", "0",
                                   "--include-dashboard=false", "--no-monitor"], {})

    def add_host(self, name: str, env: dict[str, str], cpus: int = 2) -> Node:
        """A node offering sessions, with its own TCI_ settings (its raylet's environment is
        its host actor's)."""
        return self._node(name, ["--address", self.address, "--num-cpus", str(cpus),
                                 "--resources", json.dumps({"tci_host": 1})], env)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.short_root, ignore_errors=True)


def release_host(env: dict[str, str]) -> None:
    """What a host killed with its node left behind (its sandbox directory's mounts, its
    cgroup parent), removed the way its next start would, then released. `env`: the host
    node's TCI_ settings."""
    from tci.config import Settings
    from tci.sandbox.factory import make_launcher

    launcher = make_launcher(Settings(
        data_dir=Path(env["TCI_DATA_DIR"]), sandbox_uid_base=int(env["TCI_SANDBOX_UID_BASE"]),
        network="none", pool_size=0))
    with contextlib.suppress(Exception):  # best effort: never hide the run's own outcome
        launcher.prepare()
        launcher.cleanup()
