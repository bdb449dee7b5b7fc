"""The Store: every SQL statement of the project lives here, for SQLite (the embedded
default) and PostgreSQL (TCI_DATABASE_URL) alike.

Methods are synchronous; async callers go through `AsyncStore`, which runs them on one
dedicated thread, so SQLite sees a single writer and the event loop never blocks on I/O.
A database that cannot be reached raises StoreUnavailable (503), converted in one place
(`Store._errors`), and every write is one transaction: nothing is half-written.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, cast, overload

from sqlalchemy import (
    URL,
    CursorResult,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from tci.errors import BadRequest, NotFound, StoreUnavailable
from tci.storage import schema
from tci.storage.buckets import Bucket, BucketUsage, RunCounts, bucket_floor
from tci.storage.models import (
    ApiKey,
    ExecutionRecord,
    RunUsageRecord,
    SessionRecord,
    SessionReservation,
    SnapshotRecord,
    utcnow,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
KEY_PREFIX = "tci_"
# What create_key makes: the prefix, then 32 random bytes as 43 base64url characters. Anything
# else cannot be a key, so the server refuses it without asking the database.
KEY_PATTERN = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")
# SQLite keeps datetimes as text ("YYYY-MM-DD HH:MM:SS.ffffff"); strftime truncates them to
# their bucket's start, so GROUP BY yields one row per bucket instead of one per record.
_SQLITE_BUCKET_FORMAT = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
# SQLite's primary result codes that mean the file cannot be used now (busy or locked past
# the timeout, read-only, I/O error, disk full, cannot open); its other OperationalErrors
# (no such table, syntax) are faults of the code, not of the database's availability.
_SQLITE_UNAVAILABLE = {5, 6, 7, 8, 10, 13, 14}


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
class RunUsageRow:
    """Runs of one key that finished in one UTC hour with one verdict (an increment)."""

    key_id: int
    hour: datetime  # the hour's start, aware UTC
    verdict: str
    runs: int
    wall_seconds: float


@dataclass(frozen=True)
class EndedSession:
    id: str
    key_id: int
    ended_at: datetime
    reason: str


@dataclass(frozen=True)
class PausedSession:
    """A paused session's record: what listing and resuming it need."""

    id: str
    key_id: int
    started_at: datetime
    execute_count: int
    last_execute_at: datetime | None
    paused_at: datetime
    seconds_left: float
    state_bytes: int


@dataclass(frozen=True)
class SnapshotRow:
    id: str
    key_id: int
    session_id: str
    created_at: datetime
    size_bytes: int


@dataclass(frozen=True)
class KeptState:
    """What the state store holds for every key (the /metrics gauges)."""

    paused_sessions: int
    paused_bytes: int
    snapshots: int
    snapshot_bytes: int


def _paused(row: SessionRecord) -> PausedSession:
    assert row.paused_at is not None
    return PausedSession(row.id, row.key_id, row.started_at, row.execute_count,
                         row.last_execute_at, row.paused_at, row.seconds_left or 0.0,
                         row.state_bytes or 0)


def _snapshot(row: SnapshotRecord) -> SnapshotRow:
    return SnapshotRow(row.id, row.key_id, row.session_id, row.created_at, row.size_bytes)


@dataclass
class UsageRow:
    key_id: int
    name: str
    sessions: int
    executions: int
    cpu_seconds: float
    runs: RunCounts = field(default_factory=RunCounts)


def _key_info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.prefix, row.created_at, row.revoked_at)


# TCI_DATABASE_TIMEOUT_SECONDS's default, for a store opened without settings (tests, tools).
DEFAULT_TIMEOUT_SECONDS = 5.0
# libpq counts its connect_timeout in whole seconds and treats less than 2 as 2.
_LIBPQ_MIN_CONNECT_SECONDS = 2


def _cpu_plus(seconds: float) -> Any:
    """A session record's CPU seconds plus `seconds` (NULL counting as none), in SQL."""
    return func.coalesce(SessionRecord.cpu_seconds, 0.0) + seconds


