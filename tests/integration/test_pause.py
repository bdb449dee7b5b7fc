"""Pause and resume against a real server: what a paused session keeps (values, functions that
read the live globals, classes and instances, shared objects, numpy, pandas, imports, files,
a pip-installed package), what it names as skipped, that its processes are gone, that it
counts toward no session limit, that another key sees nothing of it, retention, a graceful
restart, and hostile or oversized state."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import signal
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import Call, make_server, outputs_of, stdout_of, wait_for


def pause(server, session_id: str, key: str | None = None) -> httpx.Response:
    with server.client(key) as client:
        return client.post(f"/v1/tci/sessions/{session_id}/pause")


def listed(server) -> dict[str, dict]:
    with server.client() as client:
        sessions = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    return {item["id"]: item for item in sessions}


def pids_of(session_id: str) -> list[int]:
    """Host processes in the session's cgroup (named by its id)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if session_id in Path(f"/proc/{entry}/cgroup").read_text():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def tiny_wheel() -> bytes:
    """A one-module wheel, built here: pip installs it from the workspace, no index."""
    files = {
        "tinypkg_tci/__init__.py": "ANSWER = 42\n",
        "tinypkg_tci-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg-tci\n"
                                              "Version: 0.1\n",
        "tinypkg_tci-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                           "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["tinypkg_tci-0.1.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + \
        "tinypkg_tci-0.1.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


STATE = """
import json, threading, socket
import numpy as np
import pandas as pd
x = 41
def f():
    return x + 1
class C:
    def __init__(self, v):
        self.v = v
c = C(3)
shared = [1, 2]
holder = {"k": shared}
arr = np.arange(1000)
df = pd.DataFrame({"a": [1, 2, 3]})
lock = threading.Lock()
lock.acquire()
gen = (i for i in range(3))
sock = socket.socket()
with open("notes.txt", "w") as fh:
    fh.write("kept")
"""

CHECK = """
x = 100
print(json.dumps([f(), isinstance(c, C), c.v, holder["k"] is shared, int(arr.sum()),
                  int(df.a.sum()), open("notes.txt").read(), "lock" in globals(),
                  "gen" in globals(), "sock" in globals(), tinypkg_tci.ANSWER]))
"""


def test_a_paused_session_keeps_its_state_and_its_processes_end(server_factory):
    server = server_factory()
    wheel = {"name": "tinypkg_tci-0.1-py3-none-any.whl", "encoding": "base64",
             "content": base64.b64encode(tiny_wheel()).decode()}
    data = server.run("!pip install -q --user --no-index tinypkg_tci-0.1-py3-none-any.whl\n"
                      "import tinypkg_tci\n" + STATE, files=[wheel])
    assert not outputs_of(data, "error"), data
    session_id = data["session_id"]
    assert pids_of(session_id), "the running session has processes"

    answer = pause(server, session_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()["data"]
    assert body["id"] == session_id and body["status"] == "paused"
    assert {item["name"] for item in body["skipped"]} == {"gen", "sock", "fh"}
    assert all(item["reason"] for item in body["skipped"])
    wait_for(lambda: not pids_of(session_id), "the paused session's processes to end", 10)
    row = listed(server)[session_id]
    assert row["status"] == "paused" and row["state_bytes"] > 0
    assert pause(server, session_id).status_code == 200  # pausing a paused one: 200

    data = server.run(CHECK, session_id)  # executing resumes it under the same id
    assert data["session_id"] == session_id
    assert json.loads(stdout_of(data)) == [101, True, 3, True, 499500, 6, "kept", True,
                                           False, False, 42]
    assert listed(server)[session_id]["status"] == "running"


def test_pause_refuses_a_running_call_and_other_keys(server_factory):
    server = server_factory()
    session_id = server.run("x = 1")["session_id"]
    other = server.new_key("other")
    assert pause(server, session_id, other).status_code == 404
    call = Call(server, "import time, pathlib\npathlib.Path('started').touch()\n"
                        "time.sleep(3)", session_id)
    wait_for(lambda: call.sent.is_set(), "the call to be sent")
    with server.client() as client:  # the call is running once its file exists
        wait_for(lambda: client.get(f"/v1/tci/sessions/{session_id}/files").status_code == 200
                 and "started" in client.get(f"/v1/tci/sessions/{session_id}/files").text,
                 "the call to start")
    answer = pause(server, session_id)
    assert answer.status_code == 409, answer.text
    call.result()
    assert pause(server, session_id).status_code == 200
    with server.client(other) as client:  # another key: as if it did not exist
        assert client.post(f"/v1/tci/sessions/{session_id}/resume").status_code == 404
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 404
    assert session_id not in {s["id"] for s in httpx.get(
        f"{server.url}/v1/tci/sessions", headers={"Authorization": f"Bearer {other}"}
    ).json()["data"]["sessions"]}
    assert server.execute("x", session_id, key=other).status_code == 404


def test_paused_sessions_count_toward_no_limit_and_resume_waits_for_room(server_factory):
    server = server_factory(max_sessions="1")
    first = server.run("x = 'first'")["session_id"]
    assert server.execute("1").status_code == 429  # full
    assert pause(server, first).status_code == 200
    second = server.run("y = 2")["session_id"]  # the paused one left room
    with server.client() as client:
        refused = client.post(f"/v1/tci/sessions/{first}/resume")
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert client.delete(f"/v1/tci/sessions/{second}").status_code == 200
        resumed = client.post(f"/v1/tci/sessions/{first}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["data"] == {"id": first, "status": "running"}
    assert stdout_of(server.run("print(x)", first)) == "first\n"


def test_a_deleted_paused_session_frees_its_state(server_factory):
    server = server_factory()
    session_id = server.run("x = 1")["session_id"]
    assert pause(server, session_id).status_code == 200
    state_dir = server.data_dir / "state"
    assert list(state_dir.glob(f"{session_id}*"))
    with server.client() as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200
    assert not list(state_dir.glob(f"{session_id}*"))
    answer = server.execute("x", session_id)
    assert answer.status_code == 410, answer.text


def test_a_paused_session_past_its_retention_ends(server_factory):
    server = server_factory(paused_retention_seconds="1", reap_interval_seconds="0.2")
    session_id = server.run("x = 1")["session_id"]
    assert pause(server, session_id).status_code == 200
    wait_for(lambda: session_id not in listed(server), "the retention to end it")
    answer = server.execute("x", session_id)
    assert answer.status_code == 410 and "TCI_PAUSED_RETENTION" in answer.text


def test_an_idle_session_pauses_by_itself(server_factory):
    server = server_factory(idle_pause_seconds="1", reap_interval_seconds="0.2")
    session_id = server.run("x = 'kept'")["session_id"]
    wait_for(lambda: listed(server).get(session_id, {}).get("status") == "paused",
             "the idle session to pause")
    assert stdout_of(server.run("print(x)", session_id)) == "kept\n"


def test_an_oversized_state_is_refused_and_the_session_runs_on(server_factory):
    server = server_factory(max_state_bytes=str(1 << 20))
    session_id = server.run("big = b'x' * (2 << 20)\nsmall = 1")["session_id"]
    answer = pause(server, session_id)
    assert answer.status_code == 413 and "TCI_MAX_STATE_BYTES" in answer.text, answer.text
    assert stdout_of(server.run("print(len(big))", session_id)) == f"{2 << 20}\n"


def _rewrite_state(image: Path, content: bytes, mount_point: Path) -> None:
    """Replace the saved namespace inside a kept volume image (as root, loop-mounted)."""
    mount_point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        (mount_point / "home/.tci/state.dill").write_bytes(content)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


class Crafted:
    """Unpickling it runs code (as any pickle can): here it only writes a marker file."""

    def __reduce__(self):
        return (exec, ("open('/tmp/crafted-pickle-ran', 'w').write('x')",))


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps(Crafted())])
def test_a_corrupt_or_crafted_state_ends_that_session_only(server_factory, tmp_path, content):
    server = server_factory()
    broken = server.run("x = 1")["session_id"]
    healthy = server.run("y = 2")["session_id"]
    for session_id in (broken, healthy):
        assert pause(server, session_id).status_code == 200
    _rewrite_state(server.data_dir / "state" / f"{broken}.img", content, tmp_path / "mnt")
    answer = server.execute("x", broken)
    assert answer.status_code == 410, answer.text
    assert "saved state could not be restored" in answer.text
    assert not Path("/tmp/crafted-pickle-ran").exists()  # it ran in the sandbox, if at all
    assert stdout_of(server.run("print(y)", healthy)) == "2\n"


def test_a_graceful_restart_keeps_sessions_and_a_crash_ends_them(tmp_path):
    server = make_server(tmp_path)
    try:
        kept = server.run("x = 'survived'")["session_id"]
        server.stop(signal.SIGTERM)  # pauses it
        server.start()
        assert listed(server)[kept]["status"] == "paused"
        assert stdout_of(server.run("print(x)", kept)) == "survived\n"
        server.stop(signal.SIGKILL)  # a crash: nothing paused it
        server.start()
        answer = server.execute("x", kept)
        assert answer.status_code == 410 and "restarted" in answer.text, answer.text
    finally:
        server.stop()


FILES = """
import os, stat
os.makedirs("deep/er", exist_ok=True)
open("deep/er/data.bin", "wb").write(bytes(range(256)) * 4000)
with open("sparse.bin", "wb") as fh:
    fh.seek(50_000_000)
    fh.write(b"end")
open("script.sh", "w").write("#!/bin/sh\\necho ran\\n")
os.chmod("script.sh", 0o750)
os.chmod("deep", 0o705)
os.symlink("deep/er/data.bin", "link")
os.symlink("/etc/hostname", "outside")
os.symlink("/", "rootlink")  # copied as a link: the host's copy never follows one
os.link("script.sh", "hard.sh")
os.mkfifo("pipe")
os.utime("script.sh", (1_000_000_000, 1_000_000_000))
"""

FILES_CHECK = """
import os, stat, json, subprocess
def mode(p):
    return oct(stat.S_IMODE(os.lstat(p).st_mode))
print(json.dumps([
    open("link", "rb").read() == bytes(range(256)) * 4000, os.readlink("outside"),
    os.path.getsize("sparse.bin"), os.stat("sparse.bin").st_blocks * 512 < 1_000_000,
    mode("script.sh"), mode("deep"), os.stat("script.sh").st_mtime,
    subprocess.run(["./hard.sh"], capture_output=True, text=True).stdout,
    stat.S_ISFIFO(os.lstat("pipe").st_mode), os.readlink("rootlink"),
    sorted({os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk("/home/user")
            for n in ds + fs} | {os.lstat(n).st_uid for n in os.listdir(".")}) == [os.getuid()],
    tinypkg_tci.ANSWER, x, f(), os.getcwd()]))
"""


@pytest.mark.parametrize("copy_max", ["67108864", "524288", "0"])
def test_a_resume_in_a_warm_sandbox_keeps_every_file_as_a_cold_one(server_factory, copy_max):
    """With a warm pool, a small kept volume's files are copied into a warm sandbox's new
    volume (TCI_RESUME_COPY_MAX_BYTES); past it (512 KiB here) or with 0, a sandbox starts on
    the kept image. All
    must give back the same session: files of every kind, a pip-installed package, the
    namespace, the working directory, all owned by the session's user."""
    # Refills wait a while: whether the resume took the warm sandbox shows in /health.
    server = server_factory(pool_size="1", resume_copy_max_bytes=copy_max,
                            pool_refill_delay_seconds="5")
    wheel = {"name": "tinypkg_tci-0.1-py3-none-any.whl", "encoding": "base64",
             "content": base64.b64encode(tiny_wheel()).decode()}
    data = server.run("!pip install -q --user --no-index tinypkg_tci-0.1-py3-none-any.whl\n"
                      "import tinypkg_tci\nx = 41\ndef f():\n    return x + 1\n" + FILES
                      + "os.makedirs('sub', exist_ok=True)\nos.chdir('sub')\n"
                      + "os.chdir('/workspace')", files=[wheel])
    assert not outputs_of(data, "error"), data
    session_id = data["session_id"]
    for _ in range(2):  # twice: a resumed session pauses and resumes like any
        assert pause(server, session_id).status_code == 200
        wait_for(lambda: _pool_ready(server) == 1, "a warm sandbox", timeout=60)
        data = server.run(FILES_CHECK, session_id)
        assert _pool_ready(server) == (0 if copy_max == "67108864" else 1)
        assert not outputs_of(data, "error"), data
        assert json.loads(stdout_of(data)) == [
            True, "/etc/hostname", 50_000_003, True, "0o750", "0o705", 1_000_000_000.0,
            "ran\n", True, "/", True, 42, 41, 42, "/workspace"]


def _pool_ready(server) -> int:
    with server.client() as client:
        return client.get("/health").json()["pool"]["ready"]
