from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict:
    """200 once the server is ready to execute code."""
    manager = request.app.state.manager
    return {
        "status": "ok",
        "sessions": len(manager.sessions),
        "pool": {"ready": len(manager.pool.ready), "size": manager.pool.size},
    }
