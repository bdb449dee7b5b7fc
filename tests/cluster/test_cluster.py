"""tci on a real Ray cluster (conftest.py): two host nodes, two gateways, one PostgreSQL.
Sessions spread over both hosts; any gateway serves any session; a gateway that dies loses
nothing; a host node that dies ends its own sessions, with "host lost", and only those."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from together import Together

from tests.cluster.netns import interfaces
from tests.conftest import assert_streams_while_running, read_events, stdout_of, wait_for

pytestmark = pytest.mark.timeout(900)


def test_everything_runs_in_a_namespace_with_only_loopback(cluster):
    assert interfaces() == ["lo"]
    listed = cluster.hosts_listing
    assert len(cluster.host_names()) == 2 and listed.count(" ready") == 2, listed


def test_sessions_land_on_both_hosts(cluster):
    gateway = cluster.gateways[0]
    sessions = [gateway.run("print('hi')")["session_id"] for _ in range(4)]
    assert {cluster.host_of(s) for s in sessions} == cluster.host_names()
    # Hosts equally free take turns, also when each session ends before the next starts.
    brief = []
    with gateway.client() as client:
        for _ in range(4):
            brief.append(gateway.run("1")["session_id"])
            assert client.delete(f"/v1/tci/sessions/{brief[-1]}").status_code == 200
    assert {cluster.host_of(s) for s in brief} == cluster.host_names()


def test_a_session_made_through_one_gateway_runs_through_the_other(cluster):
    a, b = cluster.gateways
    session = a.run("x = 41")["session_id"]
    assert stdout_of(b.run("x += 1\nprint(x)", session)) == "42\n"
    assert stdout_of(a.run("print(x)", session)) == "42\n"
    with b.client() as client:
        listed = client.get(f"/v1/tci/sessions/{session}/files")
    assert listed.status_code == 200, listed.text


def test_plain_calls_through_a_gateway_answer_as_on_one_machine(cluster):
    """A warm call crosses Ray as plain values (HostActor.run); a call with files, one that
    ends its session and one to an ended session still answer as on one machine."""
    gateway = cluster.gateways[0]
    session = gateway.run("x = 1")["session_id"]
    assert gateway.run("x += 1\nprint(x)\nx", session)["outputs"] == [
        {"type": "stdout", "data": "2\n"},
        {"type": "execute_result", "data": {"text/plain": "2"}}]
    failed = gateway.run("1 / 0", session)["outputs"]
    assert failed[-1]["type"] == "error" and "ZeroDivisionError" in failed[-1]["data"]
    files = [{"name": "in.txt", "content": "hi"}]
    assert stdout_of(gateway.run("print(open('in.txt').read())", session, files=files)) \
        == "hi\n"
    gateway.run("exit()", session)
    ended = gateway.execute("print(x)", session)
    assert ended.status_code == 410, ended.text


def test_streaming_through_a_gateway_sends_output_while_the_cell_runs(cluster):
    a, b = cluster.gateways
    session = a.run("import os, time")["session_id"]
    # Streamed through one gateway; the cell is let finish through the other.
    assert_streams_while_running(b, a, session)


def streamed(gateway, code: str) -> list[tuple[str, dict]]:
    """The (event, payload) pairs of a streamed call through `gateway`."""
    body = {"language": "python", "code": code, "stream": True}
    with gateway.client() as client, client.stream("POST", "/v1/tci/execute",
                                                   json=body) as response:
        assert response.status_code == 200, response.read()
        return read_events(response)


def test_a_streamed_call_through_a_gateway_gets_every_output_and_the_whole_result(cluster):
    """Each output crosses Ray once (the host's reply names what it streamed, and the
    gateway rebuilds the result): the client still gets every output as an event, and a
    result holding them all, a stream's lines joined, as from a single machine."""
    code = ("import sys\nfrom IPython.display import HTML, display\n"
            "print('a')\nprint('b', end='')\nsys.stderr.write('warn\\n')\n"
            "display(HTML('<b>' + 'x' * 5000 + '</b>'))\nprint('c')\n"
            "raise ValueError('bad')")
    events = streamed(cluster.gateways[1], code)
    outputs = [payload for name, payload in events[:-1] if name == "output"]
    assert [(o["type"], o["data"]) for o in outputs[:3]] == [
        ("stdout", "a\n"), ("stdout", "b"), ("stderr", "warn\n")]
    assert [o["type"] for o in outputs[3:]] == ["display_data", "stdout", "error"]
    assert events[-1][0] == "result"
    result = events[-1][1]["data"]["outputs"]
    assert result == [{"type": "stdout", "data": "a\nb"}, {"type": "stderr", "data": "warn\n"},
                      outputs[3], {"type": "stdout", "data": "c\n"}, outputs[5]]
    assert "x" * 5000 in result[2]["data"]["text/html"]
    assert "ValueError: bad" in result[4]["data"]