class Store:
    """`timeout`: seconds a call waits for the database (PostgreSQL: to connect; SQLite: for
    another writer's lock) before it fails with StoreUnavailable."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        parsed = make_url(url)
        self.description = describe(parsed)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(parsed, **_engine_options(parsed, timeout))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self._errors():
            schema.upgrade(self.engine)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The one place where the driver's connection errors become StoreUnavailable."""
        try:
            yield
        except (DisconnectionError, PoolTimeout) as exc:
            raise self._unavailable(exc) from exc
        except DBAPIError as exc:
            if not _means_unavailable(exc):
                raise
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        return StoreUnavailable(f"the {self.description} is unavailable ({reason}); "
                                "nothing was changed, retry later")

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._errors(), self._sessions() as db:
            yield db

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One transaction: committed whole at the end, or rolled back whole."""
        with self._errors(), self._sessions.begin() as db:
            yield db

    # -- keys ------------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[KeyInfo, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._write() as db:
            if db.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
                raise BadRequest(f"a key named {name!r} already exists")
            row = ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:10])
            db.add(row)
            db.flush()
            return _key_info(row), secret

    def list_keys(self) -> list[KeyInfo]:
        with self._read() as db:
            return [_key_info(r) for r in db.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke_key(self, name: str) -> KeyInfo:
        with self._write() as db:
            row = db.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise NotFound(f"no key named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _key_info(row)

    def find_active_key(self, secret: str) -> KeyInfo | None:
        with self._read() as db:
            row = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
            if row is None or row.revoked_at is not None:
                return None
            return _key_info(row)

    def find_key_by_name(self, name: str) -> KeyInfo | None:
        """The active key of that name (None: no such key, or revoked)."""
        with self._read() as db:
            row = db.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None or row.revoked_at is not None:
                return None
            return _key_info(row)

    # -- sessions --------------------------------------------------------------------------

    def add_session(self, session_id: str, key_id: int, started: datetime, expires: datetime,
                    host: str | None = None, reservation: str | None = None) -> None:
        """The session's record; it takes the place of `reservation` (reserve_session) in
        the same transaction, so the key's count never holds both or neither."""
        with self._write() as db:
            if reservation is not None:
                db.execute(delete(SessionReservation).where(
                    SessionReservation.id == reservation))
            db.add(SessionRecord(id=session_id, key_id=key_id, started_at=started,
                                 expires_at=expires, execute_count=0, host=host))

    def reserve_session(self, key_id: int, limit: int, hold_seconds: float) -> str | None:
        """A place among the key's at most `limit` sessions, for every server on this
        database (TCI_MAX_SESSIONS_PER_KEY on a cluster): its live sessions and its starts in
        progress are counted and the place is taken in one transaction, which holds the
        key's row locked, so two gateways cannot both take the last place. The place is held
        until add_session replaces it or release_reservation frees it, at most
        `hold_seconds`. Returns its id, or None when the key holds `limit` already."""
        now = utcnow()
        with self._write() as db:
            # The lock, taken by a write before any read: PostgreSQL keeps the key's row
            # locked to the commit, so the key's reservations queue here, and each counts
            # after the one before it committed (READ COMMITTED reads afresh per statement).
            # On SQLite a first write takes the database's write lock (waiting up to the
            # timeout); a read first would let two count alike and fail the later writer.
            db.execute(update(ApiKey).where(ApiKey.id == key_id).values(prefix=ApiKey.prefix))
            db.execute(delete(SessionReservation).where(
                SessionReservation.key_id == key_id, SessionReservation.expires_at <= now))
            live = db.scalar(select(func.count()).select_from(SessionRecord).where(
                SessionRecord.key_id == key_id, SessionRecord.ended_at.is_(None),
                SessionRecord.paused_at.is_(None), SessionRecord.expires_at > now)) or 0
            starting = db.scalar(select(func.count()).select_from(SessionReservation).where(
                SessionReservation.key_id == key_id)) or 0
            if live + starting >= limit:
                return None
            reservation = secrets.token_hex(16)
            db.add(SessionReservation(id=reservation, key_id=key_id,
                                      expires_at=now + timedelta(seconds=hold_seconds)))
            return reservation

    def release_reservation(self, reservation: str) -> None:
        """A start that failed gives its place back."""
        with self._write() as db:
            db.execute(delete(SessionReservation).where(SessionReservation.id == reservation))

    def record_executions(self, rows: list[ExecutionRow]) -> int:
        """Many executions in one transaction; each session's counters set to its latest.
        Rows of sessions the database lacks (their record was lost while it was unreachable)
        are left out, so that they cannot fail every other session's rows with them; returns
        how many were left out."""
        with self._write() as db:
            known = set(db.scalars(select(SessionRecord.id).where(
                SessionRecord.id.in_({row.session_id for row in rows}))))
            kept = [row for row in rows if row.session_id in known]
            if kept:  # executemany, in bulk: one round trip each on PostgreSQL (pipelined)
                db.execute(insert(ExecutionRecord), [
                    {"session_id": row.session_id, "started_at": row.started_at,
                     "duration_seconds": row.duration_seconds, "outcome": row.outcome}
                    for row in kept])
                latest = {row.session_id: row for row in kept}
                db.execute(update(SessionRecord), [
                    {"id": row.session_id, "execute_count": row.execute_count,
                     "last_execute_at": row.started_at} for row in latest.values()])
        left_out = len(rows) - len(kept)
        if left_out:
            log.warning("%d executions of sessions without a record were not stored", left_out)
        return left_out

    def record_runs(self, rows: list[RunUsageRow]) -> None:
        """Add runs to their keys' hourly counts, in one transaction. An upsert: several
        servers (gateways) on one database add to the same rows without losing any."""
        if not rows:
            return
        table = RunUsageRecord.__table__
        dialect = self.engine.dialect.name
        if dialect not in _UPSERT:
            raise NotImplementedError(f"run usage needs SQLite or PostgreSQL, not {dialect}")
        # Any: the two dialects' Insert classes share these methods but no declared type.
        statement: Any = _UPSERT[dialect](cast(Any, table))
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.key_id, table.c.hour, table.c.verdict],
            set_={"runs": table.c.runs + statement.excluded.runs,
                  "wall_seconds": table.c.wall_seconds + statement.excluded.wall_seconds})
        with self._write() as db:
            db.execute(statement, [
                {"key_id": row.key_id, "hour": row.hour, "verdict": row.verdict,
                 "runs": row.runs, "wall_seconds": row.wall_seconds} for row in rows])

    def end_session(self, session_id: str, reason: str,
                    cpu_seconds: float | None = None) -> None:
        """Ended now; `cpu_seconds` (its last sandbox's) adds to what earlier ones used
        before each pause."""
        values: dict[str, Any] = {"ended_at": utcnow(), "end_reason": reason}
        if cpu_seconds is not None:
            values["cpu_seconds"] = _cpu_plus(cpu_seconds)
        with self._write() as db:
            db.execute(update(SessionRecord).where(
                SessionRecord.id == session_id, SessionRecord.ended_at.is_(None)
            ).values(**values))

    def end_live(self, reason: str, host: str | None = None) -> int:
        """End the live sessions run by `host` (None: the single-machine server's own, which
        are recorded without a host) and no others: a restarting gateway passes only hosts
        that are gone, so the sessions of live hosts go on. Returns how many were ended."""
        on_host = SessionRecord.host.is_(None) if host is None else SessionRecord.host == host
        with self._write() as db:
            # An UPDATE's result is a cursor's (it has a rowcount); Session.execute says Result.
            # Paused sessions are not on any host: their state is in the state store.
            result = cast(CursorResult[Any], db.execute(update(SessionRecord).where(
                SessionRecord.ended_at.is_(None), SessionRecord.paused_at.is_(None), on_host
            ).values(ended_at=utcnow(), end_reason=reason)))
            return result.rowcount or 0

    def end_all_live(self, reason: str) -> int:
        """A single-machine server's restart: its previous run's sessions are gone."""
        return self.end_live(reason, host=None)

    def live_hosts(self) -> set[str | None]:
        """The hosts that have live sessions on record (None: the single-machine server)."""
        with self._read() as db:
            return set(db.scalars(select(SessionRecord.host).where(
                SessionRecord.ended_at.is_(None)).distinct()))

    def find_ended(self, session_id: str) -> EndedSession | None:
        with self._read() as db:
            row = db.get(SessionRecord, session_id)
            if row is None or row.ended_at is None:
                return None
            return EndedSession(row.id, row.key_id, row.ended_at, row.end_reason or "ended")

    def live_owner(self, session_id: str) -> int | None:
        """The key id of a live (not ended) session, None for an ended or unknown one."""
        with self._read() as db:
            return db.scalar(select(SessionRecord.key_id).where(
                SessionRecord.id == session_id, SessionRecord.ended_at.is_(None)))

    # -- paused sessions and snapshots (sessions/pause.py) ---------------------------------

    def pause_session(self, session_id: str, paused_at: datetime, seconds_left: float,
                      state_bytes: int, cpu_seconds: float | None = None) -> None:
        """Paused: the CPU its sandbox used so far is kept in its record (the next sandbox,
        after a resume, counts from zero)."""
        values: dict[str, Any] = {"paused_at": paused_at, "seconds_left": seconds_left,
                                  "state_bytes": state_bytes}
        if cpu_seconds is not None:
            values["cpu_seconds"] = _cpu_plus(cpu_seconds)
        with self._write() as db:
            db.execute(update(SessionRecord).where(
                SessionRecord.id == session_id, SessionRecord.ended_at.is_(None)
            ).values(**values))

    def resume_session(self, session_id: str, expires_at: datetime,
                       reservation: str | None = None, host: str | None = None) -> bool:
        """Paused -> running, taking the place of `reservation` (as add_session does), on
        `host` (a Ray cluster's: it may resume on another host than it ran on); False if it
        was not paused any more (resumed or ended meanwhile)."""
        with self._write() as db:
            if reservation is not None:
                db.execute(delete(SessionReservation).where(
                    SessionReservation.id == reservation))
            result = cast(CursorResult[Any], db.execute(update(SessionRecord).where(
                SessionRecord.id == session_id, SessionRecord.ended_at.is_(None),
                SessionRecord.paused_at.is_not(None),
            ).values(paused_at=None, seconds_left=None, state_bytes=None,
                     expires_at=expires_at, host=host)))
            return bool(result.rowcount)

    def paused_session(self, session_id: str) -> PausedSession | None:
        with self._read() as db:
            row = db.get(SessionRecord, session_id)
            if row is None or row.ended_at is not None or row.paused_at is None:
                return None
            return _paused(row)

    def paused_sessions(self, key_id: int | None = None) -> list[PausedSession]:
        """Paused sessions (of one key), oldest pause first."""
        with self._read() as db:
            query = select(SessionRecord).where(SessionRecord.ended_at.is_(None),
                                                SessionRecord.paused_at.is_not(None))
            if key_id is not None:
                query = query.where(SessionRecord.key_id == key_id)
            return [_paused(row) for row in db.scalars(query.order_by(SessionRecord.paused_at))]

    def kept_state(self, key_id: int | None = None) -> KeptState:
        """Paused sessions and snapshots (one key's, or every key's): how many, and the
        bytes they keep."""
        paused_query = select(
            func.count(SessionRecord.id),
            func.coalesce(func.sum(SessionRecord.state_bytes), 0)).where(
            SessionRecord.ended_at.is_(None), SessionRecord.paused_at.is_not(None))
        snapshot_query = select(func.count(SnapshotRecord.id),
                                func.coalesce(func.sum(SnapshotRecord.size_bytes), 0))
        if key_id is not None:
            paused_query = paused_query.where(SessionRecord.key_id == key_id)
            snapshot_query = snapshot_query.where(SnapshotRecord.key_id == key_id)
        with self._read() as db:
            paused, paused_bytes = db.execute(paused_query).one()
            snapshots, snapshot_bytes = db.execute(snapshot_query).one()
        return KeptState(int(paused), int(paused_bytes or 0), int(snapshots), int(snapshot_bytes))

    def add_snapshot(self, snapshot: SnapshotRow) -> None:
        with self._write() as db:
            db.add(SnapshotRecord(id=snapshot.id, key_id=snapshot.key_id,
                                  session_id=snapshot.session_id,
                                  created_at=snapshot.created_at, size_bytes=snapshot.size_bytes))

    def snapshots(self, key_id: int) -> list[SnapshotRow]:
        with self._read() as db:
            return [_snapshot(row) for row in db.scalars(select(SnapshotRecord).where(
                SnapshotRecord.key_id == key_id).order_by(SnapshotRecord.created_at))]

    def snapshot(self, snapshot_id: str) -> SnapshotRow | None:
        with self._read() as db:
            row = db.get(SnapshotRecord, snapshot_id)
            return None if row is None else _snapshot(row)

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._write() as db:
            db.execute(delete(SnapshotRecord).where(SnapshotRecord.id == snapshot_id))

    def session_row(self, session_id: str) -> dict[str, Any] | None:
        with self._read() as db:
            row = db.get(SessionRecord, session_id)
            if row is None:
                return None
            return {c.name: getattr(row, c.name) for c in SessionRecord.__table__.columns}


    # -- usage -------------------------------------------------------------------------------

    def usage(self, since: datetime, until: datetime,
              key_id: int | None = None) -> dict[int, UsageRow]:
        """Per key: sessions started in [since, until), their recorded CPU seconds, the
        executions started in that window and the runs of the UTC hours it touches. Keys
        without use are included (all zeros)."""
        in_window = (SessionRecord.started_at >= since) & (SessionRecord.started_at < until)
        with self._read() as db:
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
                    rows[kid].sessions, rows[kid].cpu_seconds = count, float(cpu or 0.0)
            for kid, count in db.execute(executions):
                if kid in rows:
                    rows[kid].executions = count
            runs = select(RunUsageRecord.key_id, RunUsageRecord.verdict,
                          func.sum(RunUsageRecord.runs), func.sum(RunUsageRecord.wall_seconds)
                          ).where(_runs_in(since, until)).group_by(RunUsageRecord.key_id,
                                                                    RunUsageRecord.verdict)
            if key_id is not None:
                runs = runs.where(RunUsageRecord.key_id == key_id)
            for kid, verdict, count, wall in db.execute(runs):
                if kid in rows:
                    rows[kid].runs.add(verdict, int(count), float(wall))
            return rows

    def usage_by_bucket(self, since: datetime, until: datetime, key_id: int,
                        bucket: Bucket) -> dict[datetime, BucketUsage]:
        """One key's use in [since, until) per UTC hour or day, keyed by the bucket's start:
        each session (and its recorded CPU) in the bucket it started in, each execution in
        the one it started in, the runs of each hour in the bucket holding it; the same sets
        `usage` totals. Only buckets with use appear
        (metering.usage_series zero-fills). Grouped in SQL, so the cost follows the number
        of buckets, not of executions."""
        dialect = self.engine.dialect.name
        session_bucket = _bucket_start(dialect, SessionRecord.started_at, bucket)
        execution_bucket = _bucket_start(dialect, ExecutionRecord.started_at, bucket)
        sessions = select(session_bucket, func.count(SessionRecord.id),
                          func.coalesce(func.sum(SessionRecord.cpu_seconds), 0.0)).where(
            (SessionRecord.key_id == key_id) & (SessionRecord.started_at >= since)
            & (SessionRecord.started_at < until)).group_by(session_bucket)
        executions = select(execution_bucket, func.count(ExecutionRecord.id)).join(
            SessionRecord, ExecutionRecord.session_id == SessionRecord.id
        ).where((SessionRecord.key_id == key_id) & (ExecutionRecord.started_at >= since)
                & (ExecutionRecord.started_at < until)).group_by(execution_bucket)
        run_bucket = _bucket_start(dialect, RunUsageRecord.hour, bucket)
        runs = select(run_bucket, RunUsageRecord.verdict, func.sum(RunUsageRecord.runs),
                      func.sum(RunUsageRecord.wall_seconds)).where(
            (RunUsageRecord.key_id == key_id) & _runs_in(since, until)
        ).group_by(run_bucket, RunUsageRecord.verdict)
        result: dict[datetime, BucketUsage] = {}
        with self._read() as db:
            for moment, count, cpu in db.execute(sessions):
                used = result.setdefault(bucket_floor(_as_datetime(moment), bucket), BucketUsage())
                used.sessions += count
                used.cpu_seconds += float(cpu)
            for moment, count in db.execute(executions):
                used = result.setdefault(bucket_floor(_as_datetime(moment), bucket), BucketUsage())
                used.executions += count
            for moment, verdict, count, wall in db.execute(runs):
                used = result.setdefault(bucket_floor(_as_datetime(moment), bucket), BucketUsage())
                used.runs.add(verdict, int(count), float(wall))
        return result


