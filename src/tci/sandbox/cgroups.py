"""Kernel-enforced resources per session: one cgroup with memory, pids and CPU-share limits.

Layout, in every hierarchy used:  <cgroup mount>/<parent_name>/<session_name>
- cgroup v1 (a hierarchy per controller, e.g. /sys/fs/cgroup/memory): memory, pids, cpu,
  cpuacct (CPU time) and freezer (to kill a tree that forks while it is being killed);
- cgroup v2 (one hierarchy, e.g. /sys/fs/cgroup): memory, pids, cpu enabled down to the sessions.
The parent holds no process: sessions are its leaves. Its CPU weight stays at the default, so
on CPU all sessions together weigh as much as one ordinary group next to the host's others; its
pids.max (limit_tasks) keeps the host's reserve of pids out of the sessions' reach.

A sandbox joins its session's cgroup before it runs anything of its own (bubblewrap through
attach_argv; a fork from the template as the first thing its init does, through fds on the
parents, worker/confine.py), so every process it ever forks is counted and limited from the
start, and its cgroup namespace then shows the session's cgroup as "/".

Every operation is a few small synchronous reads and writes of cgroupfs files (plus short
polls while the kernel freezes or reaps tasks); async callers run them in a thread.
Must run as root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_CONTROLLERS = ("memory", "pids", "cpu")
# Used when the host offers them, never required: the disk I/O weight (CgroupLimits.io_weight).
V1_OPTIONAL = ("blkio",)
V2_OPTIONAL = ("io",)
MOUNTINFO = Path("/proc/self/mountinfo")
SYS_BLOCK = Path("/sys/block")  # each device's queue/scheduler: "[bfq]" marks the one in use

# cpu_weight is in cgroup v2 units: 100 is the default share, 1..10000 the kernel's range.
# v1 expresses the same ratio in cpu.shares, where 1024 is the default (range 2..262144).
CPU_WEIGHT_DEFAULT = 100
CPU_WEIGHT_MAX = 10000
_V1_SHARES_PER_WEIGHT = 1024 / CPU_WEIGHT_DEFAULT
# io_weight is in the same v2 units; bfq's weight files (v1 blkio.bfq.weight, v2 io.bfq.weight)
# take 1..1000, so larger weights are capped there.
IO_WEIGHT_BFQ_MAX = 1000

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# How long to wait for the kernel: freezing a tree, tasks exiting after SIGKILL, rmdir.
_SETTLE_SECONDS = 5.0
# A tree freezes in milliseconds; one that does not (a task stuck in the kernel) is killed
# unfrozen, and the kill loop catches what it forks meanwhile.
_FREEZE_SECONDS = 1.0


class CgroupError(SandboxUnavailable):
    """The host's cgroups cannot do what a session needs (says what is missing)."""


@dataclass(frozen=True)
class CgroupLimits:
    """Limits of one session.

    memory_bytes: RAM of the whole tree (tmpfs pages it writes included), swap off.
    pids_max: tasks at once, threads included (the kernel counts tasks, not processes).
    cpu_weight: CPU share relative to other sessions when the CPU is contended, in cgroup v2
        units: 100 = normal, 200 = twice as much, range 1..10000 (v1: cpu.shares = weight*10.24).
    io_weight: disk I/O share when a disk is contended, same units. Written where the kernel
        has a file for it (v2 io.weight / io.bfq.weight, v1 blkio.bfq.weight); it acts only on
        devices whose I/O scheduler is bfq (or, for io.weight, with io.cost enabled).
    """

    memory_bytes: int
    pids_max: int
    cpu_weight: int = CPU_WEIGHT_DEFAULT
    io_weight: int = CPU_WEIGHT_DEFAULT

    def __post_init__(self) -> None:
        if self.memory_bytes < 1 << 20:
            raise ValueError(f"memory_bytes must be at least 1 MiB, not {self.memory_bytes}")
        if self.pids_max < 1:
            raise ValueError(f"pids_max must be at least 1, not {self.pids_max}")
        if not 1 <= self.cpu_weight <= CPU_WEIGHT_MAX:
            raise ValueError(f"cpu_weight must be in 1..{CPU_WEIGHT_MAX}, not {self.cpu_weight}")
        if not 1 <= self.io_weight <= CPU_WEIGHT_MAX:
            raise ValueError(f"io_weight must be in 1..{CPU_WEIGHT_MAX}, not {self.io_weight}")

    @property
    def cpu_shares(self) -> int:
        """The weight as cgroup v1 cpu.shares."""
        return max(2, round(self.cpu_weight * _V1_SHARES_PER_WEIGHT))


