"""Refuse request bodies over their limit before they reach a route.

The limit depends on who is asking: TCI_MAX_REQUEST_BYTES once ApiKeyAuth (which runs first)
has established a key, TCI_MAX_ANONYMOUS_REQUEST_BYTES otherwise (/health, the console, an open
/metrics take no body). A declared length over the limit is refused before anything is read;
a body without one (chunked) is refused as soon as what arrived crosses it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, anonymous_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.anonymous_max_bytes = anonymous_max_bytes

    async def _refuse(self, send: Send, limit: int, authenticated: bool) -> None:
        reason = "TCI_MAX_REQUEST_BYTES" if authenticated else \
            "TCI_MAX_ANONYMOUS_REQUEST_BYTES: a request without an API key takes no body"
        body = json.dumps({"data": None, "errors": [
            f"request body larger than {limit} bytes ({reason})"
        ]}).encode()
        # Connection: close, so the server need not read (and the client need not send) the
        # rest of the body.
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authenticated = "key" in scope.get("state", {})
        limit = self.max_bytes if authenticated else self.anonymous_max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(send, limit, authenticated)
                    return
        # Count what actually arrives too (chunked bodies have no content-length).
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._refuse(send, limit, authenticated)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed_receive() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed_receive, send)
