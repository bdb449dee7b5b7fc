from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tci.schemas import ExecuteRequest, ExecuteResponse
from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["execute"])


@router.post("/tci/execute", response_model=ExecuteResponse)
async def execute(
    body: ExecuteRequest, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict:
    """Run code in a new session, or in `session_id`'s session."""
    data = await request.app.state.manager.execute(key, body)
    return {"data": data, "errors": None}
