"""Sessions keep a notebook's semantics over /v1/tci/execute: `sys.exit(0)` is no error and
`sys.exit(1)` is IPython's SystemExit error, state kept either way; `exit()`/`quit()` answer
with the cell's outputs and then end the session (as an ipykernel exits after its reply);
a per-call `timeout` up to the server's maximum; and a session created by a call whose client
left before it learned the id is ended, processes and all."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time

import httpx
import pytest
from together import Together

from tests.conftest import outputs_of, stdout_of, wait_for
from tests.integration.test_lifecycle import Footprint

KEY_NUMBERS = itertools.count()
EXIT_HINT = "An exception has occurred, use %tb to see the full traceback."


@pytest.fixture(scope="module")
def short_server(tmp_path_factory):
    """The server's maximum call time is 20 s, so a per-call timeout can be shown both below
    it and refused above it."""
    from tests.conftest import make_server

    instance = make_server(tmp_path_factory.mktemp("semantics"), execute_timeout="20",
                           interrupt_grace_seconds="2")
    yield instance
    instance.stop()


def live_ids(server, key: str | None = None) -> list[str]:
    with server.client(key) as client:
        response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["data"]["sessions"]]


# -- SystemExit ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["sys.exit(0)", "sys.exit()", "raise SystemExit",
                                  "raise SystemExit(None)", "raise SystemExit(0)"])
def test_a_clean_system_exit_is_no_error_and_keeps_the_state(short_server, code):
    session = short_server.run("import sys\nx = 41")["session_id"]
    data = short_server.run(f"print('before')\n{code}\nprint('never')", session)
    assert data["outputs"] == [{"type": "stdout", "data": "before\n"}]
    assert short_server.run("x + 1", session)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "42"}}]


@pytest.mark.parametrize(("code", "shown"), [("sys.exit(1)", "SystemExit: 1"),
                                             ("sys.exit('bad input')", "SystemExit: bad input"),
                                             ("raise SystemExit(3)", "SystemExit: 3")])
def test_a_failing_system_exit_is_ipythons_error_and_keeps_the_state(short_server, code, shown):
    session = short_server.run("import sys\nx = 41")["session_id"]
    data = short_server.run(f"print('before')\n{code}", session)
    # IPython's run_cell shows exactly this, without its "To exit: use 'exit'" warning noise.
    assert data["outputs"] == [{"type": "stdout", "data": "before\n"},
                               {"type": "error", "data": f"{EXIT_HINT}\n{shown}"}]
    assert short_server.run("x + 1", session)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "42"}}]


# -- exit() and quit() -------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "printed"), [
    ("print('a')\nexit()\nprint('b')", "a\nb\n"),
    ("print('a')\nquit()\nprint('b')", "a\nb\n"),
    ("exit", None),  # alone in its cell, IPython calls it for you
    ("quit", None),
])
def test_exit_answers_the_call_then_ends_the_session(short_server, code, printed):
    key = short_server.new_key(f"exit-{next(KEY_NUMBERS)}")
    with short_server.client(key) as client:
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": "print('hello')"})
        session = response.json()["data"]["session_id"]
        footprint = Footprint(session)
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": code, "session_id": session})
        # As in ipykernel: exit() only asks; the rest of the cell runs and is answered.
        assert response.status_code == 200, response.text
        assert response.json()["data"]["outputs"] == (
            [{"type": "stdout", "data": printed}] if printed else [])
        assert live_ids(short_server, key) == []
        later = client.post("/v1/tci/execute", json={
            "language": "python", "code": "1", "session_id": session})
    assert later.status_code == 410, later.text
    assert later.json()["errors"] == [
        f"session {session} has ended: the session exited (its code called exit() or quit())"]
    footprint.assert_gone()


def test_exit_keep_kernel_or_a_bare_exit_among_other_lines_keeps_the_session(short_server):
    session = short_server.run("x = 41")["session_id"]
    assert short_server.run("exit(keep_kernel=True)", session)["outputs"] == []
    # Not alone in its cell, `exit` is a plain expression, in IPython too: its value is shown.
    assert short_server.run("x\nexit", session)["outputs"] == [{
        "type": "execute_result",
        "data": {"text/plain": "Use exit() or quit() to end the session"}}]
    assert short_server.run("x + 1", session)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "42"}}]


def test_exit_in_a_streamed_call_ends_the_session_after_the_result(short_server):
    key = short_server.new_key("exit-stream")
    body = {"language": "python", "code": "print('streamed')\nexit()", "stream": True}
    events = []
    with short_server.client(key) as client, client.stream(
            "POST", "/v1/tci/execute", json=body) as response:
        assert response.status_code == 200
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    result = events[-1]
    assert result[0] == "result"
    assert result[1]["data"]["outputs"] == [{"type": "stdout", "data": "streamed\n"}]
    assert live_ids(short_server, key) == []


# -- per-call timeout --------------------------------------------------------------------------


def test_a_per_call_timeout_interrupts_that_call_only(short_server):
    session = short_server.run("x = 41")["session_id"]
    started = time.monotonic()
    data = short_server.run("import time\nprint('start', flush=True)\ntime.sleep(60)", session,
                            timeout=1.5)
    took = time.monotonic() - started
    assert took < 15, took  # the server's own maximum is 20 s
    assert stdout_of(data) == "start\n"
    [error] = outputs_of(data, "error")  # then the interrupted cell's traceback
    assert error.startswith(
        "TimeoutError: execution timed out after 1.5 s (the call's timeout) and was "
        "interrupted; the session is still alive.\nTraceback")
    # Later calls have the server's maximum again, and the state is intact.
    data = short_server.run("time.sleep(3)\nx + 1", session)
    assert data["outputs"] == [{"type": "execute_result", "data": {"text/plain": "42"}}]


def test_a_per_call_timeout_on_a_streamed_call(short_server):
    body = {"language": "python", "code": "import time\ntime.sleep(60)", "stream": True,
            "timeout": 1}
    with short_server.client() as client, client.stream(
            "POST", "/v1/tci/execute", json=body) as response:
        text = "".join(response.iter_text())
    assert "execution timed out after 1 s (the call's timeout)" in text


@pytest.mark.parametrize("timeout", [20.5, 3600])
def test_a_timeout_above_the_servers_maximum_is_refused_naming_it(short_server, timeout):
    key = short_server.new_key(f"too-long-{int(timeout)}")
    response = short_server.execute("print(1)", key=key, timeout=timeout)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        f"timeout: {timeout:g} s is more than this server's maximum of 20 s "
        "(TCI_EXECUTE_TIMEOUT)"]
    assert live_ids(short_server, key) == []  # refused before any session was made


@pytest.mark.parametrize("timeout", [0, -1, "soon", True, None])
def test_a_timeout_that_is_not_a_positive_number_is_refused(short_server, timeout):
    response = short_server.execute("print(1)", timeout=timeout)
    if timeout is None:  # the same as leaving it out
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 422, response.text
    assert "timeout" in json.dumps(response.json()["errors"])


def test_the_together_sdk_sends_a_timeout_through_extra_body(short_server):
    client = Together(base_url=short_server.base_url, api_key=short_server.key)
    result = client.code_interpreter.execute(
        code="import time\ntime.sleep(60)", language="python", extra_body={"timeout": 1})
    errors = [o.data for o in result.data.outputs if o.type == "error"]
    assert errors and "timed out after 1 s (the call's timeout)" in errors[0]


# -- a session nobody learned the id of ---------------------------------------------------------


def raw_request(server, key: str, body: dict) -> socket.socket:
    """POST /v1/tci/execute on a bare socket, so the test decides when the client leaves."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /v1/tci/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_created_session_whose_client_left_before_the_answer_is_ended(server, stream):
    key = server.new_key(f"left-{stream}")
    sock = raw_request(server, key, {"language": "python", "stream": stream,
                                     "code": "import time\ntime.sleep(30)"})
    try:
        wait_for(lambda: live_ids(server, key), "the call's new session to be listed")
        [session] = live_ids(server, key)
        footprint = Footprint(session)
    finally:
        sock.close()  # before any answer: the client can never learn the session's id
    wait_for(lambda: live_ids(server, key) == [], "the abandoned session to be ended")
    footprint.assert_gone()
    with server.client(key) as client:
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": "1", "session_id": session})
    assert response.status_code == 410
    assert "went away" in response.json()["errors"][0]


def test_a_first_call_whose_client_times_out_leaves_no_session(server):
    key = server.new_key("left-timeout")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # learns the id the client itself will never get
        while not stop.is_set() and not seen:
            seen.extend(live_ids(server, key))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with server.client(key, timeout=4) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/tci/execute",
                    json={"language": "python", "code": "import time\ntime.sleep(30)"})
    stop.set()
    watcher.join(timeout=30)
    wait_for(lambda: live_ids(server, key) == [], "the session to be ended", timeout=20)
    assert len(seen) == 1  # it did exist while the call ran
    with server.client(key) as client:
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": "1", "session_id": seen[0]})
    assert response.status_code == 410


def test_a_given_session_whose_client_left_is_kept(server):
    key = server.new_key("left-given")
    session = server.run("x = 41", key=key)["session_id"]
    sock = raw_request(server, key, {"language": "python", "session_id": session,
                                     "code": "import time\ntime.sleep(30)"})
    sock.close()
    # The client knows this id: the call is interrupted, the session and its state stay.
    wait_for(lambda: server.execute("x + 1", session, key=key).status_code == 200,
             "the session to answer again")
    assert live_ids(server, key) == [session]
