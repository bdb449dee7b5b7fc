"""Authentication: who is calling (a Bearer API key). Authorization (may they touch this
session) is the session manager's ownership check.

What a caller without a valid key can cost is bounded: a string not shaped like a key is
refused without touching the database; an unknown key costs one look-up, with at most
`max_lookups` of them in flight (more are refused at once with 503), and is then remembered
as unknown for a while. Keys known to be valid live in a cache of their own, so a flood of
random keys can neither evict them nor queue ahead of them."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry, Counter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tci.errors import ServerBusy, StoreUnavailable, Unauthorized
from tci.server.errors import tci_error_response
from tci.server.openapi import bearer
from tci.storage.store import KEY_PATTERN, AsyncStore, KeyInfo, hash_key

V = TypeVar("V")
INVALID = "invalid or revoked API key"


class BoundedCache(Generic[V]):
    """digest -> (expires, value); at most `entries` of them, the least recently used evicted
    first. Entries past `expires` are kept (until evicted): stale, but still telling."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, digest: str) -> tuple[float, V] | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, digest: str, expires: float, value: V) -> None:
        self._items[digest] = (expires, value)
        self._items.move_to_end(digest)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def discard(self, digest: str) -> None:
        self._items.pop(digest, None)


def bearer_secret(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return secret


class Authenticator:
    """Checks keys against the store, caching answers for `cache_seconds` so the hot path
    skips SQL: a revoked key stops working within that time."""

    def __init__(self, store: AsyncStore, cache_seconds: float, cache_entries: int,
                 max_lookups: int, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.max_lookups = max_lookups
        self.valid: BoundedCache[KeyInfo] = BoundedCache(cache_entries)
        self.unknown: BoundedCache[None] = BoundedCache(cache_entries)
        self._lookups_in_flight = 0
        registry = registry if registry is not None else CollectorRegistry()
        self.lookups = Counter("tci_auth_store_lookups", "API keys looked up in the store, by "
                               "result (valid or invalid)", ["result"], registry=registry)
        for result in ("valid", "invalid"):  # both series exist from the start, at 0
            self.lookups.labels(result)
        self.busy = Counter("tci_auth_busy_refusals", "Requests refused with 503 because "
                            "TCI_AUTH_MAX_LOOKUPS key look-ups were in flight", registry=registry)

    async def authenticate(self, header: str | None) -> KeyInfo:
        secret = bearer_secret(header)
        if not KEY_PATTERN.fullmatch(secret):
            raise Unauthorized(INVALID)
        digest = hash_key(secret)
        now = time.monotonic()
        known = self.valid.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        if known is None:
            refused = self.unknown.get(digest)
            if refused is not None and refused[0] > now:
                raise Unauthorized(INVALID)
            if self._lookups_in_flight >= self.max_lookups:
                self.busy.inc()
                raise ServerBusy("too many unknown API keys are being checked at once "
                                 "(TCI_AUTH_MAX_LOOKUPS); retry shortly")
        # A key whose valid entry is only stale is checked again (it may have been revoked)
        # without counting against the cap: it is a known client's, not a stranger's.
        key = await self._look_up(secret)
        expires = time.monotonic() + self.cache_seconds
        if key is None:
            self.valid.discard(digest)
            self.unknown.put(digest, expires, None)
            raise Unauthorized(INVALID)
        self.valid.put(digest, expires, key)
        return key

    async def _look_up(self, secret: str) -> KeyInfo | None:
        self._lookups_in_flight += 1
        try:
            key = await self.store.find_active_key(secret)
        finally:
            self._lookups_in_flight -= 1
        self.lookups.labels("valid" if key is not None else "invalid").inc()
        return key


async def require_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> KeyInfo:
    """Route dependency: the key `ApiKeyAuth` established (it ran before the body was read).
    `_credentials` only declares the Bearer scheme in the OpenAPI document."""
    key: KeyInfo | None = getattr(request.state, "key", None)
    if key is None:
        auth: Authenticator = request.app.state.auth
        key = await auth.authenticate(request.headers.get("authorization"))
    return key


class ApiKeyAuth:
    """ASGI middleware: authenticate requests to `prefixes` before their body is read or
    parsed, so an anonymous caller learns nothing from validation errors and sends no large
    body for nothing (BodyLimit, next, allows a large body only once a key is established)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, prefixes: tuple[str, ...]):
        self.app = app
        self.authenticator = authenticator
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            state = scope.setdefault("state", {})
            if "key" not in state:  # not already established by an outer ApiKeyAuth
                header = Headers(scope=scope).get("authorization")
                try:
                    state["key"] = await self.authenticator.authenticate(header)
                except (Unauthorized, ServerBusy, StoreUnavailable) as exc:
                    await tci_error_response(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
