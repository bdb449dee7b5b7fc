"""Persistent records: API keys, sessions (and the places reserved for starting ones),
executions and one-shot runs' usage per hour (SQLAlchemy; SQLite by default, or PostgreSQL).
store.py holds every statement (`Store`, and `AsyncStore` for the event loop), models.py the
tables, schema.py the migrations' runner, buckets.py usage in time buckets."""

from tci.storage.store import Store

__all__ = ["Store"]
