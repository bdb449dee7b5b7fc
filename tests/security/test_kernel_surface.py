"""The kernel surface a session can reach, beyond what test_kernel.py covers: resource limits
it cannot raise (no core dumps), a seccomp allow-list (every syscall not on it fails with
ENOSYS, including those Linux has not numbered yet), inet sockets of TCP, UDP and ICMP only,
no line disciplines, and no nested user namespace even with the seccomp filter out of the way.

Each is checked from inside a session and, where the host can see it, from the host."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
from pathlib import Path

import pyseccomp
import pytest

from tci.sandbox.bwrap import bwrap_can_disable_userns
from tci.sandbox.seccomp import (
    ALLOWED_SYSCALLS,
    DENIED_SYSCALLS,
    NEVER_ALLOWED,
    NOT_IMPLEMENTED_SYSCALLS,
    _number,
)
from tests.conftest import stdout_of
from tests.security.conftest import LIMITS, HostView, new_session, run_json

MiB = 1 << 20
ARGUMENT_CHECKED = ("clone", "ioctl", "personality", "prctl", "socket", "socketpair")
# x86_64's uretprobe (335, Linux 6.11) and uprobe (336, 6.16): seccomp lets them through
# unfiltered by design (kernel/seccomp.c), since only the kernel's own uprobe trampoline may
# issue them; called from anywhere else they fail (ENXIO) or end the process with SIGILL.
SECCOMP_PASSTHROUGH = {335, 336} if platform.machine() == "x86_64" else set()

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                                reason="the filter's architectures")


def native(name: str) -> int | None:
    """The number the filter itself uses for a syscall (None: not on this architecture)."""
    return _number(pyseccomp, name)


# -- resource limits -----------------------------------------------------------------------

LIMITS_SEEN = r"""
import json, os, resource, subprocess, sys
names = ("CORE", "RTPRIO", "RTTIME", "NICE", "MEMLOCK", "MSGQUEUE", "NOFILE")
seen = {name: list(resource.getrlimit(getattr(resource, "RLIMIT_" + name))) for name in names}
for name in names:
    try:
        limit = getattr(resource, "RLIMIT_" + name)
        resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        seen["raise " + name] = "allowed"
    except (ValueError, OSError) as exc:
        seen["raise " + name] = type(exc).__name__
# A crash, after trying the most it could to get a core written.
crash = subprocess.run([sys.executable, "-c", (
    "import os, resource\n"
    "try:\n"
    "    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)\n"
    "except ValueError:\n"
    "    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]\n"
    "    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))\n"
    "os.abort()")])
seen["crash"] = crash.returncode
seen["cores"] = [name for directory in (".", "/tmp") for name in os.listdir(directory)
                 if name.startswith("core")]
