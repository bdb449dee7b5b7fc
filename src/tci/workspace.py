"""Safe file I/O inside a session's working directory.

The workspace belongs to untrusted code, which may have planted symlinks, FIFOs or
hardlinks in it. The server writes as root, so every path is walked one component at a
time with `openat(O_NOFOLLOW)`: a symlink anywhere on the path is refused, never
followed, even if it is swapped in between our check and our write.
What a request may bring (how many files, how large) is checked before, in
tci/request_files.py; here a name is only split into components that stay in the workspace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

from tci.config import Settings
from tci.errors import BadRequest, NotFound, PayloadTooLarge

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_COMPONENT = 255


@dataclass(frozen=True)
class DecodedFile:
    parts: tuple[str, ...]
    content: bytes

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def split_path(name: str, max_length: int) -> tuple[str, ...]:
    """Validate a relative file name and split it into components."""
    if not name or not name.strip():
        raise BadRequest("file name is empty")
    if "\x00" in name:
        raise BadRequest(f"file name {name!r} contains a NUL byte")
    if len(name.encode()) > max_length:
        raise BadRequest(f"file name is longer than {max_length} bytes (TCI_MAX_FILENAME_LENGTH)")
    if name.startswith("/"):
        raise BadRequest(f"file name {name!r} is absolute; names are relative to the workspace")
    if "\\" in name:
        raise BadRequest(f"file name {name!r} contains a backslash; use '/' between directories")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise BadRequest(f"file name {name!r} names no file")
    for part in parts:
        if part == "..":
            raise BadRequest(f"file name {name!r} contains '..'; it must stay in the workspace")
        if len(part.encode()) > _MAX_COMPONENT:
            raise BadRequest(f"a component of {name!r} is longer than {_MAX_COMPONENT} bytes")
    if name.endswith("/"):
        raise BadRequest(f"file name {name!r} names a directory, not a file")
    return parts


def _refuse(name: str, exc: OSError) -> BadRequest:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return BadRequest(f"file {name!r} would pass through a symlink or a non-directory")
    if exc.errno == errno.ENXIO:
        return BadRequest(f"file {name!r} exists and is not a regular file")
    return BadRequest(f"file {name!r} cannot be written: {exc.strerror}")


def _open_parent(root_fd: int, parts: tuple[str, ...], uid: int, create: bool) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchown(next_fd, uid, uid)
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_writable(workspace: str, files: list[DecodedFile]) -> None:
    """Refuse, before writing anything, a path that crosses a symlink or hits a non-file."""
    root_fd = os.open(workspace, _DIR_FLAGS)
    try:
        for item in files:
            fd = root_fd
            try:
                for index, part in enumerate(item.parts):
                    try:
                        info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        break
                    except OSError as exc:
                        raise _refuse(item.name, exc) from exc
                    last = index == len(item.parts) - 1
                    if stat.S_ISLNK(info.st_mode):
                        raise BadRequest(f"file {item.name!r} would pass through a symlink")
                    if last and not stat.S_ISREG(info.st_mode):
                        raise BadRequest(f"file {item.name!r} exists and is not a regular file")
                    if not last:
                        if not stat.S_ISDIR(info.st_mode):
                            raise BadRequest(f"{part!r} in {item.name!r} is not a directory")
                        try:  # the session's code may have swapped in a symlink meanwhile
                            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                        except OSError as exc:
                            raise _refuse(item.name, exc) from exc
                        if fd != root_fd:
                            os.close(fd)
                        fd = next_fd
            finally:
                if fd != root_fd:
                    os.close(fd)
    finally:
        os.close(root_fd)


def write_files(workspace: str, files: list[DecodedFile], uid: int) -> None:
    """Write files into the workspace as the session's uid would own them."""
    check_writable(workspace, files)
    root_fd = os.open(workspace, _DIR_FLAGS)
    try:
        for item in files:
            try:
                parent = _open_parent(root_fd, item.parts[:-1], uid, create=True)
            except OSError as exc:
                raise _refuse(item.name, exc) from exc
            try:
                flags = (os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
                try:
                    fd = os.open(item.parts[-1], flags, 0o644, dir_fd=parent)
                except OSError as exc:
                    raise _refuse(item.name, exc) from exc
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise BadRequest(f"file {item.name!r} exists and is not a regular file")
                    os.ftruncate(fd, 0)
                    view = memoryview(item.content)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fchown(fd, uid, uid)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise PayloadTooLarge(
                            f"file {item.name!r} does not fit: the session's workspace is full "
                            "(TCI_WORKSPACE_MAX_BYTES / TCI_WORKSPACE_MAX_FILES)"
                        ) from exc
                    raise _refuse(item.name, exc) from exc
                finally:
                    os.close(fd)
            finally:
                with contextlib.suppress(OSError):
                    os.close(parent)
    finally:
        os.close(root_fd)


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    modified: float


class FileListing(list[FileInfo]):
    """The files found, and whether the walk stopped before seeing the whole workspace."""

    truncated: bool = False


# Directory fds a listing keeps open at once, whatever the depth: deeper levels are reopened
# by name from the nearest open one when the walk comes back to them.
_OPEN_DIRS = 16


def _display(name: str) -> str:
    """A name as JSON can carry it: bytes that are not UTF-8 (os gives them as lone
    surrogates) become visible `\\xff` escapes instead of failing the whole answer."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


@dataclass
class _Level:
    """One directory on the walk's current path."""

    name: str  # as on disk, to reopen it from its parent
    path: str  # as listed, with a trailing "/" ("" for the workspace itself)
    fd: int  # -1 while closed to keep the walk within _OPEN_DIRS
    subdirs: list[tuple[str, str]]  # (name, path) still to visit, last one next


class _Walk:
    """Depth-first walk of a workspace with a bounded number of open fds, of entries
    examined and of path length; never follows a symlink."""

    def __init__(self, root_fd: int, limit: int, max_scanned: int, max_path: int) -> None:
        self.found = FileListing()
        self.limit, self.budget, self.max_path = limit, max_scanned, max_path
        self.stopped = False  # a limit was reached: the walk ends here
        self.stack = [_Level("", "", root_fd, [])]
        self.open: deque[int] = deque()  # depths of the open levels below the root, ascending

    def run(self) -> FileListing:
        self._read(self.stack[0])
        while not self.stopped:
            top = self.stack[-1]
            if not top.subdirs:
                if len(self.stack) == 1:
                    break  # back at the workspace: done
                self._pop()
                continue
            name, path = top.subdirs.pop()
            parent = self._fd_of_top()
            if parent < 0 or not self._spend(1):
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError:
                continue  # replaced by a symlink or a file, or removed, meanwhile
            self._opened(_Level(name, path, fd, []))
            self._read(self.stack[-1])
        return self.found

    def close(self) -> None:
        while len(self.stack) > 1:  # the root fd belongs to the caller
            self._pop()

    def _spend(self, entries: int) -> bool:
        if self.budget < entries:
            self.stopped = self.found.truncated = True
            return False
        self.budget -= entries
        return True

    def _read(self, level: _Level) -> None:
        subdirs: list[tuple[str, str]] = []
        with os.scandir(level.fd) as entries:
            for entry in entries:
                if not self._spend(1):
                    break
                path = level.path + _display(entry.name)
                is_dir = entry.is_dir(follow_symlinks=False)
                # "dir/x" is the shortest name under a directory.
                if len(path.encode()) + (2 if is_dir else 0) > self.max_path:
                    self.found.truncated = True  # could not be downloaded by its name anyway
                elif is_dir:
                    subdirs.append((entry.name, path + "/"))
                elif entry.is_file(follow_symlinks=False):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile
                    if len(self.found) >= self.limit:
                        self.stopped = self.found.truncated = True
                        break
                    self.found.append(FileInfo(path, info.st_size, info.st_mtime))
        subdirs.sort(reverse=True)
        level.subdirs = subdirs

    def _fd_of_top(self) -> int:
        """The top level's fd, reopened from its nearest open ancestor if it was closed."""
        if self.stack[-1].fd >= 0:
            return self.stack[-1].fd
        levels = self.stack
        self.stack = levels[: (self.open[-1] if self.open else 0) + 1]
        for level in levels[len(self.stack):]:
            if not self._spend(1):
                return -1
            try:
                fd = os.open(level.name, _DIR_FLAGS, dir_fd=self.stack[-1].fd)
            except OSError:
                # Renamed or swapped meanwhile: what was left to visit under it is dropped.
                return -1
            level.fd = fd
            self._opened(level)
        return fd

    def _opened(self, level: _Level) -> None:
        """Push an open level; close the shallowest ones (never the root) past _OPEN_DIRS."""
        self.open.append(len(self.stack))
        self.stack.append(level)
        while len(self.open) > _OPEN_DIRS:
            shallowest = self.stack[self.open.popleft()]
            os.close(shallowest.fd)
            shallowest.fd = -1

    def _pop(self) -> None:
        level = self.stack.pop()
        if level.fd >= 0:
            self.open.pop()  # the deepest open level is the top
            os.close(level.fd)


def list_files(workspace: str, limit: int,
               max_scanned: int = Settings.model_fields["max_files_scanned"].default,
               max_path: int = Settings.model_fields["max_filename_length"].default,
               ) -> FileListing:
    """Regular files under the workspace, sorted by path (symlinks are listed as nothing and
    never followed). At most `limit` files, `max_scanned` directory entries examined (the
    work of one call, whatever the tree holds) and paths of `max_path` bytes; past any of
    them the listing is `truncated`. Names that are not UTF-8 are listed escaped."""
    root_fd = os.open(workspace, _DIR_FLAGS)
    walk = _Walk(root_fd, limit, max_scanned, max_path)
    try:
        found = walk.run()
    finally:
        walk.close()
        os.close(root_fd)
    found.sort(key=lambda f: f.path)
    return found


def read_file(workspace: str, name: str, max_length: int, max_bytes: int) -> bytes:
    """One regular file's bytes, reached without following any symlink."""
    parts = split_path(name, max_length)
    root_fd = os.open(workspace, _DIR_FLAGS)
    try:
        try:
            parent = _open_parent(root_fd, parts[:-1], uid=-1, create=False)
        except FileNotFoundError as exc:
            raise NotFound(f"file {name!r} not found") from exc
        except OSError as exc:
            raise _refuse(name, exc) from exc
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=parent)
        except FileNotFoundError as exc:
            raise NotFound(f"file {name!r} not found") from exc
        except OSError as exc:
            raise _refuse(name, exc) from exc
        finally:
            os.close(parent)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadRequest(f"{name!r} is not a regular file")
            if info.st_size > max_bytes:
                raise PayloadTooLarge(
                    f"file {name!r} is {info.st_size} bytes; downloads are limited to "
                    f"{max_bytes} bytes (TCI_MAX_FILE_BYTES)"
                )
            chunks, remaining = [], max_bytes + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
            if len(data) > max_bytes:
                raise PayloadTooLarge(f"file {name!r} grew past {max_bytes} bytes while read")
            return data
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
