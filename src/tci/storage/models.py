"""Tables, as the code sees them. The schema itself is made by the migrations (migrations/
versions/), which must agree with these classes (tests/unit/test_store_migrations.py checks)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Dialect, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out. PostgreSQL stores `timestamp with time zone`; SQLite
    has no time zones, so it keeps naive UTC and the zone is put back when read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None,
                             dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SessionRecord(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_execute_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    execute_count: Mapped[int] = mapped_column(Integer, default=0)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # CPU used while the client had the session (from its cgroup; None without cgroups).
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The host that runs it (a Ray host's name); None: the single-machine server's own.
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Paused (sessions/pause.py): since when, the lifetime it had left (its clock stops while
    # paused) and the bytes its kept state takes. None while it runs.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    seconds_left: Mapped[float | None] = mapped_column(Float, nullable=True)
    state_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SnapshotRecord(Base):
    """A session's state kept to start new sessions from (POST /tci/sessions/{id}/snapshots);
    its image is in the state store under its id."""

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class SessionReservation(Base):
    """A place in a key's TCI_MAX_SESSIONS_PER_KEY held while its session starts, before the
    session has an id: counted by every server with the key's live sessions, replaced by the
    session's record in the transaction that writes it, deleted if the start fails, and no
    longer counted after `expires_at` (its server died mid-start)."""

    __tablename__ = "session_reservations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExecutionRecord(Base):
    __tablename__ = "executions"

    # 64-bit on PostgreSQL (SQLite's INTEGER primary key is its 64-bit rowid already).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_seconds: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(32))


class RunUsageRecord(Base):
    """One-shot runs (POST /v1/tci/batch, /sandboxfusion) of a key that finished in one UTC
    hour with one verdict: counted, not listed (an RL pipeline makes thousands a second; a
    row each would outgrow everything else), so usage has them by the hour. Hours and days
    are whole hours, so a usage series per hour or day is exact."""

    __tablename__ = "run_usage"

    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    verdict: Mapped[str] = mapped_column(String(32), primary_key=True)
    runs: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    wall_seconds: Mapped[float] = mapped_column(Float)
