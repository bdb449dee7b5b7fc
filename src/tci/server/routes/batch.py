"""POST /v1/tci/batch: one-shot runs, answered as NDJSON, one line per run as it finishes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from tci.errors import BadRequest, PayloadTooLarge, TCIError
from tci.runs.manager import RunManager
from tci.runs.models import BatchRequest, RunSpec
from tci.server.auth import require_key
from tci.storage.store import KeyInfo

router = APIRouter(tags=["runs"])


def batch_specs(runs: RunManager, body: BatchRequest) -> list[RunSpec]:
    """Every run checked before any starts; an error names the run (its index)."""
    limit = runs.settings.batch_max_runs
    if not body.runs:
        raise BadRequest("a batch needs at least one run")
    if len(body.runs) > limit:
        raise PayloadTooLarge(f"{len(body.runs)} runs in one batch; the limit is {limit} "
                              "(TCI_BATCH_MAX_RUNS)")
    specs = []
    for index, run in enumerate(body.runs):
        try:
            specs.append(runs.spec(run))
        except TCIError as exc:
            exc.message = f"runs[{index}]: {exc.message}"
            exc.args = (exc.message,)
            raise
    return specs


@router.post("/tci/batch", response_class=StreamingResponse, responses={200: {
    "content": {"application/x-ndjson": {}},
    "description": "one JSON line per run, in the order they finish: "
                   "{index, verdict, exit_code, stdout, stderr, wall_s, truncated}"}})
async def batch(request: Request, key: Annotated[KeyInfo, Depends(require_key)]
                ) -> StreamingResponse:
    """Run every program of `runs` in a fresh sandbox of its own, in parallel."""
    try:
        body = BatchRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise BadRequest(f"invalid batch: {_first_problem(exc)}") from None
    runs: RunManager = request.app.state.runs
    specs = batch_specs(runs, body)
    runs.admit(len(specs))  # refused now (429), before the 200 is sent
    tasks = runs.start_all(specs)
    usage = request.app.state.run_usage

    async def lines() -> AsyncIterator[bytes]:
        async for index, result in runs.as_finished(tasks):
            usage.record(key, result)
            yield json.dumps(result.line(index, bool(specs[index].fetch))).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
