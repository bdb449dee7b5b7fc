"""`"stream": true`: the execute call as Server-Sent Events.

Events: `output` (one TCI output, stdout lines as they are written, and the server's own
`error` outputs as the call ends: a limit it ran into, its worker's death), then one `result`
holding the whole TCI response ({"data": ..., "errors": null}), or `error` ({"data": null,
"errors": [...]}) if the call failed after it started. A comment line keeps quiet
connections alive (after TCI_STREAM_KEEPALIVE_SECONDS without output). A client that
disconnects interrupts its cell. Errors found before the code starts (bad key, unknown
session, bad files) are ordinary HTTP errors, not events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from tci.errors import TCIError
from tci.kernel.outputs import to_json
from tci.schemas import ExecuteRequest
from tci.server.errors import client_message
from tci.sessions.manager import SessionManager
from tci.storage.store import KeyInfo


def sse(event: str, payload: Any) -> bytes:
    # As the output budget counts it (kernel/outputs.py): UTF-8 as it is, not \uXXXX (up to
    # three times the bytes), and one line whatever line breaks the text holds.
    return f"event: {event}\ndata: {to_json(payload)}\n\n".encode()


async def stream_execute(
    manager: SessionManager, key: KeyInfo, body: ExecuteRequest
) -> StreamingResponse:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_start(session_id: str) -> None:
        if not started.done():
            started.set_result(session_id)

    # Each output is queued as the host hands it over (a dict of its own, never changed
    # after), and written once as its event; the `result` repeats them all because a
    # client may read only that event (the wire format).
    task = asyncio.create_task(manager.execute(key, body, queue.put_nowait, on_start))
    first: set[asyncio.Future[Any]] = {started, task}
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        task.result()  # raises the TCIError: an ordinary HTTP error response

    keepalive = manager.settings.stream_keepalive_seconds

    async def events() -> AsyncIterator[bytes]:
        getter: asyncio.Future[dict[str, Any]] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, task}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    yield sse("output", getter.result())
                    continue
                getter.cancel()
                if task in done:
                    break
                yield b": keep-alive\n\n"
            while not queue.empty():
                yield sse("output", queue.get_nowait())
            try:
                yield sse("result", {"data": task.result(), "errors": None})
            except TCIError as exc:
                yield sse("error", {"data": None, "errors": [client_message(exc)]})
        finally:
            if getter is not None:  # left waiting if the client went away during the wait
                getter.cancel()
            if not task.done():  # the client went away mid-cell
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TCIError):
                    await task

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
