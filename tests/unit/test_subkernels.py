"""Sub-kernels (worker/kernels/) outside a sandbox: a runtime missing on the host is a clear
error output, not a crash, and a call after it still runs; the relay keeps a bash's state."""

from __future__ import annotations

import io
import os
from typing import Any

from tci.worker import kernels
from tci.worker.kernels.bash import BashKernel


class Collect(io.StringIO):
    pass


def make() -> tuple[kernels.Kernels, list[dict[str, Any]], Collect]:
    events: list[dict[str, Any]] = []
    out = Collect()
    return kernels.Kernels(events.append, out, Collect()), events, out


def test_a_missing_runtime_is_a_clear_error(monkeypatch) -> None:
    class Missing(BashKernel):
        runtime = "/nonexistent/bash"

    monkeypatch.setitem(kernels.KINDS, "bash", Missing)
    running, events, _ = make()
    assert running.execute("bash", "echo hi") is False
    assert events == [{"type": "error", "ename": "RuntimeUnavailable",
                       "data": "bash is not installed on this server (/nonexistent/bash is "
                               "missing)"}]


def test_bash_state_and_exit_status_through_the_relay() -> None:
    running, events, _ = make()
    try:
        assert running.execute("bash", "x=41") is True
        assert running.execute("bash", "(exit $((x - 39)))") is False
        assert events == [{"type": "error", "data": "exit status 2", "ename": "ExitStatus"}]
    finally:
        for kernel in running.running.values():
            kernel.stop()


def test_installed_says_which_runtimes_this_machine_has(monkeypatch) -> None:
    class Missing(BashKernel):
        runtime = "/nonexistent/bash"

    monkeypatch.setitem(kernels.KINDS, "bash", Missing)
    found = kernels.installed()
    assert found["python"] is True and found["bash"] is False
    assert found["javascript"] is os.path.exists("/usr/bin/node")
