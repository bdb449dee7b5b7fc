"""End reasons are typed values whose text is what users read (410 bodies, the store's
end_reason, the log): each kind's words, and a host's own words when it has them."""

from types import SimpleNamespace

import pytest

from tci.hosts.base import EndKind, EndReason, HostStats
from tci.metrics import KILL_REASONS, Metrics


@pytest.mark.parametrize(("kind", "text"), [
    (EndKind.EXPIRED, "expired"),
    (EndKind.CLIENT, "ended by the client"),
    (EndKind.SHUTDOWN, "server shut down"),
    (EndKind.RESTARTED, "server restarted"),
    (EndKind.HOST_LOST, "host lost"),
    (EndKind.WORKER_DIED, "the worker process ended"),
])
def test_each_kind_says_what_users_read(kind, text):
    assert str(EndReason(kind)) == text


def test_a_hosts_own_words_win():
    died = EndReason(EndKind.WORKER_DIED, "the worker process was killed by SIGKILL")
    assert str(died) == "the worker process was killed by SIGKILL"
    oom = EndReason(EndKind.OUT_OF_MEMORY, "MemoryError: memory limit of 64 MiB exceeded")
    assert str(oom).startswith("MemoryError: ")


def test_every_kind_has_words_and_a_metric_label():
    idle = SimpleNamespace(sessions={}, host=SimpleNamespace(stats=lambda: HostStats(0, 0)))
    metrics = Metrics(idle)
    for kind in EndKind:
        assert str(EndReason(kind))
        metrics.session_ended(EndReason(kind))  # a KeyError here: a kind without a label
    counted = {sample.labels["reason"]: sample.value
               for family in metrics.registry.collect() if family.name == "tci_sandboxes_killed"
               for sample in family.samples if sample.name.endswith("_total")}
    assert set(counted) == set(KILL_REASONS)
    assert sum(counted.values()) == len(EndKind)
    assert counted["shutdown"] == 2  # server shut down, and found live by the next server


def test_reasons_are_plain_values():
    assert EndReason(EndKind.EXPIRED) == EndReason(EndKind.EXPIRED)
    assert {EndReason(EndKind.CLIENT)} == {EndReason(EndKind.CLIENT, "")}
