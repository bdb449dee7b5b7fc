"""Authentication: who is calling (a Bearer API key). Authorization (may they touch this
session) is the session manager's ownership check."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tci.errors import Unauthorized
from tci.server.errors import error_response
from tci.server.openapi import bearer
from tci.storage.store import AsyncStore, KeyInfo, hash_key


class Authenticator:
    """Checks keys against the store, caching answers briefly so the hot path skips SQL.
    A revoked key stops working within `auth_cache_seconds`."""

    def __init__(self, store: AsyncStore, cache_seconds: float) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}

    async def authenticate(self, header: str | None) -> KeyInfo:
        if not header:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        digest = hash_key(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key = await self.store.call(self.store.store.find_active_key, secret)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, key)
        if key is None:
            raise Unauthorized("invalid or revoked API key")
        return key


async def require_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> KeyInfo:
    """Route dependency: the key `ApiKeyAuth` established (it ran before the body was read).
    `_credentials` only declares the Bearer scheme in the OpenAPI document."""
    key = getattr(request.state, "key", None)
    if key is None:
        key = await request.app.state.auth.authenticate(request.headers.get("authorization"))
    return key


class ApiKeyAuth:
    """ASGI middleware: authenticate API calls before their body is read or parsed, so an
    anonymous caller learns nothing from validation errors and sends no large body for
    nothing."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, prefixes: tuple[str, ...]):
        self.app = app
        self.authenticator = authenticator
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            header = Headers(scope=scope).get("authorization")
            try:
                key = await self.authenticator.authenticate(header)
            except Unauthorized as exc:
                response = error_response(401, [exc.message], {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["key"] = key
        await self.app(scope, receive, send)
