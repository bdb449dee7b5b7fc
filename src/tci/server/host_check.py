"""Who may reach /mcp: Host and Origin, checked on every bind against TCI_ALLOWED_HOSTS, so a
page whose name was rebound to this server's address (DNS rebinding) is refused before any
key check or body is read."""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tci.config import Settings

log = logging.getLogger(__name__)


def allowed_hosts(settings: Settings) -> list[str]:
    """TCI_ALLOWED_HOSTS, or by default the bind host and the loopback names. A wildcard bind
    (0.0.0.0, ::) names no host, so it adds nothing: such a server needs TCI_ALLOWED_HOSTS."""
    if settings.allowed_hosts is not None:
        return [_as_host(entry.removesuffix(":*")) for entry in settings.allowed_hosts]
    names = ["localhost", "127.0.0.1", "[::1]"]
    host = _as_host(settings.host)
    if host in ("0.0.0.0", "[::]"):
        log.warning("/mcp answers only requests whose Host is one of %s (bound to %s): set "
                    "TCI_ALLOWED_HOSTS to the names clients use to reach this server",
                    ", ".join(names), settings.host)
        return names
    return [host, *(name for name in names if name != host)]


def _as_host(name: str) -> str:
    """A name as it appears in a Host header: lower case, an IPv6 address in brackets."""
    name = name.strip().lower()
    try:
        return f"[{ipaddress.IPv6Address(name)}]"
    except ValueError:
        return name


def _host_name(host: str) -> str:
    """"name:port" -> "name" ("[v6]:port" -> "[v6]"); a host without a port is its name."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    """An entry "name" allows that name on any port, "name:port" that port only, "*" any."""
    if "*" in allowed:
        return True
    if not host:
        return False
    host = host.lower()
    return host in allowed or _host_name(host) in allowed


class McpHostCheck:
    """ASGI middleware: requests to `path` must name an allowed Host and, when a browser sends
    one, an Origin on an allowed host. A page on another site whose name was rebound to this
    server's address sends its own name in both, so it is refused before any key check or
    body is read, whatever address the server is bound to."""

    def __init__(self, app: ASGIApp, path: str, allowed: list[str]) -> None:
        self.app = app
        self.path = path
        self.allowed = allowed

    def _refusal(self, headers: Headers) -> JSONResponse | None:
        host = headers.get("host")
        if not host_allowed(host, self.allowed):
            return JSONResponse({"data": None, "errors": [
                f"Host {host!r} is not one this server answers MCP for (TCI_ALLOWED_HOSTS)"
            ]}, status_code=421)
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a same-origin request
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not host_allowed(parts.netloc, self.allowed):
            return JSONResponse({"data": None, "errors": [
                f"Origin {origin!r} may not call MCP here (TCI_ALLOWED_HOSTS)"
            ]}, status_code=403)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.path):
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
