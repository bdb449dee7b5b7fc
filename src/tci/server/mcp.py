"""MCP inside `tci serve`: the tools (tci/mcp/tools.py) at `/mcp`, over MCP's streamable HTTP
transport, acting in-process on the app's SessionManager as the caller's API key, so sessions
belong to that key exactly as over REST. Host and Origin are checked before this by
McpHostCheck (server/host_check.py), the key by ApiKeyAuth."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route

from tci.errors import TCIError
from tci.mcp.tools import Backend, build_server, file_json, sessions_json
from tci.schemas import ExecuteRequest
from tci.server.auth import ApiKeyAuth
from tci.server.errors import client_message
from tci.storage.store import KeyInfo

if TYPE_CHECKING:
    from tci.sessions.manager import SessionManager

T = TypeVar("T")


class ManagerBackend:
    """The tools acting as `key` on the app's SessionManager."""

    def __init__(self, manager: SessionManager, key: KeyInfo) -> None:
        self.manager = manager
        self.key = key

    async def _call(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except TCIError as exc:
            raise ToolError(client_message(exc)) from exc

    async def execute(self, code: str, session_id: str | None) -> dict[str, Any]:
        request = ExecuteRequest(language="python", code=code, session_id=session_id)
        return await self._call(self.manager.execute(self.key, request))

    async def list_sessions(self) -> list[dict[str, Any]]:
        return sessions_json(await self._call(self.manager.list_all(self.key)))

    async def end_session(self, session_id: str) -> None:
        await self._call(self.manager.end_by_client(self.key, session_id))

    async def list_files(self, session_id: str) -> list[dict[str, Any]]:
        files = await self._call(self.manager.list_files(self.key, session_id))
        return [file_json(f.path, f.size, datetime.fromtimestamp(f.modified, UTC))
                for f in files]

    async def read_file(self, session_id: str, path: str) -> bytes:
        return await self._call(self.manager.read_file(self.key, session_id, path))

    async def write_file(self, session_id: str, path: str, content: bytes) -> int:
        return await self._call(self.manager.write_file(self.key, session_id, path, content))


def mount(app: FastAPI, path: str = "/mcp") -> Callable[[], AbstractAsyncContextManager[None]]:
    """Serve MCP (streamable HTTP) at `path` of the FastAPI `app`, whose `state.manager` and
    `state.auth` the tools and the key check use. Returns the context manager factory the
    app's lifespan must enter (the MCP session manager's task group). The app checks Host and
    Origin (McpHostCheck) and the key (ApiKeyAuth) before a request reaches the endpoint."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

    def backend_for(ctx: Context) -> Backend:
        request = ctx.request_context.request
        # Not `state and state.key`: an empty starlette State is falsy, and would pass as a key.
        key = getattr(getattr(request, "state", None), "key", None)
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
    endpoint = ApiKeyAuth(StreamableHTTPASGIApp(server.session_manager), app.state.auth, ("/",))
    app.router.routes.append(Route(path, endpoint=endpoint))
    return server.session_manager.run
