"""End reasons are typed values whose text is what users read (410 bodies, the store's
end_reason, the log): each kind's words, and a host's own words when it has them."""

import pickle
from types import SimpleNamespace

import pytest

from tci.hosts.base import CallResult, EndKind, EndReason, HostStats
from tci.kernel.ends import death_notice
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


def test_every_end_of_a_session_has_words_and_its_metric_label():
    idle = SimpleNamespace(sessions={}, host=SimpleNamespace(stats=lambda: HostStats(0, 0)))
    metrics = Metrics(idle)
    ends = [kind for kind in EndKind if kind.ends_session]
    for kind in ends:
        assert str(EndReason(kind))
        metrics.session_ended(EndReason(kind))
    counted = {sample.labels["reason"]: sample.value
               for family in metrics.registry.collect() if family.name == "tci_sandboxes_killed"
               for sample in family.samples if sample.name.endswith("_total")}
    # The label values dashboards and docs know, older than EndKind: they must not change.
    assert KILL_REASONS == ("expired", "client", "shutdown", "worker_died", "memory_limit",
                            "timeout", "host_lost")
    assert set(counted) == set(KILL_REASONS)
    assert sum(counted.values()) == len(ends) == 10
    assert counted["shutdown"] == 2  # server shut down, and found live by the next server
    assert counted["worker_died"] == 3  # exited or killed, broke the protocol, client gone


@pytest.mark.parametrize(("kind", "outcome"), [
    (EndKind.OK, "ok"), (EndKind.ERROR, "error"), (EndKind.INTERRUPTED, "timeout"),
    (EndKind.WORKER_DIED, "died"), (EndKind.OUT_OF_MEMORY, "died"), (EndKind.TIMEOUT, "died"),
    (EndKind.PROTOCOL, "died"),
])
def test_a_calls_end_is_counted_under_its_outcome(kind, outcome):
    # The execution log and tci_executions_total count these strings.
    assert CallResult([], kind).outcome == outcome


@pytest.mark.parametrize("kind", [EndKind.OK, EndKind.ERROR, EndKind.INTERRUPTED])
def test_an_end_that_leaves_the_session_alive_is_no_reason_to_end_it(kind):
    with pytest.raises(ValueError, match="ends a call, not a session"):
        EndReason(kind)


def test_a_calls_death_is_told_in_its_own_words():
    timeout = EndReason(EndKind.TIMEOUT, "execution timed out after 1 s")
    assert death_notice(timeout) == (
        "TimeoutError: execution timed out after 1 s; the session was ended.")
    died = EndReason(EndKind.WORKER_DIED, "the worker process was killed by SIGKILL")
    assert death_notice(died) == (
        "WorkerDied: the worker process was killed by SIGKILL; the session was ended.")
    oom = EndReason(EndKind.OUT_OF_MEMORY, "MemoryError: memory limit of 64 MiB exceeded")
    assert death_notice(oom) == "MemoryError: memory limit of 64 MiB exceeded"


def test_ends_cross_to_a_ray_gateway_as_themselves():
    for kind in EndKind:
        assert pickle.loads(pickle.dumps(kind)) is kind
    result = CallResult([{"type": "stdout", "data": "1\n"}], EndKind.TIMEOUT,
                        EndReason(EndKind.TIMEOUT, "killed"))
    assert pickle.loads(pickle.dumps(result)) == result


def test_reasons_are_plain_values():
    assert EndReason(EndKind.EXPIRED) == EndReason(EndKind.EXPIRED)
    assert {EndReason(EndKind.CLIENT)} == {EndReason(EndKind.CLIENT, "")}
