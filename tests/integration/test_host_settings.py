"""Settings that were constants until the session-host seam: the streamed call's keep-alive
(TCI_STREAM_KEEPALIVE_SECONDS) and how many ended sessions are answered from memory
(TCI_REMEMBER_ENDED_SESSIONS), each crossed on a real server."""

import json

from tests.conftest import stdout_of


def test_a_quiet_streamed_call_sends_keep_alives_at_the_set_interval(server_factory):
    server = server_factory(stream_keepalive_seconds="0.2")
    body = {"language": "python", "stream": True,
            "code": "import time\ntime.sleep(1.5)\nprint('done')"}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    quiet = lines[:lines.index("event: output")]
    # 1.5 s of silence at 0.2 s: several comment lines (the default, 15 s, sends none).
    assert len(quiet) >= 3 and set(quiet) == {": keep-alive"}, lines
    assert lines[-2] == "event: result"
    assert stdout_of(json.loads(lines[-1].removeprefix("data: "))["data"]) == "done\n"


def test_ended_sessions_past_the_memory_are_answered_from_the_store(server_factory):
    server = server_factory(remember_ended_sessions="0")
    session_id = server.run("x = 1")["session_id"]
    with server.client() as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200
    response = server.execute("x", session_id)
    assert response.status_code == 410
    assert response.json()["errors"] == [
        f"session {session_id} has ended: ended by the client"]
    # Another key still cannot tell that the session ever existed.
    other = server.new_key("other")
    assert server.execute("x", session_id, key=other).status_code == 404
