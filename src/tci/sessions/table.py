"""The live sessions of one holder, and the bookkeeping every holder needs: a per-session lock
(one call at a time), expiry, an end that happens once, and what ended recently and why.

Two holders use it: the SessionManager (tci/sessions/manager.py), for the sessions of its
clients, and a Ray host actor (tci/cluster/host_actor.py), for the sessions on its node,
which it must expire on its own once the gateway that made them is gone. What an end does
beyond this bookkeeping (free the sandbox, write the record, tell the gateways) is the
holder's `finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from tci.kernel.ends import EndKind, EndReason

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Entry(Protocol):
    """What the table needs of a live session; a holder's own record adds the rest."""

    id: str
    expires_at: datetime
    lock: asyncio.Lock  # held by the running call: an end waits for it, expiry skips it
    ended: EndReason | None  # set once, by the table's `end`

    @property
    def key_id(self) -> int | None: ...  # whose it is, remembered with its end (None: unknown)


E = TypeVar("E", bound=Entry)
# Ends the session for real once the table has marked it ended; returns its CPU seconds.
Finish = Callable[[E, EndReason], Awaitable[float | None]]


@dataclass(frozen=True)
class Gone:
    """A session that ended recently: whose it was and why."""

    key_id: int | None
    reason: EndReason


class SessionTable(Generic[E]):
    """Live sessions by id, and the last `remember` ended ones (oldest forgotten first)."""

    def __init__(self, remember: int, finish: Finish[E]) -> None:
        self.live: dict[str, E] = {}
        self._gone: dict[str, Gone] = {}
        self._remember = remember
        self._finish = finish
        self._ending: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[E]:
        """A snapshot: ending a session while iterating is safe."""
        return iter(list(self.live.values()))

    def get(self, session_id: str) -> E | None:
        return self.live.get(session_id)

    def add(self, entry: E) -> None:
        self.live[entry.id] = entry

    def release(self, entry: E) -> None:
        """The session leaves the table without ending (it was paused: sessions/pause.py)."""
        if self.live.get(entry.id) is entry:
            del self.live[entry.id]

    def gone(self, session_id: str) -> Gone | None:
        """How a session that ended recently ended (None: live, unknown or forgotten)."""
        return self._gone.get(session_id)

    # -- ending --------------------------------------------------------------------------------

    async def end(self, entry: E, reason: EndReason) -> float | None:
        """End the session once: later ends (and calls) find it ended with this reason. It
        is remembered before it leaves the live table, so no caller in between finds it
        unknown. Returns its CPU seconds (None if it had ended already or was not measured)."""
        if entry.ended is not None:
            return None
        entry.ended = reason
        self._gone[entry.id] = Gone(entry.key_id, reason)
        while len(self._gone) > self._remember:
            self._gone.pop(next(iter(self._gone)))
        self.live.pop(entry.id, None)
        return await self._finish(entry, reason)

    def end_soon(self, entry: E, reason: EndReason) -> None:
        """End the session in the background, once no call holds its lock (a call that is
        just starting then sees it ended)."""
        async def end_after_calls() -> None:
            async with entry.lock:
                await self.end(entry, reason)

        task = asyncio.create_task(end_after_calls(), name=f"tci-end-{entry.id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def end_all(self, reason: EndReason) -> None:
        await asyncio.gather(*(self.end(entry, reason) for entry in self),
                             return_exceptions=True)

    # -- expiry --------------------------------------------------------------------------------

    async def reap_expired(self) -> None:
        """End every session past its expiry; one whose call is running ends at a later
        pass, after the call (its lock tells)."""
        now = utcnow()
        for entry in self:
            if entry.expires_at <= now and not entry.lock.locked():
                await self.end(entry, EndReason(EndKind.EXPIRED))

    def start_reaper(self, interval: float) -> None:
        """Reap every `interval` seconds until `stop_reaper`."""
        self._reaper = asyncio.create_task(self._reap_forever(interval), name="tci-reaper")

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_expired()
            except Exception:  # one failed end must not stop expiry for good
                log.exception("ending expired sessions failed; trying again")

    async def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
