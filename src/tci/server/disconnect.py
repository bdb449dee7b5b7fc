"""A plain (unstreamed) call whose client goes away stops its cell.

An HTTP client that gives up (its timeout fires during `time.sleep(300)`, the user presses
Ctrl-C) would otherwise leave the cell running, and its retry would wait behind it. While the
call runs, the request's receive channel is watched: the server learns of the disconnect as
soon as the connection closes, cancels the call, and the driver interrupts the cell and waits
for it to unwind (kernel/driver.py), so the next call finds the session idle with its state.
A session the call itself created is ended instead (sessions/manager.py): its id is told only
in the answer, so no one could ever use it. `on_lost` covers the last gap, a call that
finished as its client left: the answer it cannot deliver is handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from tci.errors import ClientGone

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(
    request: Request, call: Awaitable[T],
    on_lost: Callable[[T], Awaitable[None]] | None = None,
) -> T:
    """Await `call`, cancelling it if the client disconnects first (then ClientGone). A call
    that finished just as its client left gets its answer handed to `on_lost`."""
    task = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone("the client disconnected; the call was interrupted")
        if not watch.done():
            watch.cancel()
    result = task.result()
    if watch.done() and not watch.cancelled():  # gone: the answer cannot be delivered
        if on_lost is not None:
            await on_lost(result)
        raise ClientGone("the client disconnected before its answer was sent")
    return result
