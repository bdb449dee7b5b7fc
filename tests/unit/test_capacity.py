"""TCI_MAX_SESSIONS: unset, what the machine holds; set, refused when the machine cannot.
The machine's figures are passed in (memory, loop devices, tasks, free disk) except where a
test reads the host's own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.hosts.capacity import MiB, host_tasks, max_sessions, session_tasks

GiB = 1024 * MiB
# Plenty of everything but what a test looks at.
ROOMY = {"memory": 24 * GiB, "loops": 1 << 20, "tasks": 1 << 22, "disk": 1 << 50}


def settings(**values) -> Settings:
    return Settings(**{"sandbox_start": "fork", "pool_size": 4, **values})


def held(values: dict | None = None, **machine: int) -> int:
    return max_sessions(settings(**(values or {})), **{**ROOMY, **machine})


def test_unset_is_what_memory_holds_at_twice_the_idle_floor():
    assert held() == 24 * GiB // (20 * MiB)
    # A bubblewrap session costs more, so fewer fit.
    assert held({"sandbox_start": "bwrap"}) == 409


def test_unset_is_bounded_by_uids_and_loop_devices():
    assert held({"sandbox_uid_count": 100}) == 96
    assert held(loops=64) == 60


def test_unset_is_bounded_by_the_tasks_sessions_may_hold_at_their_pids_limit():
    # pid_max 32768 less the default reserve of 4096, at 256 tasks each, less the pool of 4.
    assert held(tasks=session_tasks(settings(), tasks=32768)) == 28672 // 256 - 4 == 108
    assert held({"pids_limit": 64}, tasks=28672) == 28672 // 64 - 4


def test_unset_is_bounded_by_the_volumes_the_disk_holds_at_their_full_quota():
    # 10 GiB free, 1 GiB kept free (TCI_MIN_FREE_DISK_BYTES): nine 1 GiB volumes, four warm.
    assert held(disk=10 * GiB) == 5
    assert held({"workspace_max_bytes": 256 * MiB}, disk=10 * GiB) == 36 - 4
    assert held(disk=GiB) == 1  # never 0: that one is refused when it asks, saying why


@pytest.mark.parametrize(("values", "machine", "named"), [
    ({"max_sessions": 100, "sandbox_uid_count": 50}, {}, "TCI_SANDBOX_UID_COUNT"),
    ({"max_sessions": 100}, {"loops": 50}, "loop devices"),
    ({"max_sessions": 3000}, {}, "memory"),
    ({"max_sessions": 200}, {"tasks": 28672}, "TCI_PIDS_LIMIT (256)"),
    ({"max_sessions": 100, "pids_limit": 1024}, {"tasks": 28672}, "kernel.pid_max"),
])
def test_a_maximum_the_machine_cannot_honour_is_refused(values, machine, named):
    with pytest.raises(SandboxUnavailable, match="cannot be honoured") as refused:
        held(values, **machine)
    assert named in refused.value.message


def test_a_maximum_within_every_bound_is_kept():
    assert held({"max_sessions": 500}) == 500
    assert held({"max_sessions": 104}, tasks=28672) == 104  # 104 + 4 warm at 256 = 27648


def test_a_maximum_beyond_the_disk_is_kept_and_admitted_as_volumes_fit(caplog):
    """Free space moves: a set maximum is not refused at start for it, but warned about;
    each volume is then admitted only if the disk can reserve it (volume_images.py)."""
    with caplog.at_level(logging.WARNING, logger="tci.hosts.capacity"):
        assert held({"max_sessions": 50}, disk=10 * GiB) == 50
    assert "the sandbox disk now holds 9 volumes" in caplog.text


def test_the_host_keeps_its_reserve_of_tasks():
    assert session_tasks(settings(), tasks=32768) == 32768 - 4096
    assert session_tasks(settings(host_pids_reserve=0), tasks=32768) == 32768
    with pytest.raises(SandboxUnavailable, match="TCI_HOST_PIDS_RESERVE") as refused:
        session_tasks(settings(host_pids_reserve=32700), tasks=32768)
    assert "leaves 68 for sessions, fewer than one session's TCI_PIDS_LIMIT (256)" in \
        refused.value.message


def test_the_kernel_bound_is_the_lower_of_pid_max_and_threads_max(tmp_path: Path):
    pid_max, threads_max = tmp_path / "pid_max", tmp_path / "threads-max"
    pid_max.write_text("32768\n")
    threads_max.write_text("192735\n")
    assert host_tasks(pid_max, threads_max) == 32768
    threads_max.write_text("1000\n")
    assert host_tasks(pid_max, threads_max) == 1000
    # This host's own figures are readable.
    assert host_tasks() >= 300


def test_a_negative_reserve_is_bad_input():
    with pytest.raises(ValueError, match="host_pids_reserve"):
        Settings(host_pids_reserve=-1)
