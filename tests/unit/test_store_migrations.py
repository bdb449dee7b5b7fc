"""The schema is Alembic's (storage/migrations): databases made before migrations existed are
taken over with their data, the migrations agree with the models on both databases, and
gateways opening one PostgreSQL database at once migrate it once."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from tci.storage.models import Base
from tci.storage.schema import MIGRATIONS, _config
from tci.storage.store import RunUsageRow, SnapshotRow, Store

pytest_plugins = ("tests.pg",)  # its fixtures: postgres, postgres_url

# The schema exactly as tci's `create_all` (plus its ALTER for cpu_seconds) made it before
# migrations existed, read back with `.schema` from a database it created.
SCHEMA_BEFORE_MIGRATIONS = """
CREATE TABLE api_keys (
    id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, key_hash VARCHAR(64) NOT NULL,
    prefix VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL, revoked_at DATETIME,
    PRIMARY KEY (id), UNIQUE (name)
);
CREATE UNIQUE INDEX ix_api_keys_key_hash ON api_keys (key_hash);
CREATE TABLE sessions (
    id VARCHAR(64) NOT NULL, key_id INTEGER NOT NULL, started_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL, last_execute_at DATETIME, execute_count INTEGER NOT NULL,
    ended_at DATETIME, end_reason TEXT, cpu_seconds FLOAT,
    PRIMARY KEY (id), FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
CREATE INDEX ix_sessions_key_id ON sessions (key_id);
CREATE INDEX ix_sessions_ended_at ON sessions (ended_at);
CREATE TABLE executions (
    id INTEGER NOT NULL, session_id VARCHAR(64) NOT NULL, started_at DATETIME NOT NULL,
    duration_seconds FLOAT NOT NULL, outcome VARCHAR(32) NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_executions_session_id ON executions (session_id);
"""
# Before sessions.cpu_seconds was added (by an ALTER at start-up, in those days).
SCHEMA_BEFORE_CPU = SCHEMA_BEFORE_MIGRATIONS.replace(" end_reason TEXT, cpu_seconds FLOAT,",
                                                     " end_reason TEXT,")
SECRET = "tci_" + "A" * 43
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


def old_database(path: Path, schema: str) -> str:
    """A database as the old code left it: a key, an ended session, a live one, executions
    (datetimes as SQLAlchemy wrote them to SQLite: naive UTC text)."""
    with sqlite3.connect(path) as db:
        db.executescript(schema)
        db.execute("INSERT INTO api_keys VALUES (1, 'old', ?, ?, '2026-03-14 10:00:00.000000',"
                   " NULL)", (hashlib.sha256(SECRET.encode()).hexdigest(), SECRET[:10]))
        db.execute("INSERT INTO sessions (id, key_id, started_at, expires_at, execute_count, "
                   "ended_at, end_reason) VALUES ('ended', 1, '2026-03-14 11:00:00.000000', "
                   "'2026-03-14 12:00:00.000000', 2, '2026-03-14 11:30:00.000000', 'expired')")
        db.execute("INSERT INTO sessions (id, key_id, started_at, expires_at, execute_count) "
                   "VALUES ('live', 1, '2026-03-14 11:15:00.000000', "
                   "'2026-03-14 12:15:00.000000', 0)")
        db.executemany("INSERT INTO executions (session_id, started_at, duration_seconds, "
                       "outcome) VALUES ('ended', ?, 0.5, 'ok')",
                       [("2026-03-14 11:01:00.000000",), ("2026-03-14 11:02:00.000000",)])
    return f"sqlite:///{path}"


@pytest.mark.parametrize("schema", [SCHEMA_BEFORE_MIGRATIONS, SCHEMA_BEFORE_CPU],
                         ids=["with-cpu-seconds", "before-cpu-seconds"])
def test_database_made_before_migrations_is_taken_over_with_its_data(tmp_path, schema):
    store = Store(old_database(tmp_path / "tci.db", schema))
    with store.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == HEAD
    columns = {c["name"] for c in inspect(store.engine).get_columns("sessions")}
    assert {"cpu_seconds", "host"} <= columns

    key = store.find_active_key(SECRET)
    assert key is not None and key.name == "old"
    assert key.created_at.isoformat() == "2026-03-14T10:00:00+00:00"
    usage = store.usage(datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC))
    assert (usage[1].sessions, usage[1].executions) == (2, 2)
    assert store.find_ended("ended").reason == "expired"
    assert store.end_all_live("server restarted") == 1  # the old run's live session
    assert store.find_ended("live").reason == "server restarted"

    # Opening it again finds it current and changes nothing.
    again = Store(store.engine.url.render_as_string(hide_password=False))
    assert again.find_ended("ended").reason == "expired"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_make_exactly_the_models_schema(request, tmp_path, kind):
    url = (f"sqlite:///{tmp_path / 'tci.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    store = Store(url)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    if kind == "postgresql":
        with store.engine.connect() as connection:
            kinds = dict(connection.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'sessions'")).all())
        assert kinds["started_at"] == "timestamp with time zone"
    store.engine.dispose()


def test_migrations_can_be_undone_to_the_first_revision(postgres_url):
    store = Store(postgres_url)
    with store.engine.begin() as connection:
        command.downgrade(_config(connection), "0001")
    with store.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0001"
    assert "host" not in {c["name"] for c in inspect(store.engine).get_columns("sessions")}
    store.engine.dispose()
    reopened = Store(postgres_url)  # and redone when a store opens it
    assert "host" in {c["name"] for c in inspect(reopened.engine).get_columns("sessions")}
    reopened.engine.dispose()


def test_gateways_opening_one_database_at_once_migrate_it_once(postgres_url):
    opened: list[Store] = []
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store(postgres_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [] and len(opened) == 4
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD,)]
    engine.dispose()
    opened[0].create_key("k")
    assert [k.name for k in opened[3].list_keys()] == ["k"]
    for store in opened:
        store.engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_before_run_usage_gains_it_keeping_its_data(request, tmp_path, kind):
    url = (f"sqlite:///{tmp_path / 'tci.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    store = Store(url)
    with store.engine.begin() as connection:  # the database as revision 0004 left it
        command.downgrade(_config(connection), "0004")
    assert "run_usage" not in inspect(store.engine).get_table_names()
    key, _ = store.create_key("before")
    store.engine.dispose()

    reopened = Store(url)  # migrated when a store opens it
    with reopened.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == HEAD
    assert [k.name for k in reopened.list_keys()] == ["before"]
    hour = datetime(2026, 3, 14, 10, tzinfo=UTC)
    reopened.record_runs([RunUsageRow(key.id, hour, "OK", 2, 0.5)])
    usage = reopened.usage(hour, hour + timedelta(hours=1))[key.id]
    assert (usage.runs.count, usage.runs.verdicts, usage.runs.wall_seconds) == (
        2, {"OK": 2}, 0.5)
    reopened.engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_before_pause_gains_it_keeping_its_sessions(request, tmp_path, kind):
    """0006: a session of an older server can be paused and resumed, and snapshots stored."""
    url = (f"sqlite:///{tmp_path / 'tci.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    store = Store(url)
    with store.engine.begin() as connection:  # the database as revision 0005 left it
        command.downgrade(_config(connection), "0005")
    assert "snapshots" not in inspect(store.engine).get_table_names()
    key, _ = store.create_key("before")
    now = datetime(2026, 3, 14, 10, tzinfo=UTC)
    with store.engine.begin() as connection:  # as the older server wrote it
        connection.execute(text(
            "INSERT INTO sessions (id, key_id, started_at, expires_at, execute_count) "
            "VALUES ('ses_old', :key, :now, :now, 0)"), {"key": key.id, "now": now})
    store.engine.dispose()

    reopened = Store(url)  # migrated when a store opens it
    reopened.pause_session("ses_old", now, 1800.0, 4096)
    paused = reopened.paused_session("ses_old")
    assert paused is not None and (paused.seconds_left, paused.state_bytes) == (1800.0, 4096)
    assert reopened.end_all_live("restarted") == 0  # a paused session outlives a restart
    assert reopened.resume_session("ses_old", now + timedelta(hours=2))
    assert reopened.paused_session("ses_old") is None
    reopened.add_snapshot(SnapshotRow("snap_x", key.id, "ses_old", now, 8192))
    assert [s.size_bytes for s in reopened.snapshots(key.id)] == [8192]
    reopened.engine.dispose()
