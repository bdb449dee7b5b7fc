"""A streamed call's last words: what the server adds when a call ends (the limits it ran
into, the death of its worker) reaches the client as `output` events too, in the order of
the `result`, so that a client that only renders events sees why its call ended."""

import json

from prometheus_client.parser import text_string_to_metric_families

# Threads until the session's pids limit refuses one: the kernel counts the refusal.
THREADS_TO_THE_LIMIT = """
import threading, time
started = 0
try:
    for _ in range(64):
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
        started += 1
except RuntimeError:
    print('refused after', started)
"""


def streamed_call(server, code: str, session_id: str | None = None) -> tuple[list, dict]:
    """The call's `output` events and its `result` event's payload."""
    body = {"language": "python", "code": code, "stream": True}
    if session_id:
        body["session_id"] = session_id
    events, name = [], None
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert [n for n, _ in events][-1] == "result", events
    return [p for n, p in events if n == "output"], events[-1][1]


def errors(outputs: list) -> list[str]:
    return [o["data"] for o in outputs if o["type"] == "error"]


def test_a_limit_the_call_ran_into_is_streamed_as_in_the_result(server_factory):
    server = server_factory(pids_limit="16")
    streamed, result = streamed_call(server, THREADS_TO_THE_LIMIT)
    [notice] = errors(result["data"]["outputs"])
    assert notice.startswith("ResourceLimit: process limit of 16 processes"), notice
    assert errors(streamed) == [notice]
    assert result["data"]["outputs"][-1] == streamed[-1] == {"type": "error", "data": notice}


def test_a_worker_death_is_streamed_once_as_in_the_result(server):
    session_id = server.run("x = 1")["session_id"]
    streamed, result = streamed_call(
        server, "import os, signal\nprint('going')\nos.kill(os.getpid(), signal.SIGKILL)",
        session_id)
    [notice] = errors(result["data"]["outputs"])
    assert notice == ("WorkerDied: the worker process was killed by SIGKILL; "
                      "the session was ended."), notice
    assert errors(streamed) == [notice]
    assert streamed[0] == {"type": "stdout", "data": "going\n"}
    with server.client() as client:
        gone = client.post("/v1/tci/execute", json={"language": "python", "code": "x",
                                                    "session_id": session_id})
    assert gone.status_code == 410, gone.text


def killed_by_reason(server) -> dict[str, float]:
    with server.client() as client:
        text = client.get("/metrics").text
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "tci_sandboxes_killed"
            for sample in family.samples if sample.name.endswith("_total")}


def test_a_worker_the_kernel_killed_at_the_memory_limit_says_so_and_only_that(server_factory):
    server = server_factory(memory_limit_bytes=str(256 << 20))
    session_id = server.run("x = 1")["session_id"]
    before = killed_by_reason(server)
    streamed, result = streamed_call(server, "hog = bytearray(1 << 30)", session_id)
    [notice] = errors(result["data"]["outputs"])
    # The kernel's reason, not "WorkerDied: ... killed by SIGKILL".
    assert notice == ("MemoryError: memory limit of 256 MiB exceeded (TCI_MEMORY_LIMIT_BYTES): "
                      "the worker was killed and the session ended."), notice
    assert errors(streamed) == [notice]
    with server.client() as client:
        gone = client.post("/v1/tci/execute", json={"language": "python", "code": "x",
                                                    "session_id": session_id})
    assert gone.status_code == 410, gone.text
    assert "MemoryError: memory limit of 256 MiB exceeded" in gone.text
    after = killed_by_reason(server)
    assert after["memory_limit"] == before["memory_limit"] + 1
    assert after["worker_died"] == before["worker_died"]
