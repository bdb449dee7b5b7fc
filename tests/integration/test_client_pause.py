"""Pause, resume and snapshots through the SDK (`tci.client`) against a real `tci serve`:
Client and AsyncClient pause a session (its state kept, `skipped` naming what was not), list
it as paused, resume it (explicitly or by executing on it), snapshot it and start independent
sessions from the snapshot with `execute(snapshot_id=...)`, list and delete snapshots, and
get the exception tree's classes for 400, 404, 409 and 429 (with `retry_after`)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tci.client import (
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    ExecuteResult,
    NotFoundError,
    PausedSession,
    RateLimitError,
    ResultEvent,
    ResumedSession,
    SnapshotInfo,
)
from tests.conftest import wait_for

# A session's state of every plain kind, and a socket (which cannot be kept).
STATE = (
    "import socket\n"
    "items = [1, 2]\n"
    "def total():\n"
    "    return sum(items)\n"
    "class Box:\n"
    "    def __init__(self, v):\n"
    "        self.v = v\n"
    "box = Box(7)\n"
    "sock = socket.socket()\n"
    "open('kept.txt', 'w').write('on disk')\n"
)
CHECK = "items.append(3)\nprint(total(), isinstance(box, Box), box.v, open('kept.txt').read())"
CHECKED = "6 True 7 on disk\n"


@pytest.fixture
def key(server, request):
    """A key of the test's own, so its sessions and snapshots are the only ones it sees."""
    return server.new_key(f"sdk-{request.node.name}")


@pytest.fixture
def client(server, key):
    with Client(base_url=server.base_url, api_key=key) as instance:
        yield instance


def run_async(server, key, body):
    async def main():
        async with AsyncClient(base_url=server.base_url, api_key=key) as aclient:
            return await body(aclient)

    return asyncio.run(main())


def assert_ok(result: ExecuteResult) -> None:
    assert not result.errors, result.errors


def test_pause_keeps_the_state_and_resume_or_execute_brings_it_back(client):
    ci = client.code_interpreter
    first = ci.execute(code=STATE)
    assert_ok(first)
    session_id = first.session_id

    paused = ci.sessions.pause(session_id)
    assert isinstance(paused, PausedSession)
    assert (paused.id, paused.status) == (session_id, "paused")
    assert [s.name for s in paused.skipped] == ["sock"] and paused.skipped[0].reason
    listed = {s.id: s for s in ci.sessions.list()}
    assert listed[session_id].status == "paused"
    assert listed[session_id].paused_at is not None and listed[session_id].state_bytes
    again = ci.sessions.pause(session_id)  # pausing a paused session is no error
    assert (again.id, again.status) == (session_id, "paused")

    resumed = ci.sessions.resume(session_id)
    assert resumed == ResumedSession(id=session_id, status="running")
    assert ci.sessions.list()[0].status == "running"
    answer = ci.execute(code=CHECK, session_id=session_id)
    assert_ok(answer)
    assert answer.stdout == CHECKED and answer.session_id == session_id

    ci.sessions.pause(session_id)  # an execute on a paused id resumes it by itself
    answer = ci.execute(code="print(total())", session_id=session_id)
    assert answer.stdout == "6\n"
    assert {s.id: s.status for s in ci.sessions.list()} == {session_id: "running"}
    ci.sessions.delete(session_id)


def test_async_pause_and_resume(server, key):
    async def body(aclient):
        ci = aclient.code_interpreter
        session_id = (await ci.execute(code=STATE)).session_id
        paused = await ci.sessions.pause(session_id)
        assert (paused.id, paused.status, [s.name for s in paused.skipped]) == \
            (session_id, "paused", ["sock"])
        assert [s.status for s in await ci.sessions.list()] == ["paused"]
        resumed = await ci.sessions.resume(session_id)
        assert (resumed.id, resumed.status) == (session_id, "running")
        answer = await ci.execute(code=CHECK, session_id=session_id)
        assert answer.stdout == CHECKED, answer.errors
        await ci.sessions.pause(session_id)
        answer = await ci.execute(code="print(total())", session_id=session_id)
        assert answer.stdout == "6\n", answer.errors
        await ci.sessions.delete(session_id)

    run_async(server, key, body)


