"""A network namespace of the test's own, holding only `lo`, that the test process itself
steps into: everything it starts meanwhile (Ray's processes, PostgreSQL, the gateways) runs
inside and every connection it makes stays inside.

Ray needs this, not only flags: it looks for the machine's address in places even when
told 127.0.0.1, and reports usage to an outside server even with usage stats off. Here the
only device is `lo` and the default route points into it with source 127.0.0.1, so Ray
picks 127.0.0.1 and nothing can leave. Only the calling thread moves (unshare(2) acts on
the calling thread), and it comes back to the namespace it was in at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Run the block (and every process it starts) in a new namespace with only `lo`."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            for argv in (["ip", "link", "set", "lo", "up"],
                         ["ip", "route", "add", "default", "dev", "lo", "src", "127.0.0.1"]):
                subprocess.run(argv, check=True, capture_output=True, timeout=30)
            yield
        finally:
            _check(_libc.setns(original, _CLONE_NEWNET), "setns back")
    finally:
        os.close(original)


def interfaces() -> list[str]:
    """The network interfaces of the calling thread's namespace."""
    with open("/proc/thread-self/net/dev") as table:
        return sorted(line.split(":")[0].strip() for line in table.readlines()[2:])
