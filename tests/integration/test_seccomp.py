"""The seccomp filter, as the kernel applies it to real processes in a real bubblewrap sandbox
run by an unprivileged host uid (as the server starts them).

Every probe runs twice: under the filter, where it must give the expected errno, and in the
same sandbox without the filter (the control), which shows that for most of them it is the
filter, not a missing capability, that says no."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import signal
import subprocess
from pathlib import Path

import pyseccomp
import pytest

from tci.sandbox.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DENIED_IOCTLS,
    DENIED_SYSCALLS,
    NEVER_ALLOWED,
    build_filter,
    open_filter_fd,
    write_filter,
)

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the probes use x86_64 syscall numbers"
)

PYTHON = "/usr/bin/python3.11"
UNPRIVILEGED = ["setpriv", "--reuid=250000", "--regid=250000", "--clear-groups", "--"]
SIGSYS = -signal.SIGSYS  # how a probe killed by the filter is reported

# Newer than the host's libseccomp tables (2.5.4).
NEWER_THAN_LIBSECCOMP = {"statmount": 457, "listmount": 458, "open_tree_attr": 467}


def nr(name: str) -> int:
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, name)
    if number < 0:
        number = NEWER_THAN_LIBSECCOMP[name]
    return number


def sandbox(code: str, *args: str, seccomp: bool = True) -> subprocess.CompletedProcess:
    """Run `python3.11 -c code args...` in a bubblewrap sandbox, as the server would."""
    fd = open_filter_fd() if seccomp else None
    argv = [
        *UNPRIVILEGED, "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm",
        *(["--seccomp", str(fd)] if fd is not None else []),
        "--", PYTHON, "-c", code, *args,
    ]
    try:
        return subprocess.run(argv, pass_fds=() if fd is None else (fd,), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL, cwd="/")
    finally:
        if fd is not None:
            os.close(fd)


# Runs in the sandbox: each probe in a child process of its own (a probe the filter lets
# through may change the process, and one of another ABI is killed), reporting the errno the
# call failed with, 0 if it succeeded, or minus the signal that killed it.
PROBE = r"""
import ctypes, json, mmap, os, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def i386_getpid():
    # mov eax, 20 (getpid in the i386 table); int 0x80; ret
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return 0 if ctypes.CFUNCTYPE(ctypes.c_int)(address)() > 0 else 1

def probe(number, args):
    if number == "int80":
        return i386_getpid()
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
    return ctypes.get_errno() if result == -1 else 0

results = {}
for label, number, args in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            code = probe(number, args)
        finally:
            os._exit(code)
    results[label] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""

AF_PACKET, AF_VSOCK, AF_ALG, AF_NETLINK = 17, 40, 38, 16
NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 0, 4, 12
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, SOCK_PACKET = 1, 2, 3, 5, 10
SOCK_FLAGS = 0o4000 | 0o2000000  # SOCK_NONBLOCK | SOCK_CLOEXEC
HIGH_JUNK = 1 << 32  # the kernel reads these arguments as 32 bits and drops this
CLONE_NEWUSER = CLONE_NAMESPACE_FLAGS["CLONE_NEWUSER"]
CLONE_NEWNET = CLONE_NAMESPACE_FLAGS["CLONE_NEWNET"]
SIGCHLD = 17

# Arguments that make the unfiltered call fail early with something other than EPERM (or
# succeed harmlessly), so that the control can tell the filter's answer from the kernel's.
SPECIAL_ARGS: dict[str, list[int]] = {
    "ptrace": [16, 0x3FFFFFFF],  # PTRACE_ATTACH to no such pid: ESRCH
    "process_vm_readv": [0, 0, 0, 0, 0, 1],  # bad flags: EINVAL
    "process_vm_writev": [0, 0, 0, 0, 0, 1],
    "pidfd_getfd": [2**32 - 1, 0, 0],
    "umount2": [0, 0xFFFF],
    "unshare": [CLONE_NEWUSER],  # an unprivileged process may, unfiltered
    "setns": [2**32 - 1, 0],
    "keyctl": [0x7FFF],
    "userfaultfd": [1],  # UFFD_USER_MODE_ONLY: allowed unprivileged, unfiltered
    "io_uring_enter": [2**32 - 1, 0, 0, 0, 0, 0],
    "io_uring_register": [2**32 - 1, 0, 0, 0],
    "iopl": [0],
    "ioperm": [0, 0, 0],
}


