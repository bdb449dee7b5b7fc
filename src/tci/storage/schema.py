"""Bringing a database's schema up to the code's: Alembic's migrations (storage/migrations/),
run programmatically whenever a store opens, so no alembic.ini is needed anywhere."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant: on PostgreSQL, gateways starting at once against one database take this
# advisory lock, so that one of them migrates and the others then find the schema current.
_MIGRATION_LOCK = 0x7463_6900


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision, in one transaction where the database
    can roll DDL back (PostgreSQL). A database made before migrations existed (it has the
    tables but no alembic_version) is first stamped with the revision its tables match.
    A current database costs one query, and Alembic is not run (nor does it log)."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with engine.begin() as connection:
        if _current_revision(connection) == head:
            return
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"),
                               {"id": _MIGRATION_LOCK})
        config = _config(connection)
        legacy = _revision_before_migrations(connection)
        if legacy is not None:
            command.stamp(config, legacy)
        command.upgrade(config, "head")


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _revision_before_migrations(connection: Connection) -> str | None:
    """The revision matching tables that tci's earlier `create_all` made: 0001, or 0002 once
    it had added sessions.cpu_seconds. None for an empty database or a migrated one."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables or "sessions" not in tables:
        return None
    columns = {c["name"] for c in inspect(connection).get_columns("sessions")}
    return "0002" if "cpu_seconds" in columns else "0001"
