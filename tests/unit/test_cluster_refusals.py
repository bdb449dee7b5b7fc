"""What a gateway answers when no host of the cluster takes a session (new, resumed or from a
snapshot): every host full is a 429 with Retry-After, as a single machine at its
TCI_MAX_SESSIONS answers; a host down or unreachable among them makes it a 503."""

from __future__ import annotations

from tci.cluster.ray_host import _none_could
from tci.errors import SandboxUnavailable, TooManySessions


def test_every_host_full_is_a_429_naming_them():
    refusal = _none_could("take a new session", ["tci-host-a is full", "tci-host-b is full"])
    assert isinstance(refusal, TooManySessions)
    assert refusal.status_code == 429 and refusal.retry_after >= 1
    assert "tci-host-a is full" in refusal.message and "tci-host-b is full" in refusal.message


def test_a_host_unreachable_or_none_up_is_a_503():
    mixed = _none_could("take a new session", ["tci-host-a is full",
                                               "tci-host-b is unreachable"])
    assert isinstance(mixed, SandboxUnavailable) and mixed.status_code == 503
    assert "tci-host-b is unreachable" in mixed.message
    nobody = _none_could("start a session from a kept state", [])
    assert isinstance(nobody, SandboxUnavailable)
    assert nobody.message == \
        "no tci host can start a session from a kept state now (none is up)"
