"""Where paused sessions and snapshots are kept, and how a session's volume gets there.

What is kept of a session is its volume image (volume_images.py: an ext4 file holding
/workspace and /home/user, so its files, its pip-installed packages and the saved namespace
that worker/state.py wrote into its home). A paused session's image is the session's own
inode, linked into the state store before the sandbox is torn down (no copy); a snapshot is a
sparse copy of a running session's image taken while its filesystem is frozen (FIFREEZE), so
it is consistent. Starting from either links (paused) or copies (snapshot) the image into the
new sandbox's directory, where the volume code reserves and mounts it as it would a new one.

`StateStore` names where images are kept: a local directory now (TCI_STATE_DIR). A shared
directory every Ray host mounts is the same class with another path; PostgreSQL would be
another implementation of the same four methods.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tci.errors import SandboxUnavailable
from tci.sandbox.volume_images import VolumeImages

# <linux/fs.h>: _IOWR('X', 119, int), _IOWR('X', 120, int)
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
# Inside the sandbox: where the worker writes the namespace (the session's home, on its volume)
STATE_FILE_IN_SANDBOX = "/home/user/.tci/state.dill"
STATE_FILE_IN_HOME = ".tci/state.dill"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _ranges(fd: int, want_data: bool) -> Iterator[tuple[int, int]]:
    """(start, end) of the data (or hole) ranges of the file, as SEEK_DATA/SEEK_HOLE see them
    (an ext4 host reports reserved-but-unwritten blocks as holes)."""
    size, offset = os.fstat(fd).st_size, 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = size
        hole = os.lseek(fd, data, os.SEEK_HOLE) if data < size else size
        if want_data and data < hole:
            yield data, hole
        if not want_data and offset < data:
            yield offset, data
        offset = hole


def release_unwritten(path: Path) -> None:
    """Give back the blocks a volume reserved but never wrote (its TCI_WORKSPACE_MAX_BYTES
    reservation): a kept image takes only what the session wrote."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for start, end in list(_ranges(fd, want_data=False)):
            if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                               start, end - start) != 0:
                return  # the host's filesystem cannot: the image keeps its reservation
    finally:
        os.close(fd)


def sparse_copy(source: Path, target: Path) -> None:
    """Copy the data ranges only (holes stay holes), with copy_file_range (a reflink where
    the filesystem can)."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            os.ftruncate(dst, os.fstat(src).st_size)
            for start, end in _ranges(src, want_data=True):
                offset = start
                while offset < end:
                    copied = os.copy_file_range(src, dst, end - offset, offset, offset)
                    if copied == 0:
                        break
                    offset += copied
        finally:
            os.close(dst)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        os.close(src)


@contextlib.contextmanager
def frozen(mount_point: Path) -> Iterator[None]:
    """The filesystem flushed to its image and held still (writers wait) until the block
    ends: a copy of the image taken meanwhile is consistent."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        try:
            yield
        finally:
            fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def discard_free(mount_point: Path) -> None:
    """FITRIM: the volume's free blocks (files deleted, rewritten) become holes in its image,
    which then takes what its files take, not everything ever written."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITRIM, struct.pack("QQQ", 0, 2**64 - 1, 0))
    except OSError:
        pass  # the loop device cannot discard: the image keeps those blocks
    finally:
        os.close(fd)


def chown_tree(mount_point: Path, uid: int) -> None:
    """A kept volume mounted for a new sandbox, whose uid differs: everything under its root
    becomes the new uid's (links are changed, never followed)."""
    for directory, dirnames, filenames in os.walk(mount_point, followlinks=False):
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), uid, uid)


# What copy_tree keeps of a mode: permissions and the sticky bit (never set-id bits).
_KEPT_MODE = 0o1777
# Past this many files and directories, a copy costs more than a cold start's chown_tree.
_COPY_MAX_ENTRIES = 4096
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeTooLarge(Exception):
    """copy_tree met more than its budget: a cold start on the kept image is cheaper."""


class _Budget:
    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.bytes, self.entries = max_bytes, max_entries

    def spend(self, size: int) -> None:
        self.bytes -= size
        self.entries -= 1
        if self.bytes < 0 or self.entries < 0:
            raise TreeTooLarge("the kept volume holds more than a copy is worth")


def copy_tree(source: Path, target: Path, uid: int, max_bytes: int, max_entries: int) -> None:
    """Copy a kept volume's files (mounted read-only, nosymfollow: kept images are
    untrusted) into a new volume's root `target`, every copy owned by `uid`. Directories,
    regular files, symlinks (recreated, never followed) and fifos are copied with their
    permissions (times too, but a fifo's); hard links become copies; anything else (a
    socket's file, dead since the pause; devices, which the session could not make) is left
    out. TreeTooLarge past `max_bytes` of file data or `max_entries`."""
    budget = _Budget(max_bytes, max_entries)
    root = os.open(target, _DIRECTORY)
    try:
        for directory, dirnames, filenames, source_fd in os.fwalk(source, follow_symlinks=False):
            relative = os.path.relpath(directory, source)
            into = root if relative == "." else os.open(relative, _DIRECTORY, dir_fd=root)
            try:
                for name in dirnames:  # made before fwalk enters them (top-down)
                    _copy_directory(name, source_fd, into, uid, budget)
                for name in filenames:
                    _copy_entry(name, source_fd, into, uid, budget)
                if relative != ".":
                    _copy_times(os.stat(source_fd), None, into)
            finally:
                if into != root:
                    os.close(into)
    finally:
        os.close(root)


def _copy_times(info: os.stat_result, name: str | None, directory_fd: int) -> None:
    times = (info.st_atime_ns, info.st_mtime_ns)
    if name is None:
        os.utime(directory_fd, ns=times)
    else:
        os.utime(name, ns=times, dir_fd=directory_fd, follow_symlinks=False)


