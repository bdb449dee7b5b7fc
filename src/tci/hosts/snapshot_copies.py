"""Sessions already restored from a snapshot, ready for the next start from it.

A start from a snapshot is a cold sandbox start (its volume is the snapshot's copy, fixed
when the sandbox starts) plus the worker loading the saved namespace: ~100 ms for 10 MB,
where a fresh session from the warm pool answers in ~15. One prepared state that many
sessions start from (RL rollouts, agents forked from one setup) is the case snapshots are
for, so after a start from a snapshot the host restores TCI_SNAPSHOT_POOL_SIZE more copies of
it in the background, niced like the warm pool's refills: the next starts take one in
microseconds. Each copy is its own sandbox, volume copy and worker, restored from the kept
image as a cold start would be (inside the sandbox, never by the server), and handed out
once: sessions from one snapshot stay independent.

Copies hold memory, so they are bounded: TCI_SNAPSHOT_POOL_SNAPSHOTS snapshots have copies
at once (the least recently started loses its copies first), and a deleted snapshot's copies
end at once. A paused session has none: freeing its memory is what a pause is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from tci.errors import SandboxUnavailable
from tci.hosts.base import EndKind, EndReason, StateNotRestored

log = logging.getLogger(__name__)

_UNUSED = EndReason(EndKind.SHUTDOWN, "a snapshot's unused warm copy")


class Copy(Protocol):
    """A session restored from a snapshot (a LocalSession)."""

    def usable(self) -> bool: ...

    def hand_out(self) -> None: ...

    async def end(self, reason: EndReason) -> float | None: ...


C = TypeVar("C", bound=Copy)


class SnapshotCopies(Generic[C]):
    """`open_copy(name, max_bytes, niceness)` restores one more session from the snapshot."""

    def __init__(self, open_copy: Callable[[str, int, int], Awaitable[C]], per_snapshot: int,
                 snapshots: int, refill_delay: float, niceness: int) -> None:
        self.open_copy = open_copy
        self.per_snapshot = per_snapshot
        self.snapshots = snapshots
        self.refill_delay = refill_delay
        self.niceness = niceness
        # Ready copies by snapshot, least recently started first.
        self.ready: OrderedDict[str, list[C]] = OrderedDict()
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.per_snapshot > 0 and self.snapshots > 0

    def count(self) -> int:
        return sum(len(copies) for copies in self.ready.values())

    def take(self, name: str) -> C | None:
        """A ready copy of the snapshot, if one is (never waits)."""
        copies = self.ready.get(name, [])
        while copies:
            copy = copies.pop(0)
            if copy.usable():
                copy.hand_out()
                return copy
            self._end_later(copy)
        return None

    def started(self, name: str, max_bytes: int) -> None:
        """A session was started from `name`: keep copies of it ready from now on."""
        if not self.enabled:
            return
        self.ready.setdefault(name, [])
        self.ready.move_to_end(name)
        while len(self.ready) > self.snapshots:  # the least recently started goes
            oldest = next(iter(self.ready))
            self.forget(oldest)
        if name not in self._refills:
            task = asyncio.create_task(self._refill(name, max_bytes),
                                       name=f"tci-snapshot-copies-{name}")
            self._refills[name] = task
            task.add_done_callback(lambda done: self._refill_done(name, done))

    def _refill_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._refills.get(name) is task:
            del self._refills[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("keeping copies of snapshot %s failed", name, exc_info=task.exception())

    async def _refill(self, name: str, max_bytes: int) -> None:
        await asyncio.sleep(self.refill_delay)  # the new session's first call goes first
        while name in self.ready and len(self.ready[name]) < self.per_snapshot:
            try:
                copy = await self.open_copy(name, max_bytes, self.niceness)
            except (SandboxUnavailable, StateNotRestored) as exc:
                self.failed += 1
                log.warning("could not keep a copy of snapshot %s ready: %s", name, exc)
                return  # the next start from it tries again
            if name in self.ready:
                self.ready[name].append(copy)
            else:  # deleted or displaced meanwhile
                self._end_later(copy)

    def forget(self, name: str) -> None:
        """The snapshot's copies end (it was deleted, or others were started more lately)."""
        refill = self._refills.pop(name, None)
        if refill is not None:
            refill.cancel()
        for copy in self.ready.pop(name, []):
            self._end_later(copy)

    def _end_later(self, copy: C) -> None:
        task = asyncio.create_task(self._end(copy))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    @staticmethod
    async def _end(copy: C) -> None:
        await copy.end(_UNUSED)

    async def close(self) -> None:
        for name in list(self.ready):
            self.forget(name)
        for task in list(self._refills.values()):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._refills.values(), return_exceptions=True)
        await asyncio.gather(*self._ending, return_exceptions=True)