# --- small file helpers ------------------------------------------------------------------


def _write(path: Path, value: str | int) -> None:
    """One write(2) of the whole value: cgroupfs parses each write on its own. No O_CREAT:
    a missing file means a missing controller, which must fail, not create a plain file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CgroupError(f"{path} does not exist (is its controller enabled?)") from None
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _write_if_present(path: Path, value: str | int) -> None:
    """For optional knobs: a file the kernel does not offer here is skipped, not an error."""
    if path.exists():
        _write(path, value)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _read_keyed(path: Path, key: str) -> int:
    """A "key value" line of a flat-keyed file (memory.events, pids.events, cpu.stat ...);
    0 when the file or the key is absent (that counter is not kept on this kernel).
    Read with os calls, not Path.read_text: two such reads follow every warm call, and
    pathlib's text file costs 15 us a read against 4 us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    wanted = key.encode()
    for line in text.splitlines():
        name, _, value = line.partition(b" ")
        if name == wanted:
            return int(value)
    return 0


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(pid) for pid in path.read_text().split()}
    except FileNotFoundError:
        return set()


def _wait_until(done: Callable[[], bool], timeout: float = _SETTLE_SECONDS) -> bool:
    """Poll a cgroupfs condition; the kernel gives no cheaper portable notification."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _subtree_bottom_up(directory: Path) -> list[Path]:
    """The cgroup and its descendants, deepest first (the order rmdir needs)."""
    if not directory.is_dir():
        return []
    return [Path(root) for root, _, _ in os.walk(directory, topdown=False)]


def _rmdir_all(directories: Iterable[Path]) -> None:
    """rmdir each cgroup tree, retrying briefly: tasks killed a moment ago may still be
    leaving, and until they have, the kernel answers EBUSY."""
    for top in directories:
        for directory in _subtree_bottom_up(top):
            error: OSError | None = None

            def gone(directory: Path = directory) -> bool:
                nonlocal error
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    return True
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise CgroupError(f"cannot remove cgroup {directory}: {exc}") from exc
                    error = exc
                    return False
                return True

            if not _wait_until(gone):
                raise CgroupError(f"cannot remove cgroup {directory}: {error} (processes left?)")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a valid cgroup name: {name!r}")


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- sessions ------------------------------------------------------------------------------


class SessionCgroup(ABC):
    """The cgroup(s) of one session: how to enter them, what the kernel counted, teardown."""

    name: str

    @property
    @abstractmethod
    def paths(self) -> list[Path]:
        """The session's directories, one per hierarchy."""

    def attach_argv(self) -> list[str]:
        """An argv prefix, run as root, that moves its own process into the session's
        cgroup(s) and then execs the rest of the command. If a move fails the shell stops
        there: nothing runs outside its limits."""
        moves = [f"echo $$ > {shlex.quote(str(path / 'cgroup.procs'))}" for path in self.paths]
        return ["/bin/sh", "-c", " && ".join([*moves, 'exec "$@"']), "sh"]

    def procs(self) -> list[int]:
        """Host pids of every process in the session (zombies excluded by the kernel)."""
        pids: set[int] = set()
        for path in self.paths:
            for directory in _subtree_bottom_up(path):
                pids |= _read_pids(directory / "cgroup.procs")
        return sorted(pids)

    @abstractmethod
    def set_limits(self, limits: CgroupLimits) -> None:
        """Write the limits (also to change them on a live session)."""

    @abstractmethod
    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this session (its own record)."""

    @abstractmethod
    def pids_limit_hit(self) -> int:
        """fork/clone calls refused because pids_max was reached."""

    @abstractmethod
    def cpu_seconds(self) -> float:
        """CPU time used by every process the session ever had, user + system."""

    @abstractmethod
    def kill_all(self) -> bool:
        """SIGKILL every process, forks racing the kill included; True once none is left."""

    def remove(self) -> None:
        """Remove the session's directories (kill_all first); raises CgroupError if busy."""
        _rmdir_all(self.paths)


