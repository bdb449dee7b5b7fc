"""Settings that were constants until the session-host seam: the streamed call's keep-alive
(TCI_STREAM_KEEPALIVE_SECONDS) and how many ended sessions are answered from memory
(TCI_REMEMBER_ENDED_SESSIONS), each crossed on a real server."""

import json

import pytest

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


def test_unset_max_sessions_is_what_the_machine_holds_here_its_uids(server_factory):
    """TCI_MAX_SESSIONS unset: the host's own bound, here its 3 uids (no warm pool)."""
    server = server_factory(max_sessions="", sandbox_uid_count="3")
    held = [server.run("x = 1")["session_id"] for _ in range(3)]
    assert len(set(held)) == 3
    refused = server.execute("1")
    assert refused.status_code == 429, refused.text
    assert "maximum of 3 sessions" in refused.json()["errors"][0]


def test_a_max_sessions_the_machine_cannot_honour_stops_the_server(tmp_path):
    from tests.conftest import make_server

    with pytest.raises(RuntimeError, match="TCI_MAX_SESSIONS=50 cannot be honoured"):
        make_server(tmp_path, max_sessions="50", sandbox_uid_count="10")
