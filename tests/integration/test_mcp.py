"""The MCP server, driven by the official MCP Python client (mcp.ClientSession).

Over streamable HTTP at `/mcp` of a real `tci serve`: the six tools are listed; execute_code
returns the session id, stdout, stderr and tracebacks as text, a matplotlib figure as an
ImageContent holding a PNG, and keeps state when the session id is passed back; sessions
are the API key's own (seen over REST, invisible to another key), paused ones listed as
such and resumed by execute_code; files written and read
through the tools are the session's; refused requests are tool errors carrying the server's
message; a bad key gets 401.
Over stdio: `tci mcp --url ... --api-key ...` (or TCI_BASE_URL/TCI_API_KEY) serves the same
tools by calling the HTTP API."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import EmbeddedResource, ImageContent, TextContent

TCI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "tci")
TOOLS = {"execute_code", "list_sessions", "end_session", "read_file", "write_file", "list_files"}


def over_http(server, body, key=None):
    """Run `await body(session)` in an MCP client session to `server`'s /mcp."""

    async def main():
        headers = {"Authorization": f"Bearer {key or server.key}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
            streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await body(session)

    return asyncio.run(main())


def over_stdio(args, body, env=None):
    async def main():
        params = StdioServerParameters(command=TCI, args=["mcp", *args], env=env)
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await body(session)

    return asyncio.run(main())


def call(name, **arguments):
    async def body(session):
        return await session.call_tool(name, arguments)

    return body


def texts(result):
    return [block.text for block in result.content if isinstance(block, TextContent)]


def session_id_of(result):
    assert not result.is_error, texts(result)
    first = result.content[0].text
    assert first.startswith("session_id: ")
    assert result.structured_content["session_id"] == first.removeprefix("session_id: ")
    return first.removeprefix("session_id: ")


def rest_error(server, method, path, key=None):
    with server.client(key) as client:
        response = client.request(method, path)
    assert response.status_code >= 400
    return response.json()["errors"][0]


def test_lists_the_tools(server):
    async def body(session):
        return await session.list_tools()

    tools = {tool.name: tool for tool in over_http(server, body).tools}
    assert set(tools) == TOOLS
    schema = tools["execute_code"].input_schema
    assert schema["required"] == ["code"]
    assert set(schema["properties"]) == {"code", "session_id"}


def test_execute_prints_text_and_reuses_the_session(server):
    async def body(session):
        first = await session.call_tool("execute_code", {"code": "x = 41\nprint('hello', x)"})
        sid = session_id_of(first)
        second = await session.call_tool("execute_code", {"code": "x + 1", "session_id": sid})
        return first, second

    first, second = over_http(server, body)
    sid = session_id_of(first)
    assert texts(first) == [f"session_id: {sid}", "hello 41\n"]
    assert session_id_of(second) == sid
    assert texts(second) == [f"session_id: {sid}", "42"]


def test_matplotlib_figure_is_an_image(server):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('drawn')"
    result = over_http(server, call("execute_code", code=code))
    session_id_of(result)
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "drawn\n" in texts(result)


def test_stderr_and_exception_are_text_not_a_tool_error(server):
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\n1 / 0"
    result = over_http(server, call("execute_code", code=code))
    assert result.is_error is False
    _, out, err, error = texts(result)
    assert (out, err) == ("out\n", "[stderr]\nerr\n")
    assert "ZeroDivisionError" in error


def test_sessions_belong_to_the_key(server):
    other = server.new_key("mcp-other")

    async def body(session):
        created = await session.call_tool("execute_code", {"code": "print(1)"})
        listed = await session.call_tool("list_sessions", {})
        return created, listed

    created, listed = over_http(server, body)
    sid = session_id_of(created)
    assert sid in [s["id"] for s in listed.structured_content["sessions"]]
    assert sid in [s["id"] for s in json.loads(listed.content[0].text)["sessions"]]
    with server.client() as client:
        rest = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    # The same listing as the REST API's, field for field.
    assert [s for s in listed.structured_content["sessions"] if s["id"] == sid] == \
        [s for s in rest if s["id"] == sid]

    # Another key sees neither the session nor a difference from an unknown one.
    listed_other = over_http(server, call("list_sessions"), key=other)
    assert sid not in [s["id"] for s in listed_other.structured_content["sessions"]]
    refused = over_http(server, call("execute_code", code="print(2)", session_id=sid), key=other)
    assert refused.is_error is True
    assert texts(refused) == [rest_error(server, "DELETE", f"/tci/sessions/{sid}", key=other)]


def test_paused_sessions_are_listed_and_resume_on_execute(server):
    async def start(session):
        return session_id_of(await session.call_tool("execute_code", {"code": "kept = 41"}))

    sid = over_http(server, start)
    with server.client() as client:
        assert client.post(f"/v1/tci/sessions/{sid}/pause").status_code == 200

    async def body(session):
        listed = await session.call_tool("list_sessions", {})
        resumed = await session.call_tool("execute_code",
                                          {"code": "print(kept + 1)", "session_id": sid})
        again = await session.call_tool("list_sessions", {})
        return listed, resumed, again

    listed, resumed, again = over_http(server, body)
    assert [s["status"] for s in listed.structured_content["sessions"] if s["id"] == sid] == \
        ["paused"]
    assert resumed.is_error is False and texts(resumed)[1] == "42\n"
    assert [s["status"] for s in again.structured_content["sessions"] if s["id"] == sid] == \
        ["running"]


def test_end_session_then_it_is_gone(server):
    async def body(session):
        sid = session_id_of(await session.call_tool("execute_code", {"code": "pass"}))
        ended = await session.call_tool("end_session", {"session_id": sid})
        listed = await session.call_tool("list_sessions", {})
        again = await session.call_tool("execute_code", {"code": "pass", "session_id": sid})
        return sid, ended, listed, again

    sid, ended, listed, again = over_http(server, body)
    assert ended.is_error is False
    assert ended.structured_content == {"id": sid, "ended": True}
    assert sid not in [s["id"] for s in listed.structured_content["sessions"]]
    assert again.is_error is True
    assert texts(again) == [rest_error(server, "DELETE", f"/tci/sessions/{sid}")]
    assert "ended" in texts(again)[0]


def test_unknown_session_is_a_tool_error_with_the_server_message(server):
    result = over_http(server, call("end_session", session_id="no-such-session"))
    assert result.is_error is True
    assert texts(result) == [rest_error(server, "DELETE", "/tci/sessions/no-such-session")]


def test_write_list_read_files(server):
    blob = bytes(range(256))

    async def body(session):
        sid = session_id_of(await session.call_tool("execute_code", {"code": "pass"}))
        wrote = await session.call_tool("write_file", {
            "session_id": sid, "path": "data/notes.txt", "content": "héllo\nworld\n"})
        await session.call_tool("write_file", {
            "session_id": sid, "path": "blob.bin",
            "content": base64.b64encode(blob).decode(), "encoding": "base64"})
        ran = await session.call_tool("execute_code", {
            "session_id": sid,
            "code": "print(open('data/notes.txt').read().upper(), end='')\n"
                    "open('out.txt', 'w').write('from code')"})
        listed = await session.call_tool("list_files", {"session_id": sid})
        text = await session.call_tool("read_file", {"session_id": sid, "path": "out.txt"})
        binary = await session.call_tool("read_file", {"session_id": sid, "path": "blob.bin"})
        missing = await session.call_tool("read_file", {"session_id": sid, "path": "nope.txt"})
        return sid, wrote, ran, listed, text, binary, missing

    sid, wrote, ran, listed, text, binary, missing = over_http(server, body)
    assert wrote.structured_content == {"path": "data/notes.txt", "size": 13}  # é is 2 bytes
    assert texts(ran)[1] == "HÉLLO\nWORLD\n"
    files = {f["path"]: f["size"] for f in listed.structured_content["files"]}
    assert files == {"data/notes.txt": 13, "blob.bin": 256, "out.txt": 9}
    assert texts(text) == ["from code"]
    (resource,) = binary.content
    assert isinstance(resource, EmbeddedResource)
    assert base64.b64decode(resource.resource.blob) == blob
    assert missing.is_error is True
    assert texts(missing) == [rest_error(server, "GET", f"/tci/sessions/{sid}/files/nope.txt")]


def test_bad_key_is_rejected(server):
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({"Authorization": "Bearer tci_not_a_key"}, {}):
        response = httpx.post(f"{server.url}/mcp", json=initialize, headers={**headers, **auth})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["data"] is None
    # With the key the same request is answered.
    response = httpx.post(f"{server.url}/mcp", json=initialize, timeout=30,
                          headers={**headers, "Authorization": f"Bearer {server.key}"})
    assert response.status_code == 200


def test_stdio_executes_through_the_http_api(server):
    async def body(session):
        tools = await session.list_tools()
        result = await session.call_tool("execute_code", {"code": "print(6 * 7)"})
        return tools, result

    tools, result = over_stdio(["--url", server.base_url, "--api-key", server.key], body)
    assert {tool.name for tool in tools.tools} == TOOLS
    sid = session_id_of(result)
    assert texts(result) == [f"session_id: {sid}", "42\n"]
    with server.client() as client:
        rest = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert sid in [s["id"] for s in rest]


def test_stdio_reads_env_and_reports_server_errors(server):
    env = {"TCI_BASE_URL": server.url, "TCI_API_KEY": server.key}
    result = over_stdio([], call("end_session", session_id="no-such-session"), env=env)
    assert result.is_error is True
    assert texts(result) == [rest_error(server, "DELETE", "/tci/sessions/no-such-session")]

    bad = over_stdio(["--url", server.base_url, "--api-key", "tci_wrong"],
                     call("list_sessions"))
    assert bad.is_error is True
    assert texts(bad) == ["invalid or revoked API key"]
