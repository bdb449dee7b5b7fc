"""A size- and inode-capped filesystem for one session's workspace and home.

Each session gets a sparse ext4 image, loop-mounted (nosuid, nodev) on the host: the kernel
then enforces TCI_WORKSPACE_MAX_BYTES and TCI_WORKSPACE_MAX_FILES exactly, with no quota
support needed from the host filesystem, and a disk flood in one session cannot fill the
host's disk past its quota. Creating and mounting one takes ~40 ms, paid in the warm pool ahead
of demand. Blocking calls: run them in a thread.

Sessions' volumes are made by volume_images.py, which also reserves each image's whole size on
the host's disk (fallocate) so that quotas never add up to more than the disk has; `create`
here, used only by bench/volumes.py, makes a sparse image as the baseline it measures.

Once the sandbox has its own copy of the mount, the host's is remounted `nosymfollow`
(Linux 5.10+): a symlink the session plants is then followed by no host process that walks
the volume (backups, an administrator's `cat`, a future bug of ours), while the sandbox's
copy, whose flags are its own, keeps following the session's symlinks as usual.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable
from tci.worker import linux

log = logging.getLogger(__name__)

IMAGE_NAME = "volume.img"
MOUNT_NAME = "vol"
ST_NOSYMFOLLOW = 0x2000  # statvfs f_flag (linux/statfs.h), not in Python's os module
# mkfs.ext4, mount and umount finish in milliseconds; past this one is stuck in the kernel.
PROGRAM_SECONDS = 60


@dataclass(frozen=True)
class Usage:
    bytes_free: int
    files_free: int


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=PROGRAM_SECONDS)
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"could not prepare the session's disk ({argv[0]}): {result.stderr.strip()}"
        )


def create(root: Path, max_bytes: int, max_files: int) -> Path:
    """Make and mount the volume under `root`; returns the mount point."""
    image, mount_point = root / IMAGE_NAME, root / MOUNT_NAME
    with open(image, "wb") as handle:
        handle.truncate(max_bytes)
    image.chmod(0o600)
    mount_point.mkdir(mode=0o711)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(max_files), "-O", "^has_journal",
         "-E", "lazy_itable_init=1,nodiscard", str(image))
    _run("mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(mount_point))
    shutil.rmtree(mount_point / "lost+found", ignore_errors=True)
    mount_point.chmod(0o711)
    return mount_point


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def nosymfollow_supported() -> bool:
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (5, 10)
    except (IndexError, ValueError):
        return False


def forbid_symlinks(mount_point: Path) -> bool:
    """Make the host's mount of a volume follow no symlink; True once in force. Call it after
    the sandbox's namespace was cloned (bubblewrap keeps the flag in its copy otherwise)."""
    if not nosymfollow_supported():
        _warn_once(f"Linux {os.uname().release} has no nosymfollow (5.10+): session volumes "
                   "are mounted on the host without it")
        return False
    # One mount(2) call, not an exec of mount(8): this is on every session's start path. A
    # bind remount replaces the mount's flags, so the ones it was made with are repeated.
    flags = (linux.MS_REMOUNT | linux.MS_BIND | linux.MS_NOSUID | linux.MS_NODEV
             | linux.MS_NOATIME | linux.MS_NOSYMFOLLOW)
    try:
        linux.mount(None, str(mount_point), None, flags)
    except OSError as exc:
        why = exc.strerror or str(exc)
    else:
        if os.statvfs(mount_point).f_flag & ST_NOSYMFOLLOW:
            return True
        why = "the kernel ignored the flag"
    _warn_once(f"could not remount session volumes nosymfollow ({why}): they stay mounted on "
               "the host without it")
    return False


def usage(mount_point: Path) -> Usage:
    stats = os.statvfs(mount_point)
    return Usage(stats.f_bavail * stats.f_frsize, stats.f_favail)


def destroy(root: Path) -> None:
    """Unmount (lazily if something still holds it) and delete the image."""
    mount_point = root / MOUNT_NAME
    if os.path.ismount(mount_point):
        result = subprocess.run(["umount", str(mount_point)], capture_output=True,
                                timeout=PROGRAM_SECONDS)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True,
                           timeout=PROGRAM_SECONDS)
    (root / IMAGE_NAME).unlink(missing_ok=True)
