"""The session-host seam: SessionManager knows sessions only through tci.hosts.base, so
another host (another process, another machine) can take LocalHost's place. Checked on the
modules Python actually loads, in a fresh interpreter."""

import subprocess
import sys

# Where sessions run: fds, pids, uids, cgroups, paths, the worker protocol.
HOST_SIDE = ("tci.sandbox", "tci.kernel.driver", "tci.hosts.local", "tci.hosts.pool",
             "tci.hosts.worker_start", "tci.hosts.selfcheck", "tci.worker")


def loaded_by(module: str) -> list[str]:
    code = (f"import sys, {module}\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('tci'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def host_side(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(HOST_SIDE)]


def test_the_manager_loads_nothing_of_where_sessions_run():
    modules = loaded_by("tci.sessions.manager")
    assert "tci.hosts.base" in modules  # the check sees the seam itself
    assert host_side(modules) == []


def test_the_host_contract_loads_nothing_of_the_local_host():
    assert host_side(loaded_by("tci.hosts.base")) == []


def test_the_pure_self_check_loads_neither_kernel_nor_sessions():
    modules = loaded_by("tci.sandbox.protections")
    assert [m for m in modules if m.startswith(("tci.kernel.driver", "tci.sessions",
                                                "tci.hosts"))] == []


def test_the_local_host_is_what_the_check_would_catch():
    assert "tci.sandbox.launcher" in host_side(loaded_by("tci.hosts.local"))
