"""What the fork path keeps ready so that no creation pays for it on the request path.

- `NetworkPool`: egress networks (TCI_NETWORK=egress) made ahead. A session's egress network
  is a network namespace with the egress filter loaded and a slirp4netns serving it: two
  programs to run (nft, slirp4netns), tens of milliseconds, most of a forked session's start.
  Made here in the background instead, a few at a time, each fresh (never given to two
  sessions), and handed to a fork, which joins it (setns) instead of making an empty one. A
  session whose network is torn down takes it along, as before. Runs with
  TCI_RUN_NETWORK=egress take theirs from the same pool.
- `EmptyNetworks`: loopback-only namespaces for runs, reused one run at a time.
- `RunCgroups`: empty cgroups for runs, reused (a run's cgroup is empty once it ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.sandbox.cgroups import CgroupDriver, CgroupLimits, SessionCgroup
from tci.sandbox.egress_filter import EgressFilter
from tci.sandbox.network import Egress, start_egress
from tci.worker import linux

log = logging.getLogger(__name__)
T = TypeVar("T")


def _in_a_new_network_namespace(work: Callable[[], T]) -> T:
    """`work()` run in a new, empty network namespace, by a short-lived thread of its own (a
    namespace is per thread until a process is made in it), which ends with it: the namespace
    never touches the server's other threads."""
    outcome: list[tuple[bool, T | BaseException]] = []

    def run() -> None:
        try:
            linux.unshare(linux.CLONE_NEWNET)
            outcome.append((True, work()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="tci-netns")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]  # ok: work() returned it


def _open_own_namespace() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def new_network_namespace() -> int:
    """A new, empty network namespace, held by the returned fd."""
    try:
        return _in_a_new_network_namespace(_open_own_namespace)
    except OSError as exc:
        raise SandboxUnavailable(f"could not make a network namespace: {exc}") from exc


