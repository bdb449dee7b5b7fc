"""Execution records written in batches, off the request path.

A warm call costs about a millisecond; a SQLite commit per call would cost as much again.
Records are buffered and written in one transaction every `store_flush_seconds` (and at
shutdown), so the store sees a write a few times a second however busy the server is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from tci.storage.store import AsyncStore, ExecutionRow

log = logging.getLogger(__name__)


class ExecutionLog:
    def __init__(self, store: AsyncStore, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._rows: list[ExecutionRow] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="tci-execution-log")

    def add(self, session_id: str, started_at: datetime, duration: float, outcome: str,
            execute_count: int) -> None:
        self._rows.append(ExecutionRow(session_id, started_at, duration, outcome, execute_count))

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        if rows:
            try:
                await self.store.record_executions(rows)
            except Exception:
                log.exception("could not record %d executions", len(rows))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