def test_sessions_from_a_snapshot_are_independent(client):
    ci = client.code_interpreter
    source = ci.execute(code="items = [1]\nopen('data.txt', 'w').write('prepared')").session_id
    snapshot = ci.sessions.snapshot(source)
    assert snapshot.id.startswith("snap_") and snapshot.skipped == []
    [info] = ci.snapshots.list()
    assert isinstance(info, SnapshotInfo)
    assert (info.id, info.session_id) == (snapshot.id, source) and info.size_bytes > 0

    ci.execute(code="items.append(1000)", session_id=source)  # the source runs on
    first = ci.execute(code="items.append(5)\nprint(items, open('data.txt').read())",
                       snapshot_id=snapshot.id)
    second = ci.execute(code="print(items)", snapshot_id=snapshot.id)
    assert first.stdout == "[1, 5] prepared\n", first.errors
    assert second.stdout == "[1]\n", second.errors
    assert len({source, first.session_id, second.session_id}) == 3
    assert ci.execute(code="print(items)", session_id=source).stdout == "[1, 1000]\n"

    with pytest.raises(BadRequestError, match="snapshot_id"):
        ci.execute(code="1", session_id=source, snapshot_id=snapshot.id)
    streamed = list(ci.execute(code="print(items)", snapshot_id=snapshot.id, stream=True))
    assert isinstance(streamed[-1], ResultEvent) and streamed[-1].result.stdout == "[1]\n"

    ci.snapshots.delete(snapshot.id)
    assert ci.snapshots.list() == []
    with pytest.raises(NotFoundError):
        ci.snapshots.delete(snapshot.id)
    with pytest.raises(NotFoundError):
        ci.execute(code="1", snapshot_id=snapshot.id)
    # Sessions started from it go on.
    assert ci.execute(code="print(items)", session_id=first.session_id).stdout == "[1, 5]\n"
    for session in ci.sessions.list():
        ci.sessions.delete(session.id)


def test_async_snapshots(server, key):
    async def body(aclient):
        ci = aclient.code_interpreter
        source = (await ci.execute(code="x = 41")).session_id
        snapshot = await ci.sessions.snapshot(source)
        assert [s.id for s in await ci.snapshots.list()] == [snapshot.id]
        started = await ci.execute(code="print(x + 1)", snapshot_id=snapshot.id)
        assert started.stdout == "42\n" and started.session_id != source, started.errors
        await ci.snapshots.delete(snapshot.id)
        assert await ci.snapshots.list() == []
        with pytest.raises(NotFoundError):
            await ci.execute(code="1", snapshot_id=snapshot.id)
        for session_id in (source, started.session_id):
            await ci.sessions.delete(session_id)

    run_async(server, key, body)


def test_unknown_or_another_keys_ids_are_not_found(server, client, key):
    ci = client.code_interpreter
    for call in (ci.sessions.pause, ci.sessions.resume, ci.sessions.snapshot):
        with pytest.raises(NotFoundError):
            call("sess_unknown")
    with pytest.raises(NotFoundError):
        ci.snapshots.delete("snap_unknown")
    session_id = ci.execute(code="x = 1").session_id
    snapshot_id = ci.sessions.snapshot(session_id).id
    ci.sessions.pause(session_id)
    with Client(base_url=server.base_url, api_key=server.new_key("sdk-pause-other")) as other:
        oci = other.code_interpreter
        for call in (oci.sessions.pause, oci.sessions.resume, oci.sessions.snapshot):
            with pytest.raises(NotFoundError):
                call(session_id)
        with pytest.raises(NotFoundError):
            oci.execute(code="1", snapshot_id=snapshot_id)
        assert oci.snapshots.list() == []
    ci.sessions.delete(session_id)
    ci.snapshots.delete(snapshot_id)


def test_pause_or_snapshot_while_a_call_runs_is_a_conflict(client):
    ci = client.code_interpreter
    session_id = ci.execute(code="x = 1").session_id
    # The call says it started by creating a file, then waits for the test's 'go' file.
    code = ("import os, time, pathlib\npathlib.Path('started').touch()\n"
            "_deadline = time.time() + 60\n"
            "while not os.path.exists('go') and time.time() < _deadline:\n"
            "    time.sleep(0.02)\n")
    done: list[ExecuteResult] = []
    call = threading.Thread(target=lambda: done.append(
        ci.execute(code=code, session_id=session_id)), daemon=True)
    call.start()
    wait_for(lambda: "started" in {f.path for f in ci.files.list(session_id)},
             "the call to start")
    with pytest.raises(ConflictError) as refused:
        ci.sessions.pause(session_id)
    assert refused.value.status_code == 409 and "running a call" in refused.value.message
    with pytest.raises(ConflictError):
        ci.sessions.snapshot(session_id)
    ci.files.write(session_id, "go", b"")
    call.join(120)
    assert done and not done[0].errors, done
    assert ci.sessions.pause(session_id).status == "paused"  # once the call is done
    ci.sessions.delete(session_id)


def test_resume_on_a_full_server_is_rate_limited_with_retry_after(server_factory):
    server = server_factory(max_sessions="1")
    with Client(base_url=server.base_url, api_key=server.key) as client:
        ci = client.code_interpreter
        first = ci.execute(code="x = 'first'").session_id
        ci.sessions.pause(first)
        second = ci.execute(code="y = 2").session_id  # the paused one left room
        with pytest.raises(RateLimitError) as refused:
            ci.sessions.resume(first)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        ci.sessions.delete(second)
        assert ci.sessions.resume(first).status == "running"
        assert ci.execute(code="print(x)", session_id=first).stdout == "first\n"
