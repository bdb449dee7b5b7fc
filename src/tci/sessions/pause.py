"""Pause, resume and snapshots: the SessionManager's part (a mixin of it).

A pause keeps a session's state (its namespace, saved by the worker inside the sandbox,
worker/state.py; its files and pip-installed packages, on its volume) in the host's state
store (sandbox/kept_volumes.py) and ends every process of it; the session leaves the live
table and its record says paused (store.pause_session), with the lifetime it had left. Its
id stays valid: any call on it (execute, files) resumes it under the same id, in a new
sandbox, where the worker loads the state. A paused session counts toward no session limit;
it is kept TCI_PAUSED_RETENTION_SECONDS, then ended. A snapshot keeps a running session's
state under its own id; executing with its `snapshot_id` starts a new, independent session
from it. Both belong to their key: another key's id answers 404, as an unknown one does.

A graceful stop pauses every live session (pause_all), so a restart on the same data dir
finds them paused; a crash (SIGKILL) leaves their records live, and the next start ends them
("server restarted", 410).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tci.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    SessionEnded,
    StoreUnavailable,
    Unprocessable,
)
from tci.hosts.base import (
    EndKind,
    EndReason,
    HostedSession,
    SavedState,
    SessionGone,
    StateNotRestored,
    StateNotSaved,
)
from tci.sessions.live import LiveSession
from tci.sessions.table import utcnow
from tci.storage.store import KeyInfo, PausedSession, SnapshotRow

if TYPE_CHECKING:
    from tci.config import Settings
    from tci.hosts.base import SessionHost
    from tci.metrics import Metrics
    from tci.sessions.execution_log import ExecutionLog
    from tci.sessions.table import SessionTable
    from tci.storage.store import AsyncStore

log = logging.getLogger(__name__)

PAUSED_TOO_LONG = "it stayed paused longer than TCI_PAUSED_RETENTION_SECONDS"


class RepausedWhileWaiting(Exception):  # a state, like StopIteration
    """The session a call waited for was paused before the call could run: resume anew."""


def _not_found(kind: str, ident: str) -> NotFound:
    return NotFound(f"{kind} {ident} not found")


def paused_info(row: PausedSession) -> dict[str, Any]:
    """A paused session as GET /tci/sessions lists it: its expiry as if resumed now."""
    return {
        "id": row.id, "execute_count": row.execute_count, "started_at": row.started_at,
        "last_execute_at": row.last_execute_at or row.started_at,
        "expires_at": utcnow() + timedelta(seconds=row.seconds_left),
        "status": "paused", "paused_at": row.paused_at, "state_bytes": row.state_bytes,
    }


def snapshot_info(row: SnapshotRow) -> dict[str, Any]:
    return {"id": row.id, "session_id": row.session_id, "created_at": row.created_at,
            "size_bytes": row.size_bytes}


class Pausing:
    """SessionManager's pause, resume and snapshots (see the module's docstring)."""

    if TYPE_CHECKING:
        settings: Settings
        store: AsyncStore
        host: SessionHost
        sessions: SessionTable[LiveSession]
        executions: ExecutionLog
        metrics: Metrics
        _starting: int
        _resuming: dict[str, asyncio.Lock]

        def _check_capacity(self) -> None: ...
        async def _reserve(self, key: KeyInfo) -> str | None: ...
        def _release(self, reservation: str | None) -> None: ...
        async def get(self, key: KeyInfo, session_id: str) -> LiveSession: ...
        async def end(self, session: LiveSession, reason: EndReason) -> None: ...
        def _ended_on_its_own(self, session: LiveSession, reason: EndReason) -> None: ...

    # -- pause -------------------------------------------------------------------------------

    async def pause(self, key: KeyInfo, session_id: str) -> dict[str, Any]:
        """POST /tci/sessions/{id}/pause. A paused session's pause is a 200 as well; one
        with a call running is a 409 (its call holds it)."""
        paused = await self.store.paused_session(session_id)
        if paused is not None and paused.key_id == key.id and self.sessions.get(
                session_id) is None:
            return {"id": session_id, "status": "paused", "skipped": []}
        session = await self.get(key, session_id)
        if session.lock.locked():
            raise Conflict(f"session {session_id} is running a call: pause it once the call "
                           "has answered (or interrupt the call first)")
        saved = await self._pause(session)
        return {"id": session_id, "status": "paused", "skipped": saved.skipped}

    async def _pause(self, session: LiveSession) -> SavedState:
        """Keep its state and end its processes; it leaves the live table, paused."""
        async with session.lock:
            if session.ended is not None:
                raise SessionEnded(f"session {session.id} has ended: {session.ended}")
            await self.executions.flush()  # its record's execute_count, before it is read
            # Read before the save, which ends its sandbox (and its CPU counter): the
            # pause's own work inside it is the server's, not billed.
            used = await session.hosted.cpu_seconds()
            saved = await self._save(session, session.id, pause=True)
            session.paused = True
            self.sessions.release(session)
            left = max(0.0, (session.expires_at - utcnow()).total_seconds())
            await self.store.pause_session(session.id, utcnow(), left, saved.size_bytes,
                                           used)
        self.metrics.pauses.inc()
        log.info("session paused", extra={"session": session.id,
                                          "state_bytes": saved.size_bytes})
        return saved

    async def _save(self, session: LiveSession, name: str, pause: bool) -> SavedState:
        limit = self.settings.max_state_bytes
        try:
            return await session.hosted.save_state(name, pause, limit)
        except StateNotSaved as exc:
            if "TCI_MAX_STATE_BYTES" in str(exc):
                raise PayloadTooLarge(f"session {session.id}'s state could not be saved: "
                                      f"{exc}") from None
            raise Unprocessable(f"session {session.id}'s state could not be saved: "
                                f"{exc}") from None
        except SessionGone as gone:
            await self.end(session, gone.reason)
            raise SessionEnded(f"session {session.id} has ended: {session.ended}") from None
        except BaseException:
            if pause:  # its processes may be gone already: it cannot go on
                await self.end(session, EndReason(EndKind.SHUTDOWN, "its pause failed"))
                await self.host.delete_saved(name)
            raise

    async def pause_all(self, within: float) -> None:
        """A graceful stop: pause every live session not running a call, within `within`
        seconds; what is not paused by then ends as the stop ends it."""
        idle = [s for s in self.sessions if not s.lock.locked() and s.ended is None]
        if not idle:
            return
        pausing = [asyncio.ensure_future(self._pause(s)) for s in idle]
        done, pending = await asyncio.wait(pausing, timeout=max(1.0, float(within)))
        for task in pending:
            task.cancel()
        failed = sum(1 for task in done if task.exception() is not None)
        log.info("paused %d sessions at shutdown (%d failed, %d out of time)",
                 len(done) - failed, failed, len(pending))

    # -- resume ------------------------------------------------------------------------------

    async def resume_by_client(self, key: KeyInfo, session_id: str) -> dict[str, Any]:
        """POST /tci/sessions/{id}/resume (a running session's resume is a 200 too)."""
        session = await self.get(key, session_id)
        return {"id": session.id, "status": "running"}

    async def _resume(self, key: KeyInfo, session_id: str) -> LiveSession | None:
        """The caller's paused session, running again under its id (None: not a paused
        session of this key). 429 when the host is full; 410 when its state cannot be
        restored (the session then ends, its state freed)."""
        paused = await self.store.paused_session(session_id)
        if paused is None or paused.key_id != key.id:
            return None
        lock = self._resuming.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:  # two calls on one paused session resume it once
                session = self.sessions.get(session_id)
                if session is not None:
                    return session
                paused = await self.store.paused_session(session_id)
                if paused is None:
                    return None
                return await self._start_paused(key, paused)
        finally:
            if not lock.locked():
                self._resuming.pop(session_id, None)

    async def _start_paused(self, key: KeyInfo, paused: PausedSession) -> LiveSession:
        self._check_capacity()
        reservation = await self._reserve(key)
        self._starting += 1
        try:
            hosted = await self.host.open_saved(paused.id, paused.id,
                                                self.settings.max_state_bytes)
        except StateNotRestored as exc:
            self._release(reservation)
            reason = f"its saved state could not be restored: {exc}"
            await self.store.end_session(paused.id, reason)
            await self.host.delete_saved(paused.id)
            raise SessionEnded(f"session {paused.id} has ended: {reason}") from None
        except BaseException:
            self._release(reservation)
            raise
        finally:
            self._starting -= 1
        expires = utcnow() + timedelta(seconds=paused.seconds_left)
        if not await self.store.resume_session(paused.id, expires, reservation, hosted.host):
            await hosted.end(EndReason(EndKind.SHUTDOWN, "it had ended while resuming"))
            raise SessionEnded(f"session {paused.id} has ended")
        await self.host.delete_saved(paused.id)  # its state is the running session's again
        session = LiveSession(paused.id, key.id, paused.started_at, expires, hosted,
                              paused.execute_count, paused.last_execute_at)
        self.sessions.add(session)
        hosted.on_end(lambda reason: self._ended_on_its_own(session, reason))
        self.metrics.resumes.inc()
        log.info("session resumed", extra={"session": paused.id})
        return session

    async def end_paused(self, key: KeyInfo, session_id: str, reason: EndReason) -> bool:
        """End the caller's paused session without resuming it, freeing its state; False
        if it is not one."""
        paused = await self.store.paused_session(session_id)
        if paused is None or paused.key_id != key.id or self.sessions.get(session_id):
            return False
        await self._end_paused_row(paused, str(reason))
        return True

    async def _end_paused_row(self, paused: PausedSession, reason: str) -> None:
        await self.store.end_session(paused.id, reason)
        await self.host.delete_saved(paused.id)
        log.info("paused session ended", extra={"session": paused.id, "reason": reason})

    async def list_all(self, key: KeyInfo) -> list[dict[str, Any]]:
        """GET /tci/sessions: the caller's running sessions, then its paused ones."""
        now = utcnow()
        running = [s.info() for s in self.sessions if s.key_id == key.id and s.expires_at > now]
        shown = {item["id"] for item in running}
        try:
            paused = await self.store.paused_sessions(key.id)
        except StoreUnavailable as exc:  # the running ones are known here: still listed
            log.warning("paused sessions left out of a listing: %s", exc.message)
            return running
        return running + [paused_info(row) for row in paused if row.id not in shown]

    # -- snapshots ---------------------------------------------------------------------------

    async def snapshot(self, key: KeyInfo, session_id: str) -> dict[str, Any]:
        """POST /tci/sessions/{id}/snapshots: the session's state kept under a new id while
        the session runs on (409 while a call runs)."""
        session = await self.get(key, session_id)
        if session.lock.locked():
            raise Conflict(f"session {session_id} is running a call: take the snapshot once "
                           "the call has answered")
        snapshot_id = f"snap_{secrets.token_urlsafe(18).replace('-', 'A').replace('_', 'B')}"
        async with session.lock:
            saved = await self._save(session, snapshot_id, pause=False)
        try:
            await self.store.add_snapshot(SnapshotRow(snapshot_id, key.id, session.id,
                                                      utcnow(), saved.size_bytes))
        except BaseException:
            await self.host.delete_saved(snapshot_id)
            raise
        self.metrics.snapshots_taken.inc()
        return {"id": snapshot_id, "skipped": saved.skipped}

    async def list_snapshots(self, key: KeyInfo) -> list[dict[str, Any]]:
        return [snapshot_info(row) for row in await self.store.snapshots(key.id)]

    async def _own_snapshot(self, key: KeyInfo, snapshot_id: str) -> SnapshotRow:
        row = await self.store.snapshot(snapshot_id)
        if row is None or row.key_id != key.id:
            raise _not_found("snapshot", snapshot_id)
        return row

    async def delete_snapshot(self, key: KeyInfo, snapshot_id: str) -> None:
        row = await self._own_snapshot(key, snapshot_id)
        await self.store.delete_snapshot(row.id)
        await self.host.delete_saved(row.id)

    async def snapshot_opener(self, key: KeyInfo,
                              snapshot_id: str) -> Callable[[], Awaitable[HostedSession]]:
        """What opens a new session from the caller's snapshot (404 for any other)."""
        row = await self._own_snapshot(key, snapshot_id)

        async def open_from_snapshot() -> HostedSession:
            try:
                return await self.host.open_saved(row.id, None, self.settings.max_state_bytes)
            except StateNotRestored as exc:
                raise Unprocessable(f"snapshot {row.id} could not be restored: {exc}") \
                    from None

        return open_from_snapshot

    async def refresh_kept_metrics(self) -> None:
        """The /metrics gauges of paused sessions and snapshots, from the store (with the
        database down they keep their last values: a scrape must still answer)."""
        with contextlib.suppress(StoreUnavailable):
            self.metrics.kept_state(await self.store.kept_state())

    # -- retention and idle pause --------------------------------------------------------------

    async def _maintain_paused(self) -> None:
        """Every TCI_REAP_INTERVAL_SECONDS: end paused sessions past their retention, and
        pause sessions idle past TCI_IDLE_PAUSE_SECONDS (when set)."""
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            with contextlib.suppress(Exception):
                await self.end_paused_too_long()
            try:
                await self.pause_idle()
            except Exception:  # one failed pause must not stop the others for good
                log.exception("pausing idle sessions failed; trying again")

    async def end_paused_too_long(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.paused_retention_seconds)
        for row in await self.store.paused_sessions():
            if row.paused_at <= cutoff:
                await self._end_paused_row(row, PAUSED_TOO_LONG)

    async def pause_idle(self) -> None:
        idle_after = self.settings.idle_pause_seconds
        if idle_after is None:
            return
        cutoff = utcnow() - timedelta(seconds=idle_after)
        for session in self.sessions:
            last = session.last_execute_at or session.started_at
            if last <= cutoff and not session.lock.locked() and session.ended is None:
                with contextlib.suppress(Exception):
                    await self._pause(session)
