"""POST /tci/execute: the route (which FastAPI documents and falls back to), and the warm
call's fast path in front of it.

FastAPI's routing, dependency solving and body handling cost about 200 us of CPU per request,
a fifth of what the server spends on a warm `x += 1`. `ExecuteFastPath` answers the common
call itself (a key already established by ApiKeyAuth, a JSON body that validates, not
streamed) with the same code as the route; anything else (a body that fails to parse or
validate, a stream, another content type) goes on to the route untouched, so every answer
and error is the route's own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tci.errors import TCIError
from tci.schemas import ExecuteRequest, ExecuteResponse
from tci.server.auth import require_key
from tci.server.disconnect import unless_disconnected
from tci.server.errors import tci_error_response
from tci.server.streaming import stream_execute
from tci.storage.store import KeyInfo

if TYPE_CHECKING:
    from tci.sessions.manager import SessionManager

router = APIRouter(tags=["execute"])
PATHS = ("/tci/execute", "/v1/tci/execute")


@router.post("/tci/execute", response_model=ExecuteResponse)
async def execute(
    body: ExecuteRequest, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> Response:
    """Run code in a new session, or in `session_id`'s session. With `"stream": true`, the
    answer is text/event-stream (see server/streaming.py)."""
    if body.stream:
        return await stream_execute(request.app.state.manager, key, body)
    return await run_call(request, request.app.state.manager, key, body)


async def run_call(request: Request, manager: SessionManager, key: KeyInfo,
                   body: ExecuteRequest) -> JSONResponse:
    """A plain (unstreamed) call, answered once it is done."""
    async def end_if_created(data: dict[str, Any]) -> None:  # the client never saw its id
        if body.session_id is None:
            await manager.end_unanswered(data["session_id"])

    data = await unless_disconnected(request, manager.execute(key, body), end_if_created)
    # Already plain JSON types: answered directly, without re-validating the outputs through
    # the response model (which only documents the shape), since this is the hot path.
    return JSONResponse({"data": data, "errors": None})


class ExecuteFastPath:
    """ASGI middleware, innermost: a plain execute answered without FastAPI's machinery (see
    the module's docstring). It runs after ApiKeyAuth and BodyLimit, so the key is known and
    the body within its limit."""

    def __init__(self, app: ASGIApp, manager: SessionManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = scope.get("state", {}).get("key") if scope["type"] == "http" else None
        if (key is None or scope["method"] != "POST" or scope["path"] not in PATHS
                or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        replay = iter(messages)

        async def replayed_receive() -> Message:
            for message in replay:
                return message
            return await receive()

        parsed = _plain_call(Headers(scope=scope).get("content-type"), body)
        if parsed is None:  # the route answers it, errors and all
            await self.app(scope, replayed_receive, send)
            return
        response: Response
        try:
            response = await run_call(Request(scope, replayed_receive), self.manager, key, parsed)
        except TCIError as exc:  # as the app's TCIError handler answers it (server/errors.py)
            response = tci_error_response(exc)
        await response(scope, replayed_receive, send)


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """The request's messages up to the end of its body (or a disconnect), and the body."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)


def _plain_call(content_type: str | None, body: bytes) -> ExecuteRequest | None:
    """The body as the route would take it, if it is a JSON body that validates as an
    unstreamed call; None for anything the route should answer itself."""
    if content_type is not None and \
            content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        parsed = ExecuteRequest.model_validate(json.loads(body))
    except Exception:  # invalid JSON or fields, an unknown language: the route's errors
        return None
    return None if parsed.stream else parsed