def probes() -> list[tuple[str, int | str, list[int], int]]:
    """(label, syscall number, arguments, errno expected under the filter)."""
    table = [(name, nr(name), SPECIAL_ARGS.get(name, [0] * 6), errno.EPERM)
             for name in DENIED_SYSCALLS]
    table.append(("clone3", nr("clone3"), [0, 0], errno.ENOSYS))
    # Not on the allow-list: ENOSYS, as from a kernel without them.
    table += [(name, nr(name), [0] * 6, errno.ENOSYS) for name in NEVER_ALLOWED]
    table.append(("future 600", 600, [0] * 6, errno.ENOSYS))
    for flag_name, flag in CLONE_NAMESPACE_FLAGS.items():
        table.append((f"clone {flag_name}", nr("clone"), [flag | SIGCHLD, 0, 0, 0, 0],
                      errno.EPERM))
    table.append(("clone CLONE_NEWUSER|CLONE_NEWNET", nr("clone"),
                  [CLONE_NEWUSER | CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0], errno.EPERM))
    table.append(("clone CLONE_NEWUSER with high junk", nr("clone"),
                  [HIGH_JUNK | CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0], errno.EPERM))
    for name, request in DENIED_IOCTLS.items():
        table.append((f"ioctl {name}", nr("ioctl"), [0, request, 0], errno.EPERM))
    table.append(("ioctl TIOCSTI with high junk", nr("ioctl"),
                  [0, HIGH_JUNK | DENIED_IOCTLS["TIOCSTI"], 0], errno.EPERM))
    personality = nr("personality")
    for label, value, expected in [
        ("query", 0xFFFFFFFF, 0), ("PER_LINUX", 0, 0),
        ("ADDR_NO_RANDOMIZE", 0x0040000, errno.EPERM),
        ("READ_IMPLIES_EXEC", 0x0400000, errno.EPERM),
        ("PER_LINUX32", 0x0008, errno.EPERM), ("0x80000000", 0x80000000, errno.EPERM),
        ("0xfffffffe", 0xFFFFFFFE, errno.EPERM),
        ("ADDR_NO_RANDOMIZE with high junk", HIGH_JUNK | 0x0040000, errno.EPERM),
    ]:
        table.append((f"personality {label}", personality, [value], expected))
    socket, socketpair = nr("socket"), nr("socketpair")
    for label, args, expected in [
        ("AF_PACKET", [AF_PACKET, SOCK_RAW, 0], errno.EAFNOSUPPORT),
        ("AF_VSOCK", [AF_VSOCK, SOCK_STREAM, 0], errno.EAFNOSUPPORT),
        ("AF_ALG", [AF_ALG, SOCK_SEQPACKET, 0], errno.EAFNOSUPPORT),
        ("AF_UNSPEC", [0, SOCK_STREAM, 0], errno.EAFNOSUPPORT),
        ("AF_INET with high junk", [HIGH_JUNK | 2, SOCK_STREAM, 0], errno.EAFNOSUPPORT),
        ("NETLINK_SOCK_DIAG", [AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG], errno.EPROTONOSUPPORT),
        ("NETLINK_NETFILTER", [AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER],
         errno.EPROTONOSUPPORT),
        ("NETLINK_ROUTE", [AF_NETLINK, SOCK_RAW | SOCK_FLAGS, NETLINK_ROUTE], 0),
        ("AF_INET SOCK_RAW", [2, SOCK_RAW, 1], errno.EPERM),
        ("AF_INET SOCK_RAW with flags", [2, SOCK_RAW | SOCK_FLAGS, 1], errno.EPERM),
        ("AF_INET6 SOCK_RAW", [10, SOCK_RAW, 58], errno.EPERM),
        ("AF_INET SOCK_PACKET", [2, SOCK_PACKET, 0x300], errno.EPERM),
        ("AF_INET SOCK_DGRAM with flags", [2, SOCK_DGRAM | SOCK_FLAGS, 0], 0),
        ("AF_INET TCP", [2, SOCK_STREAM, 6], 0),
        ("AF_INET6 UDP", [10, SOCK_DGRAM | SOCK_FLAGS, 17], 0),
        ("AF_INET SCTP", [2, SOCK_STREAM, 132], errno.EPROTONOSUPPORT),
        ("AF_INET6 SCTP seqpacket", [10, SOCK_SEQPACKET, 132], errno.EPROTONOSUPPORT),
        ("AF_INET UDP-Lite", [2, SOCK_DGRAM, 136], errno.EPROTONOSUPPORT),
        ("AF_INET6 MPTCP", [10, SOCK_STREAM, 262], errno.EPROTONOSUPPORT),
        ("AF_INET L2TP", [2, SOCK_DGRAM, 115], errno.EPROTONOSUPPORT),
        ("AF_INET TCP with high junk", [2, SOCK_STREAM, HIGH_JUNK | 6], errno.EPROTONOSUPPORT),
        ("AF_INET6 SOCK_STREAM", [10, SOCK_STREAM, 0], 0),
        ("AF_UNIX SOCK_SEQPACKET", [1, SOCK_SEQPACKET, 0], 0),
    ]:
        table.append((f"socket {label}", socket, args, expected))
    for label, args, expected in [
        ("AF_PACKET", [AF_PACKET, SOCK_RAW, 0, 0], errno.EAFNOSUPPORT),
        ("AF_VSOCK", [AF_VSOCK, SOCK_STREAM, 0, 0], errno.EAFNOSUPPORT),
    ]:
        table.append((f"socketpair {label}", socketpair, args, expected))
    # Another ABI: x32 numbers (bit 30 set) kill the process, whether or not the kernel
    # has x32 (the filter runs before the kernel looks). i386: see its own test.
    table.append(("x32 getpid", 0x40000000 | nr("getpid"), [], SIGSYS))
    return table


