"""Session cgroups (tci.sandbox.cgroups) on the real kernel, with plain subprocesses.

With the driver detect() picks for this host (cgroup v1 here, v2 on most hosts): a process
started through attach_argv and everything it forks is inside; a memory hog is OOM-killed and
counted; a fork bomb stops at pids_max; CPU time is counted; kill_all kills a whole tree,
a double-forked setsid daemon included; remove / cleanup_stale / remove_parent leave nothing.

cgroup v2 code paths: this host's v2 hierarchy (/sys/fs/cgroup/unified) has no controllers, so
the v2 driver runs there for real without limits (joining, cgroup.kill, the freeze-and-kill
fallback, cpu.stat, removal, stale cleanup); its limit writes and counter parsing are tested
against FAKE cgroupfs trees in a temporary directory (tests named `test_fake_cgroupfs_*`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tci.sandbox.cgroups import (
    CgroupDriver,
    CgroupError,
    CgroupLimits,
    CgroupV1Driver,
    CgroupV2Driver,
    SessionCgroup,
    SessionCgroupV1,
    SessionCgroupV2,
    cgroup_mounts,
)
from tests.conftest import wait_for

MiB = 1 << 20
LIMITS = CgroupLimits(memory_bytes=256 * MiB, pids_max=64, cpu_weight=100)

# Every long-lived test process blocks reading stdin, a pipe from the test: closing it at
# teardown ends them even if a broken cgroup let them escape kill_all (no stray processes,
# no hang). "<role> <pid>" lines are single writes: the processes share the stdout pipe.
PRELUDE = """
import os
def say(text):
    os.write(1, (text + "\\n").encode())
def park():
    os.read(0, 1)
    os._exit(0)
"""

# A process with a forked child and a double-forked setsid daemon, each saying its pid.
TREE_CODE = PRELUDE + """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        say(f"daemon {os.getpid()}")
        park()
    os._exit(0)
os.wait()  # the daemon's parent is gone: it is reparented, outside our process tree
child = os.fork()
if child == 0:
    park()
say(f"child {child}")
say(f"main {os.getpid()}")
park()
"""

# Each process forks two that do the same, 6 levels deep: 127 processes if nothing stops it.
# A refused fork says "refused"; each process that forked all its children says "ok".
BOMB_CODE = PRELUDE + """
def bomb(depth):
    for _ in range(2):
        try:
            pid = os.fork()
        except BlockingIOError:
            say("refused")
            park()
        if pid == 0:
            if depth:
                bomb(depth - 1)
            park()
    say("ok")
