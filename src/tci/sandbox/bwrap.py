"""The bubblewrap command line for one session (pure: no I/O, easy to test and audit), and
what every sandbox shares on either start path: its paths, environment and resource limits.
The one look at the host, whether the installed bubblewrap has `--disable-userns`, is made
once and cached."""

from __future__ import annotations

import functools
import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

SANDBOX_UID = 1000
_HELP_SECONDS = 10  # `bwrap --help` answers at once; a hung one is an unusable bwrap
SANDBOX_GID = 1000
SANDBOX_HOME = "/home/user"
WORKSPACE = "/workspace"
WORKER_MOUNT = "/opt/tci/tci_worker"
# The sandbox's pid 1 (worker/bwrap_init.py), in place of bubblewrap's own init, which makes
# itself dumpable: ours is not, so the session's code (its uid) cannot rewrite its memory.
INIT = f"{WORKER_MOUNT}/bwrap_init.py"
RUNTIME_SITE = "/usr/local/lib/python3.11/dist-packages"
RUNTIME_BIN = "/usr/local/bin"
PYTHON = "/usr/bin/python3.11"
WORKER_COMMAND = (PYTHON, "-m", "tci_worker")  # what the init spawns, in bubblewrap's environment

# Host paths the sandbox sees read-only. Only the system; never /root, /home, /var, /proc.
SYSTEM_RO = ("/usr",)
SYSTEM_SYMLINKS = (("usr/lib", "/lib"), ("usr/lib64", "/lib64"), ("usr/bin", "/bin"),
                   ("usr/sbin", "/sbin"))
# The part of /etc programs need: the loader cache, certificates, alternatives links.
ETC_RO = ("/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives",
          "/etc/nsswitch.conf", "/etc/localtime", "/etc/mime.types", "/etc/bash.bashrc",
          "/etc/profile", "/etc/inputrc", "/etc/fonts",
          # The JDK's conf/ links here (java.security...): Java runs need it.
          "/etc/java-17-openjdk",
          # R's Renviron and ldpaths: /usr/lib/R/etc links here (R sessions and runs).
          "/etc/R")
# Debian's own Python packages (python3-six, apt bindings...) are not part of the runtime:
# hidden so that sessions see exactly the pinned runtime and pip never mistakes them.
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

class Rlimit(NamedTuple):
    """One resource limit every sandbox starts under, hard and soft alike."""

    resource: int  # resource.RLIMIT_*: what the fork path sets (setrlimit)
    option: str  # prlimit(1)'s name for it: what the bubblewrap path passes
    value: int


# Resource limits every sandbox starts under, hard and soft alike: the sandbox has no
# CAP_SYS_RESOURCE, so it can lower them but never raise them again. The server may run with
# generous limits of its own (root, a container's defaults); none of them leak in.
FIXED_RLIMITS = (
    # No core dumps: a crash must not hand the sandbox's memory to a file, or to the host's
    # crash handler (apport, systemd-coredump), which would run as root on the host.
    Rlimit(resource.RLIMIT_CORE, "core", 0),
    # No real-time scheduling, which would let one session starve every CPU of the host, and
    # no raising of its priority above what the server gave it (sessions may be reniced).
    Rlimit(resource.RLIMIT_RTPRIO, "rtprio", 0),
    Rlimit(resource.RLIMIT_RTTIME, "rttime", 0),
    Rlimit(resource.RLIMIT_NICE, "nice", 0),
    # mlock'd memory cannot be reclaimed: the kernel's own default since Linux 5.16 (8 MiB),
    # enough for the few libraries that lock secrets (gpg, libsodium). All of it, locked or
    # not, also counts against the session's memory cgroup.
    Rlimit(resource.RLIMIT_MEMLOCK, "memlock", 8 << 20),
    # Bytes in POSIX message queues: the kernel's default (800 KiB), whatever the server's.
    Rlimit(resource.RLIMIT_MSGQUEUE, "msgqueue", 800 << 10),
    # Not set: RLIMIT_FSIZE (the workspace volume and the /tmp tmpfs are capped, and SIGXFSZ
    # would kill a process where ENOSPC lets it report the error), RLIMIT_AS and RLIMIT_DATA
    # (the memory cgroup bounds what is used, not what is mapped: numba, JITs and OpenBLAS
    # reserve far more than they touch), RLIMIT_NPROC (the pids cgroup counts per session).
)


def sandbox_rlimits(open_files: int) -> tuple[Rlimit, ...]:
    """Every limit a sandbox starts under: the fixed ones and TCI_OPEN_FILES_LIMIT."""
    return (Rlimit(resource.RLIMIT_NOFILE, "nofile", open_files), *FIXED_RLIMITS)


def prlimit_options(open_files: int) -> list[str]:
    """The same limits as prlimit(1) options, for the bubblewrap path's command line."""
    return [f"--{limit.option}={limit.value}:{limit.value}"
            for limit in sandbox_rlimits(open_files)]


