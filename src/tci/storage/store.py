"""The Store: every SQL statement of the project lives here.

Methods are synchronous; async callers go through `AsyncStore`, which runs them on one
dedicated thread, so SQLite sees a single writer and the event loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, func, inspect, select, text, update
from sqlalchemy.orm import sessionmaker

from tci.errors import BadRequest, NotFound
from tci.metering import Bucket, BucketUsage, bucket_floor
from tci.storage.models import ApiKey, Base, ExecutionRecord, SessionRecord, utcnow

T = TypeVar("T")
KEY_PREFIX = "tci_"
# What create_key makes: the prefix, then 32 random bytes as 43 base64url characters. Anything
# else cannot be a key, so the server refuses it without asking the database.
KEY_PATTERN = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")
# SQLite keeps datetimes as text ("YYYY-MM-DD HH:MM:SS.ffffff"); strftime truncates them to
# their bucket's start, so GROUP BY yields one row per bucket instead of one per record.
_SQLITE_BUCKET_FORMAT = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


def hash_key(secret: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is safe (no dictionary to attack).
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ExecutionRow:
    session_id: str
    started_at: datetime
    duration_seconds: float
    outcome: str
    execute_count: int  # the session's count after this execution


@dataclass(frozen=True)
class EndedSession:
    id: str
    key_id: int
    ended_at: datetime
    reason: str


@dataclass
class UsageRow:
    key_id: int
    name: str
    sessions: int
    executions: int
    cpu_seconds: float


def _key_info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.prefix, row.created_at, row.revoked_at)


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._migrate()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _migrate(self) -> None:
        """Columns added after a database was created (create_all adds only tables)."""
        columns = {c["name"] for c in inspect(self.engine).get_columns("sessions")}
        if "cpu_seconds" not in columns:
            with self.engine.begin() as connection:
                connection.execute(text("ALTER TABLE sessions ADD COLUMN cpu_seconds FLOAT"))

    # -- keys ------------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[KeyInfo, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._sessions.begin() as db:
            if db.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
                raise BadRequest(f"a key named {name!r} already exists")
            row = ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:10])
            db.add(row)
            db.flush()
            return _key_info(row), secret

    def list_keys(self) -> list[KeyInfo]:
        with self._sessions() as db:
            return [_key_info(r) for r in db.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke_key(self, name: str) -> KeyInfo:
        with self._sessions.begin() as db:
            row = db.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise NotFound(f"no key named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _key_info(row)

    def find_active_key(self, secret: str) -> KeyInfo | None:
        with self._sessions() as db:
            row = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
            if row is None or row.revoked_at is not None:
                return None
            return _key_info(row)

    def count_keys(self) -> int:
        return len(self.list_keys())

    # -- sessions --------------------------------------------------------------------------

    def add_session(self, session_id: str, key_id: int, started: datetime, expires: datetime):
        with self._sessions.begin() as db:
            db.add(SessionRecord(id=session_id, key_id=key_id, started_at=started,
                                 expires_at=expires, execute_count=0))

    def record_executions(self, rows: list[ExecutionRow]) -> None:
        """Many executions in one transaction; each session's counters set to its latest."""
        latest: dict[str, ExecutionRow] = {}
        with self._sessions.begin() as db:
            for row in rows:
                db.add(ExecutionRecord(session_id=row.session_id, started_at=row.started_at,
                                       duration_seconds=row.duration_seconds,
                                       outcome=row.outcome))
                latest[row.session_id] = row
            for row in latest.values():
                db.execute(update(SessionRecord).where(SessionRecord.id == row.session_id).values(
                    execute_count=row.execute_count, last_execute_at=row.started_at))

    def end_session(self, session_id: str, reason: str,
                    cpu_seconds: float | None = None) -> None:
        with self._sessions.begin() as db:
            db.execute(update(SessionRecord).where(
                SessionRecord.id == session_id, SessionRecord.ended_at.is_(None)
            ).values(ended_at=utcnow(), end_reason=reason, cpu_seconds=cpu_seconds))

    def end_all_live(self, reason: str) -> int:
        with self._sessions.begin() as db:
            result = db.execute(update(SessionRecord).where(SessionRecord.ended_at.is_(None))
                                .values(ended_at=utcnow(), end_reason=reason))
            return result.rowcount or 0

    def find_ended(self, session_id: str) -> EndedSession | None:
        with self._sessions() as db:
            row = db.get(SessionRecord, session_id)
            if row is None or row.ended_at is None:
                return None
            return EndedSession(row.id, row.key_id, row.ended_at, row.end_reason or "ended")

    def session_row(self, session_id: str) -> dict[str, Any] | None:
        with self._sessions() as db:
            row = db.get(SessionRecord, session_id)
            if row is None:
                return None
            return {c.name: getattr(row, c.name) for c in SessionRecord.__table__.columns}


    # -- usage -------------------------------------------------------------------------------

    def usage(self, since: datetime, until: datetime,
              key_id: int | None = None) -> dict[int, UsageRow]:
        """Per key: sessions started in [since, until), their recorded CPU seconds, and the
        executions started in that window. Keys without use are included (all zeros)."""
        in_window = (SessionRecord.started_at >= since) & (SessionRecord.started_at < until)
        with self._sessions() as db:
            keys = select(ApiKey.id, ApiKey.name).order_by(ApiKey.id)
            sessions = select(SessionRecord.key_id, func.count(SessionRecord.id),
                              func.coalesce(func.sum(SessionRecord.cpu_seconds), 0.0)
                              ).where(in_window).group_by(SessionRecord.key_id)
            executions = select(SessionRecord.key_id, func.count(ExecutionRecord.id)).join(
                SessionRecord, ExecutionRecord.session_id == SessionRecord.id
            ).where((ExecutionRecord.started_at >= since) & (ExecutionRecord.started_at < until)
                    ).group_by(SessionRecord.key_id)
            if key_id is not None:
                keys = keys.where(ApiKey.id == key_id)
                sessions = sessions.where(SessionRecord.key_id == key_id)
                executions = executions.where(SessionRecord.key_id == key_id)
            rows = {kid: UsageRow(kid, name, 0, 0, 0.0) for kid, name in db.execute(keys)}
            for kid, count, cpu in db.execute(sessions):
                if kid in rows:
                    rows[kid].sessions, rows[kid].cpu_seconds = count, float(cpu)
            for kid, count in db.execute(executions):
                if kid in rows:
                    rows[kid].executions = count
            return rows

    def usage_by_bucket(self, since: datetime, until: datetime, key_id: int,
                        bucket: Bucket) -> dict[datetime, BucketUsage]:
        """One key's use in [since, until) per UTC hour or day, keyed by the bucket's start:
        each session (and its recorded CPU) in the bucket it started in, each execution in
        the one it started in; the same sets `usage` totals. Only buckets with use appear
        (metering.usage_series zero-fills). Grouped in SQL, so the cost follows the number
        of buckets, not of executions."""
        def bucket_of(column: Any) -> Any:
            if self.engine.dialect.name == "sqlite":
                return func.strftime(_SQLITE_BUCKET_FORMAT[bucket], column)
            return column  # elsewhere: grouped by exact time, truncated below (still correct)

        session_bucket = bucket_of(SessionRecord.started_at)
        execution_bucket = bucket_of(ExecutionRecord.started_at)
        sessions = select(session_bucket, func.count(SessionRecord.id),
                          func.coalesce(func.sum(SessionRecord.cpu_seconds), 0.0)).where(
            (SessionRecord.key_id == key_id) & (SessionRecord.started_at >= since)
            & (SessionRecord.started_at < until)).group_by(session_bucket)
        executions = select(execution_bucket, func.count(ExecutionRecord.id)).join(
            SessionRecord, ExecutionRecord.session_id == SessionRecord.id
        ).where((SessionRecord.key_id == key_id) & (ExecutionRecord.started_at >= since)
                & (ExecutionRecord.started_at < until)).group_by(execution_bucket)
        result: dict[datetime, BucketUsage] = {}
        with self._sessions() as db:
            for moment, count, cpu in db.execute(sessions):
                used = result.setdefault(bucket_floor(_as_datetime(moment), bucket), BucketUsage())
                used.sessions += count
                used.cpu_seconds += float(cpu)
            for moment, count in db.execute(executions):
                used = result.setdefault(bucket_floor(_as_datetime(moment), bucket), BucketUsage())
                used.executions += count
        return result


