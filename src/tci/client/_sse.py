"""The Server-Sent Events decoder of ``execute(..., stream=True)``, shared by ExecuteStream
and AsyncExecuteStream (which only read the lines)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from tci.client._base import joined
from tci.client._errors import APIConnectionError, APIError
from tci.client._types import ExecuteResult, Output, OutputEvent, ResultEvent, StreamEvent


class SSEDecoder:
    """Turns the lines of a text/event-stream into StreamEvents (``output`` and ``result``;
    an ``error`` event raises APIError; ``:`` comments such as keep-alives are skipped).
    ``finished`` is set by the ResultEvent, the last one a stream has."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self.finished = False

    def feed(self, line: str) -> list[StreamEvent]:
        """The event this line completes, if any."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return []
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return []

    def end(self) -> Iterator[StreamEvent]:
        """At the end of the body: the last event if no blank line followed it, then
        APIConnectionError if the stream ended before its result."""
        yield from self._dispatch()
        if not self.finished:
            raise APIConnectionError("the stream ended before the result")

    def _dispatch(self) -> list[StreamEvent]:
        event, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = None, []
        if not data:
            return []
        payload = json.loads(data)
        if event == "output":
            return [OutputEvent(Output.from_json(payload))]
        if event == "result":
            self.finished = True
            return [ResultEvent(ExecuteResult.from_json(payload["data"]))]
        if event == "error":
            errors = payload.get("errors") or ["the call failed"]
            raise APIError(joined(errors), status_code=None, errors=errors, body=payload)
        return []
