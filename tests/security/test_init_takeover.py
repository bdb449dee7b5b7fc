"""The sandbox's pid 1 is out of the session's reach, and the session cannot outlive the server.

A session's code runs as the same uid as its sandbox's init. If that init stayed dumpable the
code could open /proc/1/mem and rewrite it: an init that then ignores the server's death keeps
the session running after the server is killed, and an init that floods its status channel
costs the server memory and CPU. So: the init is not dumpable (its memory was made in a user
namespace where the session has no capability: the host's on the fork path, the sandbox's for
our init under bubblewrap, which replaces bubblewrap's dumpable one), every session dies with
the server by a kernel mechanism (a chain of PR_SET_PDEATHSIG, and pid 1's death ends its pid
namespace), and every channel the server reads from a sandbox has a fixed maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

import tci.worker
from tci.errors import SandboxUnavailable
from tci.sandbox.bwrap import PYTHON
from tci.sandbox.fork.template_process import MAX_STATUS_BYTES, ForkedInit
from tci.sandbox.pidfd import ProcessHandle
from tci.sandbox.startup_report import read_report
from tests.conftest import make_server, stdout_of, wait_for
from tests.host import all_pids, in_session
from tests.security.conftest import LIMITS, HostView, new_session, run_json, status_of

# Run inside a session: each way into pid 1's memory and secrets, and what came of it.
ATTACK_PID_1 = r"""
import ctypes, errno, json, os

def attempt(step):
    try:
        return step()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def rewrite_memory():
    # A real takeover would write code; writing back the bytes already there shows the same
    # power without changing init.
    with open('/proc/1/maps') as maps:
        start = int(next(l for l in maps if ' r' in l[17:40]).split('-')[0], 16)
    fd = os.open('/proc/1/mem', os.O_RDWR)
    try:
        here = os.pread(fd, 8, start)
        return 'wrote %d bytes' % os.pwrite(fd, here, start)
    finally:
        os.close(fd)

def vm_read():
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = (ctypes.c_void_p * 2)(0x400000, 8)
    if libc.process_vm_readv(1, iov, 1, remote, 1, 0) < 0:
        raise OSError(ctypes.get_errno(), 'process_vm_readv')
    return 'read'

def own_memory():
    fd = os.open('/proc/self/mem', os.O_RDWR)
    os.close(fd)
    return 'opened'

