"""The one place where exceptions become HTTP responses in TCI's error shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tci.errors import (
    HostUnreachable,
    ServerBusy,
    StoreUnavailable,
    TCIError,
    TooManySessions,
    Unauthorized,
)

log = logging.getLogger(__name__)


def error_response(status: int, messages: list[str],
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"data": None, "errors": messages}, status_code=status, headers=headers)


def _describe(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON: {detail}".rstrip(": ")
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid value')}"


def client_message(exc: TCIError) -> str:
    """What the client is told of `exc`, for every way out (JSON, SSE, MCP). A server-side
    failure is logged here with its full message, which can name paths, hosts or the
    database's address; the client gets only its class's plain words."""
    if exc.status_code >= 500 and not isinstance(exc, ServerBusy):  # busy is load, not a fault
        log.error("request failed: %s", exc.message)
    return exc.client_message


def tci_error_response(exc: TCIError) -> JSONResponse:
    """The answer to a TCIError, also for middleware that refuses before any route runs."""
    headers = None
    if isinstance(exc, TooManySessions | ServerBusy | StoreUnavailable | HostUnreachable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status_code, [client_message(exc)], headers)


async def _tci_error(request: Request, exc: TCIError) -> JSONResponse:
    return tci_error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, [_describe(e) for e in exc.errors()])


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, [str(exc.detail)], getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, ["internal server error"])


def install(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each here is registered for, and
    # only ever called with, the class it takes.
    app.add_exception_handler(TCIError, _tci_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