print(json.dumps(seen))
"""


def test_core_dumps_are_off_and_cannot_be_turned_on(hardened):
    session_id, seen = run_json(hardened, LIMITS_SEEN)
    files = LIMITS["open_files_limit"]
    assert seen == {
        "CORE": [0, 0], "RTPRIO": [0, 0], "RTTIME": [0, 0], "NICE": [0, 0],
        "MEMLOCK": [8 * MiB, 8 * MiB], "MSGQUEUE": [800 << 10, 800 << 10],
        "NOFILE": [files, files],
        # The hard limits hold: raising any of them is refused (Python says ValueError).
        **{f"raise {name}": "ValueError" for name in
           ("CORE", "RTPRIO", "RTTIME", "NICE", "MEMLOCK", "MSGQUEUE", "NOFILE")},
        "crash": -6, "cores": [],  # SIGABRT, and no core anywhere the sandbox can write
    }
    host = HostView(session_id)
    limits = Path(f"/proc/{host.worker_pid()}/limits").read_text()
    assert [line.split()[-3:-1] for line in limits.splitlines()
            if line.startswith("Max core file size")] == [["0", "0"]]
    assert not [path for path in host.workspace.rglob("core*")]
    # The session goes on.
    after = hardened.run("print('still here')", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "still here\n"}]


# -- syscalls not on the allow-list --------------------------------------------------------

# Runs in the sandbox. The probes run one after another in a forked child (a call that
# succeeds may change the process, never the session), each under an alarm, and each result
# goes up a pipe as it comes: the errno of the call, or 0 if it succeeded. A child that ends
# early, killed by a signal or exited by the call, is the answer of the probe it was on (minus
# the signal, or its exit code); the next child goes on from the probe after it. One fork for
# the usual all-ENOSYS run: ~700 forks of the worker took 2.7 s on 2 idle cores and more than
# the suite's 5 s TCI_EXECUTE_TIMEOUT under load.
PROBE = r"""
import ctypes, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {}
while len(results) < len(PROBES):
    todo = PROBES[len(results):]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 255  # never back into IPython from a fork, whatever the calls did
        try:
            os.close(read_end)
            for label, number, args in todo:
                signal.alarm(5)
                result = libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
                os.write(write_end, b"%d\n" % (ctypes.get_errno() if result == -1 else 0))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as answers:
        for (label, _, _), line in zip(todo, answers):
            results[label] = int(line)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if len(results) < len(PROBES):
        results[PROBES[len(results)][0]] = status
print(json.dumps(results))
"""


def probe(server, probes: list[tuple[str, int, list[int]]]) -> dict[str, int]:
    return run_json(server, f"PROBES = {probes!r}\n{PROBE}")[1]


def named_numbers() -> set[int]:
    names = (*ALLOWED_SYSCALLS, *DENIED_SYSCALLS, *NOT_IMPLEMENTED_SYSCALLS, *ARGUMENT_CHECKED)
    return {number for number in map(native, names) if number is not None}


def test_named_refusals_are_not_implemented(hardened):
    """The calls the review named, and numbers Linux has not given out (yet)."""
    probes = [(name, native(name), [0] * 6) for name in NEVER_ALLOWED
              if native(name) is not None]
    probes += [("listmount by number", 458, [0] * 6), ("statmount by number", 457, [0] * 6),
               ("future 600", 600, [0] * 6), ("future 1000", 1000, [0] * 6)]
    assert {"kcmp", "fanotify_init", "memfd_secret", "mbind", "get_mempolicy",
            "listmount", "statmount"} <= {label for label, _, _ in probes}
    results = probe(hardened, probes)
    assert {label: errno.errorcode.get(code, code) for label, code in results.items()} == {
        label: "ENOSYS" for label, _, _ in probes}


def test_every_syscall_not_on_the_list_is_not_implemented(hardened):
    """Every number up to 1023 that the filter does not name, called with zero arguments."""
    named = named_numbers()
    probes = [(str(number), number, [0] * 6) for number in range(1024)
              if number not in named | SECCOMP_PASSTHROUGH]
    results = probe(hardened, probes)
    wrong = {label: errno.errorcode.get(code, code) for label, code in results.items()
             if code != errno.ENOSYS}
    assert not wrong, wrong  # syscall number: what it answered instead


@pytest.mark.skipif(platform.machine() != "x86_64", reason="modify_ldt is x86 only")
def test_modify_ldt_is_not_implemented(hardened):
    # modify_ldt(0 = read, NULL, 0) reads nothing and succeeds where the call is allowed.
    results = probe(hardened, [("modify_ldt", native("modify_ldt"), [0, 0, 0])])
    assert results == {"modify_ldt": errno.ENOSYS}


# -- sockets and terminals -----------------------------------------------------------------

AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
REFUSED_INET = {  # protocols whose sockets make the kernel load a module
    "SCTP": (SOCK_STREAM, 132), "SCTP seqpacket": (SOCK_SEQPACKET, 132),
    "UDP-Lite": (SOCK_DGRAM, 136), "MPTCP": (SOCK_STREAM, 262), "L2TP": (SOCK_DGRAM, 115),
    "DCCP": (6, 33), "seqpacket": (SOCK_SEQPACKET, 0),
}
ALLOWED_INET = {
    "TCP": (SOCK_STREAM, 0), "TCP by number": (SOCK_STREAM, 6), "UDP": (SOCK_DGRAM, 0),
    "UDP by number": (SOCK_DGRAM, 17),
}

SOCKETS = r"""
import errno, json, socket
results = {}
for label, (family, kind, proto) in CASES.items():
    try:
        socket.socket(family, kind, proto).close()
        results[label] = "opened"
    except OSError as exc:
        results[label] = errno.errorcode[exc.errno]