class NetworkPool:
    """Egress networks made ahead, each handed out once."""

    def __init__(self, egress_filter: EgressFilter, size: int, log_dir: Path,
                 retry_seconds: float) -> None:
        self.egress_filter = egress_filter
        self.size = size
        self.log_dir = log_dir
        log_dir.mkdir(mode=0o700, exist_ok=True)
        self.retry_seconds = retry_seconds
        self.ready: list[Egress] = []
        self._made = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._refill_forever(), name="tci-netns-pool")
            self._wake.set()

    async def take(self) -> Egress:
        """A ready network, or one made now if none is."""
        self._wake.set()
        while self.ready:
            egress = self.ready.pop(0)
            if egress.process.returncode is None:
                return egress
            await egress.stop()  # its slirp4netns died while it waited: not handed out
        return await self.make()

    async def make(self) -> Egress:
        self._made += 1
        fd = await asyncio.to_thread(new_network_namespace)
        namespace = await self.egress_filter.attach_fd(fd)
        return await start_egress(namespace, self.log_dir / f"{self._made}.log")

    async def _refill_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.ready) < self.size:
                try:
                    self.ready.append(await self.make())
                except SandboxUnavailable as exc:
                    log.warning("could not make an egress network ahead: %s", exc.message)
                    await asyncio.sleep(self.retry_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ready, self.ready = self.ready, []
        for egress in ready:
            await egress.stop()


@dataclass
class EmptyNetwork:
    namespace: int  # an fd on the namespace
    socket_stats: tuple[int, ...]  # its /proc/net/sockstat and sockstat6, opened inside it


class EmptyNetworks:
    """Network namespaces holding only a loopback, for runs without a network: made once and
    reused, one run at a time each, so no run pays for making one and tearing it down (the
    kernel's dearest namespace). Nothing of a run stays in its namespace: its sockets close
    with its processes, and it may change no setting there (no CAP_NET_ADMIN over it). A
    namespace where a run left TCP connections behind (TIME_WAIT holds a port for a minute)
    is not reused, so that the next run's bind() of that port never fails for it."""

    def __init__(self) -> None:
        self._free: list[EmptyNetwork] = []

    async def take(self) -> EmptyNetwork:
        if self._free:
            return self._free.pop()
        return await asyncio.to_thread(_in_a_new_network_namespace, _empty_network_here)

    def give_back(self, network: EmptyNetwork) -> None:
        if _holds_no_tcp(network):
            self._free.append(network)
        else:
            close_network(network)

    def close(self) -> None:
        while self._free:
            close_network(self._free.pop())


def _empty_network_here() -> EmptyNetwork:
    # A /proc/net file shows the namespace it was opened in, read again at any time from
    # anywhere: the check after each run needs no thread and no setns. sockstat's counts are
    # the namespace's own and cost nothing to read (unlike /proc/net/tcp, which walks every
    # TCP socket of the host).
    stats = tuple(os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
                  for name in ("sockstat", "sockstat6")
                  if os.path.exists(f"/proc/thread-self/net/{name}"))
    return EmptyNetwork(_open_own_namespace(), stats)


def _holds_no_tcp(network: EmptyNetwork) -> bool:
    """No TCP socket in use and none in TIME_WAIT ("TCP: inuse 0 orphan 0 tw 0 ...",
    "TCP6: inuse 0")."""
    for stats in network.socket_stats:
        for line in os.pread(stats, 4096, 0).decode().splitlines():
            name, _, counts = line.partition(":")
            if name not in ("TCP", "TCP6"):
                continue
            fields = counts.split()
            values = dict(zip(fields[::2], fields[1::2], strict=False))
            if values.get("inuse", "0") != "0" or values.get("tw", "0") != "0":
                return False
    return True


def close_network(network: EmptyNetwork) -> None:
    for fd in (network.namespace, *network.socket_stats):
        os.close(fd)


class RunCgroups:
    """Empty cgroups for runs, reused: a run takes one, sets its memory limit, gives it back.
    `driver` is the launcher's (None only with TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS).

    The usual run (a kept cgroup whose limits already fit, given back empty) costs a list
    pop and one small read per hierarchy, done on the event loop (`take_kept`,
    `give_back_if_empty`); making one, changing its limits or killing what a run left is
    file work for a thread (`take`, `give_back`)."""

    def __init__(self, settings: Settings, driver: Callable[[], CgroupDriver | None]) -> None:
        self.settings = settings
        self.driver = driver
        self._free: list[SessionCgroup] = []
        self._limits: dict[str, CgroupLimits] = {}  # what each cgroup's files say now
        # Each kept cgroup's cgroup.procs, one per hierarchy (opened at each check: a path
        # string spares pathlib's cost on the request path).
        self._procs: dict[str, list[str]] = {}
        self._names = itertools.count(1)

    def limits(self, memory_bytes: int) -> CgroupLimits:
        return CgroupLimits(memory_bytes=memory_bytes, pids_max=self.settings.pids_limit,
                            cpu_weight=self.settings.cpu_weight,
                            io_weight=self.settings.io_weight)

    def take_kept(self, memory_bytes: int) -> SessionCgroup | None:
        """A kept cgroup whose limits are these already, or None (then `take`)."""
        limits = self.limits(memory_bytes)
        for index in range(len(self._free) - 1, -1, -1):
            if self._limits.get(self._free[index].name) == limits:
                return self._free.pop(index)
        return None

    def give_back_if_empty(self, cgroup: SessionCgroup) -> bool:
        """Kept for the next run if no process is in it (True); else False, and `give_back`
        must kill what is left. A run's processes cannot leave its cgroup (no cgroupfs in
        the sandbox, no capability), nor make child cgroups: its own cgroup.procs in each
        hierarchy says it all."""
        for path in self._procs.setdefault(
                cgroup.name, [os.path.join(path, "cgroup.procs") for path in cgroup.paths]):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
            try:
                if os.read(fd, 64).strip():
                    return False
            finally:
                os.close(fd)
        self._free.append(cgroup)
        return True

    def take(self, memory_bytes: int) -> SessionCgroup | None:
        driver = self.driver()
        if driver is None:
            return None
        limits = self.limits(memory_bytes)
        while self._free:
            cgroup = self._free.pop()
            if self._limits.get(cgroup.name) == limits:
                return cgroup  # as the last run left them (the usual case: one memory_mb)
            try:
                cgroup.set_limits(limits)
            except (OSError, SandboxUnavailable):
                self._discard(cgroup)
                continue
            self._limits[cgroup.name] = limits
            return cgroup
        cgroup = driver.create(f"run-{next(self._names)}", limits)
        self._limits[cgroup.name] = limits
        return cgroup

    def give_back(self, cgroup: SessionCgroup) -> bool:
        """True if the run left nothing behind (its uid may then serve another run)."""
        if not cgroup.procs():
            self._free.append(cgroup)
            return True
        # A run cancelled or given up on: whatever is left is killed; the cgroup is not reused.
        emptied = cgroup.kill_all()
        self._discard(cgroup)
        return emptied

    def _discard(self, cgroup: SessionCgroup) -> None:
        self._limits.pop(cgroup.name, None)
        self._procs.pop(cgroup.name, None)
        with contextlib.suppress(OSError, SandboxUnavailable):
            cgroup.kill_all()
            cgroup.remove()

    def close(self) -> None:
        while self._free:
            self._discard(self._free.pop())