@functools.cache
def bwrap_can_disable_userns(bwrap: str = "bwrap") -> bool:
    """Whether this bubblewrap has --disable-userns (0.8.0 and later)."""
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True,
                               timeout=_HELP_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--disable-userns" in usage.stdout + usage.stderr


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that differs between two sandboxes."""

    workspace: Path  # host dir, becomes /workspace (writable, cwd)
    home: Path  # host dir, becomes /home/user (writable: per-session pip installs)
    etc_dir: Path  # host dir with generated passwd, group, hosts, resolv.conf
    empty_dir: Path  # host dir, empty and read-only, to hide host paths
    runtime_site: Path  # host runtime packages (read-only)
    runtime_bin: Path  # host runtime scripts (read-only)
    worker_dir: Path  # host worker package (read-only)
    command_fd: int
    event_fd: int
    info_fd: int
    # "none": bwrap makes an empty network namespace. "egress": the launcher has already
    # put bwrap in a namespace owned by the host (so slirp4netns may enter it, and the
    # sandbox, in its own user namespace, has no capability over it).
    network: str = "none"
    seccomp_fd: int | None = None  # a compiled BPF program bwrap installs before exec
    # No user namespace can be made inside (bwrap sets the limit of user namespaces to what
    # exists, in a namespace the sandbox cannot write to), so nested namespaces do not rest on
    # the seccomp filter alone. Off only where bubblewrap is older than 0.8.0.
    disable_userns: bool = field(default_factory=bwrap_can_disable_userns)
    tmp_size_bytes: int = 512 * 1024 * 1024
    extra_env: dict[str, str] = field(default_factory=dict)
    existing_etc: tuple[str, ...] = ETC_RO


def sandbox_env() -> dict[str, str]:
    """The environment a sandbox's worker starts with, on either path (nothing inherited)."""
    return {
        "HOME": SANDBOX_HOME,
        "USER": "user",
        "LOGNAME": "user",
        "SHELL": "/bin/bash",
        "PATH": f"{SANDBOX_HOME}/.local/bin:{RUNTIME_BIN}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONPATH": str(Path(WORKER_MOUNT).parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "module://tci_worker.mpl_backend",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        # Plotly's pick for IPython inlines all of plotly.js (about 5 MB) into the first
        # figure's output; the figure alone, as Plotly's JSON MIME type, is what clients use
        # (the console draws it). A user can still choose another renderer.
        "PLOTLY_RENDERER": "plotly_mimetype",
        # The runtime is read-only, so pip installs into the session's user site; Debian's
        # PEP 668 marker would otherwise refuse even that.
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_WARN_SCRIPT_LOCATION": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
    }


def bwrap_env(spec: SandboxSpec) -> dict[str, str]:
    """What bubblewrap sets: the sandbox's environment and where the worker finds its
    channels (a forked worker is handed them at fixed numbers instead)."""
    return {**sandbox_env(), "TCI_WORKER_FDS": f"{spec.command_fd},{spec.event_fd}",
            **spec.extra_env}


def build_argv(spec: SandboxSpec) -> list[str]:
    argv = [
        "bwrap",
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
        "--hostname", "sandbox",
        # Our init is pid 1 (bubblewrap's would be dumpable). --die-with-parent ties both
        # bubblewrap's outer process (to the server) and the init (to that process) by
        # PR_SET_PDEATHSIG, set before the seccomp filter that refuses to change it.
        "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--info-fd", str(spec.info_fd),
    ]
    if spec.network == "none":
        argv.append("--unshare-net")
    if spec.disable_userns:
        argv.append("--disable-userns")
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    for path in SYSTEM_RO:
        argv += ["--ro-bind", path, path]
    for target, link in SYSTEM_SYMLINKS:
        argv += ["--symlink", target, link]
    for path in spec.existing_etc:
        argv += ["--ro-bind-try", path, path]
    for name in ("passwd", "group", "hosts", "resolv.conf", "hostname"):
        argv += ["--ro-bind", str(spec.etc_dir / name), f"/etc/{name}"]
    argv += [
        "--ro-bind", str(spec.empty_dir), DEBIAN_DIST_PACKAGES,
        "--ro-bind", str(spec.runtime_site), RUNTIME_SITE,
        "--ro-bind", str(spec.runtime_bin), RUNTIME_BIN,
        "--ro-bind", str(spec.worker_dir), WORKER_MOUNT,
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(spec.tmp_size_bytes), "--tmpfs", "/tmp",
        "--size", str(spec.tmp_size_bytes), "--tmpfs", "/dev/shm",
        "--bind", str(spec.home), SANDBOX_HOME,
        "--bind", str(spec.workspace), WORKSPACE,
        # The sandbox's root and /dev are bwrap's own tmpfs: read-only once everything is
        # mounted, so the only writable places are the capped ones above.
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", WORKSPACE,
        "--clearenv",
    ]
    for key, value in bwrap_env(spec).items():
        argv += ["--setenv", key, value]
    # The init runs isolated (no site, environment or cwd on its path), spawns the worker.
    argv += ["--", PYTHON, "-S", "-I", "-B", INIT, *WORKER_COMMAND]
    return argv
