"""The seccomp filter every sandboxed process runs under, handed to `bwrap --seccomp FD`.

Default allow; the calls a Python sandbox never needs fail with an errno instead of killing
the process, so that libraries probing for a feature (io_uring, userfaultfd, user namespaces
for a browser's own sandbox...) fall back as they do on a locked-down host:

- `DENIED_SYSCALLS` -> EPERM, whatever their arguments;
- `clone3` -> ENOSYS: its flags sit in memory the filter cannot read, and ENOSYS is what makes
  glibc (>= 2.34) fall back to `clone`, whose flags the filter does see;
- `clone` with any `CLONE_NAMESPACE_FLAGS` bit -> EPERM;
- `ioctl` `DENIED_IOCTLS` (TIOCSTI, TIOCLINUX: typing into or driving a terminal) -> EPERM;
- `personality` other than PER_LINUX (0) or the query 0xffffffff -> EPERM (ADDR_NO_RANDOMIZE,
  READ_IMPLIES_EXEC... would weaken the hardening of whatever the process runs next);
- `socket`/`socketpair` outside `ALLOWED_SOCKET_FAMILIES` -> EAFNOSUPPORT, which also stops
  the kernel from autoloading the module of an exotic family (AF_VSOCK, AF_ALG, AF_PACKET...);
  AF_NETLINK only with protocol NETLINK_ROUTE (others -> EPROTONOSUPPORT): glibc's
  getifaddrs/if_nameindex and getaddrinfo(AI_ADDRCONFIG), psutil and `ip addr` read the
  namespace's own addresses through it, while changing them needs CAP_NET_ADMIN, which the
  sandbox never has; NETLINK_NETFILTER/XFRM/AUDIT/... stay closed;
- SOCK_RAW or SOCK_PACKET sockets of AF_INET/AF_INET6 -> EPERM (SOCK_PACKET on AF_INET is an
  old alias the kernel turns into AF_PACKET).

The filter is pinned to the native architecture (x86_64 or aarch64). Syscalls of another ABI
(i386 via `int 0x80`, x32 numbers with bit 30 set, arm32 on aarch64) kill the process with
SIGSYS rather than failing with an errno: our rules match this ABI's numbers only, nothing in
the 64-bit runtime ever issues them, so only hand-made machine code does, and it should stop
at its first try instead of being allowed to probe on.

Integer arguments the kernel reads as 32 bits (ioctl's request, socket's family and type,
personality, clone's flags) are compared on their low 32 bits, or so that junk in the high
half is refused, never waved through.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tci.errors import SandboxUnavailable

if TYPE_CHECKING:
    from pyseccomp import SyscallFilter

# Denied with EPERM whatever their arguments. Kept as names; numbers come from libseccomp
# for the native architecture (names that do not exist there, e.g. iopl on aarch64, are skipped).
DENIED_SYSCALLS: tuple[str, ...] = (
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd",  # takes a file descriptor out of another process: ptrace by another name
    # mounts, old and new API
    "mount", "umount2", "pivot_root",
    "open_tree", "open_tree_attr", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr",
    # namespaces: the sandbox's own are final
    "unshare", "setns",
    # kernel keyrings
    "keyctl", "add_key", "request_key",
    # large kernel attack surfaces with no use in a sandbox
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the machine, not the sandbox
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd", "lookup_dcookie",
    "syslog", "vhangup", "iopl", "ioperm",
    # file handles bypass path-based access checks
    "name_to_handle_at", "open_by_handle_at",
)

# Answered with ENOSYS (see the module docstring).
NOT_IMPLEMENTED_SYSCALLS: tuple[str, ...] = ("clone3",)

CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    # CLONE_NEWTIME (0x80) is not here: for clone() that bit belongs to the exit signal, and
    # the only ways to ask for a time namespace (unshare, clone3) are closed above.
}

DENIED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}

ALLOWED_SOCKET_FAMILIES: tuple[int, ...] = (
    socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK,
)
NETLINK_ROUTE = 0
SOCK_PACKET = 10
SOCK_TYPE_MASK = 0xF  # the type argument also carries SOCK_NONBLOCK | SOCK_CLOEXEC

PERSONALITY_QUERY = 0xFFFFFFFF

# Syscalls numbered from 424 on have the same number on every architecture we support, so a
# libseccomp older than the kernel (2.5.4 does not know open_tree_attr) can still filter them.
_UNIFIED_NUMBERS: dict[str, int] = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442, "quotactl_fd": 443,
    "open_tree_attr": 467,
}


def _libseccomp() -> ModuleType:
    """pyseccomp loads libseccomp when imported; only the server needs it, not the worker."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 not found
        raise SandboxUnavailable(
            f"seccomp filters need libseccomp (apt-get install libseccomp2): {exc}"
        ) from exc
    return pyseccomp


