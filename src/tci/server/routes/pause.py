"""Pause, resume and snapshots (sessions/pause.py): a session's state kept while its
processes are gone, and kept states that new sessions start from."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["sessions"])


@router.post("/tci/sessions/{session_id}/pause")
async def pause(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """End the session's processes and keep its state: variables, functions, classes and
    imports, its files and the packages it installed. `skipped` names what could not be
    kept and why. Any later call on its id resumes it. 409 while a call runs."""
    return {"data": await request.app.state.manager.pause(key, session_id), "errors": None}


@router.post("/tci/sessions/{session_id}/resume")
async def resume(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """Resume a paused session now (an execute on it would do so too). 429 with
    Retry-After when the server runs its maximum of sessions."""
    return {"data": await request.app.state.manager.resume_by_client(key, session_id),
            "errors": None}


@router.post("/tci/sessions/{session_id}/snapshots")
async def create_snapshot(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """Keep the session's state under a new snapshot id while the session runs on; execute
    with `snapshot_id` starts new sessions from it."""
    return {"data": await request.app.state.manager.snapshot(key, session_id), "errors": None}


@router.get("/tci/snapshots")
async def list_snapshots(
    request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """The caller's snapshots, oldest first."""
    snapshots = await request.app.state.manager.list_snapshots(key)
    return {"data": {"snapshots": snapshots}, "errors": None}


@router.delete("/tci/snapshots/{snapshot_id}")
async def delete_snapshot(
    snapshot_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """Delete a snapshot and free its state (sessions started from it go on)."""
    await request.app.state.manager.delete_snapshot(key, snapshot_id)
    return {"data": {"id": snapshot_id, "deleted": True}, "errors": None}
