"""SandboxFusion's endpoints under /sandboxfusion (runs/sandboxfusion.py has the rules):
`run_code` is one run, `run_jupyter` one session for all its cells, `v1/ping` says it lives.
Point SandboxFusion's client at http://HOST:PORT/sandboxfusion and verl at
http://HOST:PORT/sandboxfusion/run_code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from tci.errors import NotFound, SessionEnded, TCIError
from tci.runs import sandboxfusion as sf
from tci.runs.manager import RunManager, RunQueueFull
from tci.runs.models import RunRequest
from tci.schemas import ExecuteRequest
from tci.server.disconnect import unless_disconnected
from tci.storage.store import KeyInfo

if TYPE_CHECKING:
    from tci.sessions.manager import SessionManager

router = APIRouter(prefix="/sandboxfusion", tags=["sandboxfusion"])
_TIMED_OUT = "TimeoutError: execution timed out"


def _key(request: Request) -> KeyInfo:
    key: KeyInfo = request.state.key  # set by SandboxFusionAuth before the body was read
    return key


@router.get("/v1/ping", response_class=PlainTextResponse)
async def ping() -> str:
    return "pong"


@router.post("/run_code")
async def run_code(body: sf.RunCodeRequest, request: Request) -> JSONResponse:
    key = _key(request)
    runs: RunManager = request.app.state.runs
    spec = runs.spec(RunRequest(
        code=body.code, language=sf.tci_language(body.language, runs.available),
        stdin=body.stdin or "", files=sf.file_inputs(body.files), timeout=body.run_timeout,
        compile_timeout=body.compile_timeout, memory_mb=sf.memory_mb(body.memory_limit_MB),
        fetch_files=body.fetch_files))
    try:
        runs.admit(1)
    except RunQueueFull as exc:  # 504: the one status verl's client retries
        return JSONResponse({"detail": exc.message}, status_code=504,
                            headers={"Retry-After": str(exc.retry_after)})
    result = await unless_disconnected(request, runs.launch(spec))
    request.app.state.run_usage.record(key, result)
    return JSONResponse(sf.run_code_response(result, result.files))


@router.post("/run_jupyter")
async def run_jupyter(body: sf.RunJupyterRequest, request: Request) -> JSONResponse:
    key = _key(request)
    manager = request.app.state.manager
    files = sf.file_inputs(body.files)
    started = time.monotonic()
    session_id: str | None = None
    cells: list[dict[str, Any]] = []
    timed_out = False
    try:
        for index, code in enumerate(body.cells):
            left = body.total_timeout - (time.monotonic() - started)
            limit = min(left, body.cell_timeout) if body.cell_timeout > 0 else left
            if left <= 0:
                timed_out = True
                break
            call = ExecuteRequest(language="python", code=code, session_id=session_id,
                                  files=files if index == 0 else None,
                                  timeout=min(limit, manager.settings.execute_timeout))
            try:
                data = await unless_disconnected(request, manager.execute(key, call))
            except SessionEnded:
                timed_out = True  # a cell the session did not survive (killed at its limit)
                break
            session_id = data["session_id"]
            cells.append(sf.cell_result(data["outputs"]))
            if any(o["type"] == "error" and o["data"].startswith(_TIMED_OUT)
                   for o in data["outputs"]):
                timed_out = True  # a cell over its limit, or over what was left of the total
                break
        fetched = await _fetch(manager, key, session_id, body.fetch_files)
    finally:
        if session_id is not None:
            await asyncio.shield(_end(manager, key, session_id))
    wall = round(time.monotonic() - started, 4)
    if timed_out:
        return JSONResponse({
            "status": sf.RunStatus.Failed.value, "message": "", "cells": [],
            "driver": {"status": sf.CommandStatus.TimeLimitExceeded.value,
                       "execution_time": wall, "return_code": None, "stdout": "",
                       "stderr": ""},
            "executor_pod_name": None, "files": {}})
    return JSONResponse({
        "status": sf.RunStatus.Success.value, "message": "", "cells": cells,
        "driver": {"status": sf.CommandStatus.Finished.value, "execution_time": wall,
                   "return_code": 0, "stdout": "", "stderr": ""},
        "executor_pod_name": None, "files": fetched})


async def _fetch(manager: SessionManager, key: KeyInfo, session_id: str | None,
                 paths: list[str]) -> dict[str, str]:
    fetched: dict[str, str] = {}
    if session_id is None:
        return fetched
    for path in paths:
        relative = path.removeprefix("/workspace/")
        try:
            content = await manager.read_file(key, session_id, relative)
        except (NotFound, TCIError):
            continue  # a file the cells did not make is left out
        fetched[path] = base64.b64encode(content).decode()
    return fetched


async def _end(manager: SessionManager, key: KeyInfo, session_id: str) -> None:
    with contextlib.suppress(TCIError):  # already ended (its limit, its own exit)
        await manager.end_by_client(key, session_id)
