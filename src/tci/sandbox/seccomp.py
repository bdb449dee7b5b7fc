"""The seccomp filter every sandboxed process runs under: a compiled BPF program, handed to
`bwrap --seccomp FD` on one start path and loaded by each fork as it confines itself on the
other (worker/confine.py, which gets its bytes from the template).

An allow-list. `ALLOWED_SYSCALLS` is what Python 3.11, the runtime's packages (numpy, pandas,
matplotlib, scipy, scikit-learn, numba, OpenCV...), `pip` and the usual shell tools (bash,
coreutils, grep, sed, awk, tar, gzip, git, curl, wget, ps, top, gcc, make) were measured to
call, run under `strace -f` in real sessions, plus the harmless relatives of those calls (the
whole *stat*/*at family, every epoll, timerfd, eventfd and inotify call...). Everything else:

- ENOSYS, the answer of a kernel that lacks the call. It is the default, for every syscall
  not named here and for every one added to Linux later: ENOSYS is the errno programs and
  libraries already handle (glibc falls back from clone3 to clone, from faccessat2 to
  faccessat, from close_range to a loop; libnuma and OpenBLAS see a kernel without NUMA; Go
  falls back from MPTCP to TCP on EPROTONOSUPPORT...), where EPERM for a call the program
  knows the kernel has reads as a real failure (Docker's old EPERM default broke glibc 2.33's
  faccessat2 that way). Not allowed, among others: `NEVER_ALLOWED`, `sync` (flushes every
  filesystem of the host), `landlock_*`, `process_madvise`, `cachestat`.
- `DENIED_SYSCALLS` -> EPERM, whatever their arguments: the calls a sandbox must never make,
  answered as a kernel answers a process without privileges;
- `clone3` -> ENOSYS: its flags sit in memory the filter cannot read, and ENOSYS is what makes
  glibc (>= 2.34) fall back to `clone`, whose flags the filter does see;
- `clone` with any `CLONE_NAMESPACE_FLAGS` bit -> EPERM;
- `ioctl` `DENIED_IOCTLS` -> EPERM: TIOCSTI and TIOCLINUX type into or drive a terminal,
  TIOCSETD attaches a line discipline, which loads its kernel module on demand;
- `prctl(PR_SET_PDEATHSIG)` -> EPERM: a sandbox's pid 1 is set to die with its parent before
  the filter is loaded (its tie to the server's life); a program that is its own pid 1 (a
  one-shot run) must not be able to cut it;
- `personality` other than PER_LINUX (0) or the query 0xffffffff -> EPERM (ADDR_NO_RANDOMIZE,
  READ_IMPLIES_EXEC... would weaken the hardening of whatever the process runs next);
- `socket`/`socketpair`: families outside `ALLOWED_SOCKET_FAMILIES` -> EAFNOSUPPORT, which
  also keeps the kernel from autoloading the module of an exotic family (AF_VSOCK, AF_ALG,
  AF_PACKET...); AF_NETLINK only with protocol NETLINK_ROUTE (others -> EPROTONOSUPPORT):
  glibc's getifaddrs/if_nameindex and getaddrinfo(AI_ADDRCONFIG), psutil and `ip addr` read
  the namespace's own addresses through it, while changing them needs CAP_NET_ADMIN, which
  the sandbox never has; AF_INET/AF_INET6 SOCK_RAW or SOCK_PACKET -> EPERM (SOCK_PACKET on
  AF_INET is an old alias the kernel turns into AF_PACKET); other AF_INET/AF_INET6 sockets
  only as `INET_SOCKETS` lists them (TCP, UDP, ICMP "ping" sockets), else EPROTONOSUPPORT:
  SCTP, UDP-Lite, MPTCP, L2TP, DCCP... each autoload a kernel module, a large attack surface
  on hosts that ship them.

The filter is pinned to the native architecture (x86_64 or aarch64). Syscalls of another ABI
(i386 via `int 0x80`, x32 numbers with bit 30 set, arm32 on aarch64) kill the process with
SIGSYS rather than failing with an errno: nothing in the 64-bit runtime ever issues them, so
only hand-made machine code does, and it should stop at its first try.

Integer arguments the kernel reads as 32 bits (ioctl's request, socket's type, personality,
clone's flags) are compared on their low 32 bits, so that junk in the high half changes
nothing; socket's family and protocol are compared as whole 64-bit values, so that junk there
is refused, never waved through.

The program is our own classic BPF, assembled below: libseccomp (through pyseccomp) only
names the syscall numbers. Its rule model (one comparison per argument, overlapping rules
merged by its own precedence) cannot say "allow this call except with these arguments" under
a default that refuses; here each argument-checked call is a list of rules tried in order,
the first that matches decides. Dispatch on the syscall number is a binary search, so a
call costs about log2(number of ranges) comparisons (~8), whatever the list's length.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tci.errors import SandboxUnavailable

# Allowed whatever their arguments. Names as libseccomp spells them; a name this
# architecture lacks (open, stat, fork... on aarch64) is skipped.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    # processes and threads
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal",  # asyncio, subprocess: the caller's own children
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "arch_prctl",
    "seccomp",  # with no_new_privs a process can only narrow its own filter
    "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "membarrier",
    "restart_syscall",
    # credentials: within the one uid and gid mapped in the sandbox's user namespace
    "capget", "capset", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getgroups", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setgroups", "setfsuid", "setfsgid",
    # the process's own limits, usage and scheduling (rlimits keep niceness and RT at bay)
    "umask", "uname", "sysinfo", "getcpu", "getrusage", "times",
    "getrlimit", "setrlimit", "prlimit64", "getpriority", "setpriority", "ioprio_get",
    "ioprio_set", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_getattr",
    "sched_setattr", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval",
    # memory (locked memory is bounded by RLIMIT_MEMLOCK, all of it by the memory cgroup)
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "memfd_create",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",
    # signals and time
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "sigaltstack", "signalfd", "signalfd4", "pause", "alarm",
    "getitimer", "setitimer", "clock_gettime", "clock_getres", "clock_nanosleep",
    "nanosleep", "gettimeofday", "time", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
    "timerfd_gettime",
    # file descriptors, I/O and waiting on them
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
    "flock", "pipe", "pipe2", "sendfile", "splice", "tee", "vmsplice", "copy_file_range",
    "eventfd", "eventfd2", "select", "pselect6", "poll", "ppoll", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # files and directories (the mounts decide what is visible and writable)
    "open", "openat", "openat2", "creat", "stat", "fstat", "lstat", "newfstatat", "statx",
    "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getdents", "getdents64",
    "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "rename", "renameat",
    "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "readlink",
    "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
    "fchownat", "utime", "utimes", "futimesat", "utimensat", "mknod", "mknodat", "truncate",
    "ftruncate", "fallocate", "fadvise64", "readahead", "fsync", "fdatasync", "syncfs",
    "sync_file_range",
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "getxattrat", "setxattrat", "listxattrat", "removexattrat",
    # sockets, once made (see the socket rules for which can be made)
    "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
    "setsockopt", "getsockopt",
    # System V and POSIX IPC, in the sandbox's own IPC namespace
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "getrandom",
)

# Denied with EPERM whatever their arguments.
DENIED_SYSCALLS: tuple[str, ...] = (
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd",  # takes a file descriptor out of another process: ptrace by another name
    # mounts, old and new API, and the root
    "mount", "umount2", "pivot_root", "chroot",
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

# Never on the allow-list (they get the default, ENOSYS); the build checks it.
NEVER_ALLOWED: tuple[str, ...] = (
    "modify_ldt",  # x86 segment descriptors: a long history of kernel bugs
    "kcmp",  # compares kernel objects of processes: a kernel address oracle
    "fanotify_init",  # filesystem-wide event monitoring
    "memfd_secret",  # memory the kernel itself cannot reach
    # NUMA placement: no use on a sandbox's share of the machine; ENOSYS is what libnuma,
    # OpenBLAS and procps see on a kernel without NUMA, and they go on without it
    "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
    "set_mempolicy_home_node",
    # the whole machine's mount table, whatever the sandbox's mount namespace shows
    "listmount", "statmount",
)

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

DENIED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C, "TIOCSETD": 0x5423}

ALLOWED_SOCKET_FAMILIES: tuple[int, ...] = (
    socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK,
)
NETLINK_ROUTE = 0
SOCK_PACKET = 10
PR_SET_PDEATHSIG = 1
SOCK_TYPE_MASK = 0xF  # the type argument also carries SOCK_NONBLOCK | SOCK_CLOEXEC
IPPROTO_ICMPV6 = 58
# (socket type, protocol) pairs of AF_INET and AF_INET6 sockets that may be made. Protocol 0
# is the type's default (TCP, UDP). ICMP datagram sockets are ping(8)'s unprivileged sockets;
# the host's net.ipv4.ping_group_range still decides whether they open.
INET_SOCKETS: dict[int, tuple[tuple[int, int], ...]] = {
    socket.AF_INET: ((socket.SOCK_STREAM, 0), (socket.SOCK_STREAM, socket.IPPROTO_TCP),
                     (socket.SOCK_DGRAM, 0), (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
                     (socket.SOCK_DGRAM, socket.IPPROTO_ICMP)),
    socket.AF_INET6: ((socket.SOCK_STREAM, 0), (socket.SOCK_STREAM, socket.IPPROTO_TCP),
                      (socket.SOCK_DGRAM, 0), (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
                      (socket.SOCK_DGRAM, IPPROTO_ICMPV6)),
}

PERSONALITY_QUERY = 0xFFFFFFFF

# Syscalls numbered from 424 on have the same number on every architecture we support, so a
# libseccomp older than the kernel (2.5.4 knows none past futex_requeue) still names them.
_UNIFIED_NUMBERS: dict[str, int] = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435,
    "close_range": 436, "openat2": 437, "pidfd_getfd": 438, "faccessat2": 439,
    "epoll_pwait2": 441, "mount_setattr": 442, "quotactl_fd": 443, "memfd_secret": 447,
    "futex_waitv": 449, "set_mempolicy_home_node": 450, "fchmodat2": 452,
    "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455, "futex_requeue": 456,
    "statmount": 457, "listmount": 458, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467,
}

# -- classic BPF ---------------------------------------------------------------------------

_LD_W_ABS = 0x20  # A <- 32-bit word of struct seccomp_data at offset k
_AND_K = 0x54  # A <- A & k
_JEQ_K = 0x15
_JGE_K = 0x35
_JA = 0x05  # jump by k (32 bits: reaches anywhere)
_RET_K = 0x06
_MAX_JUMP = 255  # conditional jumps carry 8-bit offsets
BPF_MAXINSNS = 4096

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


def ret_errno(number: int) -> int:
    return _RET_ERRNO | number


ENOSYS = ret_errno(errno.ENOSYS)
EPERM = ret_errno(errno.EPERM)

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]. Both
# supported architectures are little-endian: an argument's low half comes first.
_NR, _ARCH, _ARGS = 0, 4, 16
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
NO_SYSCALL = 0xFFFFFFFF  # -1: what a tracer writes to skip a call; the kernel says ENOSYS

Instruction = tuple[int, int, int, int]  # code, jt, jf, k


@dataclass(frozen=True)
class Match:
    """(one 32-bit half of an argument) & mask == value."""

    arg: int
    value: int
    mask: int = 0xFFFFFFFF
    high: bool = False


def low(arg: int, value: int, mask: int = 0xFFFFFFFF) -> tuple[Match, ...]:
    """The low 32 bits, all the kernel reads of an int argument."""
    return (Match(arg, value & mask, mask),)


def whole(arg: int, value: int) -> tuple[Match, ...]:
    """The whole 64-bit value: junk in the high half is no match."""
    return Match(arg, value & 0xFFFFFFFF), Match(arg, value >> 32, high=True)


@dataclass(frozen=True)
class ArgumentRules:
    """A call decided by its arguments: the first rule whose matches all hold decides."""

    rules: tuple[tuple[tuple[Match, ...], int], ...]
    otherwise: int


def _socket_rules() -> ArgumentRules:
    family, kind, protocol = 0, 1, 2
    rules: list[tuple[tuple[Match, ...], int]] = [
        (whole(family, socket.AF_UNIX), RET_ALLOW),
        (whole(family, socket.AF_NETLINK) + whole(protocol, NETLINK_ROUTE), RET_ALLOW),
        (whole(family, socket.AF_NETLINK), ret_errno(errno.EPROTONOSUPPORT)),
    ]
    for inet, pairs in INET_SOCKETS.items():
        for raw in (socket.SOCK_RAW, SOCK_PACKET):
            rules.append((whole(family, inet) + low(kind, raw, SOCK_TYPE_MASK), EPERM))
        for sock_type, proto in pairs:
            rules.append((whole(family, inet) + low(kind, sock_type, SOCK_TYPE_MASK)
                          + whole(protocol, proto), RET_ALLOW))
        rules.append((whole(family, inet), ret_errno(errno.EPROTONOSUPPORT)))
    return ArgumentRules(tuple(rules), ret_errno(errno.EAFNOSUPPORT))


def _argument_rules() -> dict[str, ArgumentRules]:
    namespaces = 0
    for flag in CLONE_NAMESPACE_FLAGS.values():
        namespaces |= flag
    sockets = _socket_rules()
    return {
        # clone's flags are read as 32 bits (lower_32_bits in kernel/fork.c)
        "clone": ArgumentRules(((low(0, 0, namespaces), RET_ALLOW),), EPERM),
        "ioctl": ArgumentRules(tuple((low(1, request), EPERM)
                                     for request in DENIED_IOCTLS.values()), RET_ALLOW),
        "personality": ArgumentRules(((low(0, 0), RET_ALLOW),
                                      (low(0, PERSONALITY_QUERY), RET_ALLOW)), EPERM),
        "socket": sockets,
        "socketpair": sockets,
        # A sandbox's pid 1 dies with its parent (PR_SET_PDEATHSIG, set before the filter):
        # a program that is its own pid 1 (a one-shot run) must not switch that off.
        "prctl": ArgumentRules(((low(0, PR_SET_PDEATHSIG), EPERM),), RET_ALLOW),
    }


def _assemble_rules(rules: ArgumentRules) -> list[Instruction]:
    code: list[Instruction] = []
    for matches, action in rules.rules:
        rule: list[Instruction] = []
        misses: list[int] = []  # indexes of the jumps to the next rule
        for match in matches:
            offset = _ARGS + 8 * match.arg + (4 if match.high else 0)
            rule.append((_LD_W_ABS, 0, 0, offset))
            if match.mask != 0xFFFFFFFF:
                rule.append((_AND_K, 0, 0, match.mask))
            misses.append(len(rule))
            rule.append((_JEQ_K, 0, 0, match.value))
        rule.append((_RET_K, 0, 0, action))
        for index in misses:
            code_, _, _, k = rule[index]
            rule[index] = (code_, 0, len(rule) - index - 1, k)
        code += rule
    code.append((_RET_K, 0, 0, rules.otherwise))
    return code


Leaf = int | ArgumentRules  # a return value, or rules that decide one


def _assemble_search(ranges: list[tuple[int, Leaf]]) -> list[Instruction]:
    """Binary search over (first syscall number, what to do) ranges, sorted, the first at 0."""
    if len(ranges) == 1:
        leaf = ranges[0][1]
        return _assemble_rules(leaf) if isinstance(leaf, ArgumentRules) else [
            (_RET_K, 0, 0, leaf)]
    middle = len(ranges) // 2
    below, above = _assemble_search(ranges[:middle]), _assemble_search(ranges[middle:])
    boundary = ranges[middle][0]
    if len(below) <= _MAX_JUMP:
        return [(_JGE_K, len(below), 0, boundary), *below, *above]
    # Too far for a conditional jump: true goes to an unconditional one.
    return [(_JGE_K, 0, 1, boundary), (_JA, 0, 0, len(below)), *below, *above]


def _ranges(actions: dict[int, Leaf], native: str) -> list[tuple[int, Leaf]]:
    """Every number from 0 to 2**32 - 1 in ranges of one action (ENOSYS where unnamed)."""
    points: dict[int, Leaf] = {0: ENOSYS}  # where a range starts: what it does
    for number, leaf in sorted(actions.items()):
        points[number] = leaf
        points.setdefault(number + 1, ENOSYS)  # replaced if the next number is named too
    if native == "x86_64":
        points[X32_SYSCALL_BIT] = RET_KILL_PROCESS  # the x32 ABI, up to NO_SYSCALL
    points[NO_SYSCALL] = ENOSYS
    ranges: list[tuple[int, Leaf]] = []
    for start, leaf in sorted(points.items()):
        if ranges and isinstance(leaf, int) and ranges[-1][1] == leaf:
            continue  # same answer as the range before: one range
        ranges.append((start, leaf))
    return ranges


# -- building the filter -------------------------------------------------------------------


def _libseccomp() -> ModuleType:
    """pyseccomp loads libseccomp when imported; only the server needs it, not the worker."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 not found
        raise SandboxUnavailable(
            f"seccomp filters need libseccomp (apt-get install libseccomp2): {exc}"
        ) from exc
    module: ModuleType = pyseccomp
    return module


