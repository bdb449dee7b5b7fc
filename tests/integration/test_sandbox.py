"""Basic isolation of a session's sandbox, seen from inside (the code a user runs) and from the
host: unprivileged identity, no capabilities, a clean environment, no view of the host's or
other sessions' files and processes, a read-only system, and no route to host services."""

from __future__ import annotations

import glob
import os
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import (
    LIST_PROC,
    SANDBOX_PROCESSES,
    make_server,
    run_json,
    stdout_of,
)
from tests.host import sandbox_worker

# What the sandbox sets itself; anything else would have leaked in from the server.
SANDBOX_ENV = {
    "HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "LC_ALL", "TERM", "PWD", "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "MPLCONFIGDIR", "PLOTLY_RENDERER",
    "PIP_BREAK_SYSTEM_PACKAGES",
    "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_WARN_SCRIPT_LOCATION", "PIP_ROOT_USER_ACTION",
}


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """network=none, and a marker in the server's environment that must not leak."""
    instance = make_server(
        tmp_path_factory.mktemp("tci-offline"), network="none", test_marker="secret123"
    )
    yield instance
    instance.stop()


def workspace_of(session_id: str) -> Path:
    matches = glob.glob(f"/var/tmp/tci/*/{session_id}/vol/work")
    assert len(matches) == 1, matches
    return Path(matches[0])


def worker_host_pid(session_id: str) -> int:
    """The worker seen from the host: the child of the sandbox's pid 1."""
    return sandbox_worker(session_id)


@contextmanager
def host_listener() -> Iterator[socket.socket]:
    """A TCP server on the host's loopback that the sandbox must not reach."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


def received_connection(listener: socket.socket) -> bool:
    # The sandbox's connect() has returned by the time its call has: a connection that got
    # through would already wait in the accept queue.
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


CONNECT = """
import errno, json, socket
results = {{}}
for host in {hosts!r}:
    try:
        socket.create_connection((host, {port}), timeout=5).close()
        results[host] = "connected"
    except OSError as exc:
        results[host] = errno.errorcode.get(exc.errno, type(exc).__name__)
