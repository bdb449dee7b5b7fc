"""The sandbox directory on the host, made so that no local user can pre-create or redirect it.

Its default lives under world-writable /var/tmp at a predictable name: another user could
create it first, or put a symlink there, and have the server (root) create sessions, mount
volumes and delete "stale" directories wherever that leads. So the path is walked one
component at a time with `openat(O_NOFOLLOW)` from `/`, and every component must be a real
directory owned by root (or the server's user) that nobody else can rename entries in.
After that check, only root can change anything along the path, so plain path operations on
what lies below are safe.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tci.errors import SandboxUnavailable

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: str, problem: str) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"refusing to use the sandbox directory: {path} {problem} (TCI_SANDBOX_DIR). Another "
        "user could redirect or replace it; remove it, or choose a path owned by root"
    )


def _problem(info: os.stat_result, last: bool, trusted: set[int]) -> str | None:
    if info.st_uid not in trusted:
        return f"is owned by uid {info.st_uid}, not by root"
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if last and writable_by_others:
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    # A world-writable parent such as /tmp or /var/tmp is safe only with the sticky bit:
    # then nobody but its owner and root can rename or delete what we made in it.
    if writable_by_others and not info.st_mode & stat.S_ISVTX:
        return (f"is writable by group or others without the sticky bit "
                f"(mode {stat.S_IMODE(info.st_mode):o})")
    return None


def make_private_dir(path: Path, mode: int = 0o711) -> None:
    """Create `path` and its missing parents (mode `mode`, owned by us), following no
    symlink; refuse, naming the component and the problem, any that another user controls."""
    absolute = os.path.abspath(path)  # no resolve(): that would follow the symlinks
    trusted = {0, os.geteuid()}
    fd = os.open("/", _DIR_FLAGS)
    try:
        parts = Path(absolute).parts[1:]
        for index, part in enumerate(parts):
            here = os.path.join("/", *parts[: index + 1])
            last = index == len(parts) - 1
            created = False
            try:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    try:
                        os.mkdir(part, mode, dir_fd=fd)
                        created = True
                    except FileExistsError:
                        pass  # made by someone else meanwhile: checked like any other below
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                problem = exc.strerror
                if os.path.islink(here):
                    problem = f"is a symlink (to {os.readlink(here)})"
                elif os.path.lexists(here):
                    problem = "is not a directory"
                raise _refuse(here, problem or str(exc)) from exc
            os.close(fd)
            fd = next_fd
            problem = _problem(os.fstat(fd), last, trusted)
            if problem:
                raise _refuse(here, problem)
            if created or last:
                os.fchmod(fd, mode)  # whatever the umask (the sandbox dir's own mode too)
    finally:
        os.close(fd)
