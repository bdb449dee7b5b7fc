"""Who is calling /sandboxfusion. SandboxFusion's clients (its own, verl's) send no key, so a
request without one is taken as TCI_SANDBOXFUSION_KEY's, but only from a TCP peer in
TCI_SANDBOXFUSION_ALLOW (the peer itself: a forwarded header proves nothing). A Bearer key
always works, and a wrong one is a 401 as everywhere."""

from __future__ import annotations

import ipaddress
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tci.config import Settings
from tci.errors import ServerBusy, StoreUnavailable, TCIError, Unauthorized
from tci.server.auth import Authenticator
from tci.server.errors import tci_error_response
from tci.storage.store import AsyncStore, KeyInfo

PREFIX = "/sandboxfusion"


class AnonymousKey:
    """TCI_SANDBOXFUSION_KEY's key, looked up by name and again after `cache_seconds` (a
    revoked key stops serving anonymous callers within that time)."""

    def __init__(self, settings: Settings, store: AsyncStore) -> None:
        self.name = settings.sandboxfusion_key
        self.store = store
        self.cache_seconds = settings.auth_cache_seconds
        self.networks = [ipaddress.ip_network(cidr, strict=False)
                         for cidr in settings.sandboxfusion_allow]
        self._key: KeyInfo | None = None
        self._checked = 0.0

    async def check_exists(self) -> None:
        """At start: a name that is no active key stops the server (says so)."""
        if self.name and await self._look_up() is None:
            raise Unauthorized(f"TCI_SANDBOXFUSION_KEY names {self.name!r}, which is not an "
                               "active API key (tci keys list)")

    async def _look_up(self) -> KeyInfo | None:
        self._key = await self.store.find_key_by_name(self.name)
        self._checked = time.monotonic()
        return self._key

    def allows(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def key_for(self, peer: str | None) -> KeyInfo:
        if not self.name:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>', or have "
                               "the server set TCI_SANDBOXFUSION_KEY for keyless clients")
        if not self.allows(peer):
            raise Unauthorized(f"missing API key: keyless requests (TCI_SANDBOXFUSION_KEY) are "
                               f"accepted only from TCI_SANDBOXFUSION_ALLOW, not from {peer}")
        key = self._key
        if key is None or time.monotonic() - self._checked > self.cache_seconds:
            key = await self._look_up()
        if key is None:
            raise Unauthorized(f"TCI_SANDBOXFUSION_KEY's key {self.name!r} is revoked")
        return key


class SandboxFusionAuth:
    """ASGI middleware for /sandboxfusion, before the body is read (as ApiKeyAuth)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator,
                 anonymous: AnonymousKey) -> None:
        self.app = app
        self.authenticator = authenticator
        self.anonymous = anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"].startswith(PREFIX + "/")
                and scope["path"] != PREFIX + "/v1/ping"):
            state = scope.setdefault("state", {})
            header = Headers(scope=scope).get("authorization")
            client = scope.get("client")
            try:
                if header:
                    state["key"] = await self.authenticator.authenticate(header)
                else:
                    state["key"] = await self.anonymous.key_for(client[0] if client else None)
            except (Unauthorized, ServerBusy, StoreUnavailable, TCIError) as exc:
                await tci_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
