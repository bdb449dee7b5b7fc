"""Usage records written in batches, off the request path.

A warm call costs about a millisecond; a SQLite commit per call would cost as much again.
Records are buffered and written in one transaction every `store_flush_seconds` (and at
shutdown, and before usage is read), so the store sees a write a few times a second however
busy the server is. `BatchedLog` is that cycle; `ExecutionLog` (one row per execution) and
`RunLog` (one-shot runs counted per key, hour and verdict) are what they buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Generic, TypeVar

from tci.storage.buckets import bucket_floor
from tci.storage.store import AsyncStore, ExecutionRow, RunUsageRow

log = logging.getLogger(__name__)
Batch = TypeVar("Batch")


class BatchedLog(ABC, Generic[Batch]):
    """Buffers records in memory and writes whatever is buffered every `flush_seconds`."""

    name = "records"

    def __init__(self, store: AsyncStore, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    def _take(self) -> Batch | None:
        """What is buffered, leaving the buffer empty (None: nothing)."""

    @abstractmethod
    async def _write(self, batch: Batch) -> None: ...

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name=f"tci-{self.name}-log")

    async def flush(self) -> None:
        batch = self._take()
        if batch is not None:
            try:
                await self._write(batch)
            except Exception:
                # Lost rather than retried: a database that stays down must not make the
                # buffer grow without bound. The failure is in the log.
                log.exception("could not record %s", self.name)

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


class ExecutionLog(BatchedLog[list[ExecutionRow]]):
    name = "executions"

    def __init__(self, store: AsyncStore, flush_seconds: float) -> None:
        super().__init__(store, flush_seconds)
        self._rows: list[ExecutionRow] = []

    def add(self, session_id: str, started_at: datetime, duration: float, outcome: str,
            execute_count: int) -> None:
        self._rows.append(ExecutionRow(session_id, started_at, duration, outcome, execute_count))

    def _take(self) -> list[ExecutionRow] | None:
        rows, self._rows = self._rows, []
        return rows or None

    async def _write(self, batch: list[ExecutionRow]) -> None:
        await self.store.record_executions(batch)


# (key id, the UTC hour the run finished in, verdict)
_Cell = tuple[int, datetime, str]


class RunLog(BatchedLog[list[RunUsageRow]]):
    """Runs counted per key, hour and verdict in memory, added to the store's counts every
    flush: one upserted row per cell, however many runs it holds, so a write costs the same
    at thousands of runs a second."""

    name = "runs"

    def __init__(self, store: AsyncStore, flush_seconds: float) -> None:
        super().__init__(store, flush_seconds)
        self._cells: dict[_Cell, tuple[int, float]] = {}

    def add(self, key_id: int, verdict: str, wall_seconds: float,
            finished: datetime | None = None) -> None:
        hour = bucket_floor(finished or datetime.now(UTC), "hour")
        runs, wall = self._cells.get((key_id, hour, verdict), (0, 0.0))
        self._cells[(key_id, hour, verdict)] = (runs + 1, wall + wall_seconds)

    def _take(self) -> list[RunUsageRow] | None:
        cells, self._cells = self._cells, {}
        return [RunUsageRow(key_id, hour, verdict, runs, wall)
                for (key_id, hour, verdict), (runs, wall) in cells.items()] or None

    async def _write(self, batch: list[RunUsageRow]) -> None:
        await self.store.record_runs(batch)
