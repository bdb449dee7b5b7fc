"""Pause, resume and snapshots on a real Ray cluster (conftest.py): the hosts keep states in
one shared TCI_STATE_DIR, so a paused session resumes, and a snapshot starts sessions, on
whichever host the gateway places them, under the same id, through either gateway; also
once the host that saved the state is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import shared_state_dir
from tests.conftest import stdout_of

pytestmark = pytest.mark.timeout(900)

# A variable, a function reading the session's globals, and a file of its working directory.
MAKE_STATE = "x = 41\ndef f():\n    return x + 1\nopen('kept.txt', 'w').write('on disk')"
READ_STATE = "print(f(), open('kept.txt').read())"
STATE_READ = "42 on disk\n"


def post(gateway, path: str, **body) -> dict:
    with gateway.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def pause(gateway, session: str) -> None:
    assert post(gateway, f"/v1/tci/sessions/{session}/pause")["status"] == "paused"


def status_of(gateway, session: str) -> str:
    with gateway.client() as client:
        listed = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    return next(s["status"] for s in listed if s["id"] == session)


def state_file(cluster, name: str) -> Path:
    return shared_state_dir(cluster.root) / f"{name}.img"


def node_of(cluster, host: str):
    return next(node for node in cluster.hosts.values()
                if host == f"tci-host-{node.node_id()[:16]}")


def test_a_paused_session_resumes_on_either_host_through_either_gateway(cluster):
    """Paused through one gateway and resumed through the other, again and again: placed as
    a new session is, it comes back on both hosts, each time with its state, same id; and
    the store routes it to the host it runs on now (the gateway that paused it reaches it)."""
    a, b = cluster.gateways
    session = a.run(MAKE_STATE)["session_id"]
    hosts = [cluster.host_of(session)]
    for turn in range(8):
        paused_by, resumed_by = (a, b) if turn % 2 == 0 else (b, a)
        pause(paused_by, session)
        assert state_file(cluster, session).exists()
        assert status_of(resumed_by, session) == "paused"
        assert stdout_of(resumed_by.run(READ_STATE, session)) == STATE_READ
        assert not state_file(cluster, session).exists()  # the running session's again
        hosts.append(cluster.host_of(session))
        # The other gateway (which paused it, and holds it no more) reaches it where it is.
        assert stdout_of(paused_by.run("print(x)", session)) == "41\n"
        if len(set(hosts)) == 2:
            break
    assert set(hosts) == cluster.host_names(), hosts
    assert status_of(a, session) == "running"


def test_a_snapshot_starts_sessions_on_both_hosts(cluster):
    a, b = cluster.gateways
    source = a.run(MAKE_STATE)["session_id"]
    snapshot = post(a, f"/v1/tci/sessions/{source}/snapshots")["id"]
    started = []
    for turn in range(6):
        gateway = (b, a)[turn % 2]
        data = gateway.run(READ_STATE + "\nx = 0", snapshot_id=snapshot)
        assert stdout_of(data) == STATE_READ
        started.append(data["session_id"])
        if {cluster.host_of(s) for s in started} == cluster.host_names():
            break
    assert {cluster.host_of(s) for s in started} == cluster.host_names(), started
    assert stdout_of(a.run("print(x)", source)) == "41\n"  # independent of each other
    with b.client() as client:
        assert client.delete(f"/v1/tci/snapshots/{snapshot}").status_code == 200
    assert not state_file(cluster, snapshot).exists()


def test_a_state_no_host_finds_ends_the_session_saying_the_directory_must_be_shared(
        cluster):
    """What a host whose TCI_STATE_DIR is not the shared one meets: no file. Every host is
    asked, and the session ends with a 410 naming the setting, not a crash or a 500."""
    a, _ = cluster.gateways
    session = a.run("y = 1")["session_id"]
    pause(a, session)
    state_file(cluster, session).unlink()
    gone = a.execute("print(y)", session)
    assert gone.status_code == 410, gone.text
    assert "TCI_STATE_DIR" in gone.text and "shared" in gone.text, gone.text
    again = a.execute("print(y)", session)
    assert again.status_code == 410, again.text


def test_states_kept_by_a_host_that_died_resume_on_the_survivor(cluster):
    """Last: it kills a host node. What that host paused resumes on the other, a snapshot
    it took starts a session there, and deleting a session it paused frees the state."""
    a, b = cluster.gateways
    by_host: dict[str, list[str]] = {}
    while len(by_host) < 2 or min(len(s) for s in by_host.values()) < 2:
        session = a.run(MAKE_STATE)["session_id"]
        by_host.setdefault(cluster.host_of(session), []).append(session)
    doomed_host = min(by_host)
    paused, deleted = by_host[doomed_host][:2]
    snapshot = post(a, f"/v1/tci/sessions/{paused}/snapshots")["id"]
    for session in (paused, deleted):
        pause(a, session)
    survivor_host = next(h for h in by_host if h != doomed_host)
    node_of(cluster, doomed_host).kill()

    assert stdout_of(b.run(READ_STATE, paused)) == STATE_READ
    assert cluster.host_of(paused) == survivor_host
    fresh = b.run(READ_STATE, snapshot_id=snapshot)
    assert stdout_of(fresh) == STATE_READ
    assert cluster.host_of(fresh["session_id"]) == survivor_host

    assert state_file(cluster, deleted).exists()
    with b.client() as client:
        assert client.delete(f"/v1/tci/sessions/{deleted}").status_code == 200
        gone = client.post("/v1/tci/execute",
                           json={"language": "python", "code": "1", "session_id": deleted})
    assert not state_file(cluster, deleted).exists()
    assert gone.status_code == 410, gone.text
