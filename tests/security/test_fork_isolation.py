"""Sessions forked from one template share nothing they should not (TCI_SANDBOX_START=fork):
not their random streams, not their memory, files or IPC, not a view of the template, not a
uid. And the template's own life: no secret in it, restarted when it dies (its sessions ending
with it), sessions ending with the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server, stdout_of, wait_for
from tests.host import all_pids, cmdline, in_session, session_processes
from tests.security.conftest import HostView, new_session, run_json
from tests.security.egress import REFUSED

SERVER_ONLY_VARIABLE = "TCI_TEST_SERVER_ONLY_VALUE"


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    os.environ[SERVER_ONLY_VARIABLE] = "do-not-leak-8f3a"
    try:
        server = make_server(tmp_path_factory.mktemp("fork"), sandbox_start="fork",
                             network="none", pool_size="2")
    finally:
        del os.environ[SERVER_ONLY_VARIABLE]
    yield server
    server.stop()


def template_pids(server: Server, kind: str = "sessions") -> list[int]:
    """The server's fork template of sessions (or of one-shot runs): runs template.py from
    the server's sandbox directory, its kind as its argument."""
    marker = "/var/tmp/tci/"
    return [pid for pid in all_pids()
            if "template.py" in cmdline(pid) and marker in cmdline(pid)
            and cmdline(pid).rstrip(" \0").endswith(kind)
            and _parent(pid) == server.process.pid]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


RANDOM_FACTS = (
    "import json, multiprocessing, os, random, uuid, numpy, tempfile\n"
    "print(json.dumps({'random': random.random(), 'numpy': float(numpy.random.rand()),\n"
    "                  'authkey': multiprocessing.current_process().authkey.hex(),\n"
    "                  'urandom': os.urandom(8).hex(), 'uuid': str(uuid.uuid4()),\n"
    "                  'tempname': next(tempfile._get_candidate_names())}))"
)


def test_forked_sessions_have_their_own_random_streams(forked):
    facts = [run_json(forked, RANDOM_FACTS)[1] for _ in range(3)]
    for key in ("random", "numpy", "authkey", "urandom", "uuid", "tempname"):
        values = [fact[key] for fact in facts]
        assert len(set(values)) == len(values), (key, values)


def test_only_the_protocol_fds_are_open(forked):
    _, fds = run_json(forked, (
        "import json, os\n"
        "fds = {}\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        fds[fd] = os.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps(fds))"
    ))
    # listdir's own fd is gone by the time readlink runs; what stays: stdin, stdout, stderr,
    # the command and event pipes, and the /dev/null behind sys.stdin.
    kinds = sorted("pipe" if target.startswith("pipe:") else target for target in fds.values())
    assert kinds == ["/dev/null", "/dev/null", "pipe", "pipe", "pipe", "pipe"], fds


def test_memory_files_and_ipc_of_one_session_are_invisible_to_another(forked):
    secret = "fork-secret-51d7"
    writer = new_session(forked, (
        f"kept = {secret!r} * 1000\n"
        f"open('/tmp/{secret}', 'w').write(kept)\n"
        f"open('/dev/shm/{secret}', 'w').write(kept)\n"
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "shm = libc.shmget(0x5ec7, 4096, 0o1666)\n"  # IPC_CREAT | 0666
        "assert shm >= 0, ctypes.get_errno()\n"
    ))
    _, seen = run_json(forked, (
        "import ctypes, gc, json, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "secret = 'fork-secret-' + '51d7'\n"
        "found_in_memory = any(isinstance(o, str) and secret * 2 in o for o in gc.get_objects())\n"
        "print(json.dumps({'tmp': os.listdir('/tmp'), 'shm': os.listdir('/dev/shm'),\n"
        "                  'sysv': libc.shmget(0x5ec7, 4096, 0o666), 'memory': found_in_memory,\n"
        "                  'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}))"
    ))
    assert seen == {"tmp": [], "shm": [], "sysv": -1, "memory": False, "pids": [1, 2]}
    # And the writer still has all of it: the reader just could not see it.
    assert stdout_of(forked.run(f"print(len(kept), os.path.exists('/tmp/{secret}'))"
                                if False else
                                f"import os\nprint(len(kept), os.path.exists('/tmp/{secret}'))",
                                writer)) == f"{len(secret) * 1000} True\n"


def test_the_template_is_out_of_sight_and_reach(forked):
    session_id = new_session(forked)
    templates = template_pids(forked)
    assert len(templates) == 1, templates
    template = templates[0]
    _, seen = run_json(forked, (
        "import json, os\n"
        f"try:\n    os.kill({template}, 0)\n    reach = 'signalled'\n"
        "except ProcessLookupError:\n    reach = 'no such process'\n"
        "except PermissionError:\n    reach = 'EPERM'\n"
        "print(json.dumps({'reach': reach, 'comm1': open('/proc/1/comm').read().strip()}))"
    ), session_id)
    assert seen == {"reach": "no such process", "comm1": "tci-init"}
    host = HostView(session_id)
    assert template not in host.processes()
    assert os.readlink(f"/proc/{template}/ns/pid") not in host.namespaces


