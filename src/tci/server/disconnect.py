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


def _left(watch: asyncio.Future[None]) -> bool:
    """Whether the watch saw the client go (not merely stopped by us)."""
    return watch.done() and not watch.cancelled() and watch.exception() is None


async def unless_disconnected(
    request: Request, call: Awaitable[T],
    on_lost: Callable[[T], Awaitable[None]] | None = None,
) -> T:
    """Await `call`, cancelling it if the client disconnects first (then ClientGone). A call
    that finished just as its client left gets its answer handed to `on_lost`.

    The call runs in the request's own task, which the watch cancels when the client goes:
    one task per call (the watch) instead of two and an `asyncio.wait`, since this is the
    warm call's path. The cancellation unwinds the call as a cancelled task would."""
    task = asyncio.current_task()
    assert task is not None
    cancelled_by_watch = False

    def client_left(watch: asyncio.Future[None]) -> None:
        nonlocal cancelled_by_watch
        if _left(watch):
            cancelled_by_watch = task.cancel()

    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(client_left)
    try:
        result = await call
    except asyncio.CancelledError:
        if not cancelled_by_watch:
            raise  # cancelled from elsewhere (the server stopping): not ours to turn
        task.uncancel()
        raise ClientGone("the client disconnected; the call was interrupted") from None
    finally:
        watch.remove_done_callback(client_left)
        watch.cancel()
    if cancelled_by_watch:  # the call ignored the cancellation and finished anyway
        task.uncancel()
    if cancelled_by_watch or _left(watch):  # gone: the answer cannot be delivered
        if on_lost is not None:
            await on_lost(result)
        raise ClientGone("the client disconnected before its answer was sent")
    return result
