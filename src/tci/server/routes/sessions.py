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
