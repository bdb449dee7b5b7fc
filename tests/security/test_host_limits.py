"""What all sessions together may take from the host: its pids and its disk.

Pids: the sessions' parent cgroup holds the kernel's pid_max (or threads-max) less
TCI_HOST_PIDS_RESERVE, so sessions at their limits leave the server, sshd and the database
pids to fork with; a TCI_MAX_SESSIONS x TCI_PIDS_LIMIT beyond it stops `tci serve`, an unset
maximum is capped at it.

Disk: each session's volume reserves its whole TCI_WORKSPACE_MAX_BYTES on the host's disk, so
one session filling its quota cannot make another's write, within its own quota, fail; a
session whose volume the disk cannot reserve (above TCI_MIN_FREE_DISK_BYTES) is refused with
503 and Retry-After until one ends. This module's server keeps its sessions on a small
loop-mounted filesystem made for it, so that a few sessions fill it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tci.config import Settings
from tci.sandbox.cgroups import CgroupDriver, CgroupLimits
from tests.conftest import Server, make_server, outputs_of, stdout_of, wait_for
from tests.security.conftest import LIMITS, start_hardened

MiB = 1 << 20
QUOTA = LIMITS["workspace_max_bytes"]  # 64 MiB
RESERVE = 16 * MiB  # TCI_MIN_FREE_DISK_BYTES of the small-disk server
SMALL_DISK = 240 * MiB  # room for three 64 MiB volumes above the reserve, not four
PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())
THREADS_MAX = int(Path("/proc/sys/kernel/threads-max").read_text())
HOST_TASKS = min(PID_MAX, THREADS_MAX)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def small_disk() -> Iterator[Path]:
    """A filesystem of SMALL_DISK bytes, reachable by the sandbox uids (under /var/tmp)."""
    top = Path("/var/tmp") / f"tci-small-disk-{uuid.uuid4().hex[:8]}"
    image, mount_point = top / "disk.img", top / "mnt"
    mount_point.mkdir(parents=True)
    top.chmod(0o711)
    with open(image, "wb") as handle:
        handle.truncate(SMALL_DISK)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
    _run("mount", "-o", "loop", str(image), str(mount_point))
    try:
        mount_point.chmod(0o711)
        yield mount_point
    finally:
        _run("umount", "-l", str(mount_point))
        image.unlink()
        mount_point.rmdir()
        top.rmdir()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, small_disk) -> Iterator[Server]:
    """This module's server (and the canary's) keeps its sessions on the small disk. Its
    maximum is more than the disk holds: admission, not the count, must stop new sessions."""
    instance = start_hardened(tmp_path_factory, sandbox_dir=str(small_disk / "sandbox"),
                              min_free_disk_bytes=str(RESERVE), max_sessions="8")
    yield instance
    instance.stop()


def _open_until_refused(server: Server, most: int) -> tuple[list[str], httpx.Response | None]:
    """New sessions until the server refuses one (its answer) or `most` are open."""
    opened: list[str] = []
    while len(opened) < most:
        response = server.execute("x = 1")
        if response.status_code != 200:
            return opened, response
        opened.append(response.json()["data"]["session_id"])
    return opened, None


def _end(server: Server, session_ids: list[str]) -> None:
    with server.client() as client:
        for session_id in session_ids:
            assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


FILL = """
import errno, os
written = 0
try:
    with open('fill.bin', 'wb', buffering=0) as out:
        while True:
            written += out.write(b'\\1' * (1 << 20))
except OSError as exc:
    print(errno.errorcode[exc.errno], written >> 20)
"""

# Within the quota, and made durable: fsync is where a loop device's failed write shows up.
WRITE_48_MIB = """
import errno, os
try:
    with open('mine.bin', 'wb', buffering=0) as out:
        for _ in range(48):
            out.write(b'\\2' * (1 << 20))
        os.fsync(out.fileno())
    print('written', os.path.getsize('mine.bin') >> 20)
except OSError as exc:
    print('failed', errno.errorcode.get(exc.errno, exc.errno))
