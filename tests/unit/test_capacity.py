"""TCI_MAX_SESSIONS: unset, what the machine holds; set, refused when the machine cannot."""

from __future__ import annotations

import pytest

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.hosts.capacity import MiB, max_sessions

GiB = 1024 * MiB


def settings(**values) -> Settings:
    return Settings(**{"sandbox_start": "fork", "pool_size": 4, **values})


def test_unset_is_what_memory_holds_at_twice_the_idle_floor():
    assert max_sessions(settings(), memory=24 * GiB, loops=1 << 20) == 24 * GiB // (20 * MiB)
    # A bubblewrap session costs more, so fewer fit.
    assert max_sessions(settings(sandbox_start="bwrap"), memory=24 * GiB, loops=1 << 20) == 409


def test_unset_is_bounded_by_uids_and_loop_devices():
    assert max_sessions(settings(sandbox_uid_count=100), memory=24 * GiB, loops=1 << 20) == 96
    assert max_sessions(settings(), memory=24 * GiB, loops=64) == 60


@pytest.mark.parametrize(("values", "memory", "loops", "named"), [
    ({"max_sessions": 100, "sandbox_uid_count": 50}, 24 * GiB, 1 << 20, "TCI_SANDBOX_UID_COUNT"),
    ({"max_sessions": 100}, 24 * GiB, 50, "loop devices"),
    ({"max_sessions": 3000}, 24 * GiB, 1 << 20, "memory"),
])
def test_a_maximum_the_machine_cannot_honour_is_refused(values, memory, loops, named):
    with pytest.raises(SandboxUnavailable, match="cannot be honoured") as refused:
        max_sessions(settings(**values), memory=memory, loops=loops)
    assert named in refused.value.message


def test_a_maximum_within_every_bound_is_kept():
    assert max_sessions(settings(max_sessions=500), memory=24 * GiB, loops=1 << 20) == 500
