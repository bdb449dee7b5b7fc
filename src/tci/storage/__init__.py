"""Persistent records: API keys, sessions, executions (SQLAlchemy; SQLite by default)."""

from tci.storage.store import Store

__all__ = ["Store"]
