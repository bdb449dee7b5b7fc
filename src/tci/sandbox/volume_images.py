"""Session volumes made and removed by system calls alone: a formatted image copied per session.

The volumes are volume.py's (a sparse ext4 image per session, loop-mounted nosuid,nodev,
noatime: the kernel enforces TCI_WORKSPACE_MAX_BYTES and TCI_WORKSPACE_MAX_FILES exactly, and
a session that fills its disk touches no other session), with the same layout (`<root>/
volume.img` mounted on `<root>/vol`, so volume.destroy still clears a stale one). What changes
is the cost: volume.py runs mkfs.ext4, mount and umount for every session, and starting those
programs is most of its ~9 ms to create and ~3 ms to destroy. Here mkfs.ext4 runs once per
size, on a template whose written blocks (~80 KB of a sparse 1 GiB image) are kept in memory;
a session's image is those blocks written into a new sparse file, attached to a free loop
device with one ioctl (LOOP_CONFIGURE, Linux 5.8+) and mounted with mount(2). Removal is
umount2(2) (the loop device detaches itself: autoclear) and unlink(2). Blocking calls: run
them in a thread; they are safe to call from several threads at once.

Why not one shared filesystem with a project quota per session (the idea in issue 11): ext4
mounts with quotas only on kernels built with CONFIG_QFMT_V2 and XFS only with
CONFIG_XFS_QUOTA, and the 6.18 kernel this was written on has neither; a per-session filesystem
also keeps exact inode caps, no cross-session links by construction, and a removal whose cost
does not grow with the files the untrusted code left behind (nothing is walked).

All sessions' filesystems share the template's UUID; ext4 does not need it to be unique (it
only seeds checksums), udev's /dev/disk/by-uuid links may point at any of them.

A volume's quota is a promise the host's disk keeps: each image is fallocate()d to its full
size when it is made (~0.5-1 ms for 1 GiB on ext4: extents, no data written), so its blocks are
the session's whatever the others write. Sparse images could promise more than the disk has,
and one session filling its quota would make another, well within its own, fail with I/O
errors. A volume whose reservation would leave the disk less than the reserve
(TCI_MIN_FREE_DISK_BYTES) is refused (DiskCommitted, 503 with Retry-After) until sessions end.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable, ServerBusy
from tci.sandbox import volume
from tci.sandbox.volume import IMAGE_NAME, MOUNT_NAME, PROGRAM_SECONDS, Usage
from tci.worker import linux

log = logging.getLogger(__name__)

# <linux/loop.h>
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4  # the device detaches from the image when its last user (the mount) goes
MS_NOATIME, UMOUNT_NOFOLLOW = 0x400, 0x8  # <linux/mount.h>, <sys/mount.h>
MOUNT_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | MS_NOATIME
# noinit_itable: the image is sparse, so its inode tables already read as zeros; without it
# the kernel's ext4lazyinit thread zeroes them in the background after each mount anyway,
# writing up to ~5 MB per 20,000 inodes into the image.
# nobarrier: the image is deleted with its session and never read after a host crash, so no
# flush needs to reach the host's disk; with barriers each superblock write, umount and the
# session's own fsync() make the loop device fsync the whole image on the host.
MOUNT_OPTIONS = "noinit_itable,nobarrier"
# No journal (the volume dies with its session), no blocks reserved for root, no reserved GDT
# blocks for online growth (never grown): what is left to copy per session is ~80 KB.
MKFS_FEATURES = "^has_journal,^resize_inode"
FALLOC_MODE_ALLOCATE = 0  # fallocate(2) mode 0: allocate the range (unwritten extents)
ATTACH_ATTEMPTS = 16  # another process may take the free device between our two ioctls
BLOCK = 4096
MiB = 1 << 20
READ_CHUNK = 1 << 20


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class DiskCommitted(ServerBusy, SandboxUnavailable):
    """The sandbox disk holds no more session volumes: the live ones reserve their quotas.
    Load, not a fault (503 with Retry-After, as ServerBusy); a SandboxUnavailable to the warm
    pool, which tries again later. Its message names only settings: the client may read it."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        ServerBusy.__init__(self, message, retry_after)
        self.public = True


def _fallocate(fd: int, length: int) -> None:
    """Reserve the file's blocks; OSError (ENOSPC, EOPNOTSUPP) when the kernel cannot. Not
    os.posix_fallocate: glibc's emulation writes zeros over the whole length instead."""
    if _libc.fallocate(fd, FALLOC_MODE_ALLOCATE, 0, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("reserved", ctypes.c_uint64 * 8)]


