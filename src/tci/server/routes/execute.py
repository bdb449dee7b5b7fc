from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tci.schemas import ExecuteRequest, ExecuteResponse
from tci.server.auth import require_key
from tci.server.disconnect import unless_disconnected
from tci.server.streaming import stream_execute
from tci.storage.store import KeyInfo

router = APIRouter(tags=["execute"])


@router.post("/tci/execute", response_model=ExecuteResponse)
async def execute(
    body: ExecuteRequest, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> Response:
    """Run code in a new session, or in `session_id`'s session. With `"stream": true`, the
    answer is text/event-stream (see server/streaming.py)."""
    if body.stream:
        return await stream_execute(request.app.state.manager, key, body)
    manager = request.app.state.manager

    async def end_if_created(data: dict[str, Any]) -> None:  # the client never saw its id
        if body.session_id is None:
            await manager.end_unanswered(data["session_id"])

    data = await unless_disconnected(request, manager.execute(key, body), end_if_created)
    # Already plain JSON types: answered directly, without re-validating the outputs through
    # the response model (which only documents the shape), since this is the hot path.
    return JSONResponse({"data": data, "errors": None})
