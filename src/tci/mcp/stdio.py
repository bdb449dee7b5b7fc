"""`tci mcp --url URL --api-key KEY`: the MCP tools over stdin/stdout, acting through our SDK
(tci.client.AsyncClient) on a tci server's HTTP API as that key."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from mcp.server.mcpserver.exceptions import ToolError

from tci.client import APIConnectionError, AsyncClient, TCIClientError
from tci.mcp.tools import build_server, file_json, sessions_json

T = TypeVar("T")
# A call may run for the server's whole execute timeout (TCI_EXECUTE_TIMEOUT, which this side
# does not know): only connecting and sending are bounded, generously for a remote server.
_CONNECT_AND_SEND_SECONDS = 30.0
TIMEOUT = httpx.Timeout(_CONNECT_AND_SEND_SECONDS, read=None)


class ClientBackend:
    """The tools calling a tci server through the SDK. A refusal becomes a ToolError whose
    text is the server's message, as the in-process backend's is."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.ci = client.code_interpreter

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except APIConnectionError as exc:
            reason = exc.__cause__ or exc.message  # the httpx error says what went wrong
            raise ToolError(f"cannot reach the tci server at {self.client.base_url}: {reason}") \
                from exc
        except TCIClientError as exc:  # the server's answer (APIStatusError): its own words
            raise ToolError(exc.message) from exc

    async def execute(self, code: str, session_id: str | None) -> dict[str, Any]:
        result = await self._call(self.ci.execute(code=code, session_id=session_id or None))
        return {"session_id": result.session_id, "status": result.status,
                "outputs": [{"type": o.type, "data": o.data} for o in result.outputs]}

    async def list_sessions(self) -> list[dict[str, Any]]:
        sessions = await self._call(self.ci.sessions.list())
        return sessions_json([dataclasses.asdict(s) for s in sessions])

    async def end_session(self, session_id: str) -> None:
        await self._call(self.ci.sessions.delete(session_id))

    async def list_files(self, session_id: str) -> list[dict[str, Any]]:
        files = await self._call(self.ci.files.list(session_id))
        return [file_json(f.path, f.size, f.modified) for f in files]

    async def read_file(self, session_id: str, path: str) -> bytes:
        return await self._call(self.ci.files.read(session_id, path))

    async def write_file(self, session_id: str, path: str, content: bytes) -> int:
        return (await self._call(self.ci.files.write(session_id, path, content))).size


def run_stdio(base_url: str, api_key: str) -> None:
    """Serve MCP over stdin/stdout, the tools calling the tci server at `base_url` (with or
    without /v1)."""
    import anyio

    async def main() -> None:
        async with AsyncClient(base_url=base_url, api_key=api_key, timeout=TIMEOUT) as client:
            backend = ClientBackend(client)
            await build_server(lambda ctx: backend).run_stdio_async()

    anyio.run(main)