"""


def test_a_session_filling_its_quota_leaves_the_others_theirs(hardened, small_disk):
    # As many sessions as the server admits (besides the canary's): every one but the last
    # fills its volume to the quota, then the last writes 48 MiB of its 64.
    sessions, _ = _open_until_refused(hardened, 6)
    assert len(sessions) >= 2, "the small disk should hold the canary and two more sessions"
    try:
        for session_id in sessions[:-1]:
            name, mebibytes = stdout_of(hardened.run(FILL, session_id)).split()
            assert name == "ENOSPC" and int(mebibytes) >= 48, (name, mebibytes)
        data = hardened.run(WRITE_48_MIB, sessions[-1])
        assert stdout_of(data) == "written 48\n", data["outputs"]
        assert not outputs_of(data, "error"), data["outputs"]
        # The host's disk kept its reserve through it all.
        assert _free(small_disk) >= RESERVE
    finally:
        _end(hardened, sessions)


def test_sessions_are_admitted_while_the_disk_holds_their_quotas(hardened, small_disk):
    sandbox = small_disk / "sandbox"
    wait_for(lambda: len(list(sandbox.glob("ses_*"))) == 1, "the last test's volumes to go")
    # What the disk holds now, besides the canary's volume (already reserved): one volume per
    # quota above the reserve.
    fits = (_free(small_disk) - RESERVE) // QUOTA
    assert fits >= 1
    sessions, refused = _open_until_refused(hardened, fits + 1)
    try:
        assert len(sessions) == fits, (fits, sessions)
        assert refused is not None and refused.status_code == 503, refused
        assert refused.headers["Retry-After"] == "5"
        message = refused.json()["errors"][0]
        assert message.startswith(
            "new sessions are refused while the sandbox disk is committed: every session's "
            "volume reserves its whole TCI_WORKSPACE_MAX_BYTES (64 MiB)"), message
        assert "TCI_MIN_FREE_DISK_BYTES (16 MiB)" in message, message
        # On the host: each volume's image holds its whole quota, not a sparse promise.
        for session_id in sessions:
            image = sandbox / session_id / "volume.img"
            assert image.stat().st_blocks * 512 >= QUOTA, image.stat()
        # The server said at start that its maximum is more than the disk holds.
        assert "TCI_MAX_SESSIONS=8: the sandbox disk now holds" in hardened.log()
        # One ends: its reservation is freed with its volume, and a new session fits again.
        _end(hardened, sessions[:1])
        sessions = sessions[1:]
        wait_for(lambda: _free(small_disk) - RESERVE >= QUOTA, "the ended volume to be freed")
        again = hardened.run("x = 2")
        sessions.append(again["session_id"])
    finally:
        _end(hardened, sessions)


# -- pids ------------------------------------------------------------------------------------


def _parent_pids_max(server: Server) -> int:
    """The sessions' parent cgroup's pids.max, read from the host (v1 here; v2 elsewhere)."""
    settings = Settings(data_dir=server.data_dir, sandbox_dir=server.env.get("TCI_SANDBOX_DIR"))
    parent = f"tci-{settings.resolved_sandbox_dir.name}"
    for hierarchy in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        path = hierarchy / parent / "pids.max"
        if path.exists():
            return int(path.read_text())
    raise AssertionError(f"no parent cgroup {parent} with a pids.max")


def test_sessions_together_leave_the_host_its_reserve_of_pids(tmp_path):
    """An unset maximum is capped at what the parent's pids.max holds at TCI_PIDS_LIMIT each:
    here a reserve that leaves sessions 2.5 sessions' worth of tasks."""
    pids = LIMITS["pids_limit"]
    reserve = HOST_TASKS - pids * 5 // 2
    server = make_server(tmp_path, **{**LIMITS, "max_sessions": "",
                                      "host_pids_reserve": str(reserve)})
    try:
        assert _parent_pids_max(server) == HOST_TASKS - reserve
        held = [server.run("x = 1")["session_id"] for _ in range(2)]
        refused = server.execute("x = 1")
        assert refused.status_code == 429, refused.text
        assert "maximum of 2 sessions" in refused.json()["errors"][0]
        _end(server, held)
    finally:
        server.stop()


def test_a_default_server_keeps_the_default_reserve(hardened):
    """The module's server, on defaults for pids: pid_max (or threads-max) less 4096."""
    assert _parent_pids_max(hardened) == HOST_TASKS - Settings().host_pids_reserve


def test_a_maximum_whose_tasks_exceed_the_host_stops_tci_serve(tmp_path):
    # Ten sessions whose TCI_PIDS_LIMIT together pass what the host leaves them.
    per_session = (HOST_TASKS - Settings().host_pids_reserve) // 10 + 1
    with pytest.raises(RuntimeError) as stopped:
        make_server(tmp_path, max_sessions="10", pids_limit=str(per_session))
    log = str(stopped.value)
    assert "tci serve exited early" in log
    assert "TCI_MAX_SESSIONS=10 cannot be honoured here: at most 9" in log, log
    assert f"at TCI_PIDS_LIMIT ({per_session}) each" in log, log
    assert "raise kernel.pid_max or lower TCI_PIDS_LIMIT" in log, log


FORK_UNTIL_REFUSED = """
import os, sys, time
children = 0
while True:
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
print(children, flush=True)
sys.stdout.close()
time.sleep(60)
"""


def test_the_kernel_holds_the_parent_limit_across_sessions():
    """Two sessions whose own limits add up to more than the parent's: the second gets only
    what the first left under the parent (the kernel counts the parent's whole subtree). Done
    on the driver with plain processes, since a server refuses such settings at start."""
    driver = CgroupDriver.detect(f"tci-test-{uuid.uuid4().hex[:8]}")
    processes: list[subprocess.Popen] = []
    try:
        driver.limit_tasks(24)
        counts = []
        for name in ("first", "second"):
            session = driver.create(name, CgroupLimits(memory_bytes=256 * MiB, pids_max=16))
            process = subprocess.Popen(
                [*session.attach_argv(), sys.executable, "-S", "-c", FORK_UNTIL_REFUSED],
                stdout=subprocess.PIPE, text=True)
            processes.append(process)
            assert process.stdout is not None
            counts.append(int(process.stdout.readline()))
        # The first: its own 16 tasks (itself and 15 children). The second: the 8 the
        # parent's 24 left (itself and 7), not its own 16.
        assert counts == [15, 7], counts
    finally:
        for process in processes:
            process.kill()
        driver.remove_parent()
