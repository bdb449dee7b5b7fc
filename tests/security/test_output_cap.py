"""TCI_MAX_OUTPUT_BYTES bounds what the client receives, not only what the code wrote.

JSON escapes make text bigger on the wire: a NUL is 1 byte written and 6 sent (`\\u0000`), a
`"` or a backslash 2, a byte of invalid UTF-8 becomes U+FFFD (3). Every output and every
streamed event also has a frame of its own (`{"type":...,"data":...}`, `event: output`), so
thousands of empty outputs cost the code nothing and the client megabytes. Each attack here
writes several times the cap; the answer's body, counted in bytes on the wire, must stay
within the cap plus a small fixed overhead (the envelope and the truncation notice), with
the notice. A streamed answer sends its outputs twice (as `output` events, then in the
`result`), so each of the two parts is held to that bound.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import outputs_of
from tests.security.conftest import LIMITS, start_hardened
from tests.security.test_resources import TRUNCATION_NOTICE
from tests.security.test_worker_channel import WORKER

MAX_OUTPUT = LIMITS["max_output_bytes"]
# The envelope ({"data": {...}, "errors": null}, session id, status), the notice and the
# frames of a few outputs: far below what any of the floods would add past the cap.
OVERHEAD = 2048
FLOOD = 3 * MAX_OUTPUT


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    # Floods of a few MiB take a while on a busy machine: more time than LIMITS' 5 s.
    instance = start_hardened(tmp_path_factory, execute_timeout=60)
    yield instance
    instance.stop()


def byte_flood(data: str) -> str:
    """Code writing `data` (a bytes literal) to stdout until FLOOD bytes are written."""
    return (f"import os\nchunk = {data} * 4096\n"
            f"for _ in range({FLOOD} // len(chunk) + 1):\n    os.write(1, chunk)\n")


FLOODS = {
    "nul": byte_flood("b'\\0'"),
    "quote": byte_flood("b'\"'"),
    "backslash": byte_flood("b'\\\\'"),
    "control": byte_flood("bytes(range(32))"),
    "invalid-utf8": byte_flood("b'\\xff'"),
    # Characters some line splitters (str.splitlines, httpx) break lines at: a streamed
    # event must not be split by them, so they are sent escaped.
    "line-separators": byte_flood("'\\x85\\u2028\\u2029'.encode()"),
    # One output per write, each with its own frame in the answer.
    "alternating-streams": "import os, sys\nfor _ in range(200_000):\n"
                           "    os.write(1, b'a'); print('b', end='', file=sys.stderr)\n",
    # Forged frames carrying nothing: no bytes of output, but an output each.
    "empty-rich-outputs": WORKER + """
frame = encode_event({"type": "display_data", "id": worker.request_id, "data": {"": ""}})
send(frame * 200_000)
""",
    "empty-errors": WORKER + """
frame = encode_event({"type": "error", "id": worker.request_id, "data": ""})
send(frame * 200_000)
""",
}


def execute_raw(server, code: str, stream: bool) -> bytes:
    body = {"language": "python", "code": code, "stream": stream}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        assert r.status_code == 200, r.read()
        assert "content-encoding" not in r.headers  # the body counted is the body sent
        return r.read()


@pytest.mark.parametrize("flood", list(FLOODS))
def test_the_plain_answer_is_within_the_cap_in_bytes_sent(hardened, flood):
    body = execute_raw(hardened, FLOODS[flood], stream=False)
    assert len(body) <= MAX_OUTPUT + OVERHEAD, f"{len(body)} bytes sent for a {MAX_OUTPUT} cap"
    data = json.loads(body)["data"]
    assert TRUNCATION_NOTICE in "".join(outputs_of(data, "stderr")), data["outputs"][-3:]
    assert data["status"] == "completed"


def split_events(body: bytes) -> tuple[bytes, bytes]:
    """The `output` events' part of an SSE body and its `result` event."""
    head, marker, result = body.rpartition(b"event: result\n")
    assert marker, body[-500:]
    return head, marker + result


def events_of(part: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in part.decode().split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith("event: "):
            assert len(lines) == 2 and lines[1].startswith("data: "), block[:200]
            events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


@pytest.mark.parametrize("flood", list(FLOODS))
def test_the_streamed_answer_is_within_the_cap_in_bytes_sent(hardened, flood):
    body = execute_raw(hardened, FLOODS[flood], stream=True)
    outputs, result = split_events(body)
    assert len(outputs) <= MAX_OUTPUT + OVERHEAD, f"{len(outputs)} bytes of output events"
    assert len(result) <= MAX_OUTPUT + OVERHEAD, f"{len(result)} bytes of result"
    streamed = [payload for name, payload in events_of(outputs)]
    assert TRUNCATION_NOTICE in "".join(o["data"] for o in streamed if o["type"] == "stderr")
    (name, payload), = events_of(result)
    assert name == "result" and payload["data"]["status"] == "completed"
    # The events and the result hold the same outputs.
    kept = payload["data"]["outputs"]
    for kind in ("stdout", "stderr"):
        assert "".join(o["data"] for o in streamed if o["type"] == kind) == \
            "".join(outputs_of(payload["data"], kind))
    assert [o for o in streamed if o["type"] not in ("stdout", "stderr")] == \
        [o for o in kept if o["type"] not in ("stdout", "stderr")]


def test_text_under_the_cap_arrives_whole_and_escaped_correctly(hardened):
    """The cap cuts only what is over it: escape-heavy text under it arrives intact."""
    text = "".join(map(chr, range(32))) + "\"\\é\u2028\x85\U0001F600"
    code = f"import sys\nsys.stdout.write({text!r} * 1000);"
    plain = json.loads(execute_raw(hardened, code, stream=False))["data"]
    assert plain["outputs"] == [{"type": "stdout", "data": text * 1000}]
    streamed = events_of(execute_raw(hardened, code, stream=True))
    assert "".join(p["data"] for name, p in streamed if name == "output") == text * 1000
