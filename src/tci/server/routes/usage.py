from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tci.schemas import UsageResponse
from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["usage"])


@router.get("/tci/usage", response_model=UsageResponse)
async def usage(
    request: Request, key: Annotated[KeyInfo, Depends(require_key)],
    since: Annotated[datetime | None, Query(description="ISO 8601; default until - 30 days")]
    = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
    bucket: Annotated[Literal["hour", "day"] | None, Query(
        description="also answer `series`, per UTC hour or day (at most TCI_USAGE_MAX_BUCKETS)"
    )] = None,
) -> JSONResponse:
    """The caller's totals for sessions started in [since, until): sessions, executions,
    CPU seconds (live sessions' included, read now), one-shot runs (count, per verdict, wall
    seconds; kept per UTC hour, so those of every hour the window touches) and cost (sessions
    x TCI_PRICE_PER_SESSION_USD + runs x TCI_PRICE_PER_RUN_USD). Times without a zone are
    UTC. With `bucket`, `series` splits them over consecutive UTC-aligned buckets: sessions
    (and their CPU and cost) where they started, executions where they started, runs where
    they finished."""
    result = await request.app.state.manager.usage(key, since, until, bucket)
    return JSONResponse({"data": result.as_dict(), "errors": None})
