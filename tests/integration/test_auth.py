"""Authentication and isolation between API keys: no valid Bearer key, no service (401,
before anything else happens); a revoked key stops working; one key cannot see, use or
even detect another key's sessions; keys are never stored in clear."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest

from tests.conftest import cli, stdout_of

ENDPOINTS = [
    ("POST", "/v1/tci/execute"),
    ("POST", "/tci/execute"),
    ("GET", "/v1/tci/sessions"),
    ("GET", "/tci/sessions"),
]
BODY = {"language": "python", "code": "print('ran')"}


def call(server, method: str, path: str, headers: dict, **kwargs) -> httpx.Response:
    if method == "POST" and "json" not in kwargs and "content" not in kwargs:
        kwargs["json"] = BODY
    return httpx.request(method, server.url + path, headers=headers, timeout=120, **kwargs)


def assert_401(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"data": None, "errors": [response.json()["errors"][0]]}
    message = response.json()["errors"][0]
    assert isinstance(message, str)
    assert fragment in message, message


def session_ids(server, key: str) -> set[str]:
    with server.client(key) as client:
        response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()["data"]["sessions"]}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- who may call ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_header(server, method, path):
    before = session_ids(server, server.key)
    assert_401(call(server, method, path, {}), "missing API key")
    assert session_ids(server, server.key) == before


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_wrong_key(server, method, path):
    before = session_ids(server, server.key)
    for wrong in ("tci_" + "x" * 43, server.key[:-1], server.key + "x", server.key.upper()):
        assert_401(call(server, method, path, {"Authorization": f"Bearer {wrong}"}),
                   "invalid or revoked API key")
    assert session_ids(server, server.key) == before


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("header", [
    "Basic x", "Bearer", "Token {key}", "Basic {key}", "{key}", "",
])
def test_malformed_header(server, method, path, header):
    value = header.format(key=server.key)
    response = call(server, method, path, {"Authorization": value})
    assert response.status_code == 401, response.text
    message = response.json()["errors"][0]
    assert "Bearer" in message, message


def test_401_names_bearer_scheme(server):
    """RFC 9110: a 401 response carries WWW-Authenticate naming the scheme to use."""
    response = call(server, "POST", "/v1/tci/execute", {})
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"language": "ruby"}'])
def test_auth_checked_before_body(server, raw):
    """A caller without a key learns nothing about the request: 401, not a parse error."""
    response = call(server, "POST", "/v1/tci/execute", {"content-type": "application/json"},
                    content=raw)
    assert_401(response, "missing API key")


def test_key_works_with_lowercase_scheme(server):
    response = call(server, "POST", "/v1/tci/execute", {"Authorization": f"bearer {server.key}"})
    assert response.status_code == 200, response.text
    assert stdout_of(response.json()["data"]) == "ran\n"


def test_revoked_key_stops_working(server_factory):
    dedicated = server_factory(auth_cache_seconds=0)
    key = dedicated.new_key("soon-revoked")
    data = dedicated.run("x = 1")  # the other key keeps working throughout
    with dedicated.client(key) as client:
        first = client.post("/v1/tci/execute", json={**BODY, "code": "y = 2"})
        assert first.status_code == 200, first.text
        sid = first.json()["data"]["session_id"]

        result = cli(dedicated.data_dir, "keys", "revoke", "soon-revoked", env=dedicated.env)
        assert result.returncode == 0, result.stderr

        assert_401(client.post("/v1/tci/execute", json=BODY), "invalid or revoked API key")
        assert_401(client.post("/v1/tci/execute", json={**BODY, "session_id": sid}),
                   "invalid or revoked API key")
        assert_401(client.get("/v1/tci/sessions"), "invalid or revoked API key")
        assert_401(client.get("/tci/sessions"), "invalid or revoked API key")
    again = dedicated.run("print(x)", data["session_id"])
    assert stdout_of(again) == "1\n"


# -- one key cannot reach another's sessions ---------------------------------------------


def test_other_keys_session_looks_unknown(server):
    owner, intruder = server.new_key(unique("owner")), server.new_key(unique("intruder"))
    with server.client(owner) as client:
        created = client.post("/v1/tci/execute", json={**BODY, "code": "secret = 'mine'"})
    assert created.status_code == 200, created.text
    sid = created.json()["data"]["session_id"]
    unknown = "ses_" + "Z" * 24

    with server.client(intruder) as client:
        foreign = client.post("/v1/tci/execute", json={
            **BODY, "code": "secret = 'stolen'", "session_id": sid})
        missing = client.post("/v1/tci/execute", json={**BODY, "session_id": unknown})
        foreign_v0 = client.post("/tci/execute", json={**BODY, "session_id": sid})
    assert foreign.status_code == missing.status_code == foreign_v0.status_code == 404
    assert foreign.json() == {"data": None, "errors": [f"session {sid} not found"]}
    assert missing.json() == {"data": None, "errors": [f"session {unknown} not found"]}
    assert foreign_v0.json() == foreign.json()
    assert set(foreign.headers) == set(missing.headers)

    # The owner's session was neither touched nor ended.
    with server.client(owner) as client:
        after = client.post("/v1/tci/execute", json={**BODY, "code": "secret",
                                                      "session_id": sid})
    assert after.status_code == 200, after.text
    assert after.json()["data"]["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "'mine'"}}]


def test_other_keys_ended_session_looks_unknown(server):
    owner, intruder = server.new_key(unique("owner")), server.new_key(unique("intruder"))
    with server.client(owner) as client:
        created = client.post("/v1/tci/execute", json={**BODY, "code": "pass"})
        sid = created.json()["data"]["session_id"]
        died = client.post("/v1/tci/execute", json={
            **BODY, "code": "import os; os._exit(3)", "session_id": sid})
        assert died.status_code == 200, died.text
        ended = client.post("/v1/tci/execute", json={**BODY, "session_id": sid})
    assert ended.status_code == 410, ended.text
    with server.client(intruder) as client:
        foreign = client.post("/v1/tci/execute", json={**BODY, "session_id": sid})
    assert foreign.status_code == 404, foreign.text
    assert foreign.json() == {"data": None, "errors": [f"session {sid} not found"]}


def test_sessions_list_shows_only_own(server):
    first, second = server.new_key(unique("lister-a")), server.new_key(unique("lister-b"))
    assert session_ids(server, first) == set()
    assert session_ids(server, second) == set()
    mine = set()
    with server.client(first) as client:
        for _ in range(2):
            response = client.post("/v1/tci/execute", json=BODY)
            assert response.status_code == 200, response.text
            mine.add(response.json()["data"]["session_id"])
    with server.client(second) as client:
        response = client.post("/v1/tci/execute", json=BODY)
        theirs = {response.json()["data"]["session_id"]}
    assert session_ids(server, first) == mine
    assert session_ids(server, second) == theirs
    assert not (mine | theirs) & session_ids(server, server.key)


# -- storage -----------------------------------------------------------------------------


def test_keys_stored_hashed(server):
    key = server.new_key(unique("stored"))
    assert stdout_of(server.run("print('ok')")) == "ok\n"
    with server.client(key) as client:
        assert client.get("/v1/tci/sessions").status_code == 200
    secrets = [key, server.key]
    db_files = sorted(server.data_dir.glob("tci.db*"))
    assert server.data_dir / "tci.db" in db_files
    for path in db_files:
        raw = path.read_bytes()
        for secret in secrets:
            # Neither the key nor its random part beyond the displayed prefix.
            assert secret.encode() not in raw, path
            assert secret[10:].encode() not in raw, path

    connection = sqlite3.connect(f"file:{server.data_dir / 'tci.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    for secret in secrets:
                        assert secret[10:] not in str(value), table
    finally:
        connection.close()
