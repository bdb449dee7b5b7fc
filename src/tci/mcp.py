"""The MCP server: the code interpreter as Model Context Protocol tools.

Two ways in, one set of tools (`build_server`):
- `tci serve` answers MCP's streamable HTTP transport at `/mcp` (`mount`): each request is
  authenticated with the same API keys as the REST API, and the tools call the app's
  `SessionManager` in-process as that key, so sessions belong to it exactly as over REST;
- `tci mcp --url URL --api-key KEY` serves MCP over stdio (`run_stdio`), the tools calling a
  tci server's HTTP API.

Tool results: stdout/stderr/tracebacks and text reprs as TextContent, images (image/png, ...)
as ImageContent; a request the server refuses (unknown session, bad key, too large, ...) is an
MCP tool error (`isError`) whose text is the server's message."""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
)
from pydantic import Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tci.config import Settings
from tci.errors import TCIError
from tci.schemas import ExecuteRequest, SessionList

log = logging.getLogger(__name__)

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
            if last_stream == kind and kind != "error":
                blocks[-1] = TextContent(text=blocks[-1].text + text)  # type: ignore[union-attr]
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


def _errors_as_results(tool: Any) -> Any:
    """A refused request is a tool error whose text is exactly the server's message (raising
    ToolError would prefix it with "Error executing tool ...")."""

    @functools.wraps(tool)
    async def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
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
        """The caller's live sessions (id, execute_count, started_at, last_execute_at,
        expires_at)."""
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


# -- in-process (tci serve, /mcp) --------------------------------------------------------------


class ManagerBackend:
    """The tools acting as `key` on the app's SessionManager."""

    def __init__(self, manager: Any, key: Any) -> None:
        self.manager = manager
        self.key = key

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except TCIError as exc:
            raise ToolError(exc.message) from exc

    async def execute(self, code: str, session_id: str | None) -> dict[str, Any]:
        request = ExecuteRequest(language="python", code=code, session_id=session_id)
        return await self._call(self.manager.execute(self.key, request))

    async def list_sessions(self) -> list[dict[str, Any]]:
        # Serialized as the REST answer is (its response model), so both transports agree.
        listing = SessionList(sessions=self.manager.list(self.key))
        return listing.model_dump(mode="json")["sessions"]

    async def end_session(self, session_id: str) -> None:
        await self._call(self.manager.end_by_client(self.key, session_id))

    async def list_files(self, session_id: str) -> list[dict[str, Any]]:
        files = await self._call(self.manager.list_files(self.key, session_id))
        return [{"path": f.path, "size": f.size,
                 "modified": datetime.fromtimestamp(f.modified, UTC).isoformat()} for f in files]

    async def read_file(self, session_id: str, path: str) -> bytes:
        return await self._call(self.manager.read_file(self.key, session_id, path))

    async def write_file(self, session_id: str, path: str, content: bytes) -> int:
        return await self._call(self.manager.write_file(self.key, session_id, path, content))


# -- who may reach /mcp: Host and Origin (DNS rebinding) ----------------------------------------


def allowed_hosts(settings: Settings) -> list[str]:
    """TCI_ALLOWED_HOSTS, or by default the bind host and the loopback names. A wildcard bind
    (0.0.0.0, ::) names no host, so it adds nothing: such a server needs TCI_ALLOWED_HOSTS."""
    if settings.allowed_hosts is not None:
        return [_as_host(entry.removesuffix(":*")) for entry in settings.allowed_hosts]
    names = ["localhost", "127.0.0.1", "[::1]"]
    host = _as_host(settings.host)
    if host in ("0.0.0.0", "[::]"):
        log.warning("/mcp answers only requests whose Host is one of %s (bound to %s): set "
                    "TCI_ALLOWED_HOSTS to the names clients use to reach this server",
                    ", ".join(names), settings.host)
        return names
    return [host, *(name for name in names if name != host)]


def _as_host(name: str) -> str:
    """A name as it appears in a Host header: lower case, an IPv6 address in brackets."""
    name = name.strip().lower()
    try:
        return f"[{ipaddress.IPv6Address(name)}]"
    except ValueError:
        return name