def run_probes(seccomp: bool, table: list | None = None) -> dict[str, int]:
    table = probes() if table is None else table
    spec = json.dumps([(label, number, args) for label, number, args, _ in table])
    result = sandbox(PROBE, spec, seccomp=seccomp)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def filtered() -> dict[str, int]:
    return run_probes(seccomp=True)


@pytest.fixture(scope="module")
def control() -> dict[str, int]:
    return run_probes(seccomp=False)


def describe(code: int) -> str:
    if code < 0:
        return signal.Signals(-code).name
    return errno.errorcode.get(code, "success") if code else "success"


def test_every_probe_gets_the_expected_answer(filtered):
    wrong = {label: (describe(filtered[label]), describe(expected))
             for label, _, _, expected in probes() if filtered[label] != expected}
    assert not wrong, wrong  # label: (got, expected)


# The kernel alone (no filter, same sandbox) answers these differently on any kernel and
# configuration: it is the filter that refuses them. Most others (reboot, kexec, modules,
# clock, mount API...) the kernel refuses too without capabilities, or answers in a way that
# depends on its build (ENOSYS); the filter keeps them closed should a capability be had.
FILTER_DECIDES = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "mount", "umount2",
    "unshare", "setns", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_enter",
    "io_uring_register", "iopl", "ioperm", "clone3", "clone CLONE_NEWUSER",
    "clone CLONE_NEWUSER|CLONE_NEWNET", "clone CLONE_NEWUSER with high junk", "ioctl TIOCSTI",
    "ioctl TIOCSTI with high junk", "ioctl TIOCSETD", "personality ADDR_NO_RANDOMIZE",
    "personality READ_IMPLIES_EXEC", "personality ADDR_NO_RANDOMIZE with high junk",
    "socket AF_PACKET", "socket AF_INET with high junk", "socket NETLINK_SOCK_DIAG",
    "x32 getpid",
)


def test_the_filter_not_the_kernel_refuses(filtered, control):
    same = {label: describe(control[label]) for label in FILTER_DECIDES
            if control[label] == filtered[label]}
    assert not same, same


def test_allowed_calls_behave_as_without_the_filter(filtered, control):
    allowed = [label for label, _, _, expected in probes() if expected == 0]
    assert {label: filtered[label] for label in allowed} == {
        label: control[label] for label in allowed}


def test_ping_sockets_are_left_to_the_host():
    """ICMP datagram sockets pass the filter: ping_group_range alone decides (EACCES or not)."""
    table = [("inet ICMP", nr("socket"), [2, SOCK_DGRAM, 1], 0),
             ("inet6 ICMPv6", nr("socket"), [10, SOCK_DGRAM, 58], 0)]
    assert run_probes(True, table) == run_probes(False, table)