def _copy_directory(name: str, source_fd: int, into: int, uid: int, budget: _Budget) -> None:
    info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):  # a symlink to one: fwalk does not enter it
        _copy_entry(name, source_fd, into, uid, budget)
        return
    budget.spend(0)
    with contextlib.suppress(FileExistsError):  # the new volume's own work/, home/, ...
        os.mkdir(name, 0o700, dir_fd=into)
    made = os.open(name, _DIRECTORY, dir_fd=into)
    try:
        os.fchown(made, uid, uid)
        os.fchmod(made, stat.S_IMODE(info.st_mode) & _KEPT_MODE)
    finally:
        os.close(made)


def _copy_entry(name: str, source_fd: int, into: int, uid: int, budget: _Budget) -> None:
    info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
    budget.spend(info.st_blocks * 512)  # what it takes: holes stay holes
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=source_fd), name, dir_fd=into)
        os.chown(name, uid, uid, dir_fd=into, follow_symlinks=False)
        _copy_times(info, name, into)
        return
    if stat.S_ISFIFO(info.st_mode):  # a node only, nothing in it survives a pause anyway
        os.mkfifo(name, 0o600, dir_fd=into)
        os.chown(name, uid, uid, dir_fd=into, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(info.st_mode) & _KEPT_MODE, dir_fd=into)
        return
    if not stat.S_ISREG(info.st_mode):
        return
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_fd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=into)
        try:
            _copy_data(src, dst, os.fstat(src).st_size)
            os.fchown(dst, uid, uid)
            os.fchmod(dst, stat.S_IMODE(info.st_mode) & _KEPT_MODE)
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_data(src: int, dst: int, size: int) -> None:
    """The file's data ranges (holes stay holes), in the kernel: sendfile, as
    copy_file_range refuses two ext4 filesystems (EXDEV)."""
    os.ftruncate(dst, size)
    for start, end in _ranges(src, want_data=True):
        os.lseek(dst, start, os.SEEK_SET)
        offset = start
        while offset < end:
            copied = os.sendfile(dst, src, offset, end - offset)
            if copied == 0:
                return
            offset += copied


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes `source`'s inode (same filesystem), or a sparse copy of it."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        sparse_copy(source, target)


def allocated_bytes(path: Path) -> int:
    return os.stat(path, follow_symlinks=False).st_blocks * 512


class StateStore:
    """Kept volume images by name, in one private directory (TCI_STATE_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise SandboxUnavailable(f"could not prepare TCI_STATE_DIR {self.root}: {exc}") \
                from exc

    def path(self, name: str) -> Path:
        if not name.replace("_", "").isalnum():  # ids only: never a path of the caller's
            raise ValueError(f"not a state name: {name!r}")
        return self.root / f"{name}.img"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def keep(self, name: str, image: Path, mount_point: Path, copy: bool) -> None:
        """Keep the mounted volume `image` under `name`, its filesystem frozen meanwhile:
        linked (a paused session's: its sandbox unlinks only its own name) or copied (a
        snapshot of a session that runs on). `trim` it once the volume is unmounted."""
        target = self.path(name)
        target.unlink(missing_ok=True)
        if not copy:  # the blocks of deleted files need not be kept (for a running
            discard_free(mount_point)  # session's volume they stay reserved)
        with frozen(mount_point):
            if copy:
                sparse_copy(image, target)
            else:
                link_or_copy(image, target)

    def trim(self, name: str) -> int:
        """Free what the kept image reserved but never wrote; returns the bytes it takes."""
        target = self.path(name)
        release_unwritten(target)
        return allocated_bytes(target)

    def flush(self, name: str) -> None:
        """Write the kept image to the disk (call it off the pause's answer: it waits for
        the disk). Then the kept state survives a host crash, and the image's next mount
        (its resume, a start from the snapshot) does not wait for the kernel to write its
        dirty pages back first (~7 ms of a 10 MB resume's mount, measured)."""
        try:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:  # resumed or deleted meanwhile
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def place(self, name: str, target: Path, copy: bool) -> None:
        """Put the kept image at `target` (a new sandbox's volume image): the paused
        session's own inode, or a copy of a snapshot (which stays for other sessions)."""
        source = self.path(name)
        if not source.exists():
            raise SandboxUnavailable(f"the kept state {name} is missing from TCI_STATE_DIR",
                                     public=True)
        if copy:
            sparse_copy(source, target)
        else:
            link_or_copy(source, target)

    def allocated(self, name: str) -> int:
        """The bytes the kept image takes on the disk (0 if it is missing)."""
        try:
            return allocated_bytes(self.path(name))
        except FileNotFoundError:
            return 0

    def copy_into(self, name: str, volume_root: Path, uid: int, volumes: VolumeImages,
                  scratch: Path, max_bytes: int) -> None:
        """Copy the kept volume's files into a started sandbox's new volume (its host view,
        `volume_root`), owned by `uid`: the kept image is mounted read-only at a fresh
        directory under `scratch` meanwhile. TreeTooLarge when it holds more than
        `max_bytes` (or _COPY_MAX_ENTRIES files): a cold start on it is cheaper then."""
        source = self.path(name)
        if self.allocated(name) > max_bytes:
            raise TreeTooLarge(f"the kept volume takes more than {max_bytes} bytes")
        mount_point = Path(tempfile.mkdtemp(prefix="kept-", dir=scratch))
        try:
            volumes.mount_read_only(source, mount_point)
            try:
                copy_tree(mount_point, volume_root, uid, max_bytes, _COPY_MAX_ENTRIES)
            finally:
                VolumeImages.unmount(mount_point)
        finally:
            with contextlib.suppress(OSError):
                mount_point.rmdir()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
