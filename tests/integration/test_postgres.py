"""A real `tci serve` on a real PostgreSQL (TCI_DATABASE_URL, tests/pg.py): keys made by the
CLI, sessions, executions and usage all live there; when the database goes away requests
answer 503 without naming it (the log does), and once it is back they work again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from tests.conftest import Server, cli, free_port, make_server, stdout_of

pytest_plugins = ("tests.pg",)  # its fixtures: postgres_url, own_postgres


def usage_of(server: Server, key: str) -> dict:
    with server.client(key) as client:
        response = client.get("/v1/tci/usage")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def pg_server(tmp_path, postgres_url) -> Iterator[Server]:
    server = make_server(tmp_path, database_url=postgres_url)
    yield server
    server.stop()


def test_keys_sessions_executions_and_usage_live_in_postgres(pg_server, postgres_url):
    server = pg_server
    key = server.new_key("alice")  # `tci keys create` against PostgreSQL
    first = server.execute("x = 20", key=key).json()["data"]["session_id"]
    assert stdout_of(server.execute("print(x + 1)", first, key=key).json()["data"]) == "21\n"
    server.execute("1 / 0", key=key)  # a second session
    used = usage_of(server, key)
    assert (used["sessions"], used["executions"]) == (2, 3)

    # The records are in PostgreSQL, and no SQLite file was made.
    assert not list(server.data_dir.glob("tci.db*"))
    assert rows(postgres_url, "SELECT name FROM api_keys ORDER BY id") == [("test",), ("alice",)]
    assert rows(postgres_url, f"SELECT count(*) FROM sessions WHERE id = '{first}'") == [(1,)]

    listed = cli(server.data_dir, "keys", "list", env=server.env)
    assert listed.returncode == 0 and "alice" in listed.stdout, listed.stderr
    assert cli(server.data_dir, "keys", "revoke", "alice", env=server.env).returncode == 0
    by_key = cli(server.data_dir, "usage", env=server.env)
    assert by_key.returncode == 0, by_key.stderr
    assert {line.split()[0]: line.split()[1:3] for line in by_key.stdout.splitlines()[2:]}[
        "alice"] == ["2", "3"]


def test_requests_answer_503_while_the_database_is_down(tmp_path, own_postgres):
    database = own_postgres
    url = database.create_database()
    server = make_server(tmp_path, database_url=url, auth_cache_seconds="600")
    try:
        session = server.run("x = 1")["session_id"]
        database.stop()

        with server.client() as client:
            down = client.get("/v1/tci/usage")  # a known key: the usage query fails
            # A new session cannot be recorded: refused, and none is left running unrecorded.
            created = client.post("/v1/tci/execute", json={"language": "python",
                                                            "code": "print('unrecorded')"})
            listed_while_down = client.get("/v1/tci/sessions").json()["data"]["sessions"]
        assert created.status_code == 503, created.text
        assert [s["id"] for s in listed_while_down] == [session]
        with server.client("tci_" + "B" * 43) as client:
            unknown = client.get("/v1/tci/sessions")  # a key to look up: the look-up fails
        for response in (down, unknown, created):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            # Anonymous clients too: plain words, nothing of where the database is.
            assert response.json()["errors"] == [
                "the service is temporarily unavailable; nothing was changed, retry later"]
            for internal in ("127.0.0.1", str(database.port), "'t0'", "postgres"):
                assert internal not in response.text, response.text
        # The operator finds the details in the server's log.
        assert f"postgresql database 't0' at 127.0.0.1:{database.port} is unavailable" \
            in server.log()
        made = cli(server.data_dir, "keys", "create", "--name", "during", env=server.env)
        assert made.returncode == 1 and "is unavailable" in made.stderr, made.stderr
        assert "Traceback" not in made.stderr

        database.start()
        assert stdout_of(server.run("print(x + 1)", session)) == "2\n"
        assert usage_of(server, server.key)["sessions"] == 1
        later = server.new_key("after")
        assert server.execute("1", key=later).status_code == 200
        assert rows(url, "SELECT name FROM api_keys ORDER BY id") == [("test",), ("after",)]
    finally:
        server.stop()


def test_the_per_key_quota_holds_across_servers_sharing_the_database(tmp_path, postgres_url):
    """Two servers on one database, as two gateways: TCI_MAX_SESSIONS_PER_KEY=2 counts the
    key's sessions on both. Eight creations at once, half through each, give two sessions in
    all; ending one through one server frees its place at once for the other."""
    settings = {"max_sessions_per_key": "2"}
    first = make_server(tmp_path, database_url=postgres_url, **settings)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = Server(second_dir, free_port(), first.key, first.env)
    try:
        second.start()  # after the first: a single-machine server ends the live sessions it
        # finds at start (its own previous run's), so both start before any session exists
        servers = [first, second] * 4
        start = threading.Barrier(len(servers))

        def create(server: Server) -> httpx.Response:
            with server.client() as client:
                start.wait()
                return client.post("/v1/tci/sessions")

        with ThreadPoolExecutor(len(servers)) as pool:
            answers = list(pool.map(create, servers))
        made = [(server, r.json()["data"]["id"]) for server, r in zip(servers, answers,
                                                                       strict=True)
                if r.status_code == 200]
        refused = [r for r in answers if r.status_code != 200]
        assert len(made) == 2, [r.text for r in answers]
        for response in refused:
            assert response.status_code == 429, response.text
            assert "TCI_MAX_SESSIONS_PER_KEY" in response.json()["errors"][0]
        assert rows(postgres_url, "SELECT count(*) FROM sessions WHERE ended_at IS NULL") == [
            (2,)]
        assert rows(postgres_url, "SELECT count(*) FROM session_reservations") == [(0,)]

        owner, session = made[0]
        other = second if owner is first else first
        with owner.client() as client:
            assert client.delete(f"/v1/tci/sessions/{session}").status_code == 200
        with other.client() as client:
            again = client.post("/v1/tci/sessions")
            assert again.status_code == 200, again.text
            assert client.post("/v1/tci/sessions").status_code == 429
    finally:
        second.stop()
        first.stop()
