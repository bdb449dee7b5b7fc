"""The MCP tools (`build_server`), whatever they act through.

A `Backend` does the work: the app's SessionManager in-process (tci/server/mcp.py, `/mcp` of
`tci serve`) or a tci server's HTTP API through our SDK (tci/mcp/stdio.py, `tci mcp`). Both
answer in the REST API's shapes (`sessions_json`, `file_json`), so the transports agree.

Tool results: stdout/stderr/tracebacks and text reprs as TextContent, images (image/png, ...)
as ImageContent; a request the server refuses (unknown session, bad key, too large, ...) is an
MCP tool error (`isError`) whose text is the server's message."""

from __future__ import annotations

import base64
import functools
import json
import mimetypes
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, ParamSpec, Protocol
from urllib.parse import quote

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
)
from pydantic import Field

from tci.schemas import SessionList

P = ParamSpec("P")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Rich outputs without an image are shown as the first of these they carry.
TEXT_TYPES = ("text/plain", "text/markdown", "text/html", "image/svg+xml", "text/latex",
              "application/json")

INSTRUCTIONS = (
    "A Python code interpreter. execute_code runs code in a stateful IPython session (variables, "
    "imports and files persist between calls with the same session_id; without one a new session "
    "starts). The working directory is /workspace; matplotlib figures come back as images. "
    "Sessions expire after an hour; end them with end_session when done."
)


class Backend(Protocol):
    """What the tools need from tci, in-process or over HTTP. Failures raise ToolError."""

    async def execute(self, code: str, session_id: str | None) -> dict[str, Any]: ...
    async def list_sessions(self) -> list[dict[str, Any]]: ...
    async def end_session(self, session_id: str) -> None: ...
    async def list_files(self, session_id: str) -> list[dict[str, Any]]: ...
    async def read_file(self, session_id: str, path: str) -> bytes: ...
    async def write_file(self, session_id: str, path: str, content: bytes) -> int: ...


