"""Sandbox uids: reused oldest first, never after a failed cleanup, never the host's own."""

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox.uids import UidPool, parse_subids, range_conflicts


def test_released_uids_go_to_the_back_of_the_queue():
    pool = UidPool(1000, 3)
    first = pool.acquire()
    pool.release(first)
    assert [pool.acquire() for _ in range(3)] == [1001, 1002, 1000]


def test_a_quarantined_uid_is_never_handed_out_again():
    pool = UidPool(1000, 2)
    bad = pool.acquire()
    pool.quarantine(bad, "its cgroup could not be removed")
    pool.release(bad)  # a later release (a failed start's cleanup) changes nothing
    handed = [pool.acquire()]
    pool.release(handed[0])
    handed.append(pool.acquire())
    assert bad not in handed and pool.quarantined == {bad: "its cgroup could not be removed"}
    with pytest.raises(SandboxUnavailable, match="1 quarantined"):
        pool.acquire()


def test_subid_files_are_parsed():
    text = "alice:100000:65536\n# comment\nbad line\nbob:165536:x\ncarol:231072:65536\n"
    assert parse_subids(text) == [("alice", 100000, 65536), ("carol", 231072, 65536)]


@pytest.mark.parametrize(("base", "count", "expected"), [
    (200_000, 10_000, []),
    (150_000, 10_000, ["/etc/subuid gives 100000..165535 to 'alice'"]),
    (165_535, 1, ["/etc/subuid gives 100000..165535 to 'alice'"]),
    (165_536, 10, []),
    (300_000, 10, ["/etc/subgid gives 299990..300009 to 'dave'"]),
    (64_000, 2000, ["user 'nobody' has id 65534", "group 'nogroup' has id 65534"]),
    (0, 10, ["0..9 is not a range of unprivileged ids (1..4294967294)"]),
    (4_294_967_290, 10, ["4294967290..4294967299 is not a range of unprivileged ids "
                         "(1..4294967294)"]),
])
def test_range_conflicts(base, count, expected):
    conflicts = range_conflicts(
        base, count, subuids=[("alice", 100000, 65536)], subgids=[("dave", 299990, 20)],
        users=[("root", 0), ("nobody", 65534)], groups=[("root", 0), ("nogroup", 65534)],
    )
    assert conflicts == expected
