"""Sessions beyond execute, against a real server: `POST .../sessions/{id}/interrupt` stops the
running cell like Ctrl-C in Jupyter (the call answers with its KeyboardInterrupt, the session
and its state live on) without waiting for the call, and does nothing on an idle session;
`POST .../sessions` makes a session before any code runs, listed like any other and limited
by TCI_MAX_SESSIONS like execute."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import outputs_of, wait_for

DEADLINE = 30.0  # far below the cells' 60 s sleep: an answer within it was interrupted
SLEEPER = "import time\nx = 1\n{signal}\ntime.sleep(60)\nx = 2"


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread; its return value (or exception) lands in the dict."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict[str, Any]) -> Any:
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the interrupted call is still running"
    if "error" in box:
        raise box["error"]
    return box["result"]


def interrupt(server, session_id: str, key: str | None = None,
              prefix: str = "/v1/tci") -> httpx.Response:
    with server.client(key, timeout=DEADLINE) as client:
        return client.post(f"{prefix}/sessions/{session_id}/interrupt")


def new_session(server, prefix: str = "/v1/tci", key: str | None = None, **kwargs) -> dict:
    with server.client(key) as client:
        response = client.post(f"{prefix}/sessions", **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is None
    return body["data"]


def listed(server, key: str | None = None) -> dict[str, dict]:
    with server.client(key) as client:
        response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["data"]["sessions"]}


def file_exists(server, session_id: str, path: str) -> bool:
    with server.client() as client:
        return client.get(f"/v1/tci/sessions/{session_id}/files/{path}").status_code == 200


# -- interrupt ---------------------------------------------------------------------------------


def test_interrupt_stops_a_plain_execute_and_keeps_the_session(server):
    session = server.run("y = 'kept'")["session_id"]
    code = SLEEPER.format(signal="open('started', 'w').close()")
    thread, box = in_thread(lambda: server.execute(code, session))
    # The cell is running once its marker file exists (read through the API, lock-free).
    wait_for(lambda: file_exists(server, session, "started"), "the cell to start")

    response = interrupt(server, session)
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"id": session, "interrupted": True}, "errors": None}

    executed = joined(thread, box)
    assert executed.status_code == 200, executed.text
    errors = outputs_of(executed.json()["data"], "error")
    assert len(errors) == 1 and "KeyboardInterrupt" in errors[0], errors
    assert "TimeoutError" not in errors[0]  # a client's interrupt, not the timeout's

    # Same session, same worker: the state from before and from the cell's first lines.
    after = server.run("x, y", session)
    assert after["outputs"] == [{"type": "execute_result", "data": {"text/plain": "(1, 'kept')"}}]
    assert listed(server)[session]["execute_count"] == 3


def test_interrupt_stops_a_streaming_execute(server):
    session = server.run("pass")["session_id"]
    code = SLEEPER.format(signal="print('started', flush=True)")
    started = threading.Event()

    def stream() -> list[tuple[str, dict]]:
        events = []
        body = {"language": "python", "code": code, "session_id": session, "stream": True}
        with server.client(timeout=DEADLINE) as client, client.stream(
            "POST", "/tci/execute", json=body
        ) as response:
            assert response.status_code == 200
            name = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
                    started.set()
        return events

    thread, box = in_thread(stream)
    assert started.wait(DEADLINE), "no output from the cell"
    response = interrupt(server, session, prefix="/tci")  # both prefixes serve it
    assert response.status_code == 200, response.text
    assert response.json()["data"]["interrupted"] is True

    events = joined(thread, box)
    assert events[0][0] == "output" and events[0][1]["data"].startswith("started")
    name, result = events[-1]
    assert name == "result" and result["errors"] is None
    errors = outputs_of(result["data"], "error")
    assert len(errors) == 1 and "KeyboardInterrupt" in errors[0], errors
    assert server.run("x", session)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "1"}}]


def test_interrupt_when_idle_does_nothing(server):
    session = server.run("z = 3")["session_id"]
    for prefix in ("/v1/tci", "/tci"):
        response = interrupt(server, session, prefix=prefix)
        assert response.status_code == 200, response.text
        assert response.json() == {"data": {"id": session, "interrupted": False}, "errors": None}
    # No SIGINT is pending or delivered later: the next cell runs to its end.
    data = server.run("import time; time.sleep(0.5); z + 1", session)
    assert data["outputs"] == [{"type": "execute_result", "data": {"text/plain": "4"}}]


def test_interrupt_refuses_other_keys_unknown_and_ended_sessions(server):
    session = server.run("1")["session_id"]
    other = server.new_key(f"interrupt-other-{datetime.now():%H%M%S%f}")
    for target, key in ((session, other), ("ses_doesnotexist", None)):
        response = interrupt(server, target, key=key)
        assert response.status_code == 404, response.text
        assert response.json()["data"] is None and response.json()["errors"]
    assert httpx.post(f"{server.url}/v1/tci/sessions/{session}/interrupt",
                      timeout=DEADLINE).status_code == 401

    with server.client() as client:
        assert client.delete(f"/v1/tci/sessions/{session}").status_code == 200
    response = interrupt(server, session)
    assert response.status_code == 410, response.text
    assert "ended by the client" in response.json()["errors"][0]


# -- create ------------------------------------------------------------------------------------


def test_create_session_without_code(server):
    created = new_session(server)
    assert created.keys() == {"id", "execute_count", "started_at", "last_execute_at",
                              "expires_at", "status"}
    assert created["status"] == "running"
    assert created["id"].startswith("ses_") and created["execute_count"] == 0
    assert datetime.fromisoformat(created["expires_at"]) > datetime.fromisoformat(
        created["started_at"])
    assert listed(server)[created["id"]] == created  # the same object as the list's item

    data = server.run("import os; os.getcwd()", created["id"])
    assert data["session_id"] == created["id"]
    assert data["outputs"] == [{"type": "execute_result", "data": {"text/plain": "'/workspace'"}}]
    assert listed(server)[created["id"]]["execute_count"] == 1

    # An empty JSON object is the same request; under /tci too.
    second = new_session(server, prefix="/tci", json={})
    assert second["id"] != created["id"]
    assert {created["id"], second["id"]} <= listed(server).keys()


@pytest.mark.parametrize("kwargs", [
    {"json": {"language": "python"}},  # no options are accepted yet
    {"json": []},
    {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
])
def test_create_session_refuses_a_body_with_content(server, kwargs):
    with server.client() as client:
        response = client.post("/v1/tci/sessions", **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["data"] is None and response.json()["errors"]


def test_created_session_belongs_to_its_key(server):
    created = new_session(server)
    other = server.new_key(f"create-other-{datetime.now():%H%M%S%f}")
    assert created["id"] not in listed(server, other)
    assert server.execute("1", created["id"], key=other).status_code == 404


def test_create_session_respects_the_session_limit(server_factory):
    limited = server_factory(max_sessions="1")
    assert limited.execute("1").status_code == 200  # the one session allowed
    with limited.client() as client:
        refused = client.post("/v1/tci/sessions")
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["errors"] == limited.execute("2").json()["errors"]  # same as execute