def sessions_json(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions serialized as the REST answer is (its response model)."""
    dumped: list[dict[str, Any]] = SessionList.model_validate(
        {"sessions": sessions}).model_dump(mode="json")["sessions"]
    return dumped


def file_json(path: str, size: int, modified: datetime) -> dict[str, Any]:
    """A file as the REST listing gives it."""
    return {"path": path, "size": size, "modified": modified.isoformat()}


# -- converting results ------------------------------------------------------------------------


def output_blocks(outputs: list[dict[str, Any]]) -> list[ContentBlock]:
    """TCI outputs -> MCP content: consecutive text of one stream is joined; a rich output is
    its image if it has one, else its best text form."""
    blocks: list[ContentBlock] = []
    last_stream: str | None = None
    for output in outputs:
        kind, data = output["type"], output["data"]
        if kind in ("stdout", "stderr", "error"):
            text = data if kind != "stderr" or last_stream == "stderr" else f"[stderr]\n{data}"
            # Text of the stream the last block holds (always a TextContent) joins it.
            previous = blocks[-1] if last_stream == kind and kind != "error" else None
            if isinstance(previous, TextContent):
                blocks[-1] = TextContent(text=previous.text + text)
            else:
                blocks.append(TextContent(text=text))
            last_stream = kind
            continue
        last_stream = None
        image = next((m for m in IMAGE_TYPES if m in data), None)
        if image is not None:
            blocks.append(ImageContent(data=data[image], mime_type=image))
            continue
        mime = next((m for m in TEXT_TYPES if m in data), None)
        if mime is not None:
            value = data[mime]
            text = value if isinstance(value, str) else json.dumps(value, indent=2)
            blocks.append(TextContent(text=text))
    return blocks


def file_blocks(path: str, content: bytes) -> list[ContentBlock]:
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if mime in IMAGE_TYPES:
        return [ImageContent(data=base64.b64encode(content).decode(), mime_type=mime)]
    try:
        return [TextContent(text=content.decode("utf-8"))]
    except UnicodeDecodeError:
        blob = BlobResourceContents(uri=f"file:///workspace/{quote(path)}", mime_type=mime,
                                    blob=base64.b64encode(content).decode())
        return [EmbeddedResource(resource=blob)]


def _errors_as_results(
    tool: Callable[P, Awaitable[CallToolResult]],
) -> Callable[P, Awaitable[CallToolResult]]:
    """A refused request is a tool error whose text is exactly the server's message (raising
    ToolError would prefix it with "Error executing tool ...")."""

    @functools.wraps(tool)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        try:
            return await tool(*args, **kwargs)
        except ToolError as exc:
            return CallToolResult(content=[TextContent(text=str(exc))], is_error=True)

    return wrapper


def _json(value: Any) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=json.dumps(value, indent=2))],
                          structured_content=value)


# -- the tools ---------------------------------------------------------------------------------


def build_server(backend_for: Callable[[Context], Backend]) -> MCPServer:
    """The MCP server; `backend_for(ctx)` gives the backend acting for this call's caller."""
    server = MCPServer("tci", instructions=INSTRUCTIONS, version="0.1.0")

    @server.tool()
    @_errors_as_results
    async def execute_code(
        code: Annotated[str, Field(description="Python code (IPython: !shell and %magics work)")],
        ctx: Context,
        session_id: Annotated[str | None, Field(
            description="an existing session to run in; omit to start a new one")] = None,
    ) -> CallToolResult:
        """Run Python code in a sandboxed, stateful session and return its outputs (text,
        tracebacks, images). The first line of the result names the session id: pass it as
        session_id to keep variables and files for the next call."""
        data = await backend_for(ctx).execute(code, session_id)
        blocks = [TextContent(text=f"session_id: {data['session_id']}"),
                  *output_blocks(data["outputs"])]
        return CallToolResult(content=blocks, structured_content={
            "session_id": data["session_id"], "status": data["status"]})

    @server.tool()
    @_errors_as_results
    async def list_sessions(ctx: Context) -> CallToolResult:
        """The caller's sessions, running then paused (id, status, execute_count,
        started_at, last_execute_at, expires_at). A paused one resumes, state and all, when
        execute_code is called with its id."""
        return _json({"sessions": await backend_for(ctx).list_sessions()})

    @server.tool()
    @_errors_as_results
    async def end_session(session_id: str, ctx: Context) -> CallToolResult:
        """End a session now, freeing its process and files."""
        await backend_for(ctx).end_session(session_id)
        return _json({"id": session_id, "ended": True})

    @server.tool()
    @_errors_as_results
    async def list_files(session_id: str, ctx: Context) -> CallToolResult:
        """The files in a session's working directory (/workspace): path, size, modified."""
        return _json({"files": await backend_for(ctx).list_files(session_id)})

    @server.tool()
    @_errors_as_results
    async def read_file(
        session_id: str,
        path: Annotated[str, Field(description="path relative to /workspace")],
        ctx: Context,
    ) -> CallToolResult:
        """Read a file of a session: text as text, images as images, other bytes as a base64
        resource."""
        content = await backend_for(ctx).read_file(session_id, path)
        return CallToolResult(content=file_blocks(path, content))

    @server.tool()
    @_errors_as_results
    async def write_file(
        session_id: str,
        path: Annotated[str, Field(description="path relative to /workspace")],
        content: str,
        ctx: Context,
        encoding: Annotated[str, Field(
            description="'text' (UTF-8, the default) or 'base64' for binary content",
            pattern="^(text|base64)$")] = "text",
    ) -> CallToolResult:
        """Write a file into a session's working directory (directories are created)."""
        try:
            raw = base64.b64decode(content, validate=True) if encoding == "base64" \
                else content.encode()
        except ValueError as exc:
            raise ToolError(f"content is not valid base64: {exc}") from exc
        size = await backend_for(ctx).write_file(session_id, path, raw)
        return _json({"path": path, "size": size})

    return server
