"""Session lifecycle against a real server: expiry, per-call timeouts, worker death, one call
at a time per session (but sessions in parallel), restart after a crash, graceful stop,
per-session pip installs and the session limit. Host-side effects (processes, directories,
the store) are checked on the host, not taken on the server's word."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import Call, make_server, outputs_of, stdout_of, wait_for
from tests.host import all_pids, cmdline, in_session, pid_ns, session_processes


def workspace_of(session_id: str) -> Path:
    matches = glob.glob(f"/var/tmp/tci/*/{session_id}/vol/work")
    assert len(matches) == 1, matches
    return Path(matches[0])


def helper_netns(pid: int) -> str | None:
    """The network namespace a slirp4netns serves (the path it was given, as it sees it)."""
    path = cmdline(pid).split()[-2:-1]
    try:
        return os.readlink(path[0].replace("/proc/self/", f"/proc/{pid}/")) if path else None
    except OSError:
        return None


class Footprint:
    """What a session holds on the host: its uid, directory and processes. The processes are
    told apart from other sessions' (other servers reuse the same uids) by their pid namespace:
    those inside the sandbox, plus bubblewrap's outer process and the slirp4netns serving its
    network on the host side."""

    def __init__(self, session_id: str) -> None:
        workspace = workspace_of(session_id)
        self.uid = workspace.stat().st_uid
        self.directory = workspace.parent.parent  # <session>/vol/work -> <session>
        self.session_id = session_id
        self.outer, self.namespaces = session_processes(session_id)
        assert self.namespaces, f"no sandbox process found for {session_id}"
        # slirp4netns ... --netns-type=path /proc/self/fd/N tap0: its fd N is the sandbox's netns
        netns = {os.readlink(f"/proc/{pid}/ns/net") for pid in self.outer
                 or self.sandbox_processes()}
        self.helpers = {
            pid: cmdline(pid) for pid in all_pids()
            if "slirp4netns" in cmdline(pid) and helper_netns(pid) in netns
        }
        assert self.uid >= 200_000
        live = self.processes()
        # the sandbox's pid 1 and the worker (and, with bubblewrap, its outer process)
        assert len(live) >= 2
        assert all(uid_of(pid) == self.uid for pid in live if pid not in self.helpers), (
            "a session process has another uid")

    def sandbox_processes(self) -> list[int]:
        """The processes of the sandbox itself still running (bubblewrap, the worker...)."""
        return [
            pid for pid in all_pids()
            if pid_ns(pid) in self.namespaces
            or (pid in self.outer and in_session(pid, self.session_id))
        ]

    def helper_processes(self) -> list[int]:
        return [pid for pid, line in self.helpers.items() if cmdline(pid) == line]

    def processes(self) -> list[int]:
        """Everything the session runs on the host, slirp4netns included."""
        return self.sandbox_processes() + self.helper_processes()

    def kill_leftovers(self) -> None:
        """Don't leave a leaked helper running after a failed test."""
        for pid in self.helper_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def assert_gone(self) -> None:
        wait_for(lambda: not self.processes(), f"processes of uid {self.uid} to end")
        wait_for(lambda: not self.directory.exists(), f"{self.directory} to be removed")


def uid_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def session_ids(server) -> list[str]:
    with server.client() as client:
        response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["data"]["sessions"]]


def ended_message(server, session_id: str) -> str:
    response = server.execute("1", session_id)
    assert response.status_code == 410, response.text
    body = response.json()
    assert body["data"] is None
    assert len(body["errors"]) == 1
    return body["errors"][0]


def end_reason(server, session_id: str) -> str | None:
    with sqlite3.connect(server.data_dir / "tci.db") as db:
        row = db.execute("SELECT end_reason FROM sessions WHERE id = ?", (session_id,)).fetchone()
    assert row is not None, f"{session_id} not in the sessions table"
    return row[0]


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory):
    """Short per-call timeout and interrupt grace."""
    instance = make_server(
        tmp_path_factory.mktemp("tci-timeout"), execute_timeout=2, interrupt_grace_seconds=1
    )
    yield instance
    instance.stop()


# -- expiry --------------------------------------------------------------------------------


# Long enough for the creation, the listing and the host-side footprint to finish before the
# session expires on a loaded 2-core machine (3 s raced the reaper at load 4).
LIFETIME = 12


