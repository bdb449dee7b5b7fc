"""The server's own OpenAPI document (/openapi.json) describes every endpoint a client can
call, with its request body, and the API holds up under schema-driven fuzzing: schemathesis
generates requests for every operation from that document and sends them, authenticated,
to a real server; no request may produce a 5xx."""

import contextlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import Server, make_server

FUZZ_EXAMPLES = 20  # per operation: bounded so the run stays within about two minutes


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A dedicated server: fuzzing creates many sessions and runs arbitrary code."""
    # Many sessions at once: quotas small enough that 1000 fit the host's pids and disk.
    instance = make_server(tmp_path_factory.mktemp("tci-openapi"), pool_size="0",
                           execute_timeout="5", max_sessions="1000", pids_limit="16",
                           workspace_max_bytes=str(16 << 20))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def openapi(fuzz_server) -> dict:
    response = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def _resolve(document: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("prefix", ["/v1/tci", "/tci"])
def test_openapi_lists_every_endpoint(openapi, prefix):
    operations = {(path, method) for path, item in openapi["paths"].items() for method in item}
    assert {
        (f"{prefix}/execute", "post"),
        (f"{prefix}/sessions", "get"),
        (f"{prefix}/sessions", "post"),
        (f"{prefix}/sessions/{{session_id}}", "delete"),
        (f"{prefix}/sessions/{{session_id}}/interrupt", "post"),
        (f"{prefix}/usage", "get"),
        (f"{prefix}/sessions/{{session_id}}/files", "get"),
        (f"{prefix}/sessions/{{session_id}}/files/{{path}}", "get"),
        (f"{prefix}/sessions/{{session_id}}/files/{{path}}", "put"),
        ("/health", "get"),
    } <= operations


def test_openapi_describes_the_execute_body(openapi):
    body = openapi["paths"]["/v1/tci/execute"]["post"]["requestBody"]
    assert body["required"] is True
    schema = _resolve(openapi, body["content"]["application/json"]["schema"])
    assert set(schema["required"]) == {"language", "code"}
    assert {"language", "code", "session_id", "files", "stream"} <= schema["properties"].keys()
    language = schema["properties"]["language"]
    # The session languages (worker/kernels/); aliases such as "js" are accepted, not listed.
    assert language.get("enum") == ["python", "javascript", "typescript", "bash", "r"]
    response = openapi["paths"]["/v1/tci/execute"]["post"]["responses"]["200"]
    ok = _resolve(openapi, response["content"]["application/json"]["schema"])
    assert {"data", "errors"} <= ok["properties"].keys()


def test_openapi_describes_the_sessions_list(openapi):
    response = openapi["paths"]["/v1/tci/sessions"]["get"]["responses"]["200"]
    listing = _resolve(openapi, response["content"]["application/json"]["schema"])
    data = _resolve(openapi, listing["properties"]["data"])
    session = _resolve(openapi, data["properties"]["sessions"]["items"])
    assert set(session["required"]) == {
        "id", "execute_count", "started_at", "last_execute_at", "expires_at",
    }


def test_openapi_describes_the_console_routes(openapi):
    paths = openapi["paths"]
    create = paths["/v1/tci/sessions"]["post"]
    assert create.get("requestBody", {}).get("required") is not True  # no body is fine
    created = _resolve(openapi, create["responses"]["200"]["content"]["application/json"][
        "schema"])
    assert _resolve(openapi, created["properties"]["data"])["title"] == "SessionInfo"
    assert "429" in create["responses"]

    interrupt = paths["/v1/tci/sessions/{session_id}/interrupt"]["post"]
    answer = _resolve(openapi, interrupt["responses"]["200"]["content"]["application/json"][
        "schema"])
    data = _resolve(openapi, answer["properties"]["data"])
    assert set(data["required"]) == {"id", "interrupted"}
    assert {"404", "410"} <= interrupt["responses"].keys()

    usage = paths["/v1/tci/usage"]["get"]
    bucket = next(p for p in usage["parameters"] if p["name"] == "bucket")
    assert bucket["required"] is False
    assert {"enum": ["hour", "day"], "type": "string"} in bucket["schema"]["anyOf"]
    answer = _resolve(openapi, usage["responses"]["200"]["content"]["application/json"][
        "schema"])
    data = _resolve(openapi, answer["properties"]["data"])
    assert {"since", "until", "sessions", "executions", "cpu_seconds", "runs",
            "cost_usd"} == set(data["required"])
    series = next(s for s in data["properties"]["series"]["anyOf"] if s["type"] == "array")
    item = _resolve(openapi, series["items"])
    assert set(item["required"]) == {"start", "sessions", "executions", "cpu_seconds",
                                     "runs", "cost_usd"}


def test_fuzzed_requests_get_no_server_error(fuzz_server):
    """Every operation in the document, FUZZ_EXAMPLES generated requests per pass, sent with
    the Bearer key: valid requests (schema-conforming bodies, path parameters, queries),
    invalid ones (negative mode), and, for the per-session operations, valid requests aimed at
    a live session of the caller. Every 5xx is collected with the exact request that caused
    it. Generation is derandomized, so a failure reproduces. (Driven through schemathesis's
    Python API rather than its pytest plugin, whose lazy fixture loading breaks on pytest 9.)"""
    api = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_server.key}"}
    server_errors: list[str] = []
    statuses: dict[str, Counter] = {}

    def fuzz(operation, label: str, **strategy_args) -> None:
        counts = statuses.setdefault(f"{label} {operation.label}", Counter())

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(**strategy_args))
        def send(case):
            response = case.call(base_url=fuzz_server.url, headers=auth, timeout=60)
            counts[response.status_code] += 1
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except AssertionError:
                server_errors.append(
                    f"{response.status_code} {case.method} {response.request.url} "
                    f"body={response.request.body!r} -> {response.text[:300]}"
                )

        send()

    operations = [result.ok() for result in api.get_all_operations()]
    for operation in operations:
        fuzz(operation, "valid")
        # Some operations have no invalid request to generate (no body, and any string is a
        # valid path segment): for those, hypothesis reports the negative pass unsatisfiable.
        with contextlib.suppress(Unsatisfiable):
            fuzz(operation, "invalid", generation_mode=GenerationMode.NEGATIVE)
        if "{session_id}" in operation.path:
            live = fuzz_server.run("open('seed.txt', 'w').write('seed')")["session_id"]
            fuzz(operation, "live", path_parameters={"session_id": live})

    print("\n".join(f"{name}: {dict(counts)}" for name, counts in statuses.items()))
    assert len(operations) >= 19  # 9 under each of /v1/tci and /tci, and /health
    # The fuzzer reached the code-running and per-session paths, not only validation errors.
    assert statuses["valid POST /v1/tci/execute"][200] > 0
    assert statuses["invalid POST /v1/tci/execute"][422] > 0
    assert statuses["live GET /v1/tci/sessions/{session_id}/files"][200] > 0
    assert statuses["live PUT /v1/tci/sessions/{session_id}/files/{path}"][200] > 0
    assert statuses["valid POST /v1/tci/sessions"][200] > 0
    assert statuses["live POST /v1/tci/sessions/{session_id}/interrupt"][200] > 0
    assert statuses["valid GET /v1/tci/usage"][200] > 0
    assert not server_errors, "\n".join(server_errors)