print(json.dumps(results))
"""


# -- identity ------------------------------------------------------------------------------


def test_runs_as_uid_1000_not_root(server):
    _, ids = run_json(
        server, "import os, json\nprint(json.dumps([os.getuid(), os.geteuid(), os.getgid(), "
        "os.getegid(), os.getgroups()]))"
    )
    assert ids == [1000, 1000, 1000, 1000, []]


def test_no_capabilities_and_no_new_privs(server):
    _, status = run_json(server, (
        "import json\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "print(json.dumps(dict(line.split(':\\t', 1) for line in lines if ':\\t' in line)))"
    ))
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    if "NoNewPrivs" in status:
        assert status["NoNewPrivs"].strip() == "1"


def test_host_uid_is_unprivileged_and_per_session(server):
    first = server.run("x = 1")["session_id"]
    second = server.run("x = 2")["session_id"]
    host_uids = []
    for session_id in (first, second):
        status = Path(f"/proc/{worker_host_pid(session_id)}/status").read_text().splitlines()
        uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status if line.startswith("Gid:")).split()[1:]
        assert len(set(uids)) == 1, uids  # real, effective, saved, fs all the same
        assert int(uids[0]) >= 200_000
        assert len(set(gids)) == 1 and int(gids[0]) >= 200_000, gids
        assert workspace_of(session_id).stat().st_uid == int(uids[0])
        host_uids.append(int(uids[0]))
    assert host_uids[0] != host_uids[1]


def test_environment_has_nothing_of_the_server(offline_server):
    server_env = Path(f"/proc/{offline_server.process.pid}/environ").read_bytes().split(b"\0")
    assert b"TCI_TEST_MARKER=secret123" in server_env  # else the test proves nothing

    _, env = run_json(offline_server, "import os, json\nprint(json.dumps(dict(os.environ)))")
    assert "TCI_TEST_MARKER" not in env
    assert not [name for name, value in env.items() if "secret123" in value]
    assert not [name for name in env if name.startswith("TCI_")]
    assert set(env) <= SANDBOX_ENV, set(env) - SANDBOX_ENV
    assert env["HOME"] == "/home/user"


# -- files ---------------------------------------------------------------------------------


def test_host_paths_are_not_visible(server):
    sandbox_root = workspace_of(server.run("x = 1")["session_id"]).parents[1]
    hidden = [str(server.data_dir), str(server.data_dir / "tci.db"), "/root", "/var/tmp/tci",
              str(sandbox_root), str(Path(__file__).resolve())]
    for path in hidden:
        assert os.path.exists(path), path  # they exist on the host
    _, seen = run_json(server, (
        "import os, json\n"
        f"paths = {hidden!r}\n"
        "print(json.dumps({'exists': [p for p in paths if os.path.exists(p)],"
        " 'home': os.listdir('/home')}))"
    ))
    assert seen == {"exists": [], "home": ["user"]}


def test_other_sessions_files_are_not_visible(server):
    writer = server.run(
        "for path in ('/workspace/mine.txt', '/tmp/mine.txt'):\n"
        "    open(path, 'w').write('private')\n"
        "print('written')"
    )
    assert stdout_of(writer) == "written\n"
    other_workspace = str(workspace_of(writer["session_id"]))

    _, seen = run_json(server, (
        "import os, json\n"
        "print(json.dumps({\n"
        "    'workspace': 'mine.txt' in os.listdir('/workspace'),\n"
        "    'tmp': 'mine.txt' in os.listdir('/tmp'),\n"
        f"    'host path': os.path.exists({other_workspace!r}),\n"
        "}))"
    ))
    assert seen == {"workspace": False, "tmp": False, "host path": False}
    # The writer still has both.
    again = server.run("print(open('/workspace/mine.txt').read(), open('/tmp/mine.txt').read())",
                       writer["session_id"])
    assert stdout_of(again) == "private private\n"


def test_system_is_read_only(server):
    _, errors = run_json(server, (
        "import errno, json\n"
        "results = {}\n"
        "for path in ('/usr/tci-probe', '/usr/local/lib/python3.11/dist-packages/tci-probe',\n"
        "             '/etc/passwd'):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        results[path] = 'written'\n"
        "    except OSError as exc:\n"
        "        results[path] = errno.errorcode[exc.errno]\n"
        "print(json.dumps(results))"
    ))
    assert errors == {
        "/usr/tci-probe": "EROFS",
        "/usr/local/lib/python3.11/dist-packages/tci-probe": "EROFS",
        "/etc/passwd": "EROFS",
    }
    assert not Path("/usr/tci-probe").exists()


def test_workspace_is_cwd_and_writable(server):
    data = server.run(
        "import os\n"
        "print(os.getcwd())\n"
        "open('note.txt', 'w').write('kept')\n"
        "print(open('/workspace/note.txt').read())"
    )
    assert data["outputs"] == [{"type": "stdout", "data": "/workspace\nkept\n"}]
    assert (workspace_of(data["session_id"]) / "note.txt").read_text() == "kept"


# -- processes and host name ---------------------------------------------------------------


def test_hostname_is_sandbox(server):
    data = server.run("import socket\nprint(socket.gethostname())")
    assert stdout_of(data) == "sandbox\n"


def test_only_the_sandbox_processes_are_visible(server):
    _, processes = run_json(server, LIST_PROC)
    assert processes in SANDBOX_PROCESSES


# -- network -------------------------------------------------------------------------------


def test_no_network_has_only_loopback(offline_server):
    with host_listener() as listener:
        port = listener.getsockname()[1]
        _, seen = run_json(offline_server, (
            "import json\n"
            "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
            "print(json.dumps([line.split(':')[0].strip() for line in lines]))"
        ))
        assert seen == ["lo"]
        _, results = run_json(offline_server, CONNECT.format(hosts=("127.0.0.1",), port=port))
        assert results == {"127.0.0.1": "ECONNREFUSED"}
        assert not received_connection(listener)


def test_egress_cannot_reach_host_loopback(server):
    with host_listener() as listener:
        port = listener.getsockname()[1]
        _, results = run_json(server, CONNECT.format(hosts=("127.0.0.1", "10.0.2.2"), port=port))
        assert set(results) == {"127.0.0.1", "10.0.2.2"}
        assert "connected" not in results.values(), results
        assert not received_connection(listener)