def test_the_official_together_sdk_works_through_a_gateway(cluster):
    gateway = cluster.gateways[1]
    with Together(base_url=gateway.base_url, api_key=cluster.key) as sdk:
        first = sdk.code_interpreter.execute(code="y = 6 * 7", language="python")
        again = sdk.code_interpreter.execute(code="print(y)", language="python",
                                             session_id=first.data.session_id)
    assert again.errors is None
    assert [(o.type, o.data) for o in again.data.outputs] == [("stdout", "42\n")]


def test_usage_sums_sessions_executions_and_cpu_across_hosts(cluster):
    a, b = cluster.gateways
    key = a.new_key("usage-across-hosts")
    sessions = []
    for gateway in (a, b, a, b):
        sessions.append(gateway.run("sum(range(3_000_000))", key=key)["session_id"])
    assert len({cluster.host_of(s) for s in sessions}) == 2
    for session in sessions:
        b.run("print(1)", session, key=key)
    # Each gateway writes its executions within TCI_STORE_FLUSH_SECONDS (0.5 s): asked
    # through either gateway, the totals hold every host's and every gateway's soon after.
    def used() -> dict:
        with a.client(key) as client:
            return client.get("/v1/tci/usage").json()["data"]
    wait_for(lambda: (used()["sessions"], used()["executions"]) == (4, 8),
             "usage to count 4 sessions and 8 executions", timeout=30)
    assert used()["cpu_seconds"] > 0


def test_killing_a_gateway_loses_no_session(cluster):
    a, b = cluster.gateways
    session = a.run("kept = 'still here'")["session_id"]
    a.stop(signal.SIGKILL)
    assert stdout_of(b.run("print(kept)", session)) == "still here\n"
    a.start()  # the same gateway comes back: a new process, nothing in memory
    assert stdout_of(a.run("print(kept)", session)) == "still here\n"
    a.stop(signal.SIGTERM)  # a graceful stop leaves the sessions to the hosts too
    a.start()
    assert stdout_of(a.run("print(kept)", session)) == "still here\n"
    assert cluster.sql("SELECT ended_at FROM sessions WHERE id = %s", session) == [(None,)]


def test_only_an_actor_death_is_host_loss():
    """What each failure Ray reports for a host call means: its actor dead ends the session
    ("host lost"); unavailable for now, or no answer in time, keeps it (503, retry)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    from tci.cluster.ray_host import _failure
    from tci.errors import HostUnreachable
    from tci.hosts.base import EndKind, SessionGone

    died = _failure(ActorDiedError(), "tci-host-a")
    assert isinstance(died, SessionGone) and died.reason.kind is EndKind.HOST_LOST
    for unreachable in (ActorUnavailableError("the connection to its node was lost", None),
                        GetTimeoutError("no answer in 30 s"), TimeoutError()):
        assert isinstance(_failure(unreachable, "tci-host-a"), HostUnreachable), unreachable


def add_record(cluster, host: str) -> str:
    """A live session record of the cluster's key routed to `host`, as a gateway writes one."""
    session = f"s-{uuid.uuid4().hex}"
    cluster.sql("INSERT INTO sessions (id, key_id, started_at, expires_at, execute_count, host)"
                " SELECT %s, id, now(), now() + interval '1 hour', 0, %s FROM api_keys"
                " WHERE name = 'test' RETURNING id", session, host)
    return session


