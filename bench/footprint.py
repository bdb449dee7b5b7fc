"""What each live session costs in memory: USS and PSS of its whole process tree.

A session's processes are found by its cgroup (every process of a sandbox is in it, from the
outer one on, whichever way it started), plus the slirp4netns serving its network namespace
from the host (not in the cgroup: the server starts it as root).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WORKER = "worker (the session's largest process)"
SANDBOX = "rest of the sandbox (pid 1; bwrap's outer process)"
HELPER = "network helper (slirp4netns)"


@dataclass
class Usage:
    pss: int = 0  # bytes
    uss: int = 0  # bytes: pages mapped by this process alone (Private_Clean + Private_Dirty)

    def __iadd__(self, other: Usage) -> Usage:
        self.pss += other.pss
        self.uss += other.uss
        return self


@dataclass
class Tree:
    """One session's processes and what they hold, in all and by role."""

    session_id: str
    pids: list[int] = field(default_factory=list)
    total: Usage = field(default_factory=Usage)
    roles: dict[str, Usage] = field(default_factory=dict)


def rollup(pid: int) -> Usage | None:
    """PSS and USS of one process from /proc/PID/smaps_rollup (None if it is gone)."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Private_Clean", "Private_Dirty"):
                values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "Pss" not in values:
        return None
    return Usage(values["Pss"], values.get("Private_Clean", 0) + values.get("Private_Dirty", 0))


def session_of(pid: int) -> str | None:
    """The session whose cgroup holds `pid` (its last path component, `ses_...`)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name = line.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("ses_"):
            return name
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _net_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def slirp_helpers() -> dict[str, int]:
    """Network namespace (as `net:[inode]`) -> the slirp4netns serving it. Its command line
    ends `--netns-type=path /proc/self/fd/N tap0`: fd N of slirp4netns is the namespace."""
    found = {}
    for pid in _pids():
        argv = [arg for arg in _cmdline(pid) if arg]
        if not argv or not argv[0].endswith("slirp4netns") or len(argv) < 2:
            continue
        path = argv[-2].replace("/proc/self/", f"/proc/{pid}/")
        try:
            found[os.readlink(path)] = pid
        except OSError:
            continue
    return found


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def session_trees(session_ids: set[str]) -> dict[str, Tree]:
    """The trees of the given live sessions, each process's memory read once."""
    members: dict[str, list[int]] = {}
    for pid in _pids():
        session = session_of(pid)
        if session in session_ids:
            members.setdefault(session, []).append(pid)
    helpers = slirp_helpers()
    trees = {}
    for session, pids in members.items():
        tree = Tree(session)
        usages = {pid: usage for pid in pids if (usage := rollup(pid)) is not None}
        worker = max(usages, key=lambda pid: usages[pid].pss, default=None)
        for pid, usage in usages.items():
            tree.roles.setdefault(WORKER if pid == worker else SANDBOX, Usage()).__iadd__(usage)
        namespaces = {_net_ns(pid) for pid in usages} - {None}
        for namespace in namespaces:
            helper = helpers.get(namespace)  # type: ignore[arg-type]
            if helper is not None and (usage := rollup(helper)) is not None:
                usages[helper] = usage
                tree.roles.setdefault(HELPER, Usage()).__iadd__(usage)
        tree.pids = sorted(usages)
        for usage in usages.values():
            tree.total += usage
        trees[session] = tree
    return trees


def outside_sessions(pids: list[int]) -> Usage:
    """What `pids` hold apart from any session's processes and network helpers: the server,
    and with fork, the template and its fork server."""
    helpers = set(slirp_helpers().values())
    total = Usage()
    for pid in pids:
        if pid in helpers or session_of(pid) is not None:
            continue
        usage = rollup(pid)
        if usage is not None:
            total += usage
    return total
