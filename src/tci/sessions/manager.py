"""Session lifecycle: creation, ownership, one call at a time, expiry, ending. No HTTP, no SQL,
and nothing of where sessions run: that is the SessionHost's (tci/hosts). The table of live
sessions (lock, expiry, end once, the recently ended) is sessions/table.py, shared with the
Ray host actor."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from tci import metering
from tci.config import Settings
from tci.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    SessionEnded,
    TooManySessions,
    Unprocessable,
)
from tci.hosts.base import (
    MOVED,
    Cell,
    EndKind,
    EndReason,
    HostedSession,
    OutputListener,
    SessionGone,
    SessionHost,
)
from tci.metering import Usage
from tci.metrics import Metrics
from tci.request_files import check_file, decode_files
from tci.schemas import ExecuteRequest
from tci.sessions.execution_log import ExecutionLog, RunLog
from tci.sessions.live import LiveSession
from tci.sessions.pause import Pausing, RepausedWhileWaiting
from tci.sessions.table import SessionTable, utcnow
from tci.storage.buckets import BucketUsage
from tci.storage.store import AsyncStore, KeyInfo
from tci.workspace import FileListing

log = logging.getLogger(__name__)
# A per-key reservation outlives the longest start (TCI_WORKER_START_TIMEOUT, plus the
# database's waits) by this much before it stops counting (its gateway died mid-start).
RESERVATION_SLACK_SECONDS = 60.0
# A session made by a call whose client left before the answer: no one can ever use its id.
CLIENT_LEFT = EndReason(EndKind.CLIENT_GONE,
                        "its client went away before it learned the new session's id")


class SessionManager(Pausing):
    def __init__(self, settings: Settings, store: AsyncStore, host: SessionHost) -> None:
        self.settings = settings
        self.store = store
        self.host = host
        self.executions = ExecutionLog(store, settings.store_flush_seconds)
        self.run_log = RunLog(store, settings.store_flush_seconds)  # one-shot runs' usage
        # Live sessions, and the last TCI_REMEMBER_ENDED_SESSIONS ended ones with why.
        self.sessions: SessionTable[LiveSession] = SessionTable(
            settings.remember_ended_sessions, self._finish)
        self._starting = 0
        self.metrics = Metrics(self)
        self._resuming: dict[str, asyncio.Lock] = {}
        self._maintenance: asyncio.Task[None] | None = None

    # -- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> None:
        await self.host.start()
        restarted = str(EndReason(EndKind.RESTARTED))
        ended = await self.store.end_all_live(restarted)
        if ended:
            log.info("marked %d sessions of the previous run as ended (%s)", ended, restarted)
        self.sessions.start_reaper(self.settings.reap_interval_seconds)
        self.executions.start()
        self.run_log.start()
        self._maintenance = asyncio.create_task(self._maintain_paused(), name="tci-paused")

    async def shutdown(self) -> None:
        await self.sessions.stop_reaper()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if not self.host.keeps_sessions:  # a Ray gateway's sessions go on without it
            # A graceful stop pauses them: after a restart on the same data dir they resume.
            await self.pause_all(self.settings.shutdown_grace_seconds)
            await self.sessions.end_all(EndReason(EndKind.SHUTDOWN))
        await self.host.stop()
        await self.executions.close()
        await self.run_log.close()
        await self.store.drain()

    async def reap_expired(self) -> None:
        await self.sessions.reap_expired()

    # -- sessions ------------------------------------------------------------------------------

    def _check_capacity(self) -> None:
        # The host knows what it holds (TCI_MAX_SESSIONS, or what its machine holds).
        limit = self.host.stats().capacity or self.settings.max_sessions
        if limit and len(self.sessions) + self._starting >= limit:
            raise TooManySessions(
                f"the server is running its maximum of {limit} sessions "
                "(TCI_MAX_SESSIONS); retry shortly or end a session"
            )

    async def _create(self, key: KeyInfo,
                      open_session: Callable[[], Awaitable[HostedSession]] | None = None,
                      ) -> LiveSession:
        """A new session: a fresh one, or what `open_session` opens (one from a snapshot)."""
        self._check_capacity()
        reservation = await self._reserve(key)
        # Counted while it starts (a warm one is handed out at once, a cold one takes a while).
        self._starting += 1
        try:
            # SandboxUnavailable if it cannot
            hosted = await (open_session or self.host.open_session)()
        except BaseException:
            self._release(reservation)
            raise
        finally:
            self._starting -= 1
        session_id = hosted.id
        started = utcnow()
        expires = started + timedelta(seconds=self.settings.session_lifetime_seconds)
        # Recorded before anything else sees it: every gateway can then route to it, and with
        # the database down the client gets 503 and no session runs unrecorded. The record
        # takes the reservation's place in the key's count.
        try:
            await self.store.add_session(session_id, key.id, started, expires, hosted.host,
                                         reservation)
        except BaseException:
            reason = EndReason(EndKind.SHUTDOWN, "its record could not be written")
            await hosted.end(reason)
            self._release(reservation)
            # A call cancelled while the write ran may have written it: not left live.
            self.store.end_session_later(session_id, str(reason))
            raise
        session = LiveSession(session_id, key.id, started, expires, hosted)
        self.sessions.add(session)
        hosted.on_end(lambda reason: self._ended_on_its_own(session, reason))
        self.metrics.session_created()
        log.info("session started", extra={"session": session_id, "key": key.name})
        return session

    async def _reserve(self, key: KeyInfo) -> str | None:
        """A place in the key's TCI_MAX_SESSIONS_PER_KEY (None: no quota), taken in the store,
        which every gateway shares: the key's sessions and starts on all of them count, so
        N gateways allow the quota once, not N times. TooManySessions when it is full."""
        per_key = self.settings.max_sessions_per_key
        if per_key is None:
            return None
        # Held while the sandbox starts and its record is written; a gateway that dies
        # mid-start frees it when this runs out.
        hold = (self.settings.worker_start_timeout + 2 * self.settings.database_timeout_seconds
                + RESERVATION_SLACK_SECONDS)
        taking = asyncio.ensure_future(self.store.reserve_session(key.id, per_key, hold))
        try:
            reservation = await asyncio.shield(taking)
        except asyncio.CancelledError:  # the client left while the store took the place
            taking.add_done_callback(self._release_taken)
            raise
        if reservation is None:
            raise TooManySessions(
                f"this API key holds its maximum of {per_key} sessions "
                "(TCI_MAX_SESSIONS_PER_KEY); end one of them or let one expire"
            )
        return reservation

    def _release(self, reservation: str | None) -> None:
        if reservation is not None:
            self.store.release_reservation_later(reservation)

    def _release_taken(self, taking: asyncio.Future[str | None]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            self._release(taking.result())

    async def get(self, key: KeyInfo, session_id: str) -> LiveSession:
        session = (self.sessions.get(session_id) or await self._adopt(key, session_id)
                   or await self._resume(key, session_id))
        if session is not None and session.key_id == key.id:
            if session.expires_at <= utcnow():
                await self.end(session, EndReason(EndKind.EXPIRED))
                raise SessionEnded(f"session {session_id} has expired")
            return session
        if session is None:
            gone = self.sessions.gone(session_id)
            key_id, reason = (None, None) if gone is None else (gone.key_id, str(gone.reason))
            if key_id is None:
                ended = await self.store.find_ended(session_id)
                if ended is not None:
                    key_id, reason = ended.key_id, ended.reason
            if key_id == key.id:
                raise SessionEnded(f"session {session_id} has ended: {reason}")
        # Another key's session and an unknown id look the same: no leak that it exists.
        raise NotFound(f"session {session_id} not found")

    async def _adopt(self, key: KeyInfo, session_id: str) -> LiveSession | None:
        """The caller's session that another gateway started on the same hosts (None on a
        single machine). Whose it is comes first, from its record: another key's id (or a
        made-up one) adopts nothing and reaches no host, so it can neither make this gateway
        hold the session nor have its host's sessions ended."""
        if self.sessions.gone(session_id) is not None or not self.host.keeps_sessions:
            return None
        if await self.store.live_owner(session_id) != key.id:
            return None
        found = await self.host.adopt(session_id)
        if found is None:
            return None
        session = self.sessions.get(session_id)  # adopted meanwhile by a concurrent call
        if session is None:
            session = LiveSession(session_id, found.key_id, found.started_at, found.expires_at,
                                  found.session, found.execute_count)
            self.sessions.add(session)
            found.session.on_end(lambda reason: self._ended_on_its_own(session, reason))
        return session

    async def end(self, session: LiveSession, reason: EndReason) -> None:
        """End the session once (the table remembers why); later calls answer 410."""
        await self.sessions.end(session, reason)

    async def _finish(self, session: LiveSession, reason: EndReason) -> float | None:
        """What ending a session does once the table has marked it ended: its host frees
        it, its record and the metrics say how it ended."""
        used = await session.hosted.end(reason)
        self.store.end_session_later(session.id, str(reason), used)
        self.metrics.session_ended(reason)
        log.info("session ended", extra={"session": session.id, "reason": str(reason),
                                         "cpu_seconds": used})
        return used

    def _ended_on_its_own(self, session: LiveSession, reason: EndReason) -> None:
        """The session's process ended while no call was running: end the session now,
        freeing its slot and what its host held at once; later calls answer 410 with the
        reason. One paused or moved through another gateway has not ended: it is dropped."""
        if reason == MOVED:
            self._drop_moved(session)
            return
        self.sessions.end_soon(session, reason)

    def _drop_moved(self, session: LiveSession) -> None:
        """Forget a session another gateway paused or resumed elsewhere (hosts/base.py's
        MOVED), recording no end: the next call looks it up anew (a paused one resumes)."""
        session.paused = True  # a call waiting for its lock looks it up anew
        self.sessions.release(session)

    async def end_unanswered(self, session_id: str) -> None:
        """A call made this session but its answer, the one place its id is told, could not
        be delivered: end it now rather than leave it idle until it expires."""
        session = self.sessions.get(session_id)
        if session is not None:
            await self.end(session, CLIENT_LEFT)

    @contextlib.asynccontextmanager
    async def _ended_if_abandoned(self, session: LiveSession,
                                  created: bool) -> AsyncIterator[None]:
        """Around a call: if it made `session` and is cancelled (its client left, the cell
        was interrupted), the session is ended too, as no one has its id."""
        try:
            yield
        except asyncio.CancelledError:
            if created:
                self.sessions.end_soon(session, CLIENT_LEFT)
            raise

    async def end_by_client(self, key: KeyInfo, session_id: str) -> None:
        """DELETE: end now, even mid-call (the running call gets the worker's death). It
        answers once the end is recorded: the key's place is then free on every gateway. A
        paused session ends without resuming, and its kept state is freed."""
        if not await self.end_paused(key, session_id, EndReason(EndKind.CLIENT)):
            await self.end(await self.get(key, session_id), EndReason(EndKind.CLIENT))
        await self.store.settled()

    async def create_session(self, key: KeyInfo) -> dict[str, Any]:
        """POST /tci/sessions: a session before any code runs, so a client (the console) can
        list and pick it first. Made exactly as execute makes one (the warm pool first, the
        same TCI_MAX_SESSIONS refusal), and it expires like any other if never used."""
        return (await self._create(key)).info()

    async def interrupt(self, key: KeyInfo, session_id: str) -> bool:
        """Ctrl-C for the session's running call: the cell gets a KeyboardInterrupt, that call
        answers with its `error` output, and the session and its state stay. Deliberately not
        under `session.lock`: the running call holds it until the cell ends, which is what
        this is for. The host interrupts the way it does for a timeout. False, with nothing
        sent, if no call is running."""
        session = await self.get(key, session_id)
        interrupted = await session.hosted.interrupt()
        if interrupted:
            log.info("execution interrupted by the client", extra={"session": session.id})
        return interrupted

    # -- files -------------------------------------------------------------------------------

    async def list_files(self, key: KeyInfo, session_id: str) -> FileListing:
        session = await self.get(key, session_id)
        return await session.hosted.list_files()

    async def read_file(self, key: KeyInfo, session_id: str, path: str) -> bytes:
        session = await self.get(key, session_id)
        return await session.hosted.read_file(path)

    async def write_file(self, key: KeyInfo, session_id: str, path: str, content: bytes) -> int:
        session = await self.get(key, session_id)
        await session.hosted.write_files([check_file(path, content, self.settings)])
        return len(content)

    # -- usage ---------------------------------------------------------------------------------

    async def usage(self, key: KeyInfo, since: datetime | None, until: datetime | None,
                    bucket: metering.Bucket | None = None) -> Usage:
        """The caller's sessions, executions, CPU, one-shot runs (those of the UTC hours the
        window touches) and cost in [since, until) (default: the last 30 days). Live
        sessions' CPU is asked of their hosts now, as the store has it only once they end.
        With `bucket`, also the series per UTC hour or day; a window of more than
        TCI_USAGE_MAX_BUCKETS buckets is refused before anything is read."""
        since, until = metering.window(since, until)
        if since > until:
            raise Unprocessable("since: must not be after until")
        starts = None if bucket is None else metering.bucket_starts(
            since, until, bucket, self.settings.usage_max_buckets)
        await self.executions.flush()  # buffered execution records count too
        await self.run_log.flush()  # and runs
        price = self.settings.price_per_session_usd
        run_price = self.settings.price_per_run_usd
        kept = dataclasses.asdict(await self.store.kept_state(key.id))
        if starts is None:
            row = (await self.store.usage(since, until, key.id))[key.id]
            live = self._live_started(key, since, until)
            live_cpu = sum(used or 0.0 for used in await self._cpu_of(live))
            return Usage(since, until, row.sessions, row.executions,
                         row.cpu_seconds + live_cpu,
                         metering.cost(row.sessions, price, row.runs.count, run_price),
                         runs=row.runs, kept_state=kept)
        assert bucket is not None  # starts is None without one
        counts = await self.store.usage_by_bucket(since, until, key.id, bucket)
        live = self._live_started(key, since, until)
        for session, used in zip(live, await self._cpu_of(live), strict=True):
            start = metering.bucket_floor(session.started_at, bucket)
            counts.setdefault(start, BucketUsage()).cpu_seconds += used or 0.0
        series = metering.usage_series(since, until, starts, counts, price, run_price)
        return dataclasses.replace(series, kept_state=kept)

    @staticmethod
    async def _cpu_of(sessions: builtins.list[LiveSession]) -> builtins.list[float | None]:
        return list(await asyncio.gather(*(s.hosted.cpu_seconds() for s in sessions)))

    def _live_started(self, key: KeyInfo, since: datetime,
                      until: datetime) -> builtins.list[LiveSession]:
        """The caller's live sessions started in the window: their CPU is not stored yet."""
        return [s for s in self.sessions
                if s.key_id == key.id and since <= s.started_at < until]

    # -- execution -----------------------------------------------------------------------------

    async def execute(
        self, key: KeyInfo, request: ExecuteRequest, listener: OutputListener | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run one call. `listener` sees each output as it is produced; `on_start` is told the
        session id once the session is resolved and the code is about to run. On a paused
        session it resumes the session first (also one paused while the call waited)."""
        try:
            return await self._execute(key, request, listener, on_start)
        except RepausedWhileWaiting:
            return await self._execute(key, request, listener, on_start)

    async def _execute(
        self, key: KeyInfo, request: ExecuteRequest, listener: OutputListener | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        if len(request.code.encode()) > self.settings.max_code_bytes:
            raise PayloadTooLarge(
                f"code is larger than {self.settings.max_code_bytes} bytes (TCI_MAX_CODE_BYTES)"
            )
        files = decode_files(request.files or [], self.settings)
        timeout = self._call_timeout(request)
        if request.session_id and request.snapshot_id:
            raise BadRequest("give session_id or snapshot_id, not both: a snapshot starts a "
                             "new session")
        if request.session_id:
            session = await self.get(key, request.session_id)
        elif request.snapshot_id:
            session = await self._create(key, await self.snapshot_opener(key,
                                                                         request.snapshot_id))
        else:
            session = await self._create(key)
        started_at, started = utcnow(), time.perf_counter()

        def code_starts() -> None:  # files are in place, the code is about to run
            nonlocal started_at, started
            started_at, started = utcnow(), time.perf_counter()
            if on_start is not None:
                on_start(session.id)

        async with self._ended_if_abandoned(session, not request.session_id), session.lock:
            try:
                if session.paused:  # paused while this call waited for it: resumed anew
                    raise RepausedWhileWaiting
                if session.ended is not None:
                    raise SessionGone(session.ended)
                result = await session.hosted.execute(
                    Cell(request.code, request.language), files, timeout,
                    self.settings.interrupt_grace_seconds, listener, code_starts,
                )
            except SessionGone as gone:  # ended before the call, or its process had died
                if gone.reason == MOVED:
                    self._drop_moved(session)
                    raise RepausedWhileWaiting from None
                await self.end(session, gone.reason)
                raise SessionEnded(f"session {session.id} has ended: {session.ended}") from None
            session.execute_count += 1
            session.last_execute_at = started_at
            duration = time.perf_counter() - started
            self.executions.add(session.id, started_at, duration, result.outcome,
                                session.execute_count)
            self.metrics.executed(result.outcome, duration)
        if request.timeout is not None and result.outcome in ("timeout", "died"):
            name_call_timeout(result.outputs)
        if result.outcome in ("timeout", "died"):
            log.warning("execution %s", result.outcome, extra={"session": session.id})
        if result.ended is not None:
            await self.end(session, result.ended)
        return {"session_id": session.id, "status": "completed", "outputs": result.outputs}

    def _call_timeout(self, request: ExecuteRequest) -> float:
        """The call's own `timeout`, at most TCI_EXECUTE_TIMEOUT (the default)."""
        limit = self.settings.execute_timeout
        if request.timeout is None:
            return limit
        if request.timeout > limit:
            raise Unprocessable(f"timeout: {request.timeout:g} s is more than this server's "
                                f"maximum of {limit:g} s (TCI_EXECUTE_TIMEOUT)")
        return request.timeout


def name_call_timeout(outputs: builtins.list[dict[str, Any]]) -> None:
    """The host's timeout errors name the server's setting; this call set its own."""
    for output in outputs:
        if output["type"] == "error" and isinstance(output["data"], str):
            output["data"] = output["data"].replace("(TCI_EXECUTE_TIMEOUT)", "(the call's timeout)")
