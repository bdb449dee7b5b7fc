"""Session volumes made by system calls alone (sandbox/volume_images.py), on the real kernel:
loop devices, ext4 and mounts, written to by an unprivileged uid as a session's code would."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox import volume
from tci.sandbox.volume import IMAGE_NAME, ST_NOSYMFOLLOW
from tci.sandbox.volume_images import Template, VolumeImages

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="needs root and loop devices",
)

MiB = 1 << 20
MAX_BYTES = 16 * MiB
MAX_FILES = 64
USER = 3_999_999  # an unprivileged uid that owns nothing else on the host


@pytest.fixture(scope="module")
def images() -> Iterator[VolumeImages]:
    # Under /var/tmp, not pytest's tmp_path (mode 0700): the test's user must reach the files.
    root = Path(tempfile.mkdtemp(prefix="tci-volume-images-", dir="/var/tmp"))
    root.chmod(0o711)
    made = VolumeImages(root, MAX_BYTES, MAX_FILES).prepare()
    yield made
    made.close()
    for session in root.iterdir():
        made.destroy(session)
    shutil.rmtree(root)


@pytest.fixture
def new_volume(images: VolumeImages) -> Iterator:
    """Makes session volumes (the directory a launcher makes, then the volume); destroys
    whatever a test left."""
    roots: list[Path] = []

    def make(max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> Path:
        root = Path(tempfile.mkdtemp(prefix="ses_", dir=images.root))
        root.chmod(0o711)
        roots.append(root)
        mount_point = images.create(root, max_bytes, max_files)
        work = mount_point / "work"
        work.mkdir(mode=0o700)
        os.chown(work, USER, USER)
        return mount_point

    yield make
    for root in roots:
        images.destroy(root)
        shutil.rmtree(root, ignore_errors=True)


def as_user(code: str) -> dict:
    """Run Python as the unprivileged uid (no capabilities: root would be let past limits);
    the code's last line prints one JSON value."""
    result = subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--",
         sys.executable, "-I", "-c", code],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def loop_device_of(mount_point: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return fields[fields.index("-") + 2]
    raise AssertionError(f"{mount_point} is not mounted")


def test_writes_stop_with_enospc_at_the_byte_cap(new_volume) -> None:
    mount_point = new_volume()
    seen = as_user(
        "import json, os\n"
        f"fd = os.open('{mount_point}/work/big', os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "written, chunk = 0, b'x' * (1 << 20)\n"
        "try:\n"
        "    while True:\n"
        "        written += os.write(fd, chunk)\n"
        "        os.fsync(fd)\n"
        "except OSError as exc:\n"
        "    print(json.dumps({'errno': exc.errno, 'written': written}))\n"
    )
    assert seen["errno"] == errno.ENOSPC
    # All of the cap but the filesystem's own metadata, and never more.
    assert 0.9 * MAX_BYTES <= seen["written"] <= MAX_BYTES


def test_new_files_stop_with_enospc_at_the_file_cap(new_volume) -> None:
    mount_point = new_volume()
    free_before = volume.usage(mount_point).files_free
    seen = as_user(
        "import json, os\n"
        "made = 0\n"
        "try:\n"
        "    while True:\n"
        f"        os.close(os.open(f'{mount_point}/work/f{{made}}', os.O_CREAT | os.O_WRONLY))\n"
        "        made += 1\n"
        "except OSError as exc:\n"
        "    print(json.dumps({'errno': exc.errno, 'made': made}))\n"
    )
    assert seen["errno"] == errno.ENOSPC
    assert seen["made"] == free_before
    # mkfs rounds the inode count up to whole inode-table blocks per group: a few more at most.
    assert MAX_FILES - 16 <= seen["made"] <= MAX_FILES + 32


def test_usage_reports_the_cap_and_what_is_used(images: VolumeImages, new_volume) -> None:
    mount_point = new_volume()
    fresh = images.usage(mount_point)
    assert 0.9 * MAX_BYTES <= fresh.bytes_free <= MAX_BYTES
    assert MAX_FILES - 16 <= fresh.files_free <= MAX_FILES + 32
    as_user(f"open('{mount_point}/work/data', 'wb').write(b'x' * {4 * MiB}); print('{{}}')")
    after = images.usage(mount_point)
    assert fresh.bytes_free - after.bytes_free >= 4 * MiB
    assert after.files_free == fresh.files_free - 1


def test_other_limits_get_a_volume_of_their_size(images: VolumeImages, new_volume) -> None:
    mount_point = new_volume(max_bytes=32 * MiB, max_files=128)
    stats = os.statvfs(mount_point)
    assert 0.9 * 32 * MiB <= stats.f_blocks * stats.f_frsize <= 32 * MiB
    assert 128 <= stats.f_files <= 128 + 32


def test_sessions_cannot_link_or_move_files_into_each_other(new_volume) -> None:
    first, second = new_volume(), new_volume()
    (first / "work" / "mine").write_text("first's")
    for move in (os.link, os.rename):
        with pytest.raises(OSError) as caught:
            move(first / "work" / "mine", second / "work" / "mine")
        assert caught.value.errno == errno.EXDEV
    assert not (second / "work" / "mine").exists()


def test_the_volume_is_private_nosuid_nodev_and_empty(new_volume) -> None:
    mount_point = new_volume()
    assert sorted(os.listdir(mount_point)) == ["work"]  # no lost+found
    assert mount_point.stat().st_mode & 0o777 == 0o711
    assert mount_point.stat().st_uid == 0
    flags = os.statvfs(mount_point).f_flag
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV and flags & os.ST_NOATIME


def test_forbid_symlinks_stops_the_host_following_a_planted_link(images, new_volume) -> None:
    mount_point = new_volume()
    secret = Path(images.root) / "outside-secret"
    secret.write_text("host data")
    try:
        (mount_point / "work" / "link").symlink_to(secret)
        assert (mount_point / "work" / "link").read_text() == "host data"  # before: followed
        assert images.forbid_symlinks(mount_point)
        with pytest.raises(OSError) as caught:
            (mount_point / "work" / "link").read_text()
        assert caught.value.errno == errno.ELOOP
        flags = os.statvfs(mount_point).f_flag
        assert flags & ST_NOSYMFOLLOW
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV and flags & os.ST_NOATIME
    finally:
        secret.unlink()


def test_destroy_removes_everything_and_follows_no_planted_link(images, new_volume) -> None:
    mount_point = new_volume()
    root = mount_point.parent
    outside = Path(images.root) / "outside-dir"
    outside.mkdir()
    (outside / "keep").write_text("host data")
    try:
        as_user(
            "import os\n"
            f"work = '{mount_point}/work'\n"
            f"os.symlink('{outside}', work + '/to-dir')\n"
            f"os.symlink('{outside}/keep', work + '/to-file')\n"
            "os.makedirs(work + '/a/b/c')\n"
            "open(work + '/a/b/c/data', 'w').write('x' * 100000)\n"
            "print('{}')\n"
        )
        device = loop_device_of(mount_point)
        images.destroy(root)
        assert not os.path.ismount(mount_point)
        assert not (root / IMAGE_NAME).exists()
        assert os.listdir(mount_point) == []
        assert (outside / "keep").read_text() == "host data"
        # The loop device let go of the image (autoclear), ready for another session.
        backing = Path(f"/sys/block/{Path(device).name}/loop/backing_file")
        assert not backing.exists() or IMAGE_NAME not in backing.read_text()
    finally:
        shutil.rmtree(outside)


def test_many_volumes_at_once_each_get_their_own_device(images: VolumeImages) -> None:
    roots = []
    for _ in range(16):
        root = Path(tempfile.mkdtemp(prefix="ses_", dir=images.root))
        roots.append(root)
    try:
        with ThreadPoolExecutor(8) as pool:
            mounted = list(pool.map(lambda r: images.create(r, MAX_BYTES, MAX_FILES), roots))
        devices = {loop_device_of(mount_point) for mount_point in mounted}
        assert len(devices) == len(roots)
        for index, mount_point in enumerate(mounted):
            (mount_point / "id").write_text(str(index))
        assert [int((m / "id").read_text()) for m in mounted] == list(range(len(roots)))
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(images.destroy, roots))
    for root in roots:
        assert not os.path.ismount(root / "vol")
        assert not (root / IMAGE_NAME).exists()
        shutil.rmtree(root)