bomb(6)
park()
"""
BOMB_FORKERS = 127  # processes that run bomb() when nothing is refused


def unique_parent() -> str:
    return f"tci-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def parent_name():
    """A parent of its own per test; whatever a failing test left there is killed and removed."""
    name = unique_parent()
    yield name
    CgroupDriver.detect(name).remove_parent()


@pytest.fixture
def driver(parent_name):
    return CgroupDriver.detect(parent_name)


class Launcher:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cgroup: SessionCgroup, code: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*cgroup.attach_argv(), sys.executable, "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        return proc

    def tree(self, cgroup: SessionCgroup) -> tuple[subprocess.Popen, dict[str, int]]:
        proc = self.spawn(cgroup, TREE_CODE)
        pids: dict[str, int] = {}
        while len(pids) < 3:
            line = proc.stdout.readline()
            assert line, f"the tree did not start: {pids}"
            role, pid = line.split()
            pids[role] = int(pid)
        return proc, pids

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


@pytest.fixture
def launch():
    launcher = Launcher()
    yield launcher
    launcher.close()


def waited(proc: subprocess.Popen) -> int:
    """The exit status; a bounded wait so that a failure to kill fails instead of hanging
    (generous: a killed process is reaped in milliseconds, even on a loaded machine)."""
    return proc.wait(timeout=30)


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def pids_in(path: Path) -> set[int]:
    return {int(pid) for pid in (path / "cgroup.procs").read_text().split()}


# --- the host's own driver (v1 here) ---------------------------------------------------------


def test_detect_picks_this_host(driver):
    v2_mounts, _ = cgroup_mounts()
    v2_has_all = any(
        {"memory", "pids", "cpu"} <= set((m / "cgroup.controllers").read_text().split())
        for m in v2_mounts
    )
    assert driver.version == (2 if v2_has_all else 1)


def test_process_and_its_children_are_inside(driver, launch):
    cgroup = driver.create("ses_inside", LIMITS)
    proc, pids = launch.tree(cgroup)
    assert proc.pid == pids["main"]  # the attach shell exec'd: no extra process
    for path in cgroup.paths:
        assert set(pids.values()) == pids_in(path)
    assert sorted(pids.values()) == cgroup.procs()


def test_limits_are_written(driver):
    limits = CgroupLimits(memory_bytes=96 * MiB, pids_max=40, cpu_weight=200)
    cgroup = driver.create("ses_limits", limits)
    if isinstance(cgroup, SessionCgroupV1):
        memory = cgroup.dirs["memory"]
        assert (memory / "memory.limit_in_bytes").read_text() == f"{96 * MiB}\n"
        assert (memory / "memory.swappiness").read_text() == "0\n"
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert memsw.read_text() == f"{96 * MiB}\n"
        assert (cgroup.dirs["pids"] / "pids.max").read_text() == "40\n"
        assert (cgroup.dirs["cpu"] / "cpu.shares").read_text() == "2048\n"
    else:
        assert isinstance(cgroup, SessionCgroupV2)
        assert (cgroup.path / "memory.max").read_text() == f"{96 * MiB}\n"
        assert (cgroup.path / "pids.max").read_text() == "40\n"
        assert (cgroup.path / "cpu.weight").read_text() == "200\n"
        if (cgroup.path / "memory.swap.max").exists():
            assert (cgroup.path / "memory.swap.max").read_text() == "0\n"


def test_memory_hog_is_oom_killed(driver, launch):
    cgroup = driver.create("ses_oom", CgroupLimits(memory_bytes=64 * MiB, pids_max=16))
    assert cgroup.oom_kills() == 0
    hog = "chunks = [b'x' * (1 << 20) for _ in range(1024)]\nprint('survived')"
    proc = launch.spawn(cgroup, hog)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out == ""
    assert cgroup.oom_kills() >= 1


def test_fork_bomb_stops_at_pids_max(driver, launch):
    cgroup = driver.create("ses_bomb", CgroupLimits(memory_bytes=512 * MiB, pids_max=16))
    proc = launch.spawn(cgroup, BOMB_CODE)
    said: list[str] = []
    while "refused\n" not in said and said.count("ok\n") < BOMB_FORKERS:
        said.append(proc.stdout.readline())
    assert "refused\n" in said
    assert cgroup.pids_limit_hit() >= 1
    assert 0 < len(cgroup.procs()) <= 16
    assert cgroup.kill_all()
    assert waited(proc) == -signal.SIGKILL
    assert cgroup.procs() == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_cpu_seconds_count_a_busy_loop(driver, launch):
    cgroup = driver.create("ses_cpu", LIMITS)
    before = cgroup.cpu_seconds()
    busy = "import time\nwhile time.process_time() < 0.3: pass\nprint(time.process_time())"
    proc = launch.spawn(cgroup, busy)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    # The kernel adds a task's last slice to the cgroup's counter a moment after its exit.
    wait_for(lambda: cgroup.cpu_seconds() >= float(out), "the cgroup's CPU counter to catch up",
             timeout=10)
    after = cgroup.cpu_seconds()
    assert after > before
    assert after >= float(out)  # at least what the process itself measured


def test_kill_all_kills_tree_and_setsid_daemon(driver, launch):
    cgroup = driver.create("ses_kill", LIMITS)
    proc, pids = launch.tree(cgroup)
    assert ppid_of(pids["daemon"]) != pids["main"]  # it really left the process tree
    assert os.getsid(pids["daemon"]) != os.getsid(pids["main"])
    assert cgroup.kill_all()
    assert waited(proc) == -signal.SIGKILL
    assert cgroup.procs() == []
    assert all(dead(pid) for pid in pids.values())


def test_remove_leaves_no_directory(driver, launch):
    cgroup = driver.create("ses_remove", LIMITS)
    proc, _ = launch.tree(cgroup)
    assert cgroup.kill_all()
    waited(proc)
    cgroup.remove()
    assert cgroup.paths and not any(path.exists() for path in cgroup.paths)
    assert all(parent.is_dir() for parent in driver.parents)


def test_attach_fails_closed(driver):
    """If the cgroup is gone, the command never runs (so never runs unlimited)."""
    cgroup = driver.create("ses_gone", LIMITS)
    cgroup.remove()
    result = subprocess.run([*cgroup.attach_argv(), "echo", "ran"], capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert result.stdout == ""


def test_create_refuses_an_existing_session(driver):
    driver.create("ses_twice", LIMITS)
    with pytest.raises(CgroupError, match="already exists"):
        driver.create("ses_twice", LIMITS)


def test_cleanup_stale_after_restart(parent_name, launch):
    cgroup = CgroupDriver.detect(parent_name).create("ses_left", LIMITS)
    proc, pids = launch.tree(cgroup)
    after = CgroupDriver.detect(parent_name)  # a new server run, same parent name
    assert after.cleanup_stale() == ["ses_left"]
    assert waited(proc) == -signal.SIGKILL
    assert all(dead(pid) for pid in pids.values())
    assert not any(path.exists() for path in cgroup.paths)
    assert after.cleanup_stale() == []
    assert all(parent.is_dir() for parent in after.parents)  # the parent itself is kept


def test_remove_parent_ends_remaining_sessions(driver, launch):
    started = [launch.tree(driver.create(name, LIMITS)) for name in ("ses_a", "ses_b")]
    driver.remove_parent()
    for proc, pids in started:
        assert waited(proc) == -signal.SIGKILL
        assert all(dead(pid) for pid in pids.values())
    assert not any(parent.exists() for parent in driver.parents)


# --- cgroup v2 for real, without controllers -------------------------------------------------


@pytest.fixture
def v2_driver():
    mounts, _ = cgroup_mounts()
    if not mounts:
        pytest.skip("no cgroup v2 hierarchy mounted on this host")
    driver = CgroupV2Driver(mounts[0], unique_parent(), controllers=())
    yield driver
    driver.remove_parent()


def test_v2_tree_inside_counted_and_killed_by_cgroup_kill(v2_driver, launch):
    cgroup = v2_driver.create("ses_v2", LIMITS)
    if not (cgroup.path / "cgroup.kill").exists():
        pytest.skip("this kernel has no cgroup.kill (before 5.14): kill_all freezes and kills, "
                    "as test_v2_freeze_and_kill_fallback shows")
    proc, pids = launch.tree(cgroup)
    assert sorted(pids.values()) == cgroup.procs()
    relative = cgroup.path.relative_to(v2_driver.mount)
    assert f"0::/{relative}\n" in Path(f"/proc/{pids['daemon']}/cgroup").read_text()
    assert cgroup.cpu_seconds() > 0
    assert cgroup.kill_all()
    assert waited(proc) == -signal.SIGKILL
    assert all(dead(pid) for pid in pids.values())
    cgroup.remove()
    assert not cgroup.path.exists()


def test_v2_freeze_and_kill_fallback(v2_driver, launch):
    """The path for kernels before cgroup.kill (5.14)."""
    cgroup = v2_driver.create("ses_v2_freeze", LIMITS)
    proc, pids = launch.tree(cgroup)
    assert cgroup._kill_by_freezing()
    assert waited(proc) == -signal.SIGKILL
    assert all(dead(pid) for pid in pids.values())
    assert (cgroup.path / "cgroup.freeze").read_text() == "0\n"  # left thawed


def test_v2_cleanup_stale_and_remove_parent(v2_driver, launch):
    proc, pids = launch.tree(v2_driver.create("ses_v2_left", LIMITS))
    again = CgroupV2Driver(v2_driver.mount, v2_driver.parent_name, controllers=())
    assert again.cleanup_stale() == ["ses_v2_left"]
    assert waited(proc) == -signal.SIGKILL
    assert all(dead(pid) for pid in pids.values())
    again.remove_parent()
    assert not again.parent.exists()


# --- FAKE cgroupfs trees (plain directories laid out like cgroupfs) -------------------------


def fake_files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_fake_cgroupfs_v2_limits(tmp_path):
    path = fake_files(tmp_path / "ses", {
        "memory.max": "max\n", "memory.swap.max": "max\n", "pids.max": "max\n",
        "cpu.weight": "100\n",
    })
    SessionCgroupV2("ses", path).set_limits(CgroupLimits(64 * MiB, 50, cpu_weight=250))
    assert (path / "memory.max").read_text() == str(64 * MiB)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "pids.max").read_text() == "50"
    assert (path / "cpu.weight").read_text() == "250"


def test_fake_cgroupfs_v2_without_swap_accounting(tmp_path):
    path = fake_files(tmp_path / "ses", {"memory.max": "", "pids.max": "", "cpu.weight": ""})
    SessionCgroupV2("ses", path).set_limits(LIMITS)
    assert not (path / "memory.swap.max").exists()


def test_fake_cgroupfs_v2_missing_controller_is_an_error(tmp_path):
    path = fake_files(tmp_path / "ses", {"memory.max": "", "cpu.weight": ""})
    with pytest.raises(CgroupError, match=r"pids\.max does not exist"):
        SessionCgroupV2("ses", path).set_limits(LIMITS)
    assert not (path / "pids.max").exists()


def test_fake_cgroupfs_v2_counters(tmp_path):
    path = fake_files(tmp_path / "ses", {
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
        "pids.events": "max 3\n",
        "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        "cgroup.procs": "12\n34\n",
    })
    cgroup = SessionCgroupV2("ses", path)
    assert cgroup.oom_kills() == 2
    assert cgroup.pids_limit_hit() == 3
    assert cgroup.cpu_seconds() == 2.5
    assert cgroup.procs() == [12, 34]


def test_fake_cgroupfs_v2_fresh_counters(tmp_path):
    path = fake_files(tmp_path / "ses", {"memory.events": "max 0\noom_kill 0\n"})
    cgroup = SessionCgroupV2("ses", path)
    assert (cgroup.oom_kills(), cgroup.pids_limit_hit()) == (0, 0)


def test_fake_cgroupfs_v1_limits_without_memsw(tmp_path):
    memory = fake_files(tmp_path / "memory/ses", {
        "memory.limit_in_bytes": "9223372036854771712\n", "memory.swappiness": "60\n"})
    pids = fake_files(tmp_path / "pids/ses", {"pids.max": "max\n"})
    cpu = fake_files(tmp_path / "cpu,cpuacct/ses", {"cpu.shares": "1024\n"})
    cgroup = SessionCgroupV1("ses", {"memory": memory, "pids": pids, "cpu": cpu,
                                     "cpuacct": cpu, "freezer": tmp_path / "freezer/ses"})
    cgroup.set_limits(CgroupLimits(64 * MiB, 30, cpu_weight=50))
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    assert (memory / "memory.swappiness").read_text() == "0"
    assert not (memory / "memory.memsw.limit_in_bytes").exists()
    assert (pids / "pids.max").read_text() == "30"
    assert (cpu / "cpu.shares").read_text() == "512"


def test_fake_cgroupfs_attach_argv_moves_itself_then_execs(tmp_path):
    """Co-mounted cpu,cpuacct is one hierarchy: joined once. The pid written is the pid of
    the command that then runs (exec, no extra process)."""
    dirs = {name: fake_files(tmp_path / name / "ses", {"cgroup.procs": ""})
            for name in ("memory", "pids", "cpu,cpuacct", "freezer")}
    cgroup = SessionCgroupV1("ses", {"memory": dirs["memory"], "pids": dirs["pids"],
                                     "cpu": dirs["cpu,cpuacct"], "cpuacct": dirs["cpu,cpuacct"],
                                     "freezer": dirs["freezer"]})
    argv = cgroup.attach_argv()
    assert argv[2].count("cgroup.procs") == 4
    result = subprocess.run([*argv, "sh", "-c", "echo $$"], capture_output=True, text=True,
                            check=True)
    for directory in dirs.values():
        assert (directory / "cgroup.procs").read_text() == result.stdout


def write_mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_fake_cgroupfs_detect_v2(tmp_path):
    fake_files(tmp_path / "cg two", {"cgroup.controllers": "cpuset cpu io memory hugetlb pids\n"})
    mountinfo = write_mountinfo(tmp_path, [
        "22 1 0:21 / / rw - ext4 /dev/root rw",
        f"30 22 0:26 / {tmp_path}/cg\\040two rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
    ])
    driver = CgroupDriver.detect("tci-x", mountinfo=mountinfo)
    assert isinstance(driver, CgroupV2Driver)
    assert driver.parents == [tmp_path / "cg two" / "tci-x"]


def test_fake_cgroupfs_detect_hybrid_uses_v1(tmp_path):
    """Like this host: v1 controllers (cpu and cpuacct co-mounted), v2 without controllers."""
    fake_files(tmp_path / "unified", {"cgroup.controllers": "hugetlb\n"})
    lines = [f"41 31 0:38 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"]
    for i, name in enumerate(["cpu,cpuacct", "memory", "pids", "freezer", "devices"]):
        (tmp_path / name).mkdir()
        lines.append(f"{32 + i} 31 0:{29 + i} / {tmp_path}/{name} rw - cgroup cgroup rw,{name}")
    driver = CgroupDriver.detect("tci-x", mountinfo=write_mountinfo(tmp_path, lines))
    assert isinstance(driver, CgroupV1Driver)
    assert sorted(driver.parents) == sorted(
        tmp_path / name / "tci-x" for name in ("cpu,cpuacct", "memory", "pids", "freezer"))


def test_fake_cgroupfs_detect_names_what_is_missing(tmp_path):
    fake_files(tmp_path / "cg", {"cgroup.controllers": "cpu memory\n"})
    mountinfo = write_mountinfo(tmp_path, [
        f"30 22 0:26 / {tmp_path}/cg rw - cgroup2 cgroup2 rw",
        f"31 22 0:27 / {tmp_path}/mem rw - cgroup cgroup rw,memory",
    ])
    with pytest.raises(CgroupError) as caught:
        CgroupDriver.detect("tci-x", mountinfo=mountinfo)
    message = caught.value.message
    assert f"cgroup v2 at {tmp_path}/cg lacks the pids controller(s)" in message
    assert "cgroup v1 has no hierarchy for pids, cpu, cpuacct, freezer" in message


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_weight"):
        CgroupLimits(64 * MiB, 10, cpu_weight=0)
    with pytest.raises(ValueError, match="pids_max"):
        CgroupLimits(64 * MiB, 0)
    assert CgroupLimits(64 * MiB, 10, cpu_weight=1).cpu_shares == 10
    assert CgroupLimits(64 * MiB, 10).cpu_shares == 1024
