"""cgroup favordynmods (tci.sandbox.cgroup_dynmods): a server keeps a hierarchy of its own
mounted with it while it runs, so a session's cgroup join waits for no RCU grace period.

On a kernel with the option (6.1+) the mount is there, with the option, while the server runs
and gone when it stops; on one without, the start goes on and the reason is reported. Which of
the two this kernel is, the test learns by asking it directly (a mount of its own)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx

from tci.config import Settings
from tci.sandbox.cgroup_dynmods import FavorDynmods, mounted
from tci.sandbox.cgroups import mount_entries
from tests.conftest import make_server


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


def test_the_hierarchy_is_mounted_with_the_option_and_unmounted(tmp_path):
    dynmods = FavorDynmods(tmp_path / "dynmods")
    applied = dynmods.mount()
    try:
        assert applied == kernel_has_favordynmods(tmp_path)
        if applied:
            options = _options(tmp_path / "dynmods")
            assert options is not None and "favordynmods" in options, options
            assert f"name={dynmods.name}" in options
            assert dynmods.status() == {"applied": True, "hierarchy": dynmods.name}
        else:
            assert not mounted(tmp_path / "dynmods")
            assert dynmods.status()["applied"] is False
            assert "favordynmods" in str(dynmods.status()["reason"])
    finally:
        dynmods.unmount()
    assert not mounted(tmp_path / "dynmods")


def test_a_stale_mount_of_a_crashed_server_is_replaced_not_stacked(tmp_path):
    """A server killed with SIGKILL leaves its hierarchy mounted; the next start in the same
    sandbox directory mounts it once, and its stop leaves none."""
    if not kernel_has_favordynmods(tmp_path):
        assert FavorDynmods(tmp_path / "dynmods").mount() is False
        return
    crashed = FavorDynmods(tmp_path / "dynmods")
    assert crashed.mount()
    again = FavorDynmods(tmp_path / "dynmods")
    assert again.mount()
    points = [p for p, fstype, _ in mount_entries()
              if p == (tmp_path / "dynmods").resolve() and fstype == "cgroup"]
    assert len(points) == 1
    again.unmount()
    assert not mounted(tmp_path / "dynmods")


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
        mounts = _mounted_by_name(name)
        if expected:
            assert status["hierarchy"] == name
            assert len(mounts) == 1 and "favordynmods" in mounts[0], mounts
        else:
            assert mounts == [] and "favordynmods" in status["reason"]
        session = server.execute("print(1)")
        assert session.status_code == 200, session.text
    finally:
        server.stop()
    assert _mounted_by_name(name) == []


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