# INSERT ... ON CONFLICT DO UPDATE, as each database spells it.
_UPSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _runs_in(since: datetime, until: datetime) -> Any:
    """The run counts of every UTC hour that [since, until) touches (they are kept per hour:
    an unaligned edge counts its hour's runs whole)."""
    return (RunUsageRecord.hour >= bucket_floor(since, "hour")) & (RunUsageRecord.hour < until)


def _bucket_start(dialect: str, column: Any, bucket: Bucket) -> Any:
    """SQL for the start of the UTC hour or day holding `column`'s time, so that GROUP BY
    makes one row per bucket. The bucket name is spelled as a literal, not a parameter: the
    same expression in SELECT and GROUP BY must be textually equal for PostgreSQL."""
    if dialect == "sqlite":
        return func.strftime(literal_column(f"'{_SQLITE_BUCKET_FORMAT[bucket]}'"), column)
    if dialect == "postgresql":
        # timezone('UTC', timestamptz): the UTC wall time, whatever the session's TimeZone.
        return func.date_trunc(literal_column(f"'{bucket}'"),
                               func.timezone(literal_column("'UTC'"), column))
    return column  # any other database: grouped by exact time, floored in Python (correct)


def _as_datetime(value: datetime | str) -> datetime:
    """A bucket key as read back: SQLite's strftime text or a datetime (bucket_floor makes
    it aware UTC)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _means_unavailable(exc: DBAPIError) -> bool:
    """Whether the database could not be reached or used now (down, restarting, network,
    locked, full), as opposed to a statement the database refused."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_UNAVAILABLE
    return isinstance(exc, OperationalError | InterfaceError)


