"""pid 1 of a bubblewrap sandbox (`bwrap --as-pid-1`), in place of bubblewrap's own init.

bubblewrap's init makes itself dumpable (prctl PR_SET_DUMPABLE 1) and runs as the session's
uid, so the session's code could open /proc/1/mem and rewrite it. This init is exec'd inside
the sandbox's user namespace (where the session's code has no capability), so once it is not
dumpable nothing of the session can ptrace it or open its memory, environ or fds.

Its tie to the server is bubblewrap's `--die-with-parent`: bubblewrap sets PR_SET_PDEATHSIG
(SIGKILL) on it just before the exec (the parent is bubblewrap's outer process, which dies with
the server by the same flag), the exec of a program that is not set-uid keeps it, and the
seccomp filter already in force refuses PR_SET_PDEATHSIG, so it cannot be cut. pid 1's death
ends the pid namespace: every process of the session goes with it.

It checks all of that, then spawns the worker (its arguments), gives up every file
descriptor, reaps orphans, and exits the way the worker ended (the code, or 128 + the signal,
as bubblewrap reports a child's end), which bubblewrap's outer process passes on to the
server. Anything not as it must be: a message on stderr, EXIT_CONFINEMENT, no worker.
Run as `python3.11 -S -I -B bwrap_init.py WORKER...`: no site, no environment, no cwd on the
path; only the standard library's ctypes and its sibling `linux`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run as a script, it imports its sibling by file name; the checker, by package
    from tci.worker import linux
else:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # after the standard library
    import linux

EXIT_CONFINEMENT = 122  # as confine.EXIT_CONFINEMENT: the sandbox is not as it must be
EXIT_NO_WORKER = 127  # the worker could not be executed (a shell's "command not found")
INIT_NAME = "tci-init"  # as confine.INIT_NAME (the self-check reads it from /proc/1/comm)
# Signals Python ignores at start-up; the worker starts with the defaults, as under bubblewrap.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def problems() -> list[str]:
    """What is not as it must be, read back from the kernel (empty: all is in force)."""
    found = []
    if os.getpid() != 1:
        found.append(f"not pid 1 of its own pid namespace (pid {os.getpid()})")
    if linux.prctl(linux.PR_GET_DUMPABLE) != 0:
        found.append("dumpable (its memory is open to processes of its uid)")
    if linux.parent_death_signal() != signal.SIGKILL:
        found.append("no SIGKILL on bubblewrap's death (--die-with-parent)")
    return found


def exit_code(status: int) -> int:
    """A child's wait status as bubblewrap reports it: the code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _exec_worker(argv: list[str]) -> None:
    """In the fork: the worker, with bubblewrap's environment and the default signals."""
    try:
        for number in _DEFAULT_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        # And what the server inherited ignored (`make serve` leaves glibc's 32 and 33 so).
        linux.stop_ignoring_signals(keep=frozenset())
        os.execv(argv[0], argv)
    except OSError as exc:
        os.write(2, f"sandbox init: could not start the worker: {exc}\n".encode())
    os._exit(EXIT_NO_WORKER)


def main(worker_argv: list[str]) -> int:
    # First: nothing of the session exists yet, and from here on none of it can reach us.
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    linux.set_name(INIT_NAME)
    # Python's SIGINT handler would let the sandbox's own kill(1, SIGINT) end us with a
    # traceback; with the default, the kernel drops signals sent to pid 1 from inside.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    found = problems()
    if found or not worker_argv:
        message = "; ".join(found) or "no worker command"
        os.write(2, f"sandbox init: confinement check failed: {message}\n".encode())
        return EXIT_CONFINEMENT
    worker = os.fork()  # not posix_spawn: glibc's leaves its internal signals ignored
    if worker == 0:
        _exec_worker(worker_argv)
    # The worker's channels are its own: holding none, pid 1 never keeps one open.
    os.closerange(0, os.sysconf("SC_OPEN_MAX"))
    while True:
        pid, status = os.wait()
        if pid == worker:
            return exit_code(status)


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
