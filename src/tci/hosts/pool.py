"""Warm pool: sessions' sandboxes and workers started ahead of demand.

A new session takes a ready worker in microseconds instead of waiting for its start (a
fork from the template, or a bubblewrap sandbox and a new interpreter). Each pooled worker
is fresh (never used by anyone before), so nothing of a previous user can leak through it.
Refills start a moment after a take and run niced, up to TCI_POOL_REFILL_CONCURRENCY starts
at once, so that they do not starve live sessions of the CPU.

What a pooled worker has imported: on the fork path, whatever the template imported and
warmed up (TCI_POOL_PRELOAD), inherited by the fork, so nothing is sent to it; a bubblewrap
worker is a new interpreter, so the pool has it import TCI_POOL_PRELOAD before it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.hosts.worker_start import ReadyWorker, start_worker
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.launcher import SandboxLauncher

log = logging.getLogger(__name__)


def preload_of(settings: Settings) -> tuple[str, ...]:
    """The modules a pooled worker must still be told to import: none for a fork of the
    template, which imported them and ran the warm-up cell before it forked."""
    return () if settings.sandbox_start == "fork" else tuple(settings.pool_preload)


class WarmPool:
    def __init__(self, launcher: SandboxLauncher, settings: Settings) -> None:
        self.launcher = launcher
        self.size = settings.pool_size
        self.preload = preload_of(settings)
        self.limits = OutputLimits.of(settings)
        self.start_timeout = settings.worker_start_timeout
        # Refills start a moment after a take, so the new session's first call has the CPU,
        # and run niced: on two cores a refill must not slow live calls.
        self.refill_delay = settings.pool_refill_delay_seconds
        self.refill_niceness = settings.pool_refill_niceness
        self.retry_delay = settings.pool_retry_seconds
        self.concurrency = max(1, settings.pool_refill_concurrency)
        self.ready: list[ReadyWorker] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.starts_failed = 0
        self._discarding: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._refill_forever(), name="tci-pool")
            self._wake.set()

    def take(self) -> ReadyWorker | None:
        """A ready worker if there is one (never waits); the pool then refills itself."""
        while self.ready:
            item = self.ready.pop(0)
            self._wake.set()
            if item.worker.death is None:
                item.sandbox.set_priority(0)
                return item
            task = asyncio.create_task(self._discard(item))
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)
        self._wake.set()
        return None

    async def _discard(self, item: ReadyWorker) -> None:
        item.worker.close()
        await self.launcher.destroy(item.sandbox)

    async def _refill_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.refill_delay)
            self._wake.clear()
            while len(self.ready) < self.size:
                starts = min(self.concurrency, self.size - len(self.ready))
                results = await asyncio.gather(*(
                    start_worker(self.launcher, self.limits, self.start_timeout, self.preload,
                                 self.refill_niceness) for _ in range(starts)
                ), return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                self.ready.extend(r for r in results if isinstance(r, ReadyWorker))
                for exc in failed:
                    if not isinstance(exc, SandboxUnavailable):
                        raise exc
                    self.starts_failed += 1
                    log.warning("warm pool could not start a worker: %s", exc.message)
                if failed:
                    await asyncio.sleep(self.retry_delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        items, self.ready = self.ready, []
        await asyncio.gather(*(self._discard(item) for item in items), return_exceptions=True)