def describe(url: URL) -> str:
    """The database as a message names it: its kind and where, never the user or password."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"SQLite database {Path(url.database).name if url.database else '(memory)'}"
    where = url.host or "local socket"
    if url.port:
        where += f":{url.port}"
    return f"{backend} database {url.database or ''!r} at {where}"


def _engine_options(url: URL, timeout: float) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": timeout}}  # sqlite3's wait for a busy database
    # pre_ping: a connection that died with the server (a restart) is replaced before use
    # instead of failing the first call after the database came back.
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        options["connect_args"] = {
            "connect_timeout": max(_LIBPQ_MIN_CONNECT_SECONDS, math.ceil(timeout))}
    return options


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """A new SQLite connection (a DB-API one, untyped) set for one writer and many readers."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class _OnThread(Generic[P, R]):
    """`name = _OnThread(Store.name)` in AsyncStore's body: `await async_store.name(...)` runs
    the store's method on the store's thread. Its parameters and result are the method's own:
    mypy reads them through ParamSpec (`Callable[P, Awaitable[R]]`), `inspect` through
    `functools.wraps`, so a Store method is offered by one line and never written twice."""

    def __init__(self, method: Callable[Concatenate[Store, P], R]) -> None:
        self._name = self._attribute = method.__name__

    def __set_name__(self, owner: type[AsyncStore], name: str) -> None:
        self._attribute = name

    @overload
    def __get__(self, instance: None, owner: type[AsyncStore]) -> Self: ...

    @overload
    def __get__(self, instance: AsyncStore, owner: type[AsyncStore]
                ) -> Callable[P, Awaitable[R]]: ...

    def __get__(self, instance: AsyncStore | None, owner: type[AsyncStore]
                ) -> Self | Callable[P, Awaitable[R]]:
        if instance is None:
            return self
        method: Callable[P, R] = getattr(instance._store, self._name)
        run = instance._run

        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await run(functools.partial(method, *args, **kwargs))

        # Kept on the instance (this descriptor has no __set__), so later calls skip __get__.
        setattr(instance, self._attribute, call)
        return call


