"""The session table both holders share (the manager, a Ray host actor): a session ends once
whoever ends it and however many times, its end waits for a running call when asked to,
expiry leaves a running call alone until it is over, and the recently ended are remembered
with why, the oldest forgotten first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tci.kernel.ends import EndKind, EndReason
from tci.sessions.table import SessionTable, utcnow


@dataclass(eq=False)
class Live:
    id: str
    expires_at: datetime
    key_id: int | None = 7
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: EndReason | None = None


class Holder:
    """A holder whose finish records each end it is asked to carry out."""

    def __init__(self, remember: int = 100) -> None:
        self.finished: list[tuple[str, EndReason]] = []
        self.table: SessionTable[Live] = SessionTable(remember, self.finish)

    async def finish(self, entry: Live, reason: EndReason) -> float | None:
        await asyncio.sleep(0)  # a real end awaits its host
        self.finished.append((entry.id, reason))
        return 1.5

    def live(self, session_id: str, expires_in: float = 3600) -> Live:
        entry = Live(session_id, utcnow() + timedelta(seconds=expires_in))
        self.table.add(entry)
        return entry


def test_a_session_ends_once_whoever_ends_it():
    async def run() -> tuple[Holder, list[float | None]]:
        holder = Holder()
        entry = holder.live("s1")
        used = await asyncio.gather(holder.table.end(entry, EndReason(EndKind.CLIENT)),
                                    holder.table.end(entry, EndReason(EndKind.EXPIRED)))
        return holder, list(used)

    holder, used = asyncio.run(run())
    assert holder.finished == [("s1", EndReason(EndKind.CLIENT))]
    assert used == [1.5, None]
    assert holder.table.get("s1") is None and len(holder.table) == 0
    gone = holder.table.gone("s1")
    assert gone is not None and (gone.key_id, str(gone.reason)) == (7, "ended by the client")


def test_an_end_soon_waits_for_the_running_call():
    async def run() -> list[str]:
        holder = Holder()
        entry = holder.live("s1")
        seen: list[str] = []
        async with entry.lock:  # a call runs
            holder.table.end_soon(entry, EndReason(EndKind.WORKER_DIED))
            for _ in range(5):
                await asyncio.sleep(0)
            seen.append(f"during the call: {entry.ended}")
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append(f"after it: {entry.ended}")
        return seen

    assert asyncio.run(run()) == ["during the call: None",
                                  "after it: the worker process ended"]


def test_expiry_ends_only_sessions_past_it_and_not_during_a_call():
    async def run() -> tuple[Holder, list[str]]:
        holder = Holder()
        holder.live("fresh")
        holder.live("old", expires_in=-1)
        busy = holder.live("busy", expires_in=-1)
        async with busy.lock:
            await holder.table.reap_expired()
        during = sorted(e.id for e in holder.table)
        await holder.table.reap_expired()
        return holder, during

    holder, during = asyncio.run(run())
    assert during == ["busy", "fresh"]
    assert holder.finished == [("old", EndReason(EndKind.EXPIRED)),
                               ("busy", EndReason(EndKind.EXPIRED))]
    assert [e.id for e in holder.table] == ["fresh"]


def test_the_reaper_runs_on_its_own_until_stopped():
    async def run() -> Holder:
        holder = Holder()
        holder.live("old", expires_in=0.05)
        holder.table.start_reaper(0.02)
        deadline = asyncio.get_running_loop().time() + 30
        while not holder.finished and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await holder.table.stop_reaper()
        return holder

    assert asyncio.run(run()).finished == [("old", EndReason(EndKind.EXPIRED))]


def test_the_oldest_ended_are_forgotten_first():
    async def run() -> Holder:
        holder = Holder(remember=2)
        for name in ("a", "b", "c"):
            await holder.table.end(holder.live(name), EndReason(EndKind.CLIENT))
        return holder

    holder = asyncio.run(run())
    assert holder.table.gone("a") is None
    assert [holder.table.gone(n) is not None for n in ("b", "c")] == [True, True]


def test_ending_every_session_at_shutdown():
    async def run() -> Holder:
        holder = Holder()
        for name in ("a", "b"):
            holder.live(name)
        await holder.table.end_all(EndReason(EndKind.SHUTDOWN))
        return holder

    holder = asyncio.run(run())
    assert sorted(holder.finished) == [("a", EndReason(EndKind.SHUTDOWN)),
                                       ("b", EndReason(EndKind.SHUTDOWN))]
    assert len(holder.table) == 0
