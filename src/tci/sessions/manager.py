"""Session lifecycle: creation, ownership, one call at a time, expiry, ending. No HTTP, no SQL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tci import metering
from tci.config import Settings
from tci.errors import (
    NotFound,
    PayloadTooLarge,
    SandboxUnavailable,
    SessionEnded,
    TooManySessions,
    Unprocessable,
)
from tci.kernel.driver import OutputListener, WorkerConnection
from tci.metering import BucketUsage, Metrics, Usage, cpu_seconds
from tci.sandbox.launcher import Sandbox, SandboxLauncher
from tci.sandbox.limits import Counters, limits_hit
from tci.schemas import ExecuteRequest, FileInput
from tci.sessions.execution_log import ExecutionLog
from tci.sessions.pool import WarmPool, start_worker
from tci.storage.store import AsyncStore, KeyInfo
from tci.workspace import FileListing, decode_files, list_files, read_file, write_files

log = logging.getLogger(__name__)

_REMEMBER_ENDED = 10_000  # recently ended sessions answered from memory, not the store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class LiveSession:
    id: str
    key_id: int
    started_at: datetime
    expires_at: datetime
    sandbox: Sandbox
    worker: WorkerConnection
    execute_count: int = 0
    last_execute_at: datetime | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: str | None = None  # reason, once ended
    counters: Counters = field(default_factory=Counters)  # the kernel's limit-hit counts
    cpu_baseline: float | None = None  # cgroup CPU seconds when handed out (pool warm-up)

    def cpu_used(self) -> float | None:
        """CPU seconds used since the client got the session (None without cgroups)."""
        now = cpu_seconds(self.sandbox)
        return None if now is None else max(0.0, now - (self.cpu_baseline or 0.0))

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "execute_count": self.execute_count,
            "started_at": self.started_at,
            "last_execute_at": self.last_execute_at or self.started_at,
            "expires_at": self.expires_at,
        }


class SessionManager:
    def __init__(self, settings: Settings, store: AsyncStore, launcher: SandboxLauncher) -> None:
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.pool = WarmPool(
            launcher, settings.pool_size, tuple(settings.pool_preload),
            settings.output_limits(), settings.worker_start_timeout,
        )
        self.executions = ExecutionLog(store, settings.store_flush_seconds)
        self.sessions: dict[str, LiveSession] = {}
        self._ended: dict[str, tuple[int, str]] = {}  # id -> (key id, reason), insertion order
        self._starting = 0
        self._starting_per_key: dict[int, int] = {}  # key id -> cold starts in progress
        self._ending: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.metrics = Metrics(self)

    # -- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> None:
        self.launcher.prepare()
        ended = await self.store.end_all_live("server restarted")
        if ended:
            log.info("marked %d sessions of the previous run as ended (server restarted)", ended)
        self._reaper = asyncio.create_task(self._reap_forever(), name="tci-reaper")
        self.pool.start()
        self.executions.start()

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.pool.close()
        await asyncio.gather(
            *(self.end(s, "server shut down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        await self.executions.close()
        await self.store.drain()
        self.launcher.cleanup()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            await self.reap_expired()

    async def reap_expired(self) -> None:
        now = utcnow()
        for session in list(self.sessions.values()):
            if session.expires_at <= now and not session.lock.locked():
                await self.end(session, "expired")

    # -- sessions ------------------------------------------------------------------------------

    async def _create(self, key: KeyInfo) -> LiveSession:
        if len(self.sessions) + self._starting >= self.settings.max_sessions:
            raise TooManySessions(
                f"the server is running its maximum of {self.settings.max_sessions} sessions "
                "(TCI_MAX_SESSIONS); retry shortly or end a session"
            )
        per_key = self.settings.max_sessions_per_key
        if per_key is not None:
            held = sum(1 for s in self.sessions.values() if s.key_id == key.id)
            if held + self._starting_per_key.get(key.id, 0) >= per_key:
                raise TooManySessions(
                    f"this API key holds its maximum of {per_key} sessions "
                    "(TCI_MAX_SESSIONS_PER_KEY); end one of them or let one expire"
                )
        # A nearly full disk: refuse new sessions rather than let them, the running ones and
        # the store fail on ENOSPC. statvfs of a local directory takes microseconds.
        free = shutil.disk_usage(self.settings.resolved_sandbox_dir).free
        if free < self.settings.min_free_disk_bytes:
            raise SandboxUnavailable(
                f"new sessions are refused while the sandbox disk is nearly full: "
                f"{free / 2**20:.1f} MiB free, less than TCI_MIN_FREE_DISK_BYTES "
                f"({self.settings.min_free_disk_bytes / 2**20:.1f} MiB); running sessions go on"
            )
        ready = self.pool.take()
        if ready is None:  # pool empty or disabled: a cold start, without preloading
            self._starting += 1
            self._starting_per_key[key.id] = self._starting_per_key.get(key.id, 0) + 1
            try:
                ready = await start_worker(
                    self.launcher, self.settings.output_limits(),
                    self.settings.worker_start_timeout,
                )
            finally:
                self._starting -= 1
                if left := self._starting_per_key.pop(key.id) - 1:
                    self._starting_per_key[key.id] = left
        session_id, sandbox, worker = ready.name, ready.sandbox, ready.worker
        started = utcnow()
        expires = started + timedelta(seconds=self.settings.session_lifetime_seconds)
        session = LiveSession(session_id, key.id, started, expires, sandbox, worker,
                              cpu_baseline=cpu_seconds(sandbox))
        self.sessions[session_id] = session
        worker.on_death = lambda: self._worker_died(session)
        if worker.dead_reason is not None:  # died between the pool's check and now
            self._worker_died(session)
        self.metrics.session_created()
        # Queued, not awaited: the store's single thread keeps it ahead of later writes.
        self.store.add_session_later(session_id, key.id, started, expires)
        log.info("session started", extra={"session": session_id, "key": key.name})
        return session

    async def get(self, key: KeyInfo, session_id: str) -> LiveSession:
        session = self.sessions.get(session_id)
        if session is not None and session.key_id == key.id:
            if session.expires_at <= utcnow():
                await self.end(session, "expired")
                raise SessionEnded(f"session {session_id} has expired")
            return session
        if session is None:
            key_id, reason = self._ended.get(session_id, (None, None))
            if key_id is None:
                ended = await self.store.find_ended(session_id)
                if ended is not None:
                    key_id, reason = ended.key_id, ended.reason
            if key_id == key.id:
                raise SessionEnded(f"session {session_id} has ended: {reason}")
        # Another key's session and an unknown id look the same: no leak that it exists.
        raise NotFound(f"session {session_id} not found")

    async def end(self, session: LiveSession, reason: str) -> None:
        if session.ended is not None:
            return
        session.ended = reason
        # Remembered before it leaves the live table, so no call in between sees "not found".
        self._ended[session.id] = (session.key_id, reason)
        if len(self._ended) > _REMEMBER_ENDED:
            self._ended.pop(next(iter(self._ended)))
        used = session.cpu_used()  # before the sandbox (and its cgroup) is destroyed
        self.sessions.pop(session.id, None)
        session.worker.close()
        await self.launcher.destroy(session.sandbox)
        self.store.end_session_later(session.id, reason, used)
        self.metrics.session_ended(reason)
        log.info("session ended", extra={"session": session.id, "reason": reason,
                                         "cpu_seconds": used})

    def _worker_died(self, session: LiveSession) -> None:
        """The worker ended while no call was running: end the session now, freeing its slot,
        uid, volume and network at once; later calls answer 410 with the reason."""
        async def end_with_reason() -> None:
            reason = await session.worker.exit_reason()
            async with session.lock:  # after any call that is just starting has seen it
                await self.end(session, reason)

        task = asyncio.create_task(end_with_reason(), name=f"tci-end-{session.id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def end_by_client(self, key: KeyInfo, session_id: str) -> None:
        """DELETE: end now, even mid-call (the running call gets the worker's death)."""
        await self.end(await self.get(key, session_id), "ended by the client")

    async def create_session(self, key: KeyInfo) -> dict[str, Any]:
        """POST /tci/sessions: a session before any code runs, so a client (the console) can
        list and pick it first. Made exactly as execute makes one (the warm pool first, the
        same TCI_MAX_SESSIONS refusal), and it expires like any other if never used."""
        return (await self._create(key)).info()

    async def interrupt(self, key: KeyInfo, session_id: str) -> bool:
        """Ctrl-C for the session's running call: the cell gets a KeyboardInterrupt, that call
        answers with its `error` output, and the session and its state stay. Deliberately not
        under `session.lock`: the running call holds it until the cell ends, which is what
        this is for. The signal goes through WorkerConnection.interrupt, as for a timeout.
        False, with nothing sent, if no call is running."""
        session = await self.get(key, session_id)
        interrupted = session.worker.interrupt()
        if interrupted:
            log.info("execution interrupted by the client", extra={"session": session.id})
        return interrupted

    # -- files -------------------------------------------------------------------------------

    async def list_files(self, key: KeyInfo, session_id: str) -> FileListing:
        session = await self.get(key, session_id)
        limits = self.settings
        return await asyncio.to_thread(
            list_files, str(session.sandbox.workspace), limits.max_files_listed,
            limits.max_files_scanned, limits.max_filename_length,
        )

    async def read_file(self, key: KeyInfo, session_id: str, path: str) -> bytes:
        session = await self.get(key, session_id)
        return await asyncio.to_thread(
            read_file, str(session.sandbox.workspace), path,
            self.settings.max_filename_length, self.settings.max_file_bytes,
        )

    async def write_file(self, key: KeyInfo, session_id: str, path: str, content: bytes) -> int:
        session = await self.get(key, session_id)
        files = decode_files(
            [FileInput(name=path, encoding="base64", content=base64.b64encode(content).decode())],
            self.settings,
        )
        await asyncio.to_thread(
            write_files, str(session.sandbox.workspace), files, session.sandbox.uid
        )
        return len(content)

    def list(self, key: KeyInfo) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            s.info() for s in self.sessions.values() if s.key_id == key.id and s.expires_at > now
        ]

    # -- usage ---------------------------------------------------------------------------------

    async def usage(self, key: KeyInfo, since: datetime | None, until: datetime | None,
                    bucket: metering.Bucket | None = None) -> Usage:
        """The caller's sessions, executions, CPU and cost in [since, until) (default: the
        last 30 days). Live sessions' CPU is read from their cgroups now, as the store has it
        only once they end. With `bucket`, also the series per UTC hour or day; a window of
        more than TCI_USAGE_MAX_BUCKETS buckets is refused before anything is read."""
        since, until = metering.window(since, until)
        if since > until:
            raise Unprocessable("since: must not be after until")
        starts = None if bucket is None else metering.bucket_starts(
            since, until, bucket, self.settings.usage_max_buckets)
        await self.executions.flush()  # buffered execution records count too
        price = self.settings.price_per_session_usd
        if starts is None:
            row = (await self.store.usage(since, until, key.id))[key.id]
            live_cpu = sum(s.cpu_used() or 0.0 for s in self._live_started(key, since, until))
            return Usage(since, until, row.sessions, row.executions,
                         row.cpu_seconds + live_cpu, metering.cost(row.sessions, price))
        counts = await self.store.usage_by_bucket(since, until, key.id, bucket)
        for session in self._live_started(key, since, until):
            start = metering.bucket_floor(session.started_at, bucket)
            counts.setdefault(start, BucketUsage()).cpu_seconds += session.cpu_used() or 0.0
        return metering.usage_series(since, until, starts, counts, price)

    def _live_started(self, key: KeyInfo, since: datetime, until: datetime) -> list[LiveSession]:
        """The caller's live sessions started in the window: their CPU is not stored yet."""
        return [s for s in list(self.sessions.values())
                if s.key_id == key.id and since <= s.started_at < until]

    # -- execution -----------------------------------------------------------------------------

    async def execute(
        self, key: KeyInfo, request: ExecuteRequest, listener: OutputListener | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run one call. `listener` sees each output as it is produced; `on_start` is told the
        session id once the session is resolved and the code is about to run."""
        if len(request.code.encode()) > self.settings.max_code_bytes:
            raise PayloadTooLarge(
                f"code is larger than {self.settings.max_code_bytes} bytes (TCI_MAX_CODE_BYTES)"
            )
        files = decode_files(request.files or [], self.settings)
        if request.session_id:
            session = await self.get(key, request.session_id)
        else:
            session = await self._create(key)
        async with session.lock:
            if session.ended is None and session.worker.dead_reason is not None:
                await self.end(session, await session.worker.exit_reason())
            if session.ended is not None:
                raise SessionEnded(f"session {session.id} has ended: {session.ended}")
            if files:
                await asyncio.to_thread(
                    write_files, str(session.sandbox.workspace), files, session.sandbox.uid
                )
            if on_start is not None:
                on_start(session.id)
            started_at, started = utcnow(), time.perf_counter()
            before = session.counters  # as read after the previous call: one read per call
            result = await session.worker.request(
                {"op": "execute", "code": request.code},
                timeout=self.settings.execute_timeout,
                grace=self.settings.interrupt_grace_seconds,
                listener=listener,
            )
            # The kernel's record of limits hit during the call, each named by its setting.
            session.counters = session.sandbox.counters()
            hit = limits_hit(self.settings, before, session.counters,
                             session.sandbox.volume_usage(), result.worker_died is not None)
            if result.worker_died and hit and hit[0].startswith("MemoryError"):
                # The kernel says why the worker died: say that instead of "killed by SIGKILL".
                result.worker_died = hit[0]
                if result.outputs and result.outputs[-1]["data"].startswith("WorkerDied"):
                    result.outputs.pop()
            result.outputs.extend({"type": "error", "data": message} for message in hit)
            session.execute_count += 1
            session.last_execute_at = started_at
            outcome = "died" if result.worker_died else (
                "timeout" if result.timed_out else ("ok" if result.ok else "error"))
            duration = time.perf_counter() - started
            self.executions.add(session.id, started_at, duration, outcome, session.execute_count)
            self.metrics.executed(outcome, duration)
        if outcome in ("timeout", "died"):
            log.warning("execution %s", outcome, extra={"session": session.id})
        if result.worker_died:
            await self.end(session, result.worker_died)
        return {"session_id": session.id, "status": "completed", "outputs": result.outputs}
