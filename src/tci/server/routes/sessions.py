from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tci.schemas import SessionListResponse
from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["sessions"])


@router.get("/tci/sessions", response_model=SessionListResponse)
async def list_sessions(request: Request, key: Annotated[KeyInfo, Depends(require_key)]) -> dict:
    """The caller's active sessions."""
    return {"data": {"sessions": request.app.state.manager.list(key)}, "errors": None}


@router.delete("/tci/sessions/{session_id}")
async def end_session(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict:
    """End a session now and free everything it used."""
    await request.app.state.manager.end_by_client(key, session_id)
    return {"data": {"id": session_id, "ended": True}, "errors": None}