print(json.dumps(results))
"""


def test_inet_sockets_are_tcp_udp_and_icmp_only(hardened):
    cases = {}
    for family, name, icmp in ((AF_INET, "inet", 1), (AF_INET6, "inet6", 58)):
        for label, (kind, proto) in {**REFUSED_INET, **ALLOWED_INET}.items():
            cases[f"{name} {label}"] = (family, kind, proto)
        cases[f"{name} ICMP"] = (family, SOCK_DGRAM, icmp)
    _, results = run_json(hardened, f"CASES = {cases!r}\n{SOCKETS}")
    refused = {label: result for label, result in results.items()
               if label.split(" ", 1)[1] in REFUSED_INET}
    assert set(refused.values()) == {"EPROTONOSUPPORT"}, refused
    allowed = {label: result for label, result in results.items()
               if label.split(" ", 1)[1] in ALLOWED_INET}
    assert set(allowed.values()) == {"opened"}, allowed
    # Ping sockets: the filter lets them through; the host's net.ipv4.ping_group_range decides
    # (EACCES when the sandbox's group is outside it).
    for family in ("inet", "inet6"):
        assert results[f"{family} ICMP"] in ("opened", "EACCES"), results


def test_line_disciplines_cannot_be_set(hardened):
    _, results = run_json(hardened, (
        "import errno, fcntl, json, os, pty, struct, termios\n"
        "master, slave = pty.openpty()\n"
        "results = {}\n"
        "for name, request, arg in (('TIOCSETD', termios.TIOCSETD, 0),\n"
        "                           ('TIOCGETD', termios.TIOCGETD, 0)):\n"
        "    try:\n"
        "        fcntl.ioctl(slave, request, struct.pack('i', arg))\n"
        "        results[name] = 'allowed'\n"
        "    except OSError as exc:\n"
        "        results[name] = errno.errorcode[exc.errno]\n"
        "print(json.dumps(results))"
    ))
    # Setting even N_TTY (the default) is refused; reading which one is set is not.
    assert results == {"TIOCSETD": "EPERM", "TIOCGETD": "allowed"}


# -- nested user namespaces ----------------------------------------------------------------


@pytest.mark.skipif(not bwrap_can_disable_userns(), reason="bubblewrap < 0.8: no --disable-userns")
def test_no_user_namespace_inside_even_past_the_filter(hardened):
    """The filter refuses unshare and clone(CLONE_NEWUSER) (test_kernel.py); under it, the
    kernel refuses too: a process of the session's own uid, joined to its user namespace
    from the host (so without the filter), cannot make one (ENOSPC: the limit is reached)."""
    session_id = new_session(hardened)
    host = HostView(session_id)
    joined = subprocess.run(
        ["setpriv", f"--reuid={host.uid}", f"--regid={host.uid}", "--clear-groups", "--",
         "nsenter", f"--target={host.worker_pid()}", "--user", "--preserve-credentials", "--",
         "unshare", "--user", "true"],
        capture_output=True, text=True, timeout=30,
    )
    assert joined.returncode != 0, "a nested user namespace was made"
    assert os.strerror(errno.ENOSPC) in joined.stderr, joined.stderr
    assert stdout_of(hardened.run("print('still here')", session_id)) == "still here\n"

