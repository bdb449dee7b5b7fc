"""Processes the server signals, held by pidfd rather than by pid.

A bare pid names whichever process holds that number now: once a sandbox's process has exited
and been reaped, fork churn elsewhere can hand its number to an unrelated process, and a
SIGKILL sent as root would land there. A pidfd names one process for good; signals through it
fail with ProcessLookupError once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


class ProcessHandle:
    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd: int | None = fd

    @classmethod
    def open(cls, pid: int) -> ProcessHandle | None:
        """A handle on `pid`, or None if no such process exists (any more)."""
        if pid <= 0:
            return None
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:
            return None

    @classmethod
    def open_child(cls, parent: ProcessHandle, pid: int) -> ProcessHandle | None:
        """A handle on `pid`, checked to be `parent`'s child: opened first, then `pid` is read
        to be the child of a still-living `parent`, so the number cannot have been reused in
        between (a living parent's child is not reaped by anyone else)."""
        handle = cls.open(pid)
        if handle is None:
            return None
        if parent.alive() and _parent_of(pid) == parent.pid and handle.alive():
            return handle
        handle.close()
        return None

    def signal(self, signum: int) -> bool:
        """Send `signum`; False if the process is gone (or the handle closed)."""
        if self._fd is None:
            return False
        try:
            signal.pidfd_send_signal(self._fd, signum)
        except ProcessLookupError:
            return False
        return True

    def alive(self) -> bool:
        return self.signal(0)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