def _native(sc: ModuleType) -> str:
    native = sc.system_arch()
    for name, token in AUDIT_ARCH.items():
        if native == token:  # libseccomp's architecture tokens are the AUDIT_ARCH values
            return name
    raise SandboxUnavailable(
        f"the seccomp filter supports x86_64 and aarch64 hosts only (libseccomp arch "
        f"{native:#x})"
    )


def _number(sc: ModuleType, name: str) -> int | None:
    """The native number of a syscall, or None if this architecture does not have it."""
    number = sc.resolve_syscall(sc.Arch.NATIVE, name)
    if number == -1:  # unknown to this libseccomp
        if name in _UNIFIED_NUMBERS:
            return _UNIFIED_NUMBERS[name]
        raise ValueError(f"libseccomp does not know the syscall {name!r}")
    # Other negative numbers are libseccomp's placeholders for syscalls this arch lacks.
    return number if number >= 0 else None


def _actions(sc: ModuleType) -> dict[int, Leaf]:
    named: dict[str, Leaf] = {name: RET_ALLOW for name in ALLOWED_SYSCALLS}
    named.update(_argument_rules())
    for group, action in ((DENIED_SYSCALLS, EPERM), (NOT_IMPLEMENTED_SYSCALLS, ENOSYS)):
        for name in group:
            if name in named:
                raise ValueError(f"{name!r} is both allowed and refused")
            named[name] = action
    if clash := set(named) & set(NEVER_ALLOWED):
        raise ValueError(f"never to be allowed: {sorted(clash)}")
    actions: dict[int, Leaf] = {}
    for name, leaf in named.items():
        number = _number(sc, name)
        if number is not None:
            actions[number] = leaf
    return actions


def assemble(actions: dict[int, Leaf], native: str) -> list[Instruction]:
    """The whole program: architecture check, then the search on the syscall number."""
    program = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, AUDIT_ARCH[native]),
        (_RET_K, 0, 0, RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
        *_assemble_search(_ranges(actions, native)),
    ]
    if len(program) > BPF_MAXINSNS:
        raise ValueError(f"the seccomp program has {len(program)} instructions, the kernel "
                         f"takes {BPF_MAXINSNS}")
    return program


@functools.cache
def build_filter() -> bytes:
    """The compiled BPF program (struct sock_filter[]), as bwrap --seccomp reads it."""
    sc = _libseccomp()
    native = _native(sc)
    program = assemble(_actions(sc), native)
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


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
