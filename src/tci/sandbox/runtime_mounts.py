"""The runtime and the worker package, made reachable for the sandboxes wherever they live.

bubblewrap runs as each session's unprivileged uid, so every host path it binds must be
traversable by "others". A clone in a 0700 home directory (Debian's default, and root's
/root) is not, and the server should not ask users to loosen their home. So at start the
server (root) bind-mounts both directories, read-only, nosuid and nodev, under its own sandbox
directory, which is made reachable (mode 0711); the sandboxes bind those instead. A bind
mount is instant, costs no disk, and shows exactly the files `make runtime` built, unlike a
copy into a system path. The mounts go away at server stop, and a server that was killed
leaves them for the next start on the same sandbox directory to remove (withdraw()).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable
from tci.sandbox.volume import PROGRAM_SECONDS

RUNTIME_NAME = "runtime"
WORKER_NAME = "worker"
_ESCAPE = re.compile(r"\\([0-7]{3})")
_REQUIRED_FLAGS = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV


@dataclass(frozen=True)
class RuntimePaths:
    """Where the sandboxes find the runtime's packages, its scripts and the worker."""

    site: Path
    bin: Path
    worker: Path


def mount_points() -> list[str]:
    """Mount points of this mount namespace, in mount order (octal escapes decoded)."""
    with open("/proc/self/mountinfo") as handle:
        return [_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
                for line in handle if line.strip()]


def _ours(root: Path) -> list[str]:
    """Our mounts under `root` (several where a killed server left some), last mounted
    first, so that stacked and nested ones come off in order."""
    base = os.path.realpath(root)
    targets = [os.path.join(base, RUNTIME_NAME), os.path.join(base, WORKER_NAME)]
    return [point for point in reversed(mount_points())
            if any(point == target or point.startswith(target + "/") for target in targets)]


def _unmount(point: str) -> None:
    result = subprocess.run(["umount", point], capture_output=True, timeout=PROGRAM_SECONDS)
    if result.returncode != 0:
        # Busy (a shell of the operator's inside it, say): detach it now, freed when unused.
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=PROGRAM_SECONDS)


def withdraw(root: Path) -> None:
    """Remove every runtime mount under `root`: ours at stop, a killed server's at start."""
    for _ in range(64):  # each round removes at least one, unless umount keeps failing
        points = _ours(root)
        if not points:
            return
        for point in points:
            _unmount(point)
    raise SandboxUnavailable(f"could not unmount the runtime mounts under {root}: {_ours(root)}")


def _check_readable(source: Path) -> None:
    mode = source.stat().st_mode
    if mode & 0o005 != 0o005:
        raise SandboxUnavailable(
            f"{source} is not readable by the unprivileged sandbox users (mode "
            f"{stat.S_IMODE(mode):o}): run `chmod -R a+rX {source}` (make runtime does it)"
        )


def _bind_read_only(source: Path, target: Path) -> None:
    target.mkdir(mode=0o755, exist_ok=True)
    # util-linux binds, then remounts with the flags (a bind ignores them on its own).
    result = subprocess.run(
        ["mount", "--bind", "-o", "ro,nosuid,nodev", str(source), str(target)],
        capture_output=True, text=True, timeout=PROGRAM_SECONDS,
    )
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"could not make {source} reachable for the sandboxes (read-only bind mount at "
            f"{target}): {result.stderr.strip()}"
        )
    if os.statvfs(target).f_flag & _REQUIRED_FLAGS != _REQUIRED_FLAGS:
        _unmount(str(target))
        raise SandboxUnavailable(f"the bind mount of {source} at {target} is not read-only")


def expose(root: Path, runtime_site: Path, worker_dir: Path) -> RuntimePaths:
    """Bind the runtime's site directory and the worker package under `root` (read-only)."""
    withdraw(root)
    paths = RuntimePaths(site=root / RUNTIME_NAME, bin=root / RUNTIME_NAME / "bin",
                         worker=root / WORKER_NAME)
    try:
        for source, target in ((runtime_site, paths.site), (worker_dir, paths.worker)):
            _check_readable(source)
            _bind_read_only(source, target)
    except BaseException:
        withdraw(root)
        raise
    return paths