def _nonzero_runs(offset: int, data: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of the runs of blocks of `data` that hold something other than zeros."""
    runs: list[tuple[int, bytes]] = []
    zero = bytes(BLOCK)
    run_start = None
    for position in range(0, len(data) + BLOCK, BLOCK):
        block = data[position:position + BLOCK]
        if block and block != zero[:len(block)]:
            if run_start is None:
                run_start = position
        elif run_start is not None:
            runs.append((offset + run_start, data[run_start:position]))
            run_start = None
    return runs


@dataclass(frozen=True)
class Template:
    """A formatted image, as its size and the blocks mkfs wrote (the rest is a hole)."""

    size: int
    extents: tuple[tuple[int, bytes], ...]

    @classmethod
    def read(cls, fd: int) -> Template:
        """Keeps the blocks that are not all zeros: a filesystem that reports no holes (some
        network ones) then costs one read of the image here, not a full image in memory."""
        size, offset, extents = os.fstat(fd).st_size, 0, []
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:  # ENXIO: only a hole is left
                if exc.errno != errno.ENXIO:
                    raise
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            for chunk in range(start, offset, READ_CHUNK):
                data = os.pread(fd, min(READ_CHUNK, offset - chunk), chunk)
                extents.extend(_nonzero_runs(chunk, data))
        return cls(size, tuple(extents))

    def write(self, fd: int) -> None:
        os.ftruncate(fd, self.size)
        for offset, data in self.extents:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)


class VolumeImages:
    """Makes and removes session volumes; one per server, made at prepare()."""

    def __init__(self, root: Path, max_bytes: int, max_files: int,
                 reserve_bytes: int = 0) -> None:
        self.root = root  # the sandbox dir: private to the server (hostdir.make_private_dir)
        self.defaults = (max_bytes, max_files)
        # Free space the volumes leave to everything else on the disk (TCI_MIN_FREE_DISK_BYTES).
        self.reserve_bytes = reserve_bytes
        self._reserving = threading.Lock()  # one free-space check + reservation at a time
        self._templates: dict[tuple[int, int], Template] = {}
        self._lock = threading.Lock()
        self._control: int | None = None

    def prepare(self) -> VolumeImages:
        """Opens the loop control device and formats the template for the default limits."""
        try:
            self._control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxUnavailable(f"no loop devices ({LOOP_CONTROL}: {exc.strerror}): "
                                     "session volumes need them") from exc
        self.template(*self.defaults)
        return self

    def close(self) -> None:
        if self._control is not None:
            os.close(self._control)
            self._control = None
        self._templates.clear()

    def template(self, max_bytes: int, max_files: int) -> Template:
        """The template for these limits, formatted on first use (other limits than the
        defaults cost one mkfs.ext4 the first time)."""
        with self._lock:
            key = (max_bytes, max_files)
            if key not in self._templates:
                self._templates[key] = self._format(max_bytes, max_files)
            return self._templates[key]

    def _format(self, max_bytes: int, max_files: int) -> Template:
        """mkfs once, then mount it once to shape the root as every volume wants it."""
        work = Path(tempfile.mkdtemp(prefix="volume-template-", dir=self.root))
        image, mount_point = work / IMAGE_NAME, work / MOUNT_NAME
        try:
            with open(image, "wb") as handle:
                handle.truncate(max_bytes)
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(max_files), "-O", MKFS_FEATURES,
                 "-E", "lazy_itable_init=1,nodiscard", str(image))
            mount_point.mkdir(mode=0o700)
            self._attach_and_mount(image, mount_point)
            try:
                (mount_point / "lost+found").rmdir()
                mount_point.chmod(0o711)  # the session's uid only passes through to its dirs
            finally:
                linux.umount(str(mount_point), UMOUNT_NOFOLLOW)
            fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return Template.read(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SandboxUnavailable(f"could not format the session volume template: {exc}") \
                from exc
        finally:
            with contextlib.suppress(OSError):
                mount_point.rmdir()
            image.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                work.rmdir()

    def create(self, root: Path, max_bytes: int, max_files: int,
               place: Callable[[Path], None] | None = None) -> Path:
        """Make and mount the volume under `root` (the session's directory); returns the mount
        point, an empty directory of mode 0711 owned by root, as volume.create does. With
        `place`, the image is a kept one (a paused session's or a snapshot's, kept_volumes.py)
        that `place` puts at the image's path, reserved and mounted as a new one would be."""
        template = self.template(max_bytes, max_files)
        image, mount_point = root / IMAGE_NAME, root / MOUNT_NAME
        try:
            if place is not None:
                place(image)
                fd = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # not ours: left as it is
            raise SandboxUnavailable(f"could not prepare the session's disk: {exc}") from exc
        try:
            self._reserve(fd, max_bytes)
            if place is None:
                template.write(fd)
            mount_point.mkdir(mode=0o711)
            self._attach_and_mount(image, mount_point, fd)
        except (OSError, SandboxUnavailable) as exc:
            with contextlib.suppress(OSError):
                mount_point.rmdir()
            image.unlink(missing_ok=True)
            if isinstance(exc, SandboxUnavailable):
                raise
            raise SandboxUnavailable(f"could not prepare the session's disk: {exc}") from exc
        finally:
            os.close(fd)
        return mount_point

    def _reserve(self, fd: int, max_bytes: int) -> None:
        """Allocate the whole image on the host's disk, or refuse: DiskCommitted when that
        would leave less than the reserve free (or the disk has no room at all)."""
        with self._reserving:  # two volumes must not both count the same free space
            free = os.statvfs(fd)
            available = free.f_bavail * free.f_frsize
            if available - max_bytes < self.reserve_bytes:
                raise self._committed(available, max_bytes)
            try:
                _fallocate(fd, max_bytes)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise self._committed(available, max_bytes) from exc
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                _warn_no_fallocate(exc.strerror or str(exc))

    def _committed(self, available: int, max_bytes: int) -> DiskCommitted:
        return DiskCommitted(
            "new sessions are refused while the sandbox disk is committed: every session's "
            f"volume reserves its whole TCI_WORKSPACE_MAX_BYTES ({max_bytes // MiB} MiB) "
            f"and {available // MiB} MiB is free, which with TCI_MIN_FREE_DISK_BYTES "
            f"({self.reserve_bytes // MiB} MiB) kept free holds no more; running sessions keep "
            "theirs, retry when sessions end")

    def mount_read_only(self, image: Path, mount_point: Path) -> None:
        """Mount a kept image to read its files from the host (kept_volumes.copy_tree):
        read-only down to the loop device, following no symlink, running nothing. Unmount it
        with destroy-like `umount`; its loop device then detaches itself."""
        fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._attach_and_mount(image, mount_point, fd, read_only=True)
        finally:
            os.close(fd)

    def _attach_and_mount(self, image: Path, mount_point: Path, fd: int | None = None,
                          read_only: bool = False) -> None:
        own_fd = fd is None
        image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC) if fd is None else fd
        try:
            device, device_fd = self._attach(image_fd, read_only)
        finally:
            if own_fd:
                os.close(image_fd)
        flags = MOUNT_FLAGS | (linux.MS_RDONLY | linux.MS_NOEXEC | linux.MS_NOSYMFOLLOW
                               if read_only else 0)
        try:
            linux.mount(device, str(mount_point), "ext4", flags, MOUNT_OPTIONS)
        finally:
            os.close(device_fd)  # mounted: the mount holds it; not: autoclear detaches it now

    def _attach(self, image_fd: int, read_only: bool = False) -> tuple[str, int]:
        """A free loop device now backed by the image, and an open fd of it."""
        if self._control is None:
            raise SandboxUnavailable("session volumes were not prepared (no loop control)")
        config = _LoopConfig(fd=image_fd)
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
        for _ in range(ATTACH_ATTEMPTS):
            device = f"/dev/loop{fcntl.ioctl(self._control, LOOP_CTL_GET_FREE)}"
            device_fd = os.open(device, (os.O_RDONLY if read_only else os.O_RDWR)
                                | os.O_CLOEXEC)
            try:
                fcntl.ioctl(device_fd, LOOP_CONFIGURE, bytes(config))
            except OSError as exc:
                os.close(device_fd)
                if exc.errno == errno.EBUSY:  # taken by someone else since GET_FREE: again
                    continue
                if exc.errno in (errno.EINVAL, errno.ENOTTY):
                    raise SandboxUnavailable(
                        f"could not attach a loop device ({exc.strerror}): session volumes need "
                        f"LOOP_CONFIGURE (Linux 5.8+), this is {os.uname().release}") from exc
                raise
            return device, device_fd
        raise OSError(errno.EBUSY, "every free loop device was taken before it could be used")

    @staticmethod
    def usage(mount_point: Path) -> Usage:
        return volume.usage(mount_point)

    # Same contract as for volume.py's volumes: once the sandbox holds its own copy.
    forbid_symlinks = staticmethod(volume.forbid_symlinks)

    @staticmethod
    def unmount(mount_point: Path) -> None:
        """Unmount (lazily if something still holds it); its loop device detaches itself."""
        try:
            linux.umount(str(mount_point), UMOUNT_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("could not unmount %s: %s", mount_point, exc.strerror)
            else:
                with contextlib.suppress(OSError):
                    linux.umount(str(mount_point), UMOUNT_NOFOLLOW | linux.MNT_DETACH)

    @staticmethod
    def destroy(root: Path) -> None:
        """Unmount (lazily if something still holds it) and delete the image. The files the
        session left are never walked: they go with the filesystem."""
        mount_point = root / MOUNT_NAME
        if os.path.ismount(mount_point):
            VolumeImages.unmount(mount_point)
        (root / IMAGE_NAME).unlink(missing_ok=True)


@functools.cache
def _warn_no_fallocate(why: str) -> None:
    log.warning("the sandbox disk cannot reserve session volumes (fallocate: %s): their quotas "
                "are sparse files that together may promise more than the disk holds", why)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=PROGRAM_SECONDS)
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"could not format the session volume template ({argv[0]}): {result.stderr.strip()}"
        )
