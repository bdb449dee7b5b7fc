"""The bubblewrap command line for one session (pure: no I/O, easy to test and audit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOME = "/home/user"
WORKSPACE = "/workspace"
WORKER_MOUNT = "/opt/tci/tci_worker"
RUNTIME_SITE = "/usr/local/lib/python3.11/dist-packages"
RUNTIME_BIN = "/usr/local/bin"
PYTHON = "/usr/bin/python3.11"

# Host paths the sandbox sees read-only. Only the system; never /root, /home, /var, /proc.
SYSTEM_RO = ("/usr",)
SYSTEM_SYMLINKS = (("usr/lib", "/lib"), ("usr/lib64", "/lib64"), ("usr/bin", "/bin"),
                   ("usr/sbin", "/sbin"))
# The part of /etc programs need: the loader cache, certificates, alternatives links.
ETC_RO = ("/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives",
          "/etc/nsswitch.conf", "/etc/localtime", "/etc/mime.types", "/etc/bash.bashrc",
          "/etc/profile", "/etc/inputrc", "/etc/fonts")
# Debian's own Python packages (python3-six, apt bindings...) are not part of the runtime:
# hidden so that sessions see exactly the pinned runtime and pip never mistakes them.
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"


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
    tmp_size_bytes: int = 512 * 1024 * 1024
    extra_env: dict[str, str] = field(default_factory=dict)
    existing_etc: tuple[str, ...] = ETC_RO


def sandbox_env(spec: SandboxSpec) -> dict[str, str]:
    env = {
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
        "TCI_WORKER_FDS": f"{spec.command_fd},{spec.event_fd}",
    }
    env.update(spec.extra_env)
    return env


def build_argv(spec: SandboxSpec) -> list[str]:
    argv = [
        "bwrap",
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
        "--hostname", "sandbox",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--info-fd", str(spec.info_fd),
    ]
    if spec.network == "none":
        argv.append("--unshare-net")
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
    for key, value in sandbox_env(spec).items():
        argv += ["--setenv", key, value]
    argv += ["--", PYTHON, "-m", "tci_worker"]
    return argv
