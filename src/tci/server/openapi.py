"""What /openapi.json says beyond the models: the error shape, the Bearer scheme, raw bodies."""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer

from tci.schemas import ErrorResponse

# Documents the scheme in OpenAPI; the check itself is ApiKeyAuth, before the body is read.
bearer = HTTPBearer(auto_error=False, description="An API key from `tci keys create`.")

_ERRORS = {
    400: "Refused input (e.g. a file name leaving the workspace)",
    401: "Missing, malformed, invalid or revoked API key",
    404: "No such session for this key (another key's session looks the same)",
    410: "The session has ended or expired; the message says why",
    413: "A body, code, file or request over its limit (the message names the setting)",
    422: "The body or a query parameter is invalid (e.g. a usage window too large)",
    429: "The server, or this key, runs its maximum of sessions; see Retry-After",
    503: "No new session now (e.g. the sandbox disk is nearly full), too many unknown keys "
         "being checked, or the database unreachable (see Retry-After); the message says which",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _ERRORS.items()
}

BINARY = {"schema": {"type": "string", "format": "binary"}}
RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}
RAW_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file's bytes", "content": {"application/octet-stream": BINARY}}
}