def _as_datetime(value: datetime | str) -> datetime:
    """A bucket key as read back: SQLite's strftime text or a datetime (bucket_floor makes
    it aware UTC)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class AsyncStore:
    """The store as the server's event loop uses it: every method runs on one thread, in the
    order called; the `*_later` writes are queued without waiting for them (the single thread
    keeps them ahead of any later read). Callers never reach the inner Store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tci-store")
        self._background: set[asyncio.Future[Any]] = set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _fire(self, fn: Callable[..., Any], *args: Any) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    async def find_active_key(self, secret: str) -> KeyInfo | None:
        return await self._call(self._store.find_active_key, secret)

    async def end_all_live(self, reason: str) -> int:
        return await self._call(self._store.end_all_live, reason)

    async def find_ended(self, session_id: str) -> EndedSession | None:
        return await self._call(self._store.find_ended, session_id)

    async def record_executions(self, rows: list[ExecutionRow]) -> None:
        await self._call(self._store.record_executions, rows)

    async def usage(self, since: datetime, until: datetime,
                    key_id: int | None = None) -> dict[int, UsageRow]:
        return await self._call(self._store.usage, since, until, key_id)

    async def usage_by_bucket(self, since: datetime, until: datetime, key_id: int,
                              bucket: Bucket) -> dict[datetime, BucketUsage]:
        return await self._call(self._store.usage_by_bucket, since, until, key_id, bucket)

    def add_session_later(self, session_id: str, key_id: int, started: datetime,
                          expires: datetime) -> None:
        self._fire(self._store.add_session, session_id, key_id, started, expires)

    def end_session_later(self, session_id: str, reason: str,
                          cpu_seconds: float | None = None) -> None:
        self._fire(self._store.end_session, session_id, reason, cpu_seconds)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._store.engine.dispose()
