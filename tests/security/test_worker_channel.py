"""The worker's channel is untrusted: user code runs in the worker and can write frames to the
event pipe itself, flood its outputs, stop reading a stream, or end the worker between calls.

Each attack stays inside its session: outputs obey TCI_MAX_OUTPUT_BYTES whatever their kind
and however they are asked for (streamed or not), the server's memory stays bounded, the
server keeps answering everyone else (the canary, and /health polled throughout), and a
broken or dead worker ends its session at once, with the reason given to the next call."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from tests.conftest import outputs_of, stdout_of, wait_for
from tests.security.conftest import LIMITS, HostView, ended_message, new_session
from tests.security.test_resources import TRUNCATION_NOTICE, rss_bytes

MiB = 1 << 20
MAX_OUTPUT = LIMITS["max_output_bytes"]
RESPONSIVE_SECONDS = 5.0  # a liveness bound for /health, far above its normal few ms
# (generous: the suite must pass on two cores with other work beside it, load ~4 and more)

# The worker as user code finds it: the object holding the event pipe and the running id.
WORKER = """
from tci_worker.protocol import HEADER, encode_event
from tci_worker.shell import WorkerShell
worker = WorkerShell.emit.__self__  # the shell emits through the worker's bound method
import os
def send(raw):
    view = memoryview(raw)
    while view:
        view = view[os.write(worker.event_fd, view):]
"""


def total_output_bytes(data: dict) -> int:
    return sum(len(json.dumps(o["data"], ensure_ascii=False).encode()) for o in data["outputs"])


class HealthWatch(threading.Thread):
    """Polls /health while an attack runs; records the slowest answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.slowest = 0.0
        self.failures: list[str] = []
        self.start()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.wait(0.05):
                started = time.monotonic()
                try:
                    response = client.get(f"{self.url}/health")
                    if response.status_code != 200:
                        self.failures.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)

    def finish(self) -> float:
        self.stopping.set()
        self.join(60)
        assert not self.failures, self.failures
        return self.slowest