class SessionCgroupV1(SessionCgroup):
    def __init__(self, name: str, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.dirs = dict(dirs)  # controller -> directory; co-mounted controllers share one

    @property
    def paths(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def set_limits(self, limits: CgroupLimits) -> None:
        memory = self.dirs["memory"]
        memsw = memory / "memory.memsw.limit_in_bytes"
        # The kernel keeps memsw (memory + swap) >= memory: raise memsw first, lower it last.
        current = _read_int(memory / "memory.limit_in_bytes") or 0
        order = [memsw, memory / "memory.limit_in_bytes"]
        if limits.memory_bytes < current:
            order.reverse()
        for path in order:
            # memsw exists only with swap accounting on; without it, swappiness 0 is the
            # remaining way to keep the session's pages out of swap.
            if path is not memsw or memsw.exists():
                _write(path, limits.memory_bytes)
        _write(memory / "memory.swappiness", 0)
        _write(self.dirs["pids"] / "pids.max", limits.pids_max)
        _write(self.dirs["cpu"] / "cpu.shares", limits.cpu_shares)
        if "blkio" in self.dirs:  # bfq's file; CFQ's blkio.weight left the kernel in 5.0
            _write_if_present(self.dirs["blkio"] / "blkio.bfq.weight",
                              min(limits.io_weight, IO_WEIGHT_BFQ_MAX))

    def oom_kills(self) -> int:
        return _read_keyed(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def pids_limit_hit(self) -> int:
        return _read_keyed(self.dirs["pids"] / "pids.events", "max")

    def cpu_seconds(self) -> float:
        return (_read_int(self.dirs["cpuacct"] / "cpuacct.usage") or 0) / 1e9

    def _freeze(self, state: str) -> bool:
        path = self.dirs["freezer"] / "freezer.state"
        if not path.exists():
            return False
        _write(path, state)
        return _wait_until(lambda: path.read_text().strip() == state, timeout=_FREEZE_SECONDS)

    def kill_all(self) -> bool:
        # Frozen, the tree cannot fork between reading the pids and killing them; SIGKILL
        # takes effect at the thaw. A task that will not freeze (stuck in the kernel) is
        # killed anyway, and the loop catches whatever it forked meanwhile.
        def empty() -> bool:
            pids = self.procs()
            if pids:
                try:
                    self._freeze("FROZEN")
                    _kill_pids(self.procs())
                finally:
                    self._freeze("THAWED")
            return not pids

        return _wait_until(empty)


class SessionCgroupV2(SessionCgroup):
    def __init__(self, name: str, path: Path, controllers: Iterable[str] = V2_CONTROLLERS):
        self.name = name
        self.path = path
        self.controllers = frozenset(controllers)

    @property
    def paths(self) -> list[Path]:
        return [self.path]

    def set_limits(self, limits: CgroupLimits) -> None:
        if "memory" in self.controllers:
            _write(self.path / "memory.max", limits.memory_bytes)
            swap = self.path / "memory.swap.max"
            if swap.exists():  # absent when the kernel does not account swap
                _write(swap, 0)
        if "pids" in self.controllers:
            _write(self.path / "pids.max", limits.pids_max)
        if "cpu" in self.controllers:
            _write(self.path / "cpu.weight", limits.cpu_weight)
        if "io" in self.controllers:  # io.cost's file and bfq's, whichever the kernel has
            _write_if_present(self.path / "io.weight", limits.io_weight)
            _write_if_present(self.path / "io.bfq.weight", min(limits.io_weight, IO_WEIGHT_BFQ_MAX))

    def oom_kills(self) -> int:
        return _read_keyed(self.path / "memory.events", "oom_kill")

    def pids_limit_hit(self) -> int:
        return _read_keyed(self.path / "pids.events", "max")

    def cpu_seconds(self) -> float:
        # cpu.stat's usage_usec is kept by every v2 cgroup, cpu controller enabled or not.
        return _read_keyed(self.path / "cpu.stat", "usage_usec") / 1e6

    def kill_all(self) -> bool:
        kill = self.path / "cgroup.kill"
        if kill.exists():
            # Linux 5.14+: the kernel kills the whole subtree, forks in flight included.
            with contextlib.suppress(CgroupError):  # removed meanwhile: nothing to kill
                _write(kill, 1)
            return _wait_until(lambda: not self.procs())
        return self._kill_by_freezing()

    def _kill_by_freezing(self) -> bool:
        """Before cgroup.kill: freeze, SIGKILL every pid, thaw, until empty (the v2 freezer
        lets a fatal signal through, so the kill lands even while frozen)."""
        freeze, events = self.path / "cgroup.freeze", self.path / "cgroup.events"

        def empty() -> bool:
            pids = self.procs()
            if pids:
                try:
                    _write(freeze, 1)
                    _wait_until(lambda: _read_keyed(events, "frozen") == 1,
                                timeout=_FREEZE_SECONDS)
                    _kill_pids(self.procs())
                finally:
                    _write(freeze, 0)
            return not pids

        return _wait_until(empty)


# --- drivers ---------------------------------------------------------------------------------


def _unescape_mount_path(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries(mountinfo: Path = MOUNTINFO) -> Iterator[tuple[Path, str, list[str]]]:
    """Each mount as (mount point, filesystem type, super options)."""
    for line in mountinfo.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3:
            yield Path(_unescape_mount_path(fields[4])), tail[0], tail[2].split(",")


def cgroup_mounts(mountinfo: Path = MOUNTINFO) -> tuple[list[Path], dict[str, Path]]:
    """The cgroup v2 mounts, and the first mount of each v1 controller we use."""
    v2: list[Path] = []
    v1: dict[str, Path] = {}
    for mountpoint, fstype, options in mount_entries(mountinfo):
        if fstype == "cgroup2":
            v2.append(mountpoint)
        elif fstype == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS + V1_OPTIONAL:
                    v1.setdefault(option, mountpoint)
    return v2, v1


class CgroupDriver(ABC):
    """Session cgroups of one server, all under <mount>/<parent_name> in each hierarchy."""

    version: int

    def __init__(self, parent_name: str) -> None:
        _check_name(parent_name)
        self.parent_name = parent_name

    @classmethod
    def detect(cls, parent_name: str, mountinfo: Path = MOUNTINFO) -> CgroupDriver:
        """The driver for this host: v2 when its hierarchy offers memory, pids and cpu, else
        v1 when those controllers (and cpuacct, freezer) have hierarchies; else CgroupError
        naming what is missing."""
        v2_mounts, v1_mounts = cgroup_mounts(mountinfo)
        problems: list[str] = []
        for mount in v2_mounts:
            try:
                available = set((mount / "cgroup.controllers").read_text().split())
            except OSError as exc:
                problems.append(f"cgroup v2 at {mount} is unreadable ({exc})")
                continue
            missing = [name for name in V2_CONTROLLERS if name not in available]
            if not missing:
                _check_writable(mount)
                optional = tuple(name for name in V2_OPTIONAL if name in available)
                return CgroupV2Driver(mount, parent_name, V2_CONTROLLERS + optional)
            problems.append(f"cgroup v2 at {mount} lacks the {', '.join(missing)} controller(s)")
        if not v2_mounts:
            problems.append("no cgroup v2 hierarchy is mounted")
        missing = [name for name in V1_CONTROLLERS if name not in v1_mounts]
        if not missing:
            for mount in {v1_mounts[name] for name in V1_CONTROLLERS}:
                _check_writable(mount)
            usable = {name: mount for name, mount in v1_mounts.items()
                      if name in V1_CONTROLLERS or os.access(mount, os.W_OK)}
            return CgroupV1Driver(usable, parent_name)
        problems.append(f"cgroup v1 has no hierarchy for {', '.join(missing)}")
        raise CgroupError("no usable cgroups for session limits: " + "; ".join(problems))

    @property
    @abstractmethod
    def parents(self) -> list[Path]:
        """The parent directory in each hierarchy."""

    @abstractmethod
    def _session(self, session_name: str) -> SessionCgroup: ...

    @abstractmethod
    def _prepare_parent(self) -> None: ...

    def create(self, session_name: str, limits: CgroupLimits) -> SessionCgroup:
        """A new session cgroup with its limits written (before any process joins)."""
        _check_name(session_name)
        self._prepare_parent()
        session = self._session(session_name)
        created: list[Path] = []
        try:
            for path in session.paths:
                try:
                    path.mkdir()
                except FileExistsError:
                    raise CgroupError(f"cgroup {path} already exists") from None
                created.append(path)
            session.set_limits(limits)
        except BaseException:
            _rmdir_all(created)
            raise
        return session

    def cleanup_stale(self) -> list[str]:
        """Kill and remove the session cgroups a previous run left under the parent; the
        names removed."""
        names = sorted({child.name for parent in self.parents if parent.is_dir()
                        for child in parent.iterdir() if child.is_dir()})
        for name in names:
            session = self._session(name)
            session.kill_all()
            session.remove()
        return names

    @abstractmethod
    def limit_tasks(self, tasks: int) -> None:
        """Cap the tasks of all sessions together (the parent's pids.max; the kernel counts a
        parent's descendants against it, in v1 as in v2), so that sessions at their own limits
        cannot take the pids the host needs to fork."""

    def remove_parent(self) -> None:
        """At shutdown: remove any session left, then the parent itself."""
        self.cleanup_stale()
        _rmdir_all(self.parents)

    @abstractmethod
    def io_weight_problem(self, block: Path = SYS_BLOCK) -> str | None:
        """Why CgroupLimits.io_weight would have no effect on this host (None: it has an
        effect on some device). Said once at start, in the log and /health, since the weight
        is otherwise written where it can be and silently skipped where it cannot."""


def _bfq_devices(block: Path) -> list[str]:
    """Block devices whose I/O scheduler in use is bfq (the one marked [bfq])."""
    found = []
    for scheduler in sorted(block.glob("*/queue/scheduler")):
        with contextlib.suppress(OSError):
            if "[bfq]" in scheduler.read_text().split():
                found.append(scheduler.parent.parent.name)
    return found


def _no_bfq_device(block: Path) -> str | None:
    if _bfq_devices(block):
        return None
    return f"no block device in {block} uses the bfq I/O scheduler, the one that applies it"


def _check_writable(mount: Path) -> None:
    if not os.access(mount, os.W_OK):
        raise CgroupError(
            f"{mount} is not writable: session cgroups need the server to run as root with a "
            "writable cgroup filesystem"
        )


class CgroupV1Driver(CgroupDriver):
    version = 1

    def __init__(self, mounts: Mapping[str, Path], parent_name: str) -> None:
        super().__init__(parent_name)
        self.mounts = {name: mounts[name] for name in V1_CONTROLLERS}
        self.mounts.update((name, mounts[name]) for name in V1_OPTIONAL if name in mounts)

    @property
    def parents(self) -> list[Path]:
        return list(dict.fromkeys(mount / self.parent_name for mount in self.mounts.values()))

    def limit_tasks(self, tasks: int) -> None:
        self._prepare_parent()
        _write(self.mounts["pids"] / self.parent_name / "pids.max", tasks)

    def _session(self, session_name: str) -> SessionCgroupV1:
        return SessionCgroupV1(session_name, {
            name: mount / self.parent_name / session_name for name, mount in self.mounts.items()
        })

    def _prepare_parent(self) -> None:
        for parent in self.parents:
            parent.mkdir(exist_ok=True)

    def io_weight_problem(self, block: Path = SYS_BLOCK) -> str | None:
        blkio = self.mounts.get("blkio")
        if blkio is None:
            return "there is no writable cgroup v1 blkio hierarchy"
        if not (blkio / "blkio.bfq.weight").exists():
            # CFQ's blkio.weight left the kernel in 5.0; bfq's file appears once bfq is loaded.
            return f"{blkio} has no blkio.bfq.weight (the kernel has no bfq I/O scheduler loaded)"
        return _no_bfq_device(block)


class CgroupV2Driver(CgroupDriver):
    version = 2

    def __init__(self, mount: Path, parent_name: str,
                 controllers: Iterable[str] = V2_CONTROLLERS) -> None:
        super().__init__(parent_name)
        self.mount = mount
        self.parent = mount / parent_name
        # Tests pass fewer controllers to run the process handling on a v2 hierarchy that
        # has none enabled; detect() always requires all of V2_CONTROLLERS.
        self.controllers = tuple(controllers)

    @property
    def parents(self) -> list[Path]:
        return [self.parent]

    def limit_tasks(self, tasks: int) -> None:
        self._prepare_parent()
        if "pids" in self.controllers:  # tests run without it; detect() requires it
            _write(self.parent / "pids.max", tasks)

    def _session(self, session_name: str) -> SessionCgroupV2:
        return SessionCgroupV2(session_name, self.parent / session_name, self.controllers)

    def _prepare_parent(self) -> None:
        # A v2 controller acts in a cgroup only if every ancestor enables it for its children.
        required = [name for name in self.controllers if name not in V2_OPTIONAL]
        _enable_controllers(self.mount, required)
        self.parent.mkdir(exist_ok=True)
        _enable_controllers(self.parent, required)
        for name in set(self.controllers) - set(required):
            try:
                _enable_controllers(self.mount, [name])
                _enable_controllers(self.parent, [name])
            except CgroupError:  # optional: sessions go on without it
                self.controllers = tuple(c for c in self.controllers if c != name)

    def io_weight_problem(self, block: Path = SYS_BLOCK) -> str | None:
        if "io" not in self.controllers:
            return f"the cgroup v2 hierarchy at {self.mount} offers no io controller"
        # io.weight acts through io.cost where the root's io.cost.qos enables it on a device.
        with contextlib.suppress(OSError):
            if "enable=1" in (self.mount / "io.cost.qos").read_text().split():
                return None
        return _no_bfq_device(block)


def _enable_controllers(directory: Path, controllers: Iterable[str]) -> None:
    control = directory / "cgroup.subtree_control"
    enabled = set(control.read_text().split()) if controllers else set()
    for name in controllers:
        if name in enabled:
            continue
        try:
            _write(control, f"+{name}")
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EBUSY:
                hint = (": the cgroup holds processes, and v2 lets only leaves hold them (in a "
                        "container, move its processes into a child cgroup first)")
            raise CgroupError(
                f"cannot enable the {name} controller in {control}: {exc}{hint}"
            ) from exc
