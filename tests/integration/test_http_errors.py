"""Every failed request, under both /tci and /v1/tci, answers in TCI's error shape
`{"data": null, "errors": [readable strings]}` with the fitting 4xx status: malformed JSON,
schema violations, unknown routes and methods, unknown sessions. None of them is a 5xx,
and none of them starts a session."""

from __future__ import annotations

import httpx
import pytest

PREFIXES = ["/tci", "/v1/tci"]


def assert_error(response: httpx.Response, status: int, *fragments: str) -> list[str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"data", "errors"}
    assert body["data"] is None
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    assert all(isinstance(e, str) and e.strip() for e in errors), errors
    for fragment in fragments:
        assert any(fragment in e for e in errors), (fragment, errors)
    return errors


@pytest.fixture(params=PREFIXES)
def prefix(request) -> str:
    return request.param


@pytest.fixture
def client(server):
    with server.client() as instance:
        yield instance


def live_sessions(client) -> set[str]:
    response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()["data"]["sessions"]}


# -- body that is not a valid request ---------------------------------------------------

RAW_BODIES = [
    pytest.param(b"{not json", 422, "not valid JSON", id="invalid-json"),
    pytest.param(b'{"language": "python", "code": "1"', 422, "JSON", id="truncated-json"),
    pytest.param(b"", 422, "Field required", id="empty"),
    pytest.param(b"null", 422, "valid dictionary", id="null"),
    pytest.param(b"[]", 422, "valid dictionary", id="list"),
    pytest.param(b'"print(1)"', 422, "valid dictionary", id="string"),
    pytest.param(b"42", 422, "valid dictionary", id="number"),
    pytest.param(b"\xff\xfe{}", 422, "not valid JSON", id="not-utf8"),
]


@pytest.mark.parametrize(("raw", "status", "fragment"), RAW_BODIES)
def test_malformed_body(client, prefix, raw, status, fragment):
    before = live_sessions(client)
    response = client.post(f"{prefix}/execute", content=raw,
                           headers={"content-type": "application/json"})
    assert_error(response, status, fragment)
    assert live_sessions(client) == before


INVALID_REQUESTS = [
    pytest.param({"language": "python"}, "code: Field required", id="missing-code"),
    pytest.param({"code": "print(1)"}, "language: Field required", id="missing-language"),
    pytest.param({"language": 5, "code": "1"}, "language: Input should be a valid string",
                 id="language-int"),
    pytest.param({"language": None, "code": "1"}, "language", id="null-language"),
    pytest.param({"language": "python", "code": 1}, "code: Input should be a valid string",
                 id="code-int"),
    pytest.param({"language": "python", "code": None}, "code: Input should be a valid string",
                 id="code-null"),
    pytest.param({"language": "python", "code": ["print(1)"]}, "code:", id="code-list"),
    pytest.param({"language": "python", "code": "1", "session_id": 5},
                 "session_id: Input should be a valid string", id="session-int"),
    pytest.param({"language": "python", "code": "1", "files": "a.txt"},
                 "files: Input should be a valid list", id="files-string"),
    pytest.param({"language": "python", "code": "1", "files": {"name": "a", "content": ""}},
                 "files: Input should be a valid list", id="files-object"),
    pytest.param({"language": "python", "code": "1", "files": [{"name": "a"}]},
                 "files.0.content: Field required", id="file-no-content"),
    pytest.param({"language": "python", "code": "1",
                  "files": [{"name": "a", "content": "", "encoding": "utf-16"}]},
                 "files.0.encoding", id="file-bad-encoding"),
]


@pytest.mark.parametrize(("body", "fragment"), INVALID_REQUESTS)
def test_invalid_request(client, prefix, body, fragment):
    before = live_sessions(client)
    response = client.post(f"{prefix}/execute", json=body)
    assert_error(response, 422, fragment)
    assert live_sessions(client) == before


def test_every_problem_is_listed(client, prefix):
    response = client.post(f"{prefix}/execute", json={"language": 7, "code": 7})
    errors = assert_error(response, 422)
    assert sorted(errors) == ["code: Input should be a valid string",
                              "language: Input should be a valid string"]


