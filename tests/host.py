"""Looking at the host from tests: which processes run, in which pid namespace."""

from __future__ import annotations

import os
from pathlib import Path


def all_pids() -> list[int]:
    return sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def in_session(pid: int, session_id: str) -> bool:
    """Whether `pid` is in the session's cgroup: every process of a sandbox is, from its outer
    process on, whichever way it was started (bubblewrap or a fork of the template)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    return any(line.rstrip("/").endswith(f"/{session_id}") for line in lines)


def session_processes(session_id: str) -> tuple[set[int], set[str]]:
    """The session's outer processes (in the host's pid namespace) and the pid namespace(s)
    of everything inside its sandbox."""
    host_ns = os.readlink("/proc/self/ns/pid")
    members = [pid for pid in all_pids() if in_session(pid, session_id)]
    outer = {pid for pid in members if pid_ns(pid) == host_ns}
    namespaces = {pid_ns(pid) for pid in members} - {host_ns, None}
    return outer, {ns for ns in namespaces if ns is not None}


def sandbox_worker(session_id: str) -> int:
    """The worker's host pid: the first child of the sandbox's pid 1."""
    _, namespaces = session_processes(session_id)
    inits = [pid for pid in all_pids() if pid_ns(pid) in namespaces and _nspid(pid) == "1"]
    assert len(inits) == 1, (session_id, inits)
    children = children_of(inits[0])
    assert children, f"no worker found on the host for {session_id}"
    return min(children)


def children_of(pid: int) -> list[int]:
    """The children of `pid`: from /proc's children file where the kernel has it
    (CONFIG_PROC_CHILDREN), else from every process's parent pid."""
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return [child for child in all_pids() if _ppid(child) == pid]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _nspid(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[-1]
    except OSError:
        pass
    return None
