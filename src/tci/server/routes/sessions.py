from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from tci.schemas import (
    InterruptResponse,
    NewSessionRequest,
    SessionListResponse,
    SessionResponse,
)
from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["sessions"])


@router.get("/tci/sessions", response_model=SessionListResponse)
async def list_sessions(
    request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """The caller's sessions: running ones, then paused ones (`status`)."""
    return {"data": {"sessions": await request.app.state.manager.list_all(key)},
            "errors": None}


@router.post("/tci/sessions", response_model=SessionResponse)
async def create_session(
    request: Request, key: Annotated[KeyInfo, Depends(require_key)],
    body: Annotated[NewSessionRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Start a session without running code (no body, or `{}`); it answers like an item of
    GET /tci/sessions. Limited by TCI_MAX_SESSIONS like execute (429)."""
    return {"data": await request.app.state.manager.create_session(key), "errors": None}


@router.delete("/tci/sessions/{session_id}")
async def end_session(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """End a session now and free everything it used."""
    await request.app.state.manager.end_by_client(key, session_id)
    return {"data": {"id": session_id, "ended": True}, "errors": None}


@router.post("/tci/sessions/{session_id}/interrupt", response_model=InterruptResponse)
async def interrupt(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """Interrupt the running call, like Ctrl-C in Jupyter: it ends with a KeyboardInterrupt
    `error` output and the session keeps its state. Answers at once, without waiting for the
    call; `interrupted` is false if none was running."""
    interrupted = await request.app.state.manager.interrupt(key, session_id)
    return {"data": {"id": session_id, "interrupted": interrupted}, "errors": None}