def test_expired_session_is_reaped(server_factory):
    server = server_factory(session_lifetime_seconds=LIFETIME, reap_interval_seconds=0.5)
    started = time.monotonic()
    session_id = server.run("x = 1")["session_id"]
    listed = session_ids(server)
    footprint = Footprint(session_id)
    took = time.monotonic() - started
    assert took < LIFETIME, f"the setup took {took:.1f} s, past the {LIFETIME} s lifetime"
    assert listed == [session_id]

    # The reaper ends it on its own, without any call: processes and directory go.
    wait_for(lambda: not footprint.processes(), "the reaper to end the session's processes",
             timeout=LIFETIME + 30)
    footprint.assert_gone()
    assert session_ids(server) == []
    message = ended_message(server, session_id)
    assert session_id in message
    assert "expired" in message


# -- per-call timeout ----------------------------------------------------------------------


def test_busy_loop_times_out_and_session_lives(timeout_server):
    first = timeout_server.run("x = 'set before'")
    session_id = first["session_id"]
    data = timeout_server.run(
        "y = 'set in the cell'\nprint('before', flush=True)\nwhile True: pass", session_id
    )
    assert stdout_of(data) == "before\n"
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert errors[0].startswith("TimeoutError: execution timed out"), errors

    after = timeout_server.run("print(x, '/', y)", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "set before / set in the cell\n"}]


def test_sleep_times_out_and_session_lives(timeout_server):
    session_id = timeout_server.run("x = 7")["session_id"]
    data = timeout_server.run("import time\nprint('sleeping', flush=True)\ntime.sleep(100)",
                              session_id)
    assert stdout_of(data) == "sleeping\n"
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert errors[0].startswith("TimeoutError: execution timed out"), errors

    after = timeout_server.run("x * 6", session_id)
    assert after["outputs"] == [{"type": "execute_result", "data": {"text/plain": "42"}}]


def test_code_ignoring_interrupt_is_killed(timeout_server):
    session_id = timeout_server.run("x = 1")["session_id"]
    footprint = Footprint(session_id)
    data = timeout_server.run(
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\n"
        "time.sleep(100)",
        session_id,
    )
    assert stdout_of(data) == "ignoring\n"
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert errors[0].startswith("TimeoutError: execution timed out"), errors
    assert "killed" in errors[0]

    message = ended_message(timeout_server, session_id)
    assert "timed out" in message
    assert "killed" in message
    footprint.assert_gone()
    assert session_id not in session_ids(timeout_server)


# -- worker death --------------------------------------------------------------------------


def test_segfault_ends_session(server):
    session_id = server.run("x = 1")["session_id"]
    footprint = Footprint(session_id)
    data = server.run("import ctypes\nctypes.string_at(0)", session_id)
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert errors[0].startswith("WorkerDied: "), errors
    assert "SIGSEGV" in errors[0]

    assert "SIGSEGV" in ended_message(server, session_id)
    footprint.assert_gone()


def test_exit_ends_session(server):
    session_id = server.run("x = 1")["session_id"]
    data = server.run("import os\nprint('bye', flush=True)\nos._exit(3)", session_id)
    assert stdout_of(data) == "bye\n"
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert errors[0].startswith("WorkerDied: "), errors
    assert "exited with code 3" in errors[0]

    assert "exited with code 3" in ended_message(server, session_id)


# -- concurrency ---------------------------------------------------------------------------


def test_calls_to_one_session_run_one_at_a_time(server):
    session_id = server.run("import os, time\norder = []")["session_id"]
    workspace = workspace_of(session_id)
    # The first call holds the session until the test releases it; the second is sent while
    # it runs. Run together, the second would see no `value` and its output would mix in.
    first = Call(server, (
        "order.append('first')\n"
        "open('first-started', 'w').close()\n"
        "while not os.path.exists('release'):\n"
        "    time.sleep(0.01)\n"
        "value = 'from first'\n"
        "print('first done')"
    ), session_id)
    wait_for((workspace / "first-started").exists, "the first call to start")
    second = Call(server, "order.append('second')\nprint(value, order)", session_id)
    assert second.sent.wait(30), "the second request was not sent"
    (workspace / "release").touch()

    assert first.result()["outputs"] == [{"type": "stdout", "data": "first done\n"}]
    assert second.result()["outputs"] == [
        {"type": "stdout", "data": "from first ['first', 'second']\n"}
    ]


def test_sessions_run_in_parallel(server):
    blocked_id = server.run("import os, time")["session_id"]
    other_id = server.run("x = 2")["session_id"]
    blocked_workspace = workspace_of(blocked_id)
    blocked = Call(server, (
        "open('waiting', 'w').close()\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.01)\n"
        "print('released')"
    ), blocked_id)
    wait_for((blocked_workspace / "waiting").exists, "the blocked call to start")

    # Session A only finishes once this call has returned.
    with server.client(timeout=60) as client:
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": "x * 21", "session_id": other_id,
        })
    (blocked_workspace / "go").touch()
    assert response.status_code == 200, response.text
    assert response.json()["data"]["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "42"}}
    ]
    assert blocked.result()["outputs"] == [{"type": "stdout", "data": "released\n"}]