class _Queued(Generic[P]):
    """`name_later = _Queued(Store.name)`: the write is queued on the store's thread and not
    awaited; the one thread keeps it ahead of any later call, and a failure is logged."""

    def __init__(self, method: Callable[Concatenate[Store, P], object]) -> None:
        self._name = method.__name__

    def __set_name__(self, owner: type[AsyncStore], name: str) -> None:
        self._attribute = name

    @overload
    def __get__(self, instance: None, owner: type[AsyncStore]) -> Self: ...

    @overload
    def __get__(self, instance: AsyncStore, owner: type[AsyncStore]) -> Callable[P, None]: ...

    def __get__(self, instance: AsyncStore | None, owner: type[AsyncStore]
                ) -> Self | Callable[P, None]:
        if instance is None:
            return self
        method: Callable[P, object] = getattr(instance._store, self._name)
        fire = instance._fire

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> None:
            fire(functools.partial(method, *args, **kwargs))

        setattr(instance, self._attribute, call)
        return call


class AsyncStore:
    """The store as the server's event loop uses it: every call runs on one thread, in the
    order called, so SQLite sees a single writer and the loop never waits on I/O. Each Store
    method is offered under its own name and signature, awaited; the `*_later` writes are
    queued without waiting for them (the single thread keeps them ahead of any later read).
    Callers never reach the inner Store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tci-store")
        self._background: set[asyncio.Future[Any]] = set()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _fire(self, fn: Callable[[], object]) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._background.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("a queued store write failed: %s", future.exception())

    # -- keys
    create_key = _OnThread(Store.create_key)
    list_keys = _OnThread(Store.list_keys)
    revoke_key = _OnThread(Store.revoke_key)
    find_active_key = _OnThread(Store.find_active_key)
    find_key_by_name = _OnThread(Store.find_key_by_name)

    # -- sessions. add_session is awaited: a session other gateways must find, or one that
    # must not exist unrecorded while the database is down, is recorded before the caller
    # goes on.
    add_session = _OnThread(Store.add_session)
    reserve_session = _OnThread(Store.reserve_session)
    release_reservation = _OnThread(Store.release_reservation)
    # Queued: a failed start's error goes back at once; the place is freed before any later
    # call of this server counts (one thread, in order), and if the database is down it
    # stops counting once its hold runs out.
    release_reservation_later = _Queued(Store.release_reservation)
    end_session = _OnThread(Store.end_session)
    end_session_later = _Queued(Store.end_session)
    end_live = _OnThread(Store.end_live)
    end_all_live = _OnThread(Store.end_all_live)
    live_hosts = _OnThread(Store.live_hosts)
    find_ended = _OnThread(Store.find_ended)
    live_owner = _OnThread(Store.live_owner)
    session_row = _OnThread(Store.session_row)
    pause_session = _OnThread(Store.pause_session)
    resume_session = _OnThread(Store.resume_session)
    paused_session = _OnThread(Store.paused_session)
    paused_sessions = _OnThread(Store.paused_sessions)
    add_snapshot = _OnThread(Store.add_snapshot)
    snapshots = _OnThread(Store.snapshots)
    kept_state = _OnThread(Store.kept_state)
    snapshot = _OnThread(Store.snapshot)
    delete_snapshot = _OnThread(Store.delete_snapshot)

    # -- executions, runs and usage
    record_executions = _OnThread(Store.record_executions)
    record_runs = _OnThread(Store.record_runs)
    usage = _OnThread(Store.usage)
    usage_by_bucket = _OnThread(Store.usage_by_bucket)

    async def settled(self) -> None:
        """Returns once every write queued before it is done (they run in order on one
        thread), e.g. a session's end, which other servers then see."""
        await self._run(lambda: None)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._store.engine.dispose()