def _host_name(host: str) -> str:
    """"name:port" -> "name" ("[v6]:port" -> "[v6]"); a host without a port is its name."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    """An entry "name" allows that name on any port, "name:port" that port only, "*" any."""
    if "*" in allowed:
        return True
    if not host:
        return False
    host = host.lower()
    return host in allowed or _host_name(host) in allowed


class McpHostCheck:
    """ASGI middleware: requests to `path` must name an allowed Host and, when a browser sends
    one, an Origin on an allowed host. A page on another site whose name was rebound to this
    server's address sends its own name in both, so it is refused before any key check or
    body is read, whatever address the server is bound to."""

    def __init__(self, app: ASGIApp, path: str, allowed: list[str]) -> None:
        self.app = app
        self.path = path
        self.allowed = allowed

    def _refusal(self, headers: Headers) -> JSONResponse | None:
        host = headers.get("host")
        if not host_allowed(host, self.allowed):
            return JSONResponse({"data": None, "errors": [
                f"Host {host!r} is not one this server answers MCP for (TCI_ALLOWED_HOSTS)"
            ]}, status_code=421)
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a same-origin request
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not host_allowed(parts.netloc, self.allowed):
            return JSONResponse({"data": None, "errors": [
                f"Origin {origin!r} may not call MCP here (TCI_ALLOWED_HOSTS)"
            ]}, status_code=403)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.path):
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mount(app: Any, path: str = "/mcp") -> Callable[[], Any]:
    """Serve MCP (streamable HTTP) at `path` of the FastAPI `app`, whose `state.manager` and
    `state.auth` the tools and the key check use. Returns the context manager factory the
    app's lifespan must enter (the MCP session manager's task group). The app checks Host and
    Origin (McpHostCheck) and the key (ApiKeyAuth) before a request reaches the endpoint."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

    def backend_for(ctx: Context) -> Backend:
        request = ctx.request_context.request
        key = getattr(request, "state", None) and getattr(request.state, "key", None)
        if key is None:  # the wrapper always sets it; never act without a key
            raise ToolError("missing API key")
        return ManagerBackend(app.state.manager, key)

    server = build_server(backend_for)
    settings = app.state.settings
    # Builds the session manager. The SDK's own Host/Origin check would apply only on loopback
    # binds; McpHostCheck applies TCI_ALLOWED_HOSTS on every bind, before the key and the body.
    server.streamable_http_app(streamable_http_path=path, host=settings.host,
                               max_request_body_size=settings.max_request_bytes,
                               transport_security=TransportSecuritySettings(
                                   enable_dns_rebinding_protection=False))
    # The REST API's key check, applied to every request of the endpoint (a no-op when the
    # app's ApiKeyAuth already established the key); the tools find the key in the state.
    from tci.server.auth import ApiKeyAuth

    endpoint = ApiKeyAuth(StreamableHTTPASGIApp(server.session_manager), app.state.auth, ("/",))
    app.router.routes.append(Route(path, endpoint=endpoint))
    return server.session_manager.run


# -- over HTTP (tci mcp, stdio) ----------------------------------------------------------------


class HttpBackend:
    """The tools calling a tci server's HTTP API (`base_url` with or without /v1)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot reach the tci server at {self.client.base_url}: {exc}") \
                from exc
        if response.status_code >= 400:
            try:
                errors = response.json().get("errors") or []
            except (ValueError, AttributeError):
                errors = []
            message = "; ".join(str(e) for e in errors) or response.text or response.reason_phrase
            raise ToolError(message)
        return response

    def _files(self, session_id: str, path: str = "") -> str:
        url = f"tci/sessions/{quote(session_id, safe='')}/files"
        return f"{url}/{quote(path, safe='/')}" if path else url

    async def execute(self, code: str, session_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"language": "python", "code": code}
        if session_id:
            body["session_id"] = session_id
        return (await self._request("POST", "tci/execute", json=body)).json()["data"]

    async def list_sessions(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "tci/sessions")).json()["data"]["sessions"]

    async def end_session(self, session_id: str) -> None:
        await self._request("DELETE", f"tci/sessions/{quote(session_id, safe='')}")

    async def list_files(self, session_id: str) -> list[dict[str, Any]]:
        return (await self._request("GET", self._files(session_id))).json()["data"]["files"]

    async def read_file(self, session_id: str, path: str) -> bytes:
        return (await self._request("GET", self._files(session_id, path))).content

    async def write_file(self, session_id: str, path: str, content: bytes) -> int:
        response = await self._request("PUT", self._files(session_id, path), content=content)
        return response.json()["data"]["size"]


def run_stdio(base_url: str, api_key: str) -> None:
    """Serve MCP over stdin/stdout, the tools calling the tci server at `base_url`."""
    import anyio

    holder: dict[str, HttpBackend] = {}

    @asynccontextmanager
    async def http_client() -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            # A call may run for the server's whole execute timeout.
            timeout=httpx.Timeout(30.0, read=None),
        ) as client:
            holder["backend"] = HttpBackend(client)
            yield

    server = build_server(lambda ctx: holder["backend"])

    async def main() -> None:
        async with http_client():
            await server.run_stdio_async()

    anyio.run(main)