# -- restart and stop ----------------------------------------------------------------------


def test_crash_and_restart_ends_old_sessions(server_factory):
    server = server_factory()
    session_id = server.run("x = 1")["session_id"]
    footprint = Footprint(session_id)
    assert footprint.helpers, "no slirp4netns found for the session (default network: egress)"

    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    try:
        # bwrap --die-with-parent: the sandbox does not outlive the server.
        wait_for(lambda: not footprint.sandbox_processes(), "the sandbox's processes to end")

        server.start()  # same data dir and port
        message = ended_message(server, session_id)
        assert "server restarted" in message
        assert end_reason(server, session_id) == "server restarted"
        assert session_ids(server) == []
        wait_for(lambda: not footprint.directory.exists(), "the stale directory to be removed")
        assert stdout_of(server.run("print('again')")) == "again\n"

        # Nor does its network helper (a root process) outlive the crash. (Only the helper:
        # the old pid namespace inode may already be reused by the new session.)
        wait_for(lambda: not footprint.helper_processes(), "the sandbox slirp4netns to end")
    finally:
        footprint.kill_leftovers()


def test_graceful_stop_pauses_sessions(server_factory):
    """A graceful stop leaves no process or directory of a session behind, and pauses it
    (sessions/pause.py): after a restart on the same data dir it is listed as paused, and a
    call on it resumes it with its state."""
    server = server_factory()
    footprints = {}
    for value in range(2):
        session_id = server.run(f"x = {value}")["session_id"]
        footprints[session_id] = Footprint(session_id)

    server.stop(signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
    for session_id, footprint in footprints.items():
        assert not footprint.directory.exists()
        # The sandbox's pid 1 may linger a moment as a zombie until init reaps it.
        wait_for(lambda fp=footprint: not fp.processes(), f"processes of {session_id} to end")
        assert end_reason(server, session_id) is None  # paused, not ended

    server.start()
    with server.client() as client:
        listed = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert {s["id"]: s["status"] for s in listed} == dict.fromkeys(footprints, "paused")
    for value, session_id in enumerate(footprints):
        assert stdout_of(server.run("print(x)", session_id)) == f"{value}\n"


def test_stop_lets_a_call_finish_within_the_shutdown_grace(server_factory):
    """TCI_SHUTDOWN_GRACE_SECONDS: a call running when the server is told to stop is still
    answered if it ends within the grace. The cell runs 12 s past the SIGTERM, beyond the
    default grace of 10 s, so the test fails if the setting is not applied."""
    server = server_factory(shutdown_grace_seconds="60")
    session_id = server.run("import os, time")["session_id"]
    workspace = workspace_of(session_id)
    call = Call(server, (
        "open('started', 'w').close()\n"
        "while not os.path.exists('stop-sent'):\n"
        "    time.sleep(0.01)\n"
        "time.sleep(12)\n"
        "print('finished')"
    ), session_id)
    wait_for((workspace / "started").exists, "the call to start")
    server.process.send_signal(signal.SIGTERM)
    (workspace / "stop-sent").touch()

    assert call.result()["outputs"] == [{"type": "stdout", "data": "finished\n"}]
    server.stop()
    assert "timeout graceful shutdown exceeded" not in server.log()
    assert "Application shutdown complete" in server.log()


# -- per-session packages ------------------------------------------------------------------


def test_pip_install_stays_in_its_session(server):
    lock = (Path(__file__).resolve().parents[2] / "runtime" / "requirements.lock").read_text()
    assert "tabulate" not in lock.lower()  # else the test proves nothing

    installed = server.run("!pip install tabulate")
    session_id = installed["session_id"]
    assert "Successfully installed tabulate" in stdout_of(installed), installed
    used = server.run(
        "import tabulate\nprint(tabulate.__file__.startswith('/home/user/.local/'))", session_id
    )
    assert used["outputs"] == [{"type": "stdout", "data": "True\n"}]

    other = server.run("import tabulate")
    errors = outputs_of(other, "error")
    assert len(errors) == 1
    assert "ModuleNotFoundError: No module named 'tabulate'" in errors[0]


# -- session limit -------------------------------------------------------------------------


def test_session_limit_gives_429(server_factory):
    server = server_factory(max_sessions=2)
    first = server.run("x = 1")["session_id"]
    server.run("x = 2")

    response = server.execute("x = 3")
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["data"] is None
    assert len(body["errors"]) == 1
    # Existing sessions are unaffected.
    assert server.run("x", first)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "1"}}
    ]
