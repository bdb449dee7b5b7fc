"""Resource attacks against one session of a server with small limits (LIMITS in conftest):
fork and thread bombs, memory bombs, CPU spinners, code that ignores the interrupt, disk and
inode floods, /tmp and /dev/shm fills, fd exhaustion, output floods and oversized requests.

Each attack fails inside its own session, the way the user is told names the setting that
stopped it, the host sees the limit held (tasks, bytes, files, processes left behind), and a
canary session on the same server answers every ping throughout (see conftest)."""

from __future__ import annotations

import base64
import glob
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tci.kernel.outputs import OUTPUT_FRAME
from tests.conftest import Call, outputs_of, stdout_of
from tests.security.conftest import (
    LIMITS,
    HostView,
    ended_message,
    new_session,
    sandbox_dir,
    wait_for,
)

MiB = 1 << 20
PIDS_LIMIT = LIMITS["pids_limit"]
TIMEOUT = LIMITS["execute_timeout"]
GRACE = LIMITS["interrupt_grace_seconds"]
MAX_OUTPUT = LIMITS["max_output_bytes"]
TRUNCATION_NOTICE = (
    f"\n[output truncated: more than {MAX_OUTPUT} bytes (TCI_MAX_OUTPUT_BYTES); "
    "the rest of this call's output was dropped]\n"
)


def errors_naming(data: dict, setting: str) -> list[str]:
    return [e for e in outputs_of(data, "error") if setting in e]


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


# -- processes and threads -----------------------------------------------------------------

# A classic fork bomb (parent and child both keep forking) that parks each process once its
# fork is refused; the worker holds the only write end of `release`, so closing it ends them.
FORK_BOMB = """
import os, time
main = os.getpid()
release_r, release_w = os.pipe()
while True:
    # Once released, a child stops forking: without this, children reparented to pid 1 keep
    # refilling every freed slot and the bomb outlives the cell (what a real bomb does).
    if os.getpid() != main and os.path.exists('release'):
        os._exit(0)
    try:
        pid = os.fork()
    except BlockingIOError as exc:
        if os.getpid() != main:
            os.read(release_r, 1)
            os._exit(0)
        refused = exc
        break
    if pid == 0 and os.getpid() != main:
        try:
            os.close(release_w)
        except OSError:
            pass
open('bombed', 'w').close()
while not os.path.exists('release'):
    time.sleep(0.02)
os.close(release_w)
try:
    while True:
        os.wait()  # the parked children exit; reap them (grandchildren go to pid 1)
except ChildProcessError:
    pass
print('fork refused:', type(refused).__name__)
"""

THREAD_BOMB = """
import os, threading, time
hold = threading.Event()
threads = []
while True:
    try:
        thread = threading.Thread(target=hold.wait)
        thread.start()
    except RuntimeError as exc:
        refused = exc
        break
    threads.append(thread)
open('bombed', 'w').close()
while not os.path.exists('release'):
    time.sleep(0.02)
hold.set()
for thread in threads:
    thread.join()
print('thread refused:', refused)
"""


@pytest.mark.parametrize("bomb, expected", [
    (FORK_BOMB, "fork refused: BlockingIOError\n"),
    (THREAD_BOMB, "thread refused: can't start new thread\n"),
], ids=["fork", "thread"])
def test_bomb_stops_at_pids_limit(hardened, bomb, expected):
    session_id = new_session(hardened)
    host = HostView(session_id)
    call = Call(hardened, bomb, session_id)
    wait_for((host.workspace / "bombed").exists, "the bomb to hit its limit")
    # While the bomb holds every task it could get, the host counts them: no more than the
    # limit, and nearly all of it (else the test proves nothing).
    tasks = host.tasks()
    assert PIDS_LIMIT - 8 <= tasks <= PIDS_LIMIT, tasks
    (host.workspace / "release").touch()

    data = call.result()
    assert stdout_of(data) == expected
    errors = outputs_of(data, "error")
    assert len(errors) == 1, errors
    assert "TCI_PIDS_LIMIT" in errors[0], errors

    # The bomb's processes and threads are gone; the session works as before.
    wait_for(lambda: host.tasks() <= 4, "the bomb's tasks to end")
    after = hardened.run("print('alive', x)", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "alive 1\n"}]


