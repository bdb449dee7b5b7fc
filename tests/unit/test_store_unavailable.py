"""A database that cannot be reached: every store call fails with StoreUnavailable (503),
naming the database, and changes nothing; once the database is back the same store works
again. Waiting for it costs at most TCI_DATABASE_TIMEOUT_SECONDS: a PostgreSQL server that
accepts connections but never answers, an SQLite file another writer holds locked. Clients
are told only that the service is unavailable: where the database is, its name and the
host's paths go to the log."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from tci.errors import HostUnreachable, SandboxUnavailable, StoreUnavailable
from tci.server.errors import tci_error_response
from tci.storage.store import Store
from tests.conftest import make_server

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
    assert time.monotonic() - started >= 0.9  # it waited its timeout (1 s) before giving up
    other.execute("ROLLBACK")
    other.close()
    store.create_key("after")
    assert [k.name for k in store.list_keys()] == ["after"]


def test_a_server_on_a_locked_sqlite_file_answers_503_without_its_path(tmp_path):
    server = make_server(tmp_path, database_timeout_seconds="1")
    other = sqlite3.connect(server.data_dir / "tci.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # no writer gets in: a new session's record neither
        response = server.execute("print('unrecorded')")
        other.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["errors"] == [
            "the service is temporarily unavailable; nothing was changed, retry later"]
        for internal in ("tci.db", "SQLite", "locked", str(server.data_dir)):
            assert internal not in response.text, response.text
        assert "SQLite database tci.db is unavailable (database is locked)" in server.log()
        assert server.execute("print('recorded')").status_code == 200
    finally:
        other.close()
        server.stop()


@pytest.mark.parametrize(("error", "told"), [
    (SandboxUnavailable("could not prepare the session's disk: [Errno 28] No space left on "
                        "device: '/var/lib/tci/sandboxes/s-1/volume.img'"),
     "no sandbox can be started now; retry later"),
    (SandboxUnavailable("no tci host can take a new session now (tci-host-0a1b2c3d is full)"),
     "no sandbox can be started now; retry later"),
    (HostUnreachable("tci host tci-host-0a1b2c3d at 10.0.0.7 is unavailable"),
     "the session's host cannot be reached now; the session is kept, retry later"),
])
def test_server_side_failures_tell_clients_plain_words_and_the_log_the_details(
        error, told, caplog):
    with caplog.at_level(logging.ERROR, logger="tci.server.errors"):
        response = tci_error_response(error)
    assert response.status_code == 503
    if isinstance(error, HostUnreachable):  # kept, not lost: worth retrying soon
        assert response.headers["retry-after"] == "1"
    assert json.loads(response.body) == {"data": None, "errors": [told]}
    assert error.message in caplog.text


def test_a_limit_the_client_may_read_is_told_as_it_is():
    refusal = SandboxUnavailable("new sessions are refused while the sandbox disk is nearly "
                                 "full: 3.0 MiB free, less than TCI_MIN_FREE_DISK_BYTES", True)
    assert json.loads(tci_error_response(refusal).body)["errors"] == [refusal.message]
