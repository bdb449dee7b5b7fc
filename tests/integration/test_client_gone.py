"""What users notice first: a client that gives up on a call finds its session usable at once
(the abandoned cell interrupted, state kept), over plain HTTP, our SDK and MCP; and streamed
output arrives in whole lines, in the order it was written."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tci.client import Client
from tci.client._errors import TCIClientError
from tests.conftest import outputs_of, stdout_of
from tests.integration.test_mcp import over_http

ABANDONED = "import time\ntime.sleep(300)\nx = -1"
# Answers must come long before the cell would have ended or timed out by itself: this bound
# only tells "interrupted" from "waited behind the sleep" (300 s) or the timeout (120 s).
PROMPT_SECONDS = 30


@pytest.fixture
def gone_server(server_factory):
    return server_factory(execute_timeout=120)


def assert_session_usable(server, session_id: str, started: float) -> None:
    data = server.run("x + 1", session_id)
    assert time.monotonic() - started < PROMPT_SECONDS
    assert data["outputs"] == [{"type": "execute_result", "data": {"text/plain": "42"}}]


def test_a_plain_call_whose_client_times_out_is_interrupted(gone_server):
    session = gone_server.run("x = 41")["session_id"]
    started = time.monotonic()
    with gone_server.client(timeout=1.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/tci/execute", json={"language": "python", "code": ABANDONED,
                                             "session_id": session})
    assert_session_usable(gone_server, session, started)
    # The interrupted cell's KeyboardInterrupt belongs to it alone, not to the next call.
    assert gone_server.run("print('next')", session)["outputs"] == [
        {"type": "stdout", "data": "next\n"}]


def test_our_sdk_with_a_short_timeout_leaves_the_session_usable(gone_server):
    session = gone_server.run("x = 41")["session_id"]
    started = time.monotonic()
    with Client(base_url=gone_server.base_url, api_key=gone_server.key) as client:
        with pytest.raises((TCIClientError, httpx.TimeoutException)):
            client.code_interpreter.execute(code=ABANDONED, session_id=session, timeout=1.5)
        result = client.code_interpreter.execute(code="x + 1", session_id=session)
    assert time.monotonic() - started < PROMPT_SECONDS
    assert result.outputs[0].data == {"text/plain": "42"}


def test_an_mcp_tool_call_that_times_out_leaves_the_session_usable(gone_server):
    session = gone_server.run("x = 41")["session_id"]
    started = time.monotonic()

    async def abandon(mcp_session) -> None:
        with pytest.raises(MCPError):
            await mcp_session.call_tool(
                "execute_code", {"code": ABANDONED, "session_id": session},
                read_timeout_seconds=1.5)

    over_http(gone_server, abandon)
    assert_session_usable(gone_server, session, started)


def stream(server, code: str) -> list[tuple[str, dict]]:
    body = {"language": "python", "code": code, "stream": True}
    events, name = [], None
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_streamed_lines_arrive_whole_and_in_order(server):
    code = ("import sys\nfor i in range(3):\n    print(i)\nsys.stderr.write('warn\\n')\n"
            "print('a\\nb')\nprint('end', end='')")
    events = stream(server, code)
    outputs = [(p["type"], p["data"]) for name, p in events if name == "output"]
    assert outputs == [("stdout", "0\n"), ("stdout", "1\n"), ("stdout", "2\n"),
                       ("stderr", "warn\n"), ("stdout", "a\n"), ("stdout", "b\n"),
                       ("stdout", "end")]
    result = events[-1][1]["data"]
    assert stdout_of(result) == "0\n1\n2\na\nb\nend"
    assert outputs_of(result, "stderr") == ["warn\n"]


def test_a_partial_line_is_not_held_back(server):
    """A prompt without a newline shows while the cell still runs: it comes long before the
    cell's 60 s sleep ends (a 3 s sleep raced a loaded machine), and the cell, abandoned
    once it has come, is interrupted by the client leaving."""
    body = {"language": "python", "stream": True,
            "code": "import time\nprint('working...', end='')\ntime.sleep(60)\nprint(' done')"}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        started = time.monotonic()
        for line in r.iter_lines():
            assert "done" not in line, line
            if line.startswith("data: ") and "working..." in line:
                assert time.monotonic() - started < PROMPT_SECONDS  # the sleep still runs
                break
        else:
            pytest.fail("the partial line never came")
