from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """200 once the server is ready to execute code."""
    manager = request.app.state.manager
    stats = manager.host.stats()
    return {
        "status": "ok",
        "sessions": len(manager.sessions),
        "pool": {"ready": stats.pool_ready, "size": stats.pool_size},
        # Settings this host cannot apply as asked (e.g. TCI_IO_WEIGHT without bfq), said here
        # as well as in the start-up log.
        "details": stats.details,
        # Languages whose toolchains the sandboxes see: a run in a missing one is refused
        # (400), a session's call in one gets an error output saying so.
        "languages": {"runs": request.app.state.runs.available, "sessions": stats.languages},
    }