print(json.dumps({
    'open_mem_rw': attempt(lambda: os.close(os.open('/proc/1/mem', os.O_RDWR)) or 'opened'),
    'rewrite': attempt(rewrite_memory),
    'environ': attempt(lambda: open('/proc/1/environ', 'rb').read() and 'read'),
    'fds': attempt(lambda: os.listdir('/proc/1/fd') and 'listed'),
    'vm_read': attempt(vm_read),
    'own_mem': attempt(own_memory),
    'own_environ': attempt(lambda: open('/proc/self/environ', 'rb').read() and 'read'),
}))
"""
DENIED = {"EACCES", "EPERM", "ENOENT", "ESRCH"}


def test_the_sandbox_init_cannot_be_read_or_rewritten(hardened):
    session_id, seen = run_json(hardened, ATTACK_PID_1)
    assert isinstance(seen, dict)
    for attack in ("open_mem_rw", "rewrite", "environ", "fds", "vm_read"):
        assert seen[attack] in DENIED, (attack, seen)
    # The session's own process stays its own: debuggers and /proc/self work as before.
    assert seen["own_mem"] == "opened" and seen["own_environ"] == "read", seen
    # And init still does its job: it reports the worker's end.
    assert stdout_of(hardened.run("print('still here')", session_id)) == "still here\n"
    response = hardened.execute("import os\nos._exit(7)", session_id)
    assert response.status_code == 200, response.text
    assert "exited with code 7" in response.text, response.text


# bubblewrap's init as the launcher runs it (worker/bwrap_init.py), here on the host's own
# files: what it does when bubblewrap did not give it what it checks for.
BWRAP_INIT = Path(tci.worker.__file__).parent / "bwrap_init.py"
WORKER_SAYS = [PYTHON, "-c", "import os; print('worker ran as', os.getpid()); os._exit(7)"]
PROTECTED = ("--as-pid-1", "--die-with-parent")


def _under_bwrap(*flags: str, worker: list[str] = WORKER_SAYS) -> subprocess.CompletedProcess:
    # Only /usr and the init's own directory, not the whole host: bubblewrap remounts every
    # mount under what it binds, and the volumes of other tests' sessions come and go meanwhile.
    argv = ["bwrap", "--unshare-user", "--unshare-pid", "--uid", "1000", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind", str(BWRAP_INIT.parent), str(BWRAP_INIT.parent),
            "--proc", "/proc", "--dev", "/dev", *flags, "--",
            PYTHON, "-S", "-I", "-B", str(BWRAP_INIT), *worker]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_bubblewrap_init_passes_on_how_the_worker_ended():
    exited = _under_bwrap(*PROTECTED)
    assert exited.stdout == "worker ran as 2\n" and exited.returncode == 7, exited
    killed = _under_bwrap(*PROTECTED, worker=["/bin/sh", "-c", "kill -KILL $$"])
    assert killed.returncode == 128 + signal.SIGKILL, killed


@pytest.mark.parametrize(("flags", "problem"), [
    (("--die-with-parent",), "not pid 1"),  # bubblewrap's own init would be pid 1
    (("--as-pid-1",), "no SIGKILL on bubblewrap's death"),
])
def test_the_bubblewrap_init_runs_no_worker_without_its_protections(flags, problem):
    refused = _under_bwrap(*flags)
    assert "worker ran" not in refused.stdout, refused
    assert problem in refused.stderr and refused.returncode == 122, refused


def _sandbox_init(session_id: str) -> int:
    view = HostView(session_id)
    inits = [pid for pid in view.inner_processes()
             if status_of(pid).get("NSpid", "").split()[-1:] == ["1"]]
    assert len(inits) == 1, inits
    return inits[0]


def test_the_session_ends_with_the_server_even_if_its_init_does_nothing(tmp_path):
    """The kernel ends the session, not the init's goodwill: with the init stopped (so it
    cannot see its lifeline close), killing the server still ends every process of it."""
    server = make_server(tmp_path, network="none",
                         **{k: str(v) for k, v in LIMITS.items() if k != "pool_size"})
    init = None
    try:
        session_id = new_session(server, "import subprocess\n"
                                 "child = subprocess.Popen(['sleep', '600'])")
        init = _sandbox_init(session_id)
        os.kill(init, signal.SIGSTOP)
        wait_for(lambda: status_of(init).get("State", "").startswith("T"), "init to stop")
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)

        def gone() -> bool:
            return not [pid for pid in all_pids() if in_session(pid, session_id)]

        wait_for(gone, "every process of the session to end with the server", timeout=60)
    finally:
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
        server.stop()


# -- the server's readers of sandbox-written channels ---------------------------------------


def _flood(end: socket.socket, sent: list[int]) -> None:
    """Write as fast as the reader takes it, until the reader closes its end."""
    chunk = b"x" * 64
    with contextlib.suppress(OSError):
        while True:
            end.send(chunk)
            sent[0] += len(chunk)


def test_a_flooded_status_channel_ends_the_session_with_bounded_memory():
    """What a taken-over init could do to the fork path's status socket: the server keeps at
    most MAX_STATUS_BYTES of it, kills the init and reports it ended."""
    stand_in = subprocess.Popen(["sleep", "600"])  # the init the server would kill
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sent = [0]

    async def read_flood() -> tuple[int, str | None, int]:
        handle = ProcessHandle.open(stand_in.pid)
        assert handle is not None
        process = ForkedInit(handle, ours.detach())
        flooder = threading.Thread(target=_flood, args=(theirs, sent), daemon=True)
        tracemalloc.start()
        flooder.start()
        try:
            code = await asyncio.wait_for(process.wait(), timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        theirs.close()
        flooder.join(30)
        return code, process.problem, peak

    try:
        started = time.process_time()
        code, problem, peak = asyncio.run(read_flood())
        cpu = time.process_time() - started
        assert stand_in.wait(timeout=30) == -signal.SIGKILL
    finally:
        stand_in.kill()
        stand_in.wait()
    assert code == 128 + signal.SIGKILL
    assert problem is not None and "status channel" in problem, problem
    assert sent[0] > MAX_STATUS_BYTES
    assert peak < 1 << 20, f"the reader held {peak} bytes"
    assert cpu < 5, f"reading the flood cost {cpu:.1f} s of CPU"


def test_an_overlong_info_channel_fails_the_start():
    """The start-up info pipe (bwrap's --info-fd, the fork's setup and init reports) is read
    to its end only up to MAX_INFO_BYTES: more is a failed start, not a growing buffer."""
    read_end, write_end = os.pipe()

    def flood() -> None:
        with contextlib.suppress(OSError):
            while True:
                os.write(write_end, b"{" * 4096)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        with pytest.raises(SandboxUnavailable, match="info"):
            asyncio.run(asyncio.wait_for(read_report(read_end), timeout=30))
    finally:
        os.close(read_end)  # the flooder's next write fails: it stops
        flooder.join(30)
        os.close(write_end)

