"""Without TCI_RAY_ADDRESS nothing of Ray is imported: a single machine runs as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", **env})


def test_a_single_machine_server_never_imports_ray(tmp_path):
    done = run_python(
        "import sys\n"
        "from tci.config import Settings\n"
        "from tci.server.app import create_app\n"
        "from tci.cli import build_parser\n"
        "app = create_app(Settings())\n"
        "print(type(app.state.manager.host).__name__, 'ray' in sys.modules)\n",
        TCI_DATA_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LocalHost", "False"]


def test_a_gateway_gets_the_ray_host(tmp_path):
    """...reaching the database through the manager's AsyncStore: one way in per process,
    one thread for every write (no Store called from threads of its own)."""
    done = run_python(
        "from tci.config import Settings\n"
        "from tci.server.app import create_app\n"
        "manager = create_app(Settings()).state.manager\n"
        "print(type(manager.host).__name__, manager.host.store is manager.store)\n",
        TCI_DATA_DIR=str(tmp_path), TCI_RAY_ADDRESS="127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RayHost", "True"]


def test_tci_hosts_needs_a_cluster_address(tmp_path):
    done = subprocess.run([str(Path(sys.executable).with_name("tci")),
                           "hosts"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TCI_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "--ray-address" in done.stderr


# Read when pytest collects this module, before any test (and any cluster) runs.
NAMESPACE_AT_COLLECTION = os.readlink("/proc/thread-self/ns/net")


def test_the_cluster_namespace_does_not_outlive_its_tests():
    """Runs after test_cluster.py: the test process is back in the network namespace it
    started in, so servers started before the cluster tests (the shared one) are still
    reachable."""
    assert os.readlink("/proc/thread-self/ns/net") == NAMESPACE_AT_COLLECTION
