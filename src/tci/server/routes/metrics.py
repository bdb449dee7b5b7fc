from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tci.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format. Unauthenticated unless TCI_METRICS_REQUIRE_KEY=true (then the
    usual `Authorization: Bearer <key>`); it reveals counts, never keys or session ids."""
    if request.app.state.settings.metrics_require_key:
        await request.app.state.auth.authenticate(request.headers.get("authorization"))
    manager = request.app.state.manager
    await manager.refresh_kept_metrics()
    return Response(manager.metrics.exposition(), media_type=CONTENT_TYPE)
