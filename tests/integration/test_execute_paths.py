"""A plain execute is answered by the warm call's fast path (server/routes/execute.py) when
its body is JSON that validates, and by the route otherwise: either way the client sees the
same answers, on both prefixes, whatever spelling of the JSON content type it sends."""

from __future__ import annotations

import json

import pytest

PREFIXES = ["/tci", "/v1/tci"]
JSON_TYPES = [None, "application/json", "application/json; charset=utf-8", "Application/JSON"]


def post(client, prefix: str, body: bytes, content_type: str | None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(f"{prefix}/execute", content=body, headers=headers)


@pytest.fixture
def client(server):
    with server.client() as instance:
        yield instance


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("content_type", JSON_TYPES)
def test_a_json_call_runs_in_its_session(client, prefix, content_type):
    created = post(client, prefix, json.dumps({"language": "python", "code": "x = 41"}).encode(),
                   content_type)
    assert created.status_code == 200, created.text
    session = created.json()["data"]["session_id"]
    body = json.dumps({"language": "python", "code": "x += 1; print(x)", "session_id": session})
    answer = post(client, prefix, body.encode(), content_type)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"data": {"session_id": session, "status": "completed",
                                      "outputs": [{"type": "stdout", "data": "42\n"}]},
                             "errors": None}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_another_content_type_is_the_routes_422(client, prefix):
    body = json.dumps({"language": "python", "code": "print(1)"}).encode()
    answer = post(client, prefix, body, "text/plain")
    assert answer.status_code == 422, answer.text
    assert answer.json()["data"] is None and answer.json()["errors"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_an_error_of_the_call_is_in_tci_shape(client, prefix):
    body = json.dumps({"language": "python", "code": "1", "session_id": "no-such-session"})
    answer = post(client, prefix, body.encode(), "application/json")
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"data": None, "errors": ["session no-such-session not found"]}


def test_a_streamed_call_is_still_streamed(client):
    body = {"language": "python", "code": "print('hi')", "stream": True}
    with client.stream("POST", "/v1/tci/execute", json=body) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        text = "".join(answer.iter_text())
    assert "hi" in text