def _number(sc: ModuleType, name: str) -> int | None:
    """The native number of a syscall, or None if this architecture does not have it."""
    number = sc.resolve_syscall(sc.Arch.NATIVE, name)
    if number == -1:  # unknown to this libseccomp
        if name in _UNIFIED_NUMBERS:
            return _UNIFIED_NUMBERS[name]
        raise ValueError(f"libseccomp does not know the syscall {name!r}")
    # Other negative numbers are libseccomp's placeholders for syscalls this arch lacks.
    return number if number >= 0 else None


def _add_socket_rules(sc: ModuleType, flt: SyscallFilter, syscall: str) -> None:
    family, kind, protocol = 0, 1, 2
    top = max(ALLOWED_SOCKET_FAMILIES)
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    # libseccomp allows one comparison per argument in a rule, so "not one of these" is the
    # families below the highest allowed one, each on its own, and everything above it.
    # A value with junk in its high 32 bits is above it too: refused, never read as allowed.
    for value in range(top):
        if value not in ALLOWED_SOCKET_FAMILIES:
            flt.add_rule(no_family, syscall, sc.Arg(family, sc.EQ, value))
    flt.add_rule(no_family, syscall, sc.Arg(family, sc.GT, top))
    flt.add_rule(
        sc.ERRNO(errno.EPROTONOSUPPORT), syscall,
        sc.Arg(family, sc.EQ, socket.AF_NETLINK), sc.Arg(protocol, sc.GT, NETLINK_ROUTE),
    )
    for inet in (socket.AF_INET, socket.AF_INET6):
        for raw in (socket.SOCK_RAW, SOCK_PACKET):
            flt.add_rule(
                sc.ERRNO(errno.EPERM), syscall,
                sc.Arg(family, sc.EQ, inet), sc.Arg(kind, sc.MASKED_EQ, SOCK_TYPE_MASK, raw),
            )


def _add_personality_rules(sc: ModuleType, flt: SyscallFilter) -> None:
    # Allowed: 0 and 0xffffffff, as the kernel reads it (an unsigned int: the high half is
    # ignored). Any other 32-bit value has a set bit whose next bit (cyclically) is clear,
    # and each of those 32 patterns is one masked comparison.
    for bit in range(32):
        mask = (1 << bit) | (1 << ((bit + 1) % 32))
        flt.add_rule(sc.ERRNO(errno.EPERM), "personality",
                     sc.Arg(0, sc.MASKED_EQ, mask, 1 << bit))


def _build(sc: ModuleType) -> SyscallFilter:
    native = sc.system_arch()
    if native not in (sc.Arch.X86_64, sc.Arch.AARCH64):
        # The argument rules assume clone's flags in its first argument, true on both.
        raise SandboxUnavailable(
            f"the seccomp filter supports x86_64 and aarch64 hosts only (libseccomp arch "
            f"{native:#x})"
        )
    flt = sc.SyscallFilter(sc.ALLOW)  # holds the native architecture only
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        number = _number(sc, name)
        if number is not None:
            flt.add_rule(eperm, number)
    for name in NOT_IMPLEMENTED_SYSCALLS:
        number = _number(sc, name)
        if number is not None:
            flt.add_rule(sc.ERRNO(errno.ENOSYS), number)
    for flag in CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in DENIED_IOCTLS.values():
        # ioctl's request is an unsigned int to the kernel: compare the low half only, so
        # that TIOCSTI with junk in the high half is caught too.
        flt.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    _add_personality_rules(sc, flt)
    for syscall in ("socket", "socketpair"):
        _add_socket_rules(sc, flt, syscall)
    return flt


@functools.cache
def build_filter() -> bytes:
    """The compiled BPF program (struct sock_filter[]), as bwrap --seccomp reads it."""
    flt = _build(_libseccomp())
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def write_filter(path: Path) -> None:
    """Write the compiled program to a file, e.g. for `bwrap --seccomp 3 3<path`."""
    path.write_bytes(build_filter())


def open_filter_fd() -> int:
    """A sealed memfd holding the program, positioned at its start and close-on-exec.

    One per sandbox: bwrap reads it to the end, and the offset is shared by every copy of the
    descriptor. Pass it with pass_fds (which clears close-on-exec in the child only) and close
    it once the process has started. The seals keep anyone who inherits it from changing it.
    """
    program = build_filter()
    fd = os.memfd_create("tci-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if os.write(fd, program) != len(program):  # a memfd takes it whole; say so if not
            raise OSError(f"short write of the seccomp program to memfd {fd}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
