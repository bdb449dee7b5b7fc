"""cgroup favordynmods (tci.sandbox.cgroup_dynmods): a server holds a hierarchy of its own
mounted with it while it runs, so a session's cgroup join waits for no RCU grace period.

On a kernel with the option (6.1+) the hierarchy exists (every process's /proc/<pid>/cgroup
lists it) while the server runs, with no mount point left in the mount table, and it is gone
when the server stops or is killed; on one without, the start goes on and the reason is
reported. Which of
the two this kernel is, the test learns by asking it directly (a mount of its own)."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import httpx

from tci.config import Settings
from tci.sandbox.cgroup_dynmods import FavorDynmods
from tci.sandbox.cgroups import mount_entries
from tests.conftest import make_server, wait_for


def _options(directory: Path) -> list[str] | None:
    """The super options of the cgroup hierarchy mounted at `directory` (None: none is)."""
    for point, fstype, options in mount_entries():
        if point == directory.resolve() and fstype == "cgroup":
            return options
    return None


def kernel_has_favordynmods(tmp_path: Path) -> bool:
    """Asked of the kernel with mount(8), independently of the code under test."""
    target = tmp_path / f"probe-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    name = f"tci-probe-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name={name},favordynmods",
                           "cgroup", str(target)], capture_output=True)
    if done.returncode == 0:
        subprocess.run(["umount", str(target)], check=True)
    return done.returncode == 0


def held_by(pid: int | str, name: str) -> bool:
    """Whether the process's /proc/<pid>/cgroup lists the hierarchy `name` (every process is
    in each v1 hierarchy while it exists: the kernel lists it for all of them)."""
    return f":name={name}:" in Path(f"/proc/{pid}/cgroup").read_text()


def _mount_points(directory: Path) -> list[str]:
    return [p for p, fstype, _ in mount_entries()
            if p == directory.resolve() and fstype == "cgroup"]


def test_the_hierarchy_is_held_without_a_mount_point_and_let_go(tmp_path):
    dynmods = FavorDynmods(tmp_path / "dynmods")
    applied = dynmods.mount()
    try:
        assert applied == kernel_has_favordynmods(tmp_path)
        if applied:
            assert held_by("self", dynmods.name)
            assert dynmods.status() == {"applied": True, "hierarchy": dynmods.name}
        else:
            assert not held_by("self", dynmods.name)
            assert dynmods.status()["applied"] is False
            assert "favordynmods" in str(dynmods.status()["reason"])
        assert _mount_points(tmp_path / "dynmods") == []  # nothing a crash could leave
    finally:
        dynmods.unmount()
    wait_for(lambda: not held_by("self", dynmods.name), "the kernel to drop the hierarchy")


def test_a_stale_mount_point_of_an_older_server_is_removed(tmp_path):
    """Servers before this one kept the hierarchy mounted, and one killed with SIGKILL left
    its mount point: the next start in the same sandbox directory removes it."""
    if not kernel_has_favordynmods(tmp_path):
        assert FavorDynmods(tmp_path / "dynmods").mount() is False
        return
    dynmods = FavorDynmods(tmp_path / "dynmods")
    (tmp_path / "dynmods").mkdir()
    subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name={dynmods.name},favordynmods",
                    "cgroup", str(tmp_path / "dynmods")], check=True)
    assert len(_mount_points(tmp_path / "dynmods")) == 1
    assert dynmods.mount()
    assert _mount_points(tmp_path / "dynmods") == []
    assert held_by("self", dynmods.name)
    dynmods.unmount()
    wait_for(lambda: not held_by("self", dynmods.name), "the kernel to drop the hierarchy")


def _hierarchy_of(server) -> str:
    """The name of the server's own hierarchy, from its settings as it resolved them."""
    sandbox_dir = Settings(data_dir=server.data_dir).resolved_sandbox_dir
    return FavorDynmods(sandbox_dir / "cgroup-dynmods").name


def _mounted_by_name(name: str) -> list[list[str]]:
    return [options for _, fstype, options in mount_entries()
            if fstype == "cgroup" and f"name={name}" in options]


def test_a_server_reports_it_in_health_and_leaves_nothing_behind(tmp_path):
    expected = kernel_has_favordynmods(tmp_path)
    server = make_server(tmp_path)
    name = _hierarchy_of(server)
    try:
        status = httpx.get(f"{server.url}/health", timeout=30).json()["details"][
            "cgroup_favordynmods"]
        assert status["applied"] is expected, status
        assert held_by(server.process.pid, name) is expected
        if expected:
            assert status["hierarchy"] == name
        else:
            assert "favordynmods" in status["reason"]
        assert _mounted_by_name(name) == []
        session = server.execute("print(1)")
        assert session.status_code == 200, session.text
    finally:
        server.stop()
    wait_for(lambda: not held_by("self", name), "the kernel to drop the hierarchy")


def test_a_killed_server_leaves_no_hierarchy_behind(tmp_path):
    """SIGKILL runs no cleanup: the kernel drops the hierarchy as the server's descriptors
    close, where a mount point would stay until the next start in that directory."""
    server = make_server(tmp_path)
    name = _hierarchy_of(server)
    try:
        if not kernel_has_favordynmods(tmp_path):
            assert not held_by(server.process.pid, name)
            return
        assert held_by(server.process.pid, name)
        server.stop(signal.SIGKILL)
        wait_for(lambda: not held_by("self", name), "the kernel to drop the hierarchy")
        assert _mounted_by_name(name) == []
        server.start()  # and the next start in that directory takes it up again
        assert held_by(server.process.pid, name)
    finally:
        server.stop()


def test_turned_off_it_is_not_mounted_and_health_says_why(tmp_path):
    server = make_server(tmp_path, cgroup_favordynmods="false")
    try:
        status = httpx.get(f"{server.url}/health", timeout=30).json()["details"][
            "cgroup_favordynmods"]
        assert status == {"applied": False, "reason": "TCI_CGROUP_FAVORDYNMODS is off"}
        assert _mounted_by_name(_hierarchy_of(server)) == []
        assert server.execute("print(1)").status_code == 200
    finally:
        server.stop()