def test_an_unknown_language_is_a_400_naming_the_offered_ones(client, prefix):
    # A well-formed body in a language this server does not offer (session languages:
    # tests/integration/test_session_languages.py).
    response = client.post(f"{prefix}/execute", json={"language": "ruby", "code": "1"})
    assert_error(response, 400, "language 'ruby' is not offered for sessions; this server "
                 "offers: python, javascript, typescript, bash, r")


# -- routes and methods -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/execute/extra", "/session", "/sessions/x/y"])
def test_unknown_route(client, prefix, path):
    assert_error(client.get(prefix + path), 404, "Not Found")
    assert_error(client.post(prefix + path, json={}), 404, "Not Found")


def test_unknown_route_outside_api(client):
    # "/" is the web console's page (tests/browser); anything else unknown is a 404.
    for path in ("/index.php", "/v2/tci/execute", "/v1/execute", "/health/x"):
        assert_error(client.get(path), 404, "Not Found")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/execute", "POST"),
    ("PUT", "/execute", "POST"),
    ("DELETE", "/execute", "POST"),
    ("GET", "/sessions/ses_x/interrupt", "POST"),
    ("DELETE", "/sessions", "GET"),
])
def test_wrong_method(client, prefix, method, path, allow):
    response = client.request(method, prefix + path)
    assert_error(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == allow


# -- sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", [
    "ses_" + "A" * 24,
    "ses_nope",
    "not-even-a-session",
    "../../etc/passwd",
    "ses_\u00e9\u2713",
])
def test_unknown_session(client, prefix, session_id):
    before = live_sessions(client)
    response = client.post(f"{prefix}/execute",
                           json={"language": "python", "code": "print(1)",
                                 "session_id": session_id})
    assert assert_error(response, 404) == [f"session {session_id} not found"]
    assert live_sessions(client) == before


def test_known_session_on_both_prefixes(server, client):
    """The two prefixes are one API: a session made on one is used on the other."""
    first = client.post("/tci/execute", json={"language": "python", "code": "x = 6"})
    assert first.status_code == 200, first.text
    sid = first.json()["data"]["session_id"]
    second = client.post("/v1/tci/execute",
                         json={"language": "python", "code": "x * 7", "session_id": sid})
    assert second.status_code == 200, second.text
    assert second.json()["data"]["outputs"] == [
        {"type": "execute_result", "data": {"text/plain": "42"}}]
    listed = {s["id"] for s in client.get("/tci/sessions").json()["data"]["sessions"]}
    assert sid in listed


# -- bad input keeps the server healthy -------------------------------------------------


HOSTILE = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    pytest.param(b'{"language": "python", "code": "1", "session_id": ' + b"9" * 5000 + b"}",
                 id="huge-number"),
    pytest.param(b'{"language": "python", "code": "1", "files": [null]}', id="null-file"),
    pytest.param(b'{"language": "python", "code": "1", "files": [[]]}', id="list-file"),
    pytest.param(b'{"language": "python", "code": "1", "session_id": "' + b"s" * 100_000 + b'"}',
                 id="huge-session-id"),
    # JSON allows escaped lone surrogates; they are not encodable text.
    pytest.param(b'{"language": "python", "code": "\\ud800"}', id="surrogate-code"),
    pytest.param(b'{"language": "python", "code": "1", "session_id": "ses_\\udfff"}',
                 id="surrogate-session"),
    pytest.param(b'{"language": "python", "code": "1", '
                 b'"files": [{"name": "\\ud800.txt", "content": "x"}]}', id="surrogate-name"),
    pytest.param(b'{"language": "python", "code": "1", '
                 b'"files": [{"name": "a.txt", "content": "\\ud800"}]}', id="surrogate-content"),
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_body_is_a_4xx(server, client, raw):
    log_start = len(server.log())
    response = client.post("/v1/tci/execute", content=raw,
                           headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert_error(response, response.status_code)
    assert "Traceback" not in server.log()[log_start:]
    assert server.run("print('still fine')")["outputs"] == [
        {"type": "stdout", "data": "still fine\n"}]