def test_i386_syscalls_kill_the_process():
    table = [("i386 getpid via int 0x80", "int80", [], SIGSYS)]
    if run_probes(False, table)[table[0][0]] != 0:
        pytest.skip("this kernel runs no i386 code (no IA32 emulation)")
    assert run_probes(True, table) == {table[0][0]: SIGSYS}


EVERYDAY = r"""
import ctypes, json, mmap, multiprocessing, os, socket, subprocess, threading, time
from concurrent.futures import ThreadPoolExecutor

done = {}
with ThreadPoolExecutor(4) as pool:
    done["threads"] = sorted(pool.map(abs, [-1, -2, -3, -4]))
box = []
thread = threading.Thread(target=box.append, args=(threading.get_native_id(),))
thread.start(); thread.join()
done["thread"] = len(box)
for method in ("fork", "spawn", "forkserver"):
    with multiprocessing.get_context(method).Pool(2) as pool:
        done["multiprocessing " + method] = pool.map(abs, [-5, -6])
done["subprocess"] = subprocess.run(["/usr/bin/echo", "hi"], capture_output=True,
                                    text=True).stdout
pid = os.fork()
if pid == 0:
    os._exit(7)
done["os.fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
open("/tmp/f", "w").close()
os.chmod("/tmp/f", 0o600)
done["chmod"] = oct(os.stat("/tmp/f").st_mode & 0o777)
left, right = socket.socketpair()
left.sendall(b"ping")
done["socketpair"] = right.recv(4).decode()
with socket.socket(socket.AF_UNIX) as server:
    server.bind("/tmp/sock")
    server.listen()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect("/tmp/sock")
        conn, _ = server.accept()
        client.sendall(b"unix")
        done["unix listener"] = conn.recv(4).decode()
        conn.close()
# The sandbox's own network namespace: its loopback only.
with socket.create_server(("127.0.0.1", 0)) as server:
    with socket.create_connection(server.getsockname(), timeout=5) as client:
        conn, _ = server.accept()
        client.sendall(b"inet")
        done["inet loopback"] = conn.recv(4).decode()
        conn.close()
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6:
    done["inet6"] = udp6.family.name
done["if_nameindex"] = [name for _, name in socket.if_nameindex()]
done["getaddrinfo"] = socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)[0][4][0]
start = time.monotonic(); time.sleep(0.01)
done["sleep"] = time.monotonic() > start
with mmap.mmap(-1, 1 << 20) as area:
    area[:5] = b"hello"
    done["mmap"] = area[:5].decode()
libc = ctypes.CDLL(None, use_errno=True)
done["personality query"] = libc.personality(0xFFFFFFFF)
try:
    os.get_terminal_size(0)
except OSError as exc:  # ioctl still works: a pipe is no terminal
    done["ioctl"] = exc.errno
print(json.dumps(done))
"""


def test_everyday_python_keeps_working():
    result = sandbox(EVERYDAY)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "threads": [1, 2, 3, 4], "thread": 1,
        "multiprocessing fork": [5, 6], "multiprocessing spawn": [5, 6],
        "multiprocessing forkserver": [5, 6], "subprocess": "hi\n", "os.fork": 7,
        "chmod": "0o600", "socketpair": "ping", "unix listener": "unix",
        "inet loopback": "inet", "inet6": "AF_INET6", "if_nameindex": ["lo"],
        "getaddrinfo": "127.0.0.1", "sleep": True, "mmap": "hello", "personality query": 0,
        "ioctl": errno.ENOTTY,
    }


def test_filter_is_loaded_once_and_the_fd_is_not_left_inside():
    result = sandbox(
        "import json, os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status') if ':\\t' in l)\n"
        "fds = os.listdir('/proc/self/fd')\n"
        "print(json.dumps([status['Seccomp'].strip(), status['Seccomp_filters'].strip(),"
        " status['NoNewPrivs'].strip(), sorted(fds)]))"
    )
    assert result.returncode == 0, result.stderr
    # mode 2 = filter; the listing's own directory fd is the only one past stdio.
    assert json.loads(result.stdout) == ["2", "1", "1", ["0", "1", "2", "3"]]


def test_fd_and_file_hold_the_whole_program(tmp_path: Path):
    program = build_filter()
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert build_filter() is program  # built once
    fd = open_filter_fd()
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.read(fd, len(program) + 1) == program
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)
    write_filter(tmp_path / "filter.bpf")
    assert (tmp_path / "filter.bpf").read_bytes() == program
