"""Stateful sessions in JavaScript, TypeScript, bash and R through /v1/tci/execute's
`language` (issue 20, item 2): each runs in a sub-kernel, the session worker's child inside
the same sandbox (worker/kernels/). State persists, stdout and stderr arrive apart and in
order, results, displays and errors have Jupyter's shapes, a timeout leaves a working session,
files are shared with Python, and an unknown language is a 400 naming the ones offered."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest
from together import Together

from tests.conftest import Server, make_server, outputs_of, stdout_of, wait_for


@pytest.fixture(scope="module")
def langs(tmp_path_factory: pytest.TempPathFactory):
    instance = make_server(tmp_path_factory.mktemp("session-langs"), execute_timeout="60")
    yield instance
    instance.stop()


def call(server: Server, language: str, code: str, session: str | None = None,
         **extra: object) -> dict:
    response = server.execute(code, session, language=language, **extra)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def results(data: dict) -> list[str]:
    return [o["text/plain"] for o in outputs_of(data, "execute_result")]


def errors(data: dict) -> list[str]:
    return outputs_of(data, "error")


# -- JavaScript -------------------------------------------------------------------------------


def test_javascript_declarations_persist_and_may_be_declared_again(langs):
    data = call(langs, "javascript", "let a = 1; const b = 2\nfunction twice(x) { return 2 * x }\n"
                "class Box { constructor(v) { this.v = v } }")
    session = data["session_id"]
    assert data["outputs"] == []  # declarations show nothing
    assert results(call(langs, "javascript", "twice(a + b) + new Box(4).v", session)) == ["10"]
    # As a notebook re-runs a cell: let, const and class declared again.
    again = call(langs, "javascript", "let a = 10; const b = 20;\n"
                 "class Box { get v() { return 5 } }\na + b + new Box().v", session)
    assert results(again) == ["35"], again


def test_javascript_result_output_and_error_shapes(langs):
    data = call(langs, "javascript", "console.log('one'); console.error('two'); "
                "console.log('three'); ({x: [1, 2], s: 'a'})")
    session = data["session_id"]
    assert data["outputs"] == [
        {"type": "stdout", "data": "one\n"}, {"type": "stderr", "data": "two\n"},
        {"type": "stdout", "data": "three\n"},
        {"type": "execute_result", "data": {"text/plain": "{ x: [ 1, 2 ], s: 'a' }"}}]
    assert call(langs, "javascript", "console.log('only')", session)["outputs"] == [
        {"type": "stdout", "data": "only\n"}]
    assert call(langs, "javascript", "undefined", session)["outputs"] == []
    shown = call(langs, "javascript", "({[Symbol.for('Jupyter.display')]() "
                 "{ return {'text/html': '<b>hi</b>'} }})", session)
    assert shown["outputs"] == [{"type": "display_data", "data": {"text/html": "<b>hi</b>"}}]
    failed = call(langs, "javascript", "let kept = 7; throw new TypeError('bad value')", session)
    assert len(errors(failed)) == 1 and "TypeError: bad value" in errors(failed)[0]
    assert results(call(langs, "javascript", "kept * 6", session)) == ["42"]  # state kept


def test_javascript_top_level_await_and_dynamic_import(langs):
    data = call(langs, "javascript", "const fs = await import('node:fs');\n"
                "fs.writeFileSync('from-js.txt', 'js wrote');\n"
                "const v = await new Promise((ok) => setTimeout(() => ok(41), 10)); v + 1")
    assert results(data) == ["42"], data
    rejected = call(langs, "javascript", "await Promise.reject(new Error('nope'))",
                    data["session_id"])
    assert "Error: nope" in errors(rejected)[0]
    assert results(call(langs, "javascript", "fs.readFileSync('from-js.txt', 'utf8')",
                        data["session_id"])) == ["'js wrote'"]


# -- TypeScript -------------------------------------------------------------------------------


def test_typescript_enums_and_types_across_calls(langs):
    data = call(langs, "typescript", "enum Color { Red, Green = 5 }\n"
                "interface Point { x: number; y: number }\ntype Name = string")
    session = data["session_id"]
    assert data["outputs"] == [], data
    later = call(langs, "typescript", "const p: Point = { x: Color.Green, y: 1 };\n"
                 "const n: Name = Color[5]; `${n} ${p.x + p.y}`", session)
    assert results(later) == ["'Green 6'"], later
    # The same Node serves both: JavaScript sees what TypeScript declared.
    assert results(call(langs, "javascript", "Color.Red", session)) == ["0"]
    awaited = call(langs, "typescript", "const m = await import('node:path'); "
                   "const j: string = m.join('a', 'b'); j", session)
    assert results(awaited) == ["'a/b'"]


# -- bash -------------------------------------------------------------------------------------


def test_bash_state_persists(langs):
    session = call(langs, "bash", "count=3\ngreet() { echo \"hi $1\"; }\nexport SHARED=yes\n"
                   "mkdir -p sub && cd sub")["session_id"]
    data = call(langs, "bash", "greet $count; pwd; bash -c 'echo $SHARED'", session)
    assert stdout_of(data) == "hi 3\n/workspace/sub\nyes\n", data


def test_bash_streams_in_order_and_the_exit_status_rule(langs):
    data = call(langs, "bash", "echo out1; echo err1 >&2; echo out2")
    session = data["session_id"]
    assert data["outputs"] == [{"type": "stdout", "data": "out1\n"},
                               {"type": "stderr", "data": "err1\n"},
                               {"type": "stdout", "data": "out2\n"}]
    failed = call(langs, "bash", "echo before; (exit 3)", session)
    assert failed["outputs"] == [{"type": "stdout", "data": "before\n"},
                                 {"type": "error", "data": "exit status 3"}]
    # Status 0 at the end: no error, even after an earlier failing command.
    assert call(langs, "bash", "false; echo fine", session)["outputs"] == [
        {"type": "stdout", "data": "fine\n"}]


def test_bash_exit_ends_the_shell_and_the_next_call_gets_a_new_one(langs):
    session = call(langs, "bash", "x=1")["session_id"]
    gone = call(langs, "bash", "exit 4", session)
    assert "bash ended during the call (exit status 4)" in errors(gone)[0]
    assert "state" in errors(gone)[0]
    assert stdout_of(call(langs, "bash", "echo \"x=[$x]\"", session)) == "x=[]\n"


# -- R ----------------------------------------------------------------------------------------


def test_r_autoprints_like_the_console_and_keeps_state(langs):
    data = call(langs, "r", "x <- c(1, 2, 3)\nx * 2\ninvisible(99)\nlibrary(stats)")
    assert data["outputs"] == [{"type": "stdout", "data": "[1] 2 4 6\n"}], data
    session = data["session_id"]
    later = call(langs, "r", "sd(x)\ncat('out\\n'); message('err')", session)
    assert later["outputs"] == [{"type": "stdout", "data": "[1] 1\nout\n"},
                                {"type": "stderr", "data": "err\n"}], later


def test_r_stop_is_an_error_and_state_survives(langs):
    data = call(langs, "r", "kept <- 5\nstop('went wrong')\nkept <- 6")
    assert errors(data) == ["Error: went wrong"], data
    again = call(langs, "r", "f <- function() stop('inside'); f()", data["session_id"])
    assert errors(again) == ["Error in f() : inside"]
    assert stdout_of(call(langs, "r", "kept", data["session_id"])) == "[1] 5\n"


def test_r_plot_is_a_png_display(langs):
    data = call(langs, "r", "plot(1:10)\nhist(rnorm(50))")
    pngs = [o["data"]["image/png"] for o in data["outputs"] if o["type"] == "display_data"]
    assert len(pngs) == 2, data
    import base64
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)


# -- across languages, sessions, limits -------------------------------------------------------


def test_files_written_in_one_language_are_read_in_another(langs):
    session = langs.run("open('shared.txt', 'w').write('from python')")["session_id"]
    assert stdout_of(call(langs, "bash", "cat shared.txt; echo ' and bash' >> shared.txt",
                          session)) == "from python"
    assert results(call(langs, "javascript", "require('fs').readFileSync('shared.txt', 'utf8')",
                        session)) == ["'from python and bash\\n'"]
    assert stdout_of(call(langs, "r", "cat(readLines('shared.txt'))", session)) == (
        "from python and bash")


def test_another_session_does_not_see_the_state(langs):
    call(langs, "javascript", "var secret = 'mine'")
    call(langs, "bash", "secret=mine")
    other = call(langs, "javascript", "typeof secret")
    assert results(other) == ["'undefined'"]
    assert stdout_of(call(langs, "bash", "echo \"[$secret]\"")) == "[]\n"


@pytest.mark.parametrize(("language", "setup", "loop", "check", "shown"), [
    ("javascript", "var kept = 'yes'", "for (;;) {}", "kept", "'yes'"),
    ("bash", "kept=yes", "sleep 300", "echo $kept", "yes\n"),
    ("r", "kept <- 'yes'", "repeat {}", "cat(kept)", "yes"),
])
def test_a_timeout_answers_200_and_the_session_keeps_its_state(langs, language, setup, loop,
                                                              check, shown):
    session = call(langs, language, setup)["session_id"]
    data = call(langs, language, loop, session, timeout=2)
    assert any("timed out" in e for e in errors(data)), data
    after = call(langs, language, check, session)
    assert (results(after) or [stdout_of(after)]) == [shown], after


def test_a_runtime_that_ignores_the_interrupt_is_restarted_and_says_so(langs):
    session = call(langs, "bash", "kept=yes")["session_id"]
    # A pure-bash loop runs no foreground program for the SIGINT to stop.
    data = call(langs, "bash", "trap '' INT; while :; do :; done", session, timeout=2)
    assert any("restarted" in e and "lost" in e for e in errors(data)), data
    # Its wait is half of TCI_INTERRUPT_GRACE_SECONDS (2 s by default): back within the grace.
    assert any("did not stop within 1 s of the interrupt" in e for e in errors(data)), data
    assert stdout_of(call(langs, "bash", "echo \"[$kept]\"", session)) == "[]\n"
    # Python's state lives on: only the runtime was restarted, not the session.
    assert stdout_of(call(langs, "python", "print('python ok')", session)) == "python ok\n"


def test_interrupt_stops_a_javascript_call(langs):
    session = call(langs, "javascript", "var n = 1")["session_id"]
    body = {"language": "javascript", "code": "require('fs').writeFileSync('running', '');"
            " for (;;) {}", "session_id": session}
    answer: dict = {}

    def run() -> None:
        with langs.client() as client:
            answer["response"] = client.post("/v1/tci/execute", json=body)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def running() -> bool:
        with langs.client() as client:
            return client.get(f"/v1/tci/sessions/{session}/files/running").status_code == 200

    wait_for(running, "the loop to start", timeout=60)
    with langs.client() as client:
        assert client.post(f"/v1/tci/sessions/{session}/interrupt").json()["data"][
            "interrupted"] is True
    thread.join(60)
    assert "Interrupted" in errors(answer["response"].json()["data"])[0]
    assert results(call(langs, "javascript", "n + 1", session)) == ["2"]


def test_streaming_sends_bash_output_as_produced(langs):
    session = call(langs, "bash", "true")["session_id"]
    body = {"language": "bash", "stream": True, "session_id": session,
            "code": "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second"}
    with langs.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines) == "event: output"
        assert json.loads(next(lines).removeprefix("data: ")) == {"type": "stdout",
                                                                  "data": "first\n"}
        with langs.client() as other:
            assert other.put(f"/v1/tci/sessions/{session}/files/go", content=b"").is_success
        rest = [line for line in lines if line]
    assert rest[-2] == "event: result"
    assert stdout_of(json.loads(rest[-1].removeprefix("data: "))["data"]) == "first\nsecond\n"


def test_an_unknown_language_is_a_400_naming_the_supported_ones(langs):
    response = langs.execute("puts 1", language="ruby")
    assert response.status_code == 400, response.text
    message = json.dumps(response.json()["errors"])
    assert "'ruby' is not offered" in message
    for name in ("python", "javascript", "typescript", "bash", "r"):
        assert name in message


def test_the_together_sdk_passes_other_languages(langs):
    with Together(base_url=langs.base_url, api_key=langs.key) as sdk:
        first = sdk.code_interpreter.execute(code="const n = 20", language="javascript")
        session = first.data.session_id
        second = sdk.code_interpreter.execute(code="n + 22", language="javascript",
                                              session_id=session)
        shell = sdk.code_interpreter.execute(code="echo $((6 * 7))", language="bash",
                                             session_id=session)
    assert [o.data.text_plain for o in second.data.outputs] == ["42"]
    assert [o.data for o in shell.data.outputs] == ["42\n"]


def test_static_imports_bind_names_that_persist(langs):
    data = call(langs, "typescript",
                "import _ from 'lodash'; import { join as j } from 'node:path'\n"
                "import type { Foo } from './nowhere'\n"
                "const parts: number[][] = _.chunk([1, 2, 3], 2)")
    assert data["outputs"] == [], data
    later = call(langs, "javascript", "import * as os from 'node:os'\n"
                 "j('a', String(parts.length), typeof os.cpus)", data["session_id"])
    assert results(later) == ["'a/2/function'"], later


def test_a_runtime_slower_to_start_than_its_setting_is_an_error_and_the_session_lives(
        tmp_path):
    """TCI_RUNTIME_START_TIMEOUT_SECONDS, crossed: Node cannot be up within a millisecond."""
    server = make_server(tmp_path, runtime_start_timeout_seconds="0.001")
    try:
        data = call(server, "javascript", "1 + 1")
        assert errors(data) and "did not start within 0.001 s " \
            "(TCI_RUNTIME_START_TIMEOUT_SECONDS)" in errors(data)[0], data
        session = data["session_id"]
        assert stdout_of(call(server, "python", "print('python ok')", session)) == "python ok\n"
    finally:
        server.stop()


def test_health_lists_the_session_languages_this_machine_runs(langs):
    """Checked against the machine itself: a runtime is offered where its program exists."""
    offered = httpx.get(f"{langs.url}/health", timeout=30).json()["languages"]["sessions"]
    assert offered == {"python": True, "javascript": os.path.exists("/usr/bin/node"),
                       "typescript": os.path.exists("/usr/bin/node"),
                       "bash": os.path.exists("/bin/bash"),
                       "r": os.path.exists("/usr/bin/Rscript")}
