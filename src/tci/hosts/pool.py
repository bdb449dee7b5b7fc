"""Warm pool: sandboxed workers started ahead of demand, heavy packages already imported.

A new session takes a ready worker in microseconds instead of paying ~0.3 s of sandbox and
interpreter start plus ~1 s of imports. Each pooled worker is fresh (never used by anyone
before), so nothing of a previous user can leak through it. Refills run one at a time in
the background so that they never starve live sessions of the two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
from dataclasses import dataclass

from tci.config import Settings
from tci.errors import SandboxUnavailable, WorkerDied
from tci.kernel.driver import WorkerConnection
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.launcher import Sandbox, SandboxLauncher

log = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # ~143 bits: unguessable


def new_session_id() -> str:
    return "ses_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


@dataclass
class ReadyWorker:
    """A started sandbox and its connected, ready worker; its name becomes the session id."""

    name: str
    sandbox: Sandbox
    worker: WorkerConnection


async def start_worker(
    launcher: SandboxLauncher, limits: OutputLimits, start_timeout: float,
    preload: tuple[str, ...] = (), niceness: int = 0,
) -> ReadyWorker:
    """Start one sandbox + worker; with `preload`, import those modules in it first."""
    name = new_session_id()
    sandbox = await launcher.start(name, niceness)
    worker = WorkerConnection(sandbox, limits)
    try:
        await worker.wait_ready(start_timeout)
        if preload:
            result = await worker.request(
                {"op": "preload", "modules": list(preload)}, timeout=start_timeout, grace=1.0
            )
            if result.worker_died:
                raise WorkerDied(result.worker_died)
    except BaseException as exc:
        worker.close()
        await asyncio.shield(launcher.destroy(sandbox))
        if isinstance(exc, WorkerDied | TimeoutError):
            raise SandboxUnavailable(f"the session's worker did not start: {exc}") from exc
        raise
    return ReadyWorker(name, sandbox, worker)


class WarmPool:
    def __init__(self, launcher: SandboxLauncher, settings: Settings) -> None:
        self.launcher = launcher
        self.size = settings.pool_size
        self.preload = tuple(settings.pool_preload)
        self.limits = settings.output_limits()
        self.start_timeout = settings.worker_start_timeout
        # Refills start a moment after a take, so the new session's first call has the CPU,
        # and run niced: on two cores a refill (interpreter start + imports) must not slow
        # live calls.
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
            if item.worker.dead_reason is None:
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
