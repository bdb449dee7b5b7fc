"""AsyncStore, the store as the event loop uses it: every Store method is offered, awaited,
under its own name and signature (so a gateway never needs `to_thread` on the sync Store);
calls run on one thread in the order made, so a queued write is ahead of any later read;
the store's errors reach the caller; a queued write that fails is logged, never lost
silently. On a real SQLite file."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tci.errors import NotFound
from tci.storage.store import AsyncStore, Store

T = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
STORE_METHODS = sorted(name for name, _ in inspect.getmembers(Store, inspect.isfunction)
                       if not name.startswith("_"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'tci.db'}", timeout=0.5)
    yield opened
    opened.engine.dispose()


def test_every_store_method_is_awaitable_with_its_own_signature(store):
    async_store = AsyncStore(store)
    try:
        # What a Ray gateway calls today through asyncio.to_thread on the sync Store.
        assert {"live_hosts", "end_live", "end_session", "session_row"} <= set(STORE_METHODS)
        for name in STORE_METHODS:
            offered = getattr(async_store, name, None)
            assert offered is not None, f"AsyncStore does not offer Store.{name}"
            assert inspect.iscoroutinefunction(offered), name
            assert inspect.signature(offered) == inspect.signature(getattr(store, name)), name
            assert offered.__doc__ == getattr(store, name).__doc__, name
    finally:
        async_store.close()


def test_calls_run_in_order_on_one_thread_with_their_results_and_errors(store):
    async_store = AsyncStore(store)
    before = set(threading.enumerate())

    async def scenario() -> None:
        key, secret = await async_store.create_key("alice")
        assert await async_store.find_active_key(secret) == key
        await async_store.add_session("s1", key.id, T, T + HOUR)
        assert await async_store.live_owner("s1") == key.id
        # Queued, not awaited, with a keyword argument: the next read already sees it.
        async_store.end_session_later("s1", "ended by the client", cpu_seconds=0.5)
        ended = await async_store.find_ended("s1")
        assert ended is not None and ended.reason == "ended by the client"
        row = await async_store.session_row("s1")
        assert row is not None and row["cpu_seconds"] == 0.5
        await async_store.add_session("s2", key.id, T, T + HOUR, host="node-a")
        assert await async_store.live_hosts() == {"node-a"}
        assert await async_store.end_live("host lost", host="node-a") == 1
        with pytest.raises(NotFound, match="no key named 'nobody'"):
            await async_store.revoke_key("nobody")
        # Many at once: each counts after the one before it (a single writer), so exactly
        # the limit's worth of places are taken.
        places = await asyncio.gather(*(async_store.reserve_session(key.id, 5, 60)
                                        for _ in range(20)))
        assert sum(place is not None for place in places) == 5

    try:
        asyncio.run(scenario())
        started = [t for t in set(threading.enumerate()) - before
                   if t.name.startswith("tci-store")]
        assert len(started) == 1, started
    finally:
        async_store.close()


def test_a_queued_write_that_fails_is_logged_and_later_calls_work(store, tmp_path, caplog):
    async_store = AsyncStore(store)
    other = sqlite3.connect(tmp_path / "tci.db", isolation_level=None)

    async def scenario() -> None:
        key, _ = await async_store.create_key("alice")
        await async_store.add_session("s1", key.id, T, T + HOUR)
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the file past the timeout
        async_store.end_session_later("s1", "expired")
        await async_store.drain()
        other.execute("ROLLBACK")
        assert await async_store.find_ended("s1") is None  # nothing was half-written
        async_store.end_session_later("s1", "expired")
        await async_store.settled()
        ended = await async_store.find_ended("s1")
        assert ended is not None and ended.reason == "expired"

    try:
        with caplog.at_level(logging.ERROR, logger="tci.storage.store"):
            asyncio.run(scenario())
        failures = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("a queued store write failed")]
        assert len(failures) == 1 and "database is locked" in failures[0], failures
    finally:
        other.close()
        async_store.close()
