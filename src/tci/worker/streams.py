"""Ordered output streams.

stdout and stderr are pipes read by the host, so that output written at the file-descriptor
level (C code, subprocesses) is captured exactly like `print`. The host reads three channels
(stdout, stderr, events) and keeps them in arrival order; to make arrival order equal to the
order the code produced, every Python-level write and every event waits until the host has
read what is already in the pipes, and a write waits until its own bytes are read. FIONREAD
on the write end tells how many bytes are still unread, so a wait is an ioctl or two while
the host keeps up (it reads at once). Only raw fd writes that alternate between stdout and
stderr with no Python-level write between them can still arrive swapped: nothing in the
worker runs between two such writes.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
import time

_INT = struct.Struct("i")
# Upper bound on waiting for the host to drain a pipe: a stuck host must not hang the cell.
_DRAIN_LIMIT_SECONDS = 0.2
_SPINS = 20


def unread_bytes(fd: int) -> int:
    try:
        return int(_INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def wait_drained(*fds: int) -> None:
    """Block until the host has read everything written to `fds` (bounded).

    The host usually reads within microseconds, so yield the CPU a few times before
    sleeping: a sleep, even a short one, costs tens of microseconds of timer slack."""
    deadline = None
    delay = 0.00002
    spins = 0
    for fd in fds:
        while unread_bytes(fd):
            if spins < _SPINS:
                spins += 1
                os.sched_yield()
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + _DRAIN_LIMIT_SECONDS
            elif now > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.002)


class OrderedStream(io.TextIOBase):
    """A write-through text stream on a pipe fd that keeps order with its sibling stream.

    Unbuffered on purpose: C code and subprocesses share the fd, and any buffering in
    Python would reorder their output relative to ours.
    """

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._name = name
        self._sibling_fd = fd

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        # Before: whatever C code or a subprocess wrote to either pipe is read first.
        wait_drained(self._fd, self._sibling_fd)
        data = memoryview(text.encode("utf-8", "replace"))
        while data:
            data = data[os.write(self._fd, data) :]
        # After: our bytes are read before anything written next to the other pipe.
        wait_drained(self._fd)
        return len(text)

    def flush(self) -> None:
        pass


def ordered_pair(stdout_fd: int, stderr_fd: int) -> tuple[OrderedStream, OrderedStream]:
    out, err = OrderedStream(stdout_fd, "<stdout>"), OrderedStream(stderr_fd, "<stderr>")
    out._sibling_fd, err._sibling_fd = stderr_fd, stdout_fd
    return out, err