def test_volume_py_clears_a_leftover_of_this_backend(images: VolumeImages) -> None:
    """The launcher clears stale session directories at start with volume.destroy."""
    root = Path(tempfile.mkdtemp(prefix="ses_", dir=images.root))
    mount_point = images.create(root, MAX_BYTES, MAX_FILES)
    volume.destroy(root)
    assert not os.path.ismount(mount_point)
    assert not (root / IMAGE_NAME).exists()
    shutil.rmtree(root)


def test_an_existing_image_is_refused_and_left_alone(images: VolumeImages) -> None:
    root = Path(tempfile.mkdtemp(prefix="ses_", dir=images.root))
    (root / IMAGE_NAME).write_text("someone else's")
    try:
        with pytest.raises(SandboxUnavailable):
            images.create(root, MAX_BYTES, MAX_FILES)
        assert (root / IMAGE_NAME).read_text() == "someone else's"
        assert not os.path.ismount(root / "vol")
    finally:
        shutil.rmtree(root)


def test_a_new_volume_holds_nothing_of_an_ended_one(images: VolumeImages, new_volume) -> None:
    """Images are new sparse files with only the template's blocks: whatever the loop device
    or the host's disk held before, none of it is in the next session's image."""
    secret = os.urandom(16).hex().encode()
    first = new_volume()
    as_user(f"import os\nf = open('{first}/work/s', 'wb'); f.write({secret!r} * 4096)\n"
            "f.flush(); os.fsync(f.fileno()); print('{}')")
    assert secret in (first.parent / IMAGE_NAME).read_bytes()  # control: it reached an image
    images.destroy(first.parent)
    second = new_volume()
    assert secret not in (second.parent / IMAGE_NAME).read_bytes()
    assert os.listdir(second / "work") == []


def test_a_template_read_from_an_image_without_holes_keeps_only_written_blocks(
        images: VolumeImages, tmp_path: Path) -> None:
    """A filesystem that reports no holes must not put the whole image in memory."""
    sparse = images.template(MAX_BYTES, MAX_FILES)
    dense = tmp_path / "dense.img"
    fd = os.open(dense, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sparse.write(fd)
        content = os.pread(fd, sparse.size, 0)
        os.pwrite(fd, content, 0)  # every block now written, zeros included
        os.fsync(fd)
        assert os.fstat(fd).st_blocks * 512 >= sparse.size
        read = Template.read(fd)
    finally:
        os.close(fd)
    assert read.size == sparse.size
    assert sum(len(data) for _, data in read.extents) <= sum(len(d) for _, d in sparse.extents)
    rebuilt = bytearray(sparse.size)
    for offset, data in read.extents:
        rebuilt[offset:offset + len(data)] = data
    assert bytes(rebuilt) == content