# -- memory --------------------------------------------------------------------------------


def test_memory_bomb_ends_the_session(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    data = hardened.run(
        "hog = []\n"
        "while True:\n"
        "    hog.append(b'\\1' * (16 << 20))",
        session_id,
    )
    errors = outputs_of(data, "error")
    assert len(errors) == 1, errors
    assert "memory limit" in errors[0], errors
    assert "TCI_MEMORY_LIMIT_BYTES" in errors[0], errors

    message = ended_message(hardened, session_id)
    assert "TCI_MEMORY_LIMIT_BYTES" in message, message
    host.assert_gone()


def test_memory_bomb_in_a_child_kills_only_the_child(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    worker = host.worker_pid()
    data = hardened.run(
        "import subprocess, sys\n"
        "hog = 'x = []\\nwhile True: x.append(b\"\\\\1\" * (16 << 20))'\n"
        "print(subprocess.run([sys.executable, '-c', hog]).returncode)",
        session_id,
    )
    assert stdout_of(data) == f"{-signal.SIGKILL}\n"
    errors = outputs_of(data, "error")
    assert len(errors) == 1, errors
    assert "memory limit" in errors[0] and "TCI_MEMORY_LIMIT_BYTES" in errors[0], errors

    # The kernel chose the hog, not the worker: same process, same state.
    assert host.worker_pid() == worker
    after = hardened.run("print('alive', x)", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "alive 1\n"}]


# -- CPU and time --------------------------------------------------------------------------


def test_cpu_spinners_time_out_and_stay_in_their_session(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    call = Call(hardened, (
        "import os\n"
        "spinners = []\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        while True:\n"
        "            pass\n"
        "    spinners.append(pid)\n"
        "open('spinning', 'w').close()\n"
        "while True:\n"
        "    pass"
    ), session_id)
    wait_for((host.workspace / "spinning").exists, "the spinners to start")
    # Four busy processes on the host, all the session's uid, none elsewhere.
    processes = host.inner_processes()
    assert len(processes) == 5, processes  # bwrap's pid 1, the worker, three spinners
    assert {os.stat(f"/proc/{pid}").st_uid for pid in processes} == {host.uid}

    data = call.result()
    errors = outputs_of(data, "error")
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"TimeoutError: execution timed out after {TIMEOUT} s (TCI_EXECUTE_TIMEOUT) and was "
        "interrupted; the session is still alive."), errors

    # The interrupt reached the worker only; the session can stop its own spinners.
    stopped = hardened.run(
        "import signal\n"
        "for pid in spinners:\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in spinners])",
        session_id,
    )
    assert stopped["outputs"] == [{"type": "stdout", "data": "[-9, -9, -9]\n"}]
    assert len(host.inner_processes()) == 2


SLEEPERS = {
    "sig_ign": "signal.signal(signal.SIGINT, signal.SIG_IGN)",
    "swallowing_handler": "signal.signal(signal.SIGINT, lambda *args: None)",
    "blocked_mask": "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})",
}


@pytest.mark.parametrize("ignore", SLEEPERS.values(), ids=SLEEPERS.keys())
def test_sleeper_ignoring_interrupt_is_killed(hardened, ignore):
    session_id = new_session(hardened)
    host = HostView(session_id)
    started = time.monotonic()
    data = hardened.run(
        "import signal, subprocess, time\n"
        "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        f"{ignore}\n"
        "print('sleeping', flush=True)\n"
        "time.sleep(1000)",
        session_id,
    )
    elapsed = time.monotonic() - started
    assert stdout_of(data) == "sleeping\n"
    errors = outputs_of(data, "error")
    assert errors == [
        f"TimeoutError: execution timed out after {TIMEOUT} s (TCI_EXECUTE_TIMEOUT) and did not "
        f"stop within {GRACE} s of the interrupt, so the worker was killed; the session was "
        "ended."
    ]
    # Liveness, not speed: the call ends near timeout + grace, not after the sleep.
    assert elapsed < TIMEOUT + GRACE + 20, elapsed

    assert "timed out" in ended_message(hardened, session_id)
    host.assert_gone()  # the detached `sleep 1000` included


# -- disk ----------------------------------------------------------------------------------


def test_disk_flood_stops_at_workspace_limit(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    data = hardened.run(
        "import errno\n"
        "written = 0\n"
        "try:\n"
        "    with open('flood.bin', 'wb', buffering=0) as out:\n"
        "        while True:\n"
        "            written += out.write(b'\\1' * (1 << 20))\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno], written >> 20)",
        session_id,
    )
    name, mebibytes = stdout_of(data).split()
    assert name == "ENOSPC"
    assert 48 <= int(mebibytes) <= 64, mebibytes
    assert len(errors_naming(data, "TCI_WORKSPACE_MAX_BYTES")) == 1, data["outputs"]

    # On the host: the file is on the session's own volume, which is full; the image
    # holding it takes no more than the limit of the host's disk.
    flood = host.workspace / "flood.bin"
    assert flood.stat().st_dev == os.stat(host.workspace).st_dev != os.stat("/var/tmp").st_dev
    assert flood.stat().st_size == int(mebibytes) << 20
    image = host.directory / "volume.img"
    # Reserved in full when the volume was made, plus the host filesystem's own index of the
    # image's blocks (an extent tree block or so): never more, whatever the session wrote.
    assert image.stat().st_blocks * 512 <= LIMITS["workspace_max_bytes"] + 64 * 1024
    assert os.statvfs(host.workspace).f_bavail * os.statvfs(host.workspace).f_frsize < 8 * MiB

    freed = hardened.run("import os\nos.remove('flood.bin')\nprint('freed')", session_id)
    assert freed["outputs"] == [{"type": "stdout", "data": "freed\n"}]
    assert not flood.exists()


def test_inode_flood_stops_at_file_limit(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    data = hardened.run(
        "import errno, os\n"
        "os.mkdir('many')\n"
        "made = 0\n"
        "try:\n"
        "    while True:\n"
        "        open(f'many/{made}', 'w').close()\n"
        "        made += 1\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno], made)",
        session_id,
    )
    name, made = stdout_of(data).split()
    assert name == "ENOSPC"
    assert LIMITS["workspace_max_files"] - 64 <= int(made) <= LIMITS["workspace_max_files"]
    assert len(errors_naming(data, "TCI_WORKSPACE_MAX_FILES")) == 1, data["outputs"]

    assert len(os.listdir(host.workspace / "many")) == int(made)
    assert os.statvfs(host.workspace).f_favail == 0

    cleaned = hardened.run("import shutil\nshutil.rmtree('many')\nprint('cleaned')", session_id)
    assert cleaned["outputs"] == [{"type": "stdout", "data": "cleaned\n"}]
    assert os.statvfs(host.workspace).f_favail > 1000


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
def test_tmpfs_fill_stops_at_tmp_limit(hardened, directory):
    session_id = new_session(hardened)
    host = HostView(session_id)
    name = f"fill-{session_id}"
    data = hardened.run(
        "import errno, os\n"
        "written = 0\n"
        "try:\n"
        f"    with open('{directory}/{name}', 'wb', buffering=0) as out:\n"
        "        while True:\n"
        "            written += out.write(b'\\1' * (1 << 20))\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno], written >> 20)\n"
        f"os.remove('{directory}/{name}')",
        session_id,
    )
    assert not outputs_of(data, "error"), data
    errname, mebibytes = stdout_of(data).split()
    assert errname == "ENOSPC"
    assert 14 <= int(mebibytes) <= 16, mebibytes

    # From the host: that tmpfs exists only in the sandbox's mount namespace, with the cap.
    mounts = Path(f"/proc/{host.worker_pid()}/mountinfo").read_text().splitlines()
    mount = next(line for line in mounts if line.split()[4] == directory)
    assert "size=16384k" in mount, mount
    assert not glob.glob(f"/tmp/{name}") and not glob.glob(f"/dev/shm/{name}")


# -- file descriptors ----------------------------------------------------------------------


def test_fd_exhaustion_stops_at_open_files_limit(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    limit = LIMITS["open_files_limit"]
    call = Call(hardened, (
        "import errno, os, resource, time\n"
        "fds = []\n"
        "try:\n"
        "    while True:\n"
        "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "os.close(fds.pop())\n"
        "open('exhausted', 'w').close()\n"
        "while not os.path.exists('release'):\n"
        "    time.sleep(0.02)\n"
        "for fd in fds:\n"
        "    os.close(fd)"
    ), session_id)
    wait_for((host.workspace / "exhausted").exists, "the descriptors to run out")
    worker = host.worker_pid()
    open_now = len(os.listdir(f"/proc/{worker}/fd"))
    limits = Path(f"/proc/{worker}/limits").read_text()
    (host.workspace / "release").touch()
    assert limit - 2 <= open_now <= limit, open_now
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(limit), str(limit)], line

    data = call.result()
    assert data["outputs"] == [
        {"type": "stdout", "data": "EMFILE\nnot allowed to raise maximum limit\n"}
    ]
    after = hardened.run("print(open('exhausted').read() == '')", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "True\n"}]


# -- output --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut_at_output_limit(hardened, stream):
    server_pid = hardened.process.pid
    before = rss_bytes(server_pid)
    data = hardened.run(
        "import sys\n"
        "for _ in range(64):\n"  # 4 MiB
        f"    print('x' * 65535, file=sys.{stream})\n"
        f"print('after the flood', file=sys.{stream})"
    )
    assert data["status"] == "completed"
    assert [o["type"] for o in data["outputs"]] == [stream, "stderr"]
    # Cut where the answer reaches the cap: the text as JSON sends it ("\n" is 2 bytes) and
    # the output's frame (kernel/outputs.py).
    kept = data["outputs"][0]["data"]
    assert kept == (("x" * 65535 + "\n") * 16)[: len(kept)]
    assert MAX_OUTPUT - 2 <= len(json.dumps(kept)) - 2 + OUTPUT_FRAME <= MAX_OUTPUT
    assert data["outputs"][1]["data"] == TRUNCATION_NOTICE
    # The host: the server held on to no more than the limit.
    assert rss_bytes(server_pid) - before < 64 * MiB
    after = hardened.run("print('next')", data["session_id"])
    assert after["outputs"] == [{"type": "stdout", "data": "next\n"}]


def test_one_huge_write_is_cut_at_output_limit(hardened):
    server_pid = hardened.process.pid
    before = rss_bytes(server_pid)
    data = hardened.run("import os\nos.write(1, b'y' * (128 << 20))\nprint('written')")
    assert data["status"] == "completed"
    assert data["outputs"] == [
        {"type": "stdout", "data": "y" * (MAX_OUTPUT - OUTPUT_FRAME)},
        {"type": "stderr", "data": TRUNCATION_NOTICE},
    ]
    # 128 MiB went through the pipe in one write; the server kept no more than the limit.
    assert rss_bytes(server_pid) - before < 64 * MiB


# -- requests ------------------------------------------------------------------------------


def session_dirs(server) -> set[str]:
    return {path.name for path in sandbox_dir(server).glob("ses_*")}


def test_oversized_request_is_refused_before_it_runs(hardened):
    before = session_dirs(hardened)
    body_limit = LIMITS["max_request_bytes"]
    marker = f"never-{time.monotonic_ns()}"
    response = hardened.execute(f"open('{marker}', 'w')\n#" + "x" * body_limit)
    assert response.status_code == 413, response.text
    assert response.json() == {"data": None, "errors": [
        f"request body larger than {body_limit} bytes (TCI_MAX_REQUEST_BYTES)"
    ]}
    # No sandbox was started for it and nothing ran.
    assert session_dirs(hardened) == before
    assert not list(sandbox_dir(hardened).glob(f"ses_*/vol/work/{marker}"))


def test_oversized_upload_writes_nothing(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    content = base64.b64encode(b"\0" * (LIMITS["max_file_bytes"] + 1)).decode()
    response = hardened.execute("print('ran')", session_id, files=[
        {"name": "big.bin", "encoding": "base64", "content": content},
    ])
    assert response.status_code == 413, response.text
    assert "TCI_MAX_FILE_BYTES" in response.json()["errors"][0]
    assert not (host.workspace / "big.bin").exists()
    assert os.listdir(host.workspace) == []
