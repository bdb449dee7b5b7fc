from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tci import metering
from tci.server.auth import require_key
from tci.server.errors import error_response
from tci.storage.store import KeyInfo

router = APIRouter(tags=["usage"])


@router.get("/tci/usage")
async def usage(
    request: Request, key: Annotated[KeyInfo, Depends(require_key)],
    since: Annotated[datetime | None, Query(description="ISO 8601; default until - 30 days")]
    = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
) -> JSONResponse:
    """The caller's totals for sessions started in [since, until): sessions, executions,
    CPU seconds (live sessions' included, read now) and cost (sessions x
    TCI_PRICE_PER_SESSION_USD). Times without a zone are UTC."""
    since, until = metering.window(since, until)
    if since > until:
        return error_response(422, ["since: must not be after until"])
    manager = request.app.state.manager
    await manager.executions.flush()  # buffered execution records count too
    rows = await manager.store.call(manager.store.store.usage, since, until, key.id)
    row = rows[key.id]
    live_cpu = sum(
        s.cpu_used() or 0.0 for s in list(manager.sessions.values())
        if s.key_id == key.id and since <= s.started_at < until
    )
    price = request.app.state.settings.price_per_session_usd
    result = metering.Usage(since, until, row.sessions, row.executions,
                            row.cpu_seconds + live_cpu, metering.cost(row.sessions, price))
    return JSONResponse({"data": result.as_dict(), "errors": None})