def test_forged_error_frames_count_against_the_output_cap(hardened):
    session = new_session(hardened)
    code = WORKER + f"""
for _ in range({3 * MAX_OUTPUT // 1024}):
    send(encode_event({{"type": "error", "id": worker.request_id, "data": "E" * 1024}}))
print("after")
"""
    data = hardened.run(code, session)
    assert total_output_bytes(data) <= MAX_OUTPUT + 20 * 1024, total_output_bytes(data)
    assert TRUNCATION_NOTICE in stdout_of(data) + "".join(outputs_of(data, "stderr"))
    assert hardened.run("x", session)["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "1"}}]


def test_huge_frames_are_skipped_unread_and_the_server_stays_responsive(hardened):
    """24 MiB frames of nested lists: parsed, each would be ~0.5 GB of objects and seconds of
    the event loop every session shares. Here they are dropped as their bytes arrive."""
    session = new_session(hardened)
    server_pid = hardened.process.pid
    rss_before = rss_bytes(server_pid)
    watch = HealthWatch(hardened.url)
    code = WORKER + """
body = b"[" + b"[]," * (8 * 1024 * 1024) + b"[]]"
for _ in range(5):
    send(HEADER.pack(len(body)) + body)
flooded = True
"""
    data = hardened.run(code, session)
    slowest = watch.finish()
    assert TRUNCATION_NOTICE in "".join(outputs_of(data, "stderr"))
    assert slowest < RESPONSIVE_SECONDS, f"/health took {slowest:.2f} s during the flood"
    assert rss_bytes(server_pid) - rss_before < 100 * MiB
    assert hardened.run("flooded", session)["outputs"][0]["data"] == {"text/plain": "True"}


def test_json_outputs_are_parsed_only_within_their_value_budget(server_factory):
    server = server_factory(max_output_json_values=10_000, max_output_bytes=8 * MiB)
    code = """
from IPython.display import JSON, display
display(JSON({"small": list(range(10))}))
display(JSON({"big": [[] for _ in range(100_000)]}))
print("done")
"""
    data = server.run(code)
    rich = outputs_of(data, "display_data")
    assert rich == [{"application/json": {"small": list(range(10))},
                     "text/plain": "<IPython.core.display.JSON object>"}]
    assert "[output dropped: display_data with more JSON values than the call had left of " \
        "10000 (TCI_MAX_OUTPUT_JSON_VALUES)]" in "".join(outputs_of(data, "stderr"))
    assert stdout_of(data) == "done\n"


def test_a_malformed_frame_ends_only_that_session_with_a_clear_reason(hardened):
    session = new_session(hardened)
    view = HostView(session)
    code = WORKER + """
send(HEADER.pack(12) + HEADER.pack(8) + b"not json")
import time; time.sleep(5)
"""
    data = hardened.run(code, session)
    errors = outputs_of(data, "error")
    assert errors and "broke the protocol" in errors[-1], data
    view.assert_gone()
    assert "broke the protocol" in ended_message(hardened, session)


def test_the_cap_is_bytes_of_what_is_sent(hardened):
    """700k two-byte characters: under the cap counted in characters, over it in bytes."""
    data = hardened.run(f"print('é' * {int(MAX_OUTPUT * 0.7)})")
    assert len(stdout_of(data).encode()) <= MAX_OUTPUT + len(TRUNCATION_NOTICE)
    assert TRUNCATION_NOTICE in stdout_of(data) + "".join(outputs_of(data, "stderr"))


def test_a_lone_surrogate_in_an_exception_still_answers_its_traceback(hardened):
    session = new_session(hardened)
    data = hardened.run("raise ValueError('bad \\udcff name')", session)
    errors = outputs_of(data, "error")
    assert len(errors) == 1 and "ValueError" in errors[0] and "bad" in errors[0], data
    assert hardened.run("print('still here')", session)["outputs"] == [
        {"type": "stdout", "data": "still here\n"}]


def stream_events(server, code: str, session_id: str | None = None) -> list[tuple[str, dict]]:
    body = {"language": "python", "code": code, "stream": True}
    if session_id:
        body["session_id"] = session_id
    events = []
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        assert r.status_code == 200, r.read()
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
    return events


def test_the_streamed_answer_obeys_the_same_cap(hardened):
    events = stream_events(hardened, f"print('x' * {3 * MAX_OUTPUT}); print('y' * 100)")
    streamed = [payload for name, payload in events if name == "output"]
    sent = sum(len(o["data"].encode()) for o in streamed)
    assert sent <= MAX_OUTPUT + len(TRUNCATION_NOTICE), sent
    assert TRUNCATION_NOTICE in "".join(o["data"] for o in streamed if o["type"] == "stderr")
    result = events[-1]
    assert result[0] == "result"
    assert total_output_bytes(result[1]["data"]) <= MAX_OUTPUT + len(TRUNCATION_NOTICE) + 64


def test_a_stream_client_that_stops_reading_costs_the_server_bounded_memory(hardened):
    """The client asks for a stream of 300 MB of output and never reads a byte of it."""
    server_pid = hardened.process.pid
    session = new_session(hardened)
    rss_before = rss_bytes(server_pid)
    code = "import sys\nfor _ in range(300):\n    sys.stdout.write('z' * 1_000_000)\nprint('end')"
    body = json.dumps({"language": "python", "session_id": session, "stream": True,
                       "code": code}).encode()
    sock = socket.create_connection(("127.0.0.1", hardened.port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"POST /v1/tci/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + hardened.key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # The call ends (its output is cut at the cap) although nobody reads the stream.
        wait_for(lambda: hardened.run("x", session)["outputs"][0]["data"] ==
                 {"text/plain": "1"}, "the session to be free again", timeout=60)
        assert rss_bytes(server_pid) - rss_before < 60 * MiB
    finally:
        sock.close()


def test_a_worker_that_exits_between_calls_ends_its_session_at_once(hardened):
    session = new_session(hardened)
    view = HostView(session)
    data = hardened.run("import os, threading\nthreading.Timer(0.5, os._exit, (3,)).start()",
                        session)
    assert not outputs_of(data, "error"), data
    # Freed without any further call: processes, directory (volume) and the live list.
    view.assert_gone()
    with hardened.client() as client:
        wait_for(lambda: session not in {s["id"] for s in
                                         client.get("/v1/tci/sessions").json()["data"]["sessions"]},
                 "the session to leave the live list")
    assert "exited with code 3" in ended_message(hardened, session)


def test_signals_go_through_pidfds_never_a_reused_pid():
    """A handle on a process that has exited and been reaped signals nothing, even though
    its number may already belong to another process."""
    import subprocess

    from tci.sandbox.pidfd import ProcessHandle

    child = subprocess.Popen(["sleep", "60"])
    handle = ProcessHandle.open(child.pid)
    assert handle is not None and handle.alive()
    child.kill()
    child.wait()
    assert not handle.signal(9)
    handle.close()


def test_printing_more_than_the_memory_limit_in_total_is_not_kept_by_the_worker(hardened):
    """IPython keeps every cell's printed output for `%history -o`; here nothing is kept, so
    300 MB printed in one cell (cut at the output cap) does not hit the 256 MiB limit."""
    session = new_session(hardened)
    data = hardened.run("import sys\nfor _ in range(3000):\n    sys.stdout.write('z' * 100_000)\n"
                        "done = True", session)
    assert not outputs_of(data, "error"), data["outputs"][-1]
    assert hardened.run("done", session)["outputs"][0]["data"] == {"text/plain": "True"}


def test_a_killed_timeout_leaves_no_unretrieved_exception_in_the_server_log(server_factory):
    """A cell that ignores the interrupt is killed; that death is reported to the caller and
    must not also be logged by asyncio as "Future exception was never retrieved" (noise in
    which a real fault would hide)."""
    server = server_factory(execute_timeout=2, interrupt_grace_seconds=1)
    session = new_session(server)
    data = server.run("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "time.sleep(60)", session)
    assert "did not stop within 1 s of the interrupt" in outputs_of(data, "error")[-1], data
    assert server.run("print('next')")["outputs"] == [{"type": "stdout", "data": "next\n"}]
    server.stop()  # every object collected: what would be logged at all has been
    log = server.log()
    for noise in ("never retrieved", "Exception in callback", "Traceback"):
        assert noise not in log, log[log.index(noise) - 1000:][:3000]


def test_a_stream_client_that_leaves_leaves_no_pending_task_in_the_server_log(server_factory):
    """A streamed call whose client goes away mid-cell: the cell is interrupted, and nothing
    the stream was waiting on is left behind for asyncio to log ("Task was destroyed but it
    is pending!")."""
    server = server_factory()
    session = new_session(server)
    body = {"language": "python", "session_id": session, "stream": True,
            "code": "print('first', flush=True)\nimport time\ntime.sleep(60)"}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        for line in r.iter_lines():
            if "first" in line:
                break  # leave mid-cell
    wait_for(lambda: server.execute("print('free')", session).status_code == 200,
             "the session to be free again", timeout=60)
    server.stop()
    log = server.log()
    for noise in ("was destroyed but it is pending", "never retrieved", "Traceback"):
        assert noise not in log, log[log.index(noise) - 1000:][:3000]


def test_a_blob_named_under_many_mime_types_ends_the_session(hardened):
    """One 900 KiB blob named under 200 MIME types: decoded once per name it was 184 MB of
    answer and 0.5 GB of server memory for a 1 MiB cap. Each blob may be taken once."""
    session = new_session(hardened)
    server_pid = hardened.process.pid
    rss_before = rss_bytes(server_pid)
    code = WORKER + """
import json
blob = b"z" * (900 * 1024)
head = json.dumps({"type": "display_data", "id": worker.request_id, "blobs": [len(blob)],
                   "bundle": [[f"text/m{i}", 0, False] for i in range(200)]}).encode()
body = HEADER.pack(len(head)) + head + blob
send(HEADER.pack(len(body)) + body)
import time; time.sleep(5)
"""
    response = hardened.execute(code, session)
    assert response.status_code == 200 and len(response.content) < MAX_OUTPUT
    errors = outputs_of(response.json()["data"], "error")
    assert errors and "broke the protocol (event refers to blob 0 twice)" in errors[-1], errors
    assert rss_bytes(server_pid) - rss_before < 60 * MiB
    assert "broke the protocol" in ended_message(hardened, session)


def test_a_head_nested_too_deep_to_parse_ends_the_session_with_a_clear_reason(hardened):
    """30,000 nested lists in a head: the parser's recursion limit, which used to escape the
    reader as an error logged for every frame while the session went on."""
    session = new_session(hardened)
    code = WORKER + """
head = b"[" * 30000 + b"]" * 30000
send(HEADER.pack(4 + len(head)) + HEADER.pack(len(head)) + head)
import time; time.sleep(5)
"""
    errors = outputs_of(hardened.run(code, session), "error")
    assert errors and "broke the protocol (invalid event head: maximum recursion depth" \
        in errors[-1], errors
    assert "broke the protocol" in ended_message(hardened, session)
    assert "Exception in callback" not in hardened.log()


FLOOD_SECONDS = 10


def test_a_worker_flooding_every_channel_keeps_the_server_bounded(server_factory):
    """For 10 s the code floods all its channels at once: tiny event frames (each an output),
    stdout without a newline, NULs on stderr one write at a time. The server stays
    responsive, its memory bounded and the answer within the cap (CPU is reported)."""
    server = server_factory(**{**LIMITS, "execute_timeout": 4 * FLOOD_SECONDS})
    session = new_session(server)
    server_pid = server.process.pid
    rss_before, cpu_before = rss_bytes(server_pid), cpu_seconds(server_pid)
    watch = HealthWatch(server.url)
    code = WORKER + f"""
import time
frames = encode_event({{"type": "display_data", "id": worker.request_id,
                        "data": {{"": ""}}}}) * 100
end = time.monotonic() + {FLOOD_SECONDS}
while time.monotonic() < end:
    send(frames)
    os.write(1, b"x" * 1000)
    for _ in range(10):
        os.write(2, b"\\0")
"""
    started = time.monotonic()
    response = server.execute(code, session)
    wall = time.monotonic() - started
    slowest = watch.finish()
    cpu = cpu_seconds(server_pid) - cpu_before
    rss_growth = rss_bytes(server_pid) - rss_before
    print(f"\n{FLOOD_SECONDS} s flood: server CPU {cpu:.1f} s over {wall:.1f} s, RSS "
          f"+{rss_growth / MiB:.1f} MiB, slowest /health {slowest:.3f} s, "
          f"answer {len(response.content)} bytes")
    assert response.status_code == 200
    assert len(response.content) <= MAX_OUTPUT + 2048
    assert TRUNCATION_NOTICE in "".join(outputs_of(response.json()["data"], "stderr"))
    assert slowest < RESPONSIVE_SECONDS, f"/health took {slowest:.2f} s during the flood"
    assert rss_growth < 100 * MiB
    assert server.run("print('after')", session)["outputs"] == [
        {"type": "stdout", "data": "after\n"}]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far, from /proc/<pid>/stat."""
    import os
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
