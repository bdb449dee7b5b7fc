"""A database that cannot be reached: every store call fails with StoreUnavailable (503),
naming the database, and changes nothing; once the database is back the same store works
again. Waiting for it costs at most TCI_DATABASE_TIMEOUT_SECONDS: a PostgreSQL server that
accepts connections but never answers, an SQLite file another writer holds locked."""

from __future__ import annotations

import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from tci.errors import StoreUnavailable
from tci.storage.store import Store

pytest_plugins = ("tests.pg",)  # its fixture own_postgres: a server this test stops and starts


def test_calls_fail_cleanly_while_postgres_is_down_and_work_after(own_postgres):
    store = Store(own_postgres.create_database())
    key, secret = store.create_key("before")
    now = datetime.now(UTC)
    store.add_session("s", key.id, now, now + timedelta(hours=1))

    own_postgres.stop()
    calls = [lambda: store.find_active_key(secret), lambda: store.create_key("during"),
             lambda: store.end_all_live("server restarted"),
             lambda: store.usage(now - timedelta(days=1), now + timedelta(days=1))]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert caught.value.status_code == 503
        assert f"postgresql database 't0' at 127.0.0.1:{own_postgres.port}" in str(caught.value)
        assert "nothing was changed" in str(caught.value)

    own_postgres.start()
    assert store.find_active_key(secret) == key
    assert [k.name for k in store.list_keys()] == ["before"]  # the refused create wrote nothing
    assert store.find_ended("s") is None  # the refused end_all_live ended nothing
    store.engine.dispose()


def test_a_server_that_never_answers_costs_the_connect_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel does), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"at 127.0.0.1:{port}"):
            Store(f"postgresql+psycopg://tci@127.0.0.1:{port}/tci", timeout=2)
        waited = time.monotonic() - started
    assert 1.5 <= waited < 20, waited


def test_an_sqlite_file_locked_by_another_writer_costs_the_timeout(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'tci.db'}", timeout=1)
    other = sqlite3.connect(tmp_path / "tci.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"SQLite database tci.db is unavailable "
                                                r"\(database is locked\)"):
        store.create_key("blocked")
    assert 0.9 <= time.monotonic() - started < 10
    other.execute("ROLLBACK")
    other.close()
    store.create_key("after")
    assert [k.name for k in store.list_keys()] == ["after"]