def test_forked_sessions_run_as_different_unprivileged_uids(forked):
    first, second = new_session(forked), new_session(forked)
    uids = [HostView(session_id).uid for session_id in (first, second)]
    assert uids[0] != uids[1] and min(uids) >= 200_000, uids
    for session_id in (first, second):
        _, ids = run_json(forked, "import os, json\nprint(json.dumps(os.getresuid()))", session_id)
        assert ids == [1000, 1000, 1000]
        for pid in HostView(session_id).processes():
            status = Path(f"/proc/{pid}/status").read_text()
            host_uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert set(host_uids.split()[1:]) == {str(HostView(session_id).uid)}, (pid, status)


@pytest.mark.parametrize("kind", ["sessions", "runs"])
def test_the_template_holds_no_server_secret(forked, kind):
    (template,) = template_pids(forked, kind)
    environ = Path(f"/proc/{template}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert SERVER_ONLY_VARIABLE not in names
    assert not {name for name in names if name.startswith("TCI_")}, names
    assert "HOME" in names and Path(f"/proc/{template}/environ").read_bytes().count(b"/root") == 0


def test_a_dead_template_ends_its_sessions_and_a_new_one_is_started(forked):
    """Every session's init dies with the template (PR_SET_PDEATHSIG, the kernel's way of
    ending sessions with the server, which no session's code can switch off): a dead
    template's sessions end, and new sessions start on a new template."""
    live = new_session(forked, "kept = 42")
    (template,) = template_pids(forked)
    os.kill(template, signal.SIGKILL)
    wait_for(lambda: template not in all_pids(), "the template to die")
    wait_for(lambda: not [pid for pid in all_pids() if in_session(pid, live)],
             "the template's sessions to end with it")
    response = forked.execute("print(kept)", live)
    assert response.status_code == 410, response.text
    assert "killed by SIGKILL" in response.text, response.text
    # New sessions start (the pool's leftovers died too: they are replaced by new forks).
    for _ in range(4):
        assert stdout_of(forked.run("print('new')")) == "new\n"
    wait_for(lambda: len(template_pids(forked)) == 1, "a new template")
    assert template_pids(forked) != [template]
    assert "fork template died" in forked.log()


def test_sandbox_confinement_self_check_finds_an_unconfined_process():
    """The check every fork runs before its worker: in a process that is not confined (this
    test, as root) it names every missing protection, so a fork in that state would exit."""
    script = (
        "import json, sys\n"
        "sys.path.insert(0, 'src')\n"
        "from tci.worker.confine import confinement_problems, namespace_ids\n"
        "print(json.dumps(confinement_problems(namespace_ids())))"
    )
    result = subprocess.run(["python3", "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=60)
    problems = json.loads(result.stdout)
    text = "; ".join(problems)
    for expected in ("ids are uid", "CapEff", "no_new_privs", "no seccomp filter",
                     "not pid 1", "shares the template's mnt namespace",
                     "shares the template's user namespace"):
        assert expected in text, text


def test_sessions_end_with_the_server(tmp_path):
    server = make_server(tmp_path, sandbox_start="fork", network="none")
    try:
        session_id = new_session(server)
        _, namespaces = session_processes(session_id)
        assert namespaces
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)

        def gone() -> bool:
            return not [pid for pid in all_pids() if in_session(pid, session_id)]

        wait_for(gone, "every process of the session to end with the server")
        assert not [pid for pid in all_pids() if "template.py" in cmdline(pid)
                    and _parent(pid) in (None, 1) and str(tmp_path) in cmdline(pid)]
    finally:
        server.stop()


@pytest.mark.parametrize("ahead", ["0", "2"])
def test_egress_networks_made_ahead_are_one_per_session_and_filtered(tmp_path, ahead):
    """With TCI_NETWORK_POOL_SIZE networks made ahead (or none: made at creation), each forked
    session joins a network namespace of its own, with its way out and its filter."""
    server = make_server(tmp_path, sandbox_start="fork", network="egress",
                         network_pool_size=ahead)
    try:
        sessions = [new_session(server) for _ in range(3)]
        namespaces = {os.readlink(f"/proc/{HostView(s).worker_pid()}/ns/net") for s in sessions}
        assert len(namespaces) == 3, namespaces
        assert os.readlink("/proc/self/ns/net") not in namespaces
        for session_id in sessions:
            _, seen = run_json(server, (
                "import errno, json, socket, subprocess\n"
                "links = subprocess.run(['ip', '-br', 'link'], capture_output=True, text=True)\n"
                "s = socket.socket(); s.settimeout(3)\n"
                "try:\n    s.connect(('10.0.2.2', 9)); reached = 'connected'\n"
                "except OSError as exc:\n    reached = errno.errorcode.get(exc.errno, 'timeout')\n"
                "print(json.dumps({'links': sorted(l.split()[0] for l in "
                "links.stdout.splitlines()), 'host_side': reached}))"
            ), session_id)
            # 10.0.2.2 is slirp4netns's gateway, the host's side: refused by the filter.
            assert seen["links"] == ["lo", "tap0"], seen
            assert seen["host_side"] in REFUSED, seen
    finally:
        server.stop()
