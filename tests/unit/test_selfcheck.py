"""The start-up self-check names each missing protection, and refuses to serve unless the
operator opted in to the danger."""

import logging

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox.protections import enforce, problems_in

SAFE = {"uid": 1000, "cap_eff": "0000000000000000", "cap_bnd": "0000000000000000",
        "no_new_privs": "1", "seccomp": "2", "pid": 2, "interfaces": ["lo"],
        "usr_writable": False, "init_name": "tci-init", "init_memory": "EACCES"}


class FakeCgroup:
    def __init__(self, pids):
        self._pids = pids

    def procs(self):
        return self._pids


class ProbeSandbox:
    """Stands in for the host-side view only: which pid is the worker, which cgroup holds it."""

    def __init__(self, worker_pid=42, cgroup=None):
        self._worker = worker_pid
        self.cgroup = cgroup

    def worker_pid(self):
        return self._worker


def test_a_safe_sandbox_has_no_problems():
    assert problems_in(SAFE, ProbeSandbox(cgroup=FakeCgroup([41, 42])), "none") == []


@pytest.mark.parametrize(("change", "problem"), [
    ({"uid": 0}, "uid 0"),
    ({"cap_eff": "000001ffffffffff"}, "capabilities"),
    ({"no_new_privs": "0"}, "no_new_privs"),
    ({"seccomp": "0"}, "seccomp"),
    ({"pid": 4242}, "pid namespace"),
    ({"interfaces": ["eth0", "lo"]}, "host network interfaces"),
    ({"usr_writable": True}, "/usr is writable"),
    ({"init_name": "bwrap"}, "not tci's init"),
    ({"init_memory": "opened"}, "pid 1 is dumpable"),
])
def test_each_missing_protection_is_named(change, problem):
    found = problems_in({**SAFE, **change}, ProbeSandbox(cgroup=FakeCgroup([42])), "none")
    assert len(found) == 1 and problem in found[0]


def test_missing_cgroups_are_a_problem():
    assert "no cgroup limits" in problems_in(SAFE, ProbeSandbox(cgroup=None), "none")[0]
    assert "not inside" in problems_in(SAFE, ProbeSandbox(cgroup=FakeCgroup([7])), "none")[0]


def test_egress_allows_the_tap_device_only():
    facts = {**SAFE, "interfaces": ["lo", "tap0"]}
    assert problems_in(facts, ProbeSandbox(cgroup=FakeCgroup([42])), "egress") == []


def test_enforce_refuses_unless_the_operator_opts_in(caplog):
    with pytest.raises(SandboxUnavailable, match="TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS"):
        enforce(["no seccomp filter is applied"], allow_missing=False)
    with caplog.at_level(logging.WARNING):
        enforce(["no seccomp filter is applied"], allow_missing=True)
    assert "UNSAFE" in caplog.text
