"""The shortest path a new user takes: one call, state kept, listed."""

from tests.conftest import stdout_of


def test_hello_and_state(server):
    first = server.run('print("Hello!")\nx = 41')
    assert first["status"] == "completed"
    assert first["session_id"].startswith("ses_")
    assert stdout_of(first) == "Hello!\n"
    second = server.run("x + 1", first["session_id"])
    assert second["outputs"] == [{"type": "execute_result", "data": {"text/plain": "42"}}]


def test_worker_is_single_threaded(server):
    """DESIGN.md: the worker stays single-threaded so sessions can later be forked safely."""
    data = server.run("import threading; print([t.name for t in threading.enumerate()])")
    assert stdout_of(data) == "['MainThread']\n"
