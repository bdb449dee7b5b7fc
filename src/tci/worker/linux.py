"""The Linux calls Python 3.11's `os` lacks (namespaces, mounts, capabilities, seccomp), via
ctypes on libc. Used by the fork template and its children (template.py, confine.py), which
run as root until they drop to the session's uid. Every failure raises OSError with errno."""

from __future__ import annotations

import ctypes
import os
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CAPSET = 126
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_RT_SIGACTION = 13
_SIG_IGN = 1
_KERNEL_NSIG = 64
OPEN_TREE_CLONE = 0x1
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914


def _check(result: int, what: str) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    def c(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    result = _libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data))
    _check(result, f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def open_tree_clone(path: str) -> int:
    """A detached copy of the mount at `path` (a bind of that directory), as an fd that can
    be attached in another mount namespace with attach_tree: how a session gets its volume
    without the template ever seeing it."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE
    return _check(_libc.syscall(_SYS_OPEN_TREE, -100, os.fsencode(path), ctypes.c_uint(flags)),
                  f"open_tree {path}")


def attach_tree(tree_fd: int, target: str) -> None:
    result = _libc.syscall(_SYS_MOVE_MOUNT, tree_fd, b"", -100, os.fsencode(target),
                           ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    _check(result, f"move_mount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(_SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old))
    _check(result, "pivot_root")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl {option}")


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies (PR_SET_PDEATHSIG; 0: none)."""
    value = ctypes.c_int(0)
    _check(_libc.prctl(ctypes.c_int(PR_GET_PDEATHSIG), ctypes.byref(value), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl PR_GET_PDEATHSIG")
    return value.value


def set_name(name: str) -> None:
    """The process name ps and /proc/<pid>/comm show (at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(ctypes.c_int(PR_SET_NAME), buffer, ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), "prctl PR_SET_NAME")


def clear_capabilities() -> None:
    """No capability left in any set: effective, permitted, inheritable (capset), bounding
    (one drop per capability, while CAP_SETPCAP is still held) and ambient."""
    with open("/proc/sys/kernel/cap_last_cap") as text:
        last = int(text.read())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    _check(_libc.syscall(_SYS_CAPSET, header, data), "capset")


def load_seccomp(program: bytes) -> None:
    """Install a compiled classic-BPF filter (struct sock_filter[]) on this thread; needs
    no_new_privs first, and holds for every process forked afterwards."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    result = _libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                         ctypes.c_void_p(ctypes.addressof(fprog_buffer)), ctypes.c_ulong(0),
                         ctypes.c_ulong(0))
    _check(result, "seccomp")


def stop_ignoring_signals(keep: frozenset[int]) -> list[int]:
    """Set every signal this process ignores back to its default, but `keep`; returns those
    changed. SIG_IGN survives fork and exec, and what started this process may have set it:
    GNU make starts its commands with posix_spawn, which leaves glibc's internal signals 32
    and 33 ignored, and `nohup` or a shell's `&` leave SIGHUP or SIGINT ignored. Done with
    the raw system call, since glibc's sigaction refuses its internal signals."""
    changed = []
    old = ctypes.create_string_buffer(32)  # struct kernel_sigaction: handler, flags, ...
    default = ctypes.create_string_buffer(32)  # SIG_DFL, no flags, empty mask
    for number in range(1, _KERNEL_NSIG + 1):
        if number in keep or number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        signum, size = ctypes.c_long(number), ctypes.c_long(8)  # sizeof(sigset_t), kernel's
        if _libc.syscall(_SYS_RT_SIGACTION, signum, None, old, size) != 0:
            continue
        if struct.unpack_from("=Q", old.raw)[0] == _SIG_IGN:
            _check(_libc.syscall(_SYS_RT_SIGACTION, signum, default, None, size),
                   "rt_sigaction")
            changed.append(number)
    return changed


def loopback_up() -> None:
    """Bring `lo` up in this network namespace (it starts down)."""
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