def ended_at(cluster, session: str) -> list[tuple]:
    return cluster.sql("SELECT ended_at, end_reason FROM sessions WHERE id = %s", session)


def test_another_keys_session_is_not_adopted(cluster):
    """Ownership first: a stranger naming a session through a gateway that never saw it gets
    404, and that gateway does not take the session on (its owner sees it listed only where
    it was made)."""
    a, b = cluster.gateways
    stranger = a.new_key(f"stranger-{uuid.uuid4().hex[:8]}")
    session = a.run("x = 1")["session_id"]
    with b.client(stranger) as client:
        assert client.get(f"/v1/tci/sessions/{session}/files").status_code == 404
        assert client.delete(f"/v1/tci/sessions/{session}").status_code == 404
    with b.client() as client:
        listed = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert session not in [s["id"] for s in listed]
    assert stdout_of(b.run("print(x)", session)) == "1\n"  # its owner's call adopts it


def test_a_host_not_reached_is_not_a_lost_host(cluster):
    """A record on a host whose node Ray says is alive, but that no gateway reaches (here
    the head node's name: it offers no tci_host): its owner gets 503 with Retry-After and
    the session stays live. A host whose node Ray does not know is gone: 410 "host lost".
    A stranger naming either gets 404 and ends neither."""
    a, b = cluster.gateways
    head = f"tci-host-{cluster.ray.nodes[0].node_id()[:16]}"
    unreached = add_record(cluster, head)
    vanished = add_record(cluster, "tci-host-" + "0" * 16)
    stranger = a.new_key(f"stranger-{uuid.uuid4().hex[:8]}")
    try:
        with b.client(stranger) as client:
            for session in (unreached, vanished):
                assert client.get(f"/v1/tci/sessions/{session}/files").status_code == 404
        assert ended_at(cluster, unreached) == ended_at(cluster, vanished) == [(None, None)]

        with b.client() as client:
            kept = client.get(f"/v1/tci/sessions/{unreached}/files")
            gone = client.get(f"/v1/tci/sessions/{vanished}/files")
        assert kept.status_code == 503, kept.text
        assert kept.headers["retry-after"] == "1"
        assert kept.json()["errors"] == [
            "the session's host cannot be reached now; the session is kept, retry later"]
        assert head not in kept.text
        assert ended_at(cluster, unreached) == [(None, None)]
        assert gone.status_code == 410 and "host lost" in gone.text, gone.text
        assert ended_at(cluster, vanished)[0][1] == "host lost"
    finally:  # no live record of a host that is not one stays for the later tests
        cluster.sql("UPDATE sessions SET ended_at = now(), end_reason = 'test' WHERE id = %s"
                    " RETURNING id", unreached)


def test_a_lost_host_ends_its_sessions_only_and_new_sessions_go_to_the_other(cluster):
    """Last: it kills a host node."""
    a, b = cluster.gateways
    by_host: dict[str, str] = {}
    while len(by_host) < 2:
        session = a.run("z = 1")["session_id"]
        by_host.setdefault(cluster.host_of(session), session)
    doomed_host = cluster.host_of(by_host[min(by_host)])
    doomed, survivor = by_host[doomed_host], next(s for h, s in by_host.items()
                                                  if h != doomed_host)
    victim = next(node for node in cluster.hosts.values()
                  if doomed_host == f"tci-host-{node.node_id()[:16]}")
    killed_at = time.monotonic()
    victim.kill()

    def lost() -> bool:
        response = b.execute("print(z)", doomed)
        return response.status_code == 410
    wait_for(lost, "the lost host's session to answer 410", timeout=120)
    reported = time.monotonic() - killed_at
    response = a.execute("print(z)", doomed)
    assert response.status_code == 410 and "host lost" in response.text, response.text
    assert stdout_of(b.run("z += 1\nprint(z)", survivor)) == "2\n"
    fresh = [a.run("print('new')")["session_id"] for _ in range(3)]
    assert {cluster.host_of(s) for s in fresh} == {cluster.host_of(survivor)}
    assert cluster.sql("SELECT end_reason FROM sessions WHERE id = %s", doomed) == [
        ("host lost",)]
    print(f"host loss reported {reported:.1f} s after the node was killed")

