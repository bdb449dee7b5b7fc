"""A clone in a private home directory (mode 0700, as Debian makes them, and /root) serves.

The sandboxes run as unprivileged uids that cannot traverse such a directory; the server
binds the runtime and the worker package read-only under its own sandbox directory instead
(sandbox/runtime_mounts.py). Those mounts are gone when the server stops, and a killed
server's are removed by the next start."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tci.config import Settings
from tests.conftest import REPO, free_port, outputs_of, stdout_of
from tests.process import http_ok, stop_process, wait_until_up


@dataclass
class PrivateClone:
    home: Path  # mode 0700
    clone: Path
    data_dir: Path
    sandbox_dir: Path
    env: dict[str, str]
    key: str = ""


def mounts_under(path: Path) -> list[tuple[str, set[str]]]:
    """(mount point, options) of every mount at or below `path` in this namespace."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append((point, set(fields[5].split(","))))
    return found


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateClone]:
    home = tmp_path_factory.mktemp("home")
    home.chmod(0o700)
    clone = home / "tci"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    # The code under test is this working tree's (a developer's uncommitted change included).
    shutil.copytree(REPO / "src", clone / "src", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # `make runtime` would take minutes: a hard-linked copy keeps every file's mode, as a
    # fresh build does. A symlink where hard links cannot reach (another filesystem) still
    # puts the runtime's path inside the private directory.
    try:
        subprocess.run(["cp", "-al", str(REPO / ".runtime"), str(clone / ".runtime")],
                       check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError:
        shutil.rmtree(clone / ".runtime", ignore_errors=True)
        (clone / ".runtime").symlink_to(REPO / ".runtime")
    data_dir = home / "data"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TCI_")}
    env.update({
        "PYTHONPATH": str(clone / "src"),
        "TCI_DATA_DIR": str(data_dir),
        "TCI_RUNTIME_DIR": str(clone / ".runtime"),  # what the clone's config defaults to
        "TCI_POOL_SIZE": "0",
    })
    sandbox_dir = Settings(data_dir=data_dir, sandbox_dir=None).resolved_sandbox_dir
    private = PrivateClone(home, clone, data_dir, sandbox_dir, env)
    created = tci(private, "keys", "create", "--name", "private")
    assert created.returncode == 0, created.stderr
    private.key = created.stdout.strip().splitlines()[-1]
    yield private
    assert mounts_under(sandbox_dir) == []


def tci(private: PrivateClone, *args: str) -> subprocess.CompletedProcess:
    """The clone's own `tci` (its src on PYTHONPATH), not the one installed in .venv."""
    return subprocess.run([sys.executable, "-m", "tci.cli", *args], env=private.env,
                          cwd=private.clone, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def serving(private: PrivateClone) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    private.data_dir.mkdir(exist_ok=True)
    log_path = private.data_dir / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tci.cli", "serve", "--port", str(port)],
            env=private.env, cwd=private.clone, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, lambda: http_ok(f"{url}/health"), timeout=90, what="tci serve",
                      log=log_path.read_text)
        yield process, url
    finally:
        stop_process(process, timeout=30)


def execute(url: str, key: str, code: str) -> dict:
    response = httpx.post(f"{url}/v1/tci/execute", json={"language": "python", "code": code},
                          headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is None, body
    return body["data"]


def assert_serves(url: str, key: str) -> None:
    data = execute(url, key, "import numpy\nprint(numpy.__version__)")
    assert stdout_of(data).strip().split(".")[0].isdigit(), data
    plot = execute(url, key, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert [set(bundle) for bundle in outputs_of(plot, "display_data")] == [
        {"image/png", "text/plain"}
    ], plot


def runtime_mounts(private: PrivateClone) -> list[tuple[str, set[str]]]:
    return [(point, options) for point, options in mounts_under(private.sandbox_dir)
            if point in (f"{private.sandbox_dir}/runtime", f"{private.sandbox_dir}/worker")]


def test_a_clone_in_a_private_home_serves(private):
    assert not private.home.stat().st_mode & stat.S_IXOTH  # the case under test
    with serving(private) as (_, url):
        assert_serves(url, private.key)
        mounts = runtime_mounts(private)
        assert sorted(point for point, _ in mounts) == [
            f"{private.sandbox_dir}/runtime", f"{private.sandbox_dir}/worker"
        ]
        for _, options in mounts:
            assert {"ro", "nosuid", "nodev"} <= options
    assert mounts_under(private.sandbox_dir) == []  # stopped: every mount is gone
    assert stat.S_IMODE(private.home.stat().st_mode) == 0o700  # and the home was not opened


def test_a_killed_servers_mounts_are_removed_by_the_next_start(private):
    with serving(private) as (process, url):
        assert_serves(url, private.key)
        process.kill()
        process.wait()
    assert len(runtime_mounts(private)) == 2  # left behind by the killed server
    with serving(private) as (_, url):
        assert_serves(url, private.key)
        assert len(runtime_mounts(private)) == 2  # replaced, not stacked
    assert mounts_under(private.sandbox_dir) == []
