"""`tci batch RUNS.jsonl` as a user runs it against a real server: one JSONL result per run
on stdout (as they finish, or in input order with --ordered), each with its run's index and
line number; progress and a verdict summary on stderr (a bar on a terminal); exit status 0
when every run got a verdict, 1 when the server refused or could not be reached, 2 for a bad
input line (named by its number, nothing run) or no key."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import TCI, Server, free_port

MIXED = [
    {"code": "print(sum(map(int, input().split())))", "stdin": "2 3", "expected_stdout": "5"},
    {"code": "print(6)", "expected_stdout": "5"},
    {"code": "import time; time.sleep(30)", "timeout": 1},
    {"code": "raise KeyError('x')"},
    {"code": "print('plain')"},
]
VERDICTS = ["OK", "WRONG_ANSWER", "TIME_LIMIT", "RUNTIME_ERROR", "OK"]


def tci_batch(server: Server, *args: str, stdin: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TCI_API_KEY": server.key, **(env or {})}
    return subprocess.run([TCI, "batch", *args, "--url", server.base_url], input=stdin,
                          env=full_env, capture_output=True, text=True, timeout=300)


def runs_total(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tci_runs_total") and not line.startswith("#"))


def write_runs(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def results_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_file_of_runs_gives_one_result_line_each_and_a_summary(server: Server,
                                                                 tmp_path: Path) -> None:
    path = write_runs(tmp_path, [json.dumps(run) for run in MIXED])
    done = tci_batch(server, path)
    assert done.returncode == 0, done.stderr
    lines = results_of(done.stdout)
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3, 4]
    by_index = {line["index"]: line for line in lines}
    assert [by_index[i]["verdict"] for i in range(5)] == VERDICTS
    assert [by_index[i]["line"] for i in range(5)] == [1, 2, 3, 4, 5]
    assert by_index[0]["stdout"] == "5\n"
    assert "KeyError" in by_index[3]["stderr"]
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("tci batch: 5 of 5 runs in ")
    for part in ("OK 2", "WRONG_ANSWER 1", "TIME_LIMIT 1", "RUNTIME_ERROR 1"):
        assert part in summary, summary
    assert "\r" not in done.stderr  # no bar when stderr is not a terminal
    assert "5/5 runs done" in done.stderr


def test_ordered_from_stdin_with_blank_lines(server: Server) -> None:
    runs = [{"code": "import time; time.sleep(2); print('first')"}, {"code": "print('second')"}]
    stdin = json.dumps(runs[0]) + "\n\n" + json.dumps(runs[1]) + "\n"
    done = tci_batch(server, "-", "--ordered", stdin=stdin)
    assert done.returncode == 0, done.stderr
    lines = results_of(done.stdout)
    assert [(line["index"], line["line"], line["stdout"]) for line in lines] == [
        (0, 1, "first\n"), (1, 3, "second\n")]


@pytest.mark.parametrize(("bad", "words"), [
    ("{not json", "line 3: not JSON"),
    ("[1, 2]", "line 3: a run is a JSON object"),
    ('{"code": "1", "timeout": -1}', "line 3: timeout:"),
    ('{"code": "1", "bogus": 1}', "line 3: bogus:"),
])
def test_a_malformed_line_is_named_and_nothing_runs(server: Server, tmp_path: Path,
                                                    bad: str, words: str) -> None:
    good = json.dumps({"code": "print(1)"})
    path = write_runs(tmp_path, [good, good, bad, good])
    runs_before = runs_total(server)
    done = tci_batch(server, path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"tci batch: {path}, {words}" in done.stderr, done.stderr
    assert runs_total(server) == runs_before  # checked before any was sent


def test_a_run_the_server_refuses_is_named_by_its_line(server: Server, tmp_path: Path) -> None:
    path = write_runs(tmp_path, ['{"code": "1"}', "", '{"code": "1", "language": "cobol"}'])
    done = tci_batch(server, path)
    assert done.returncode == 1
    assert f"{path}, line 3: 400: runs[1]: language 'cobol'" in done.stderr, done.stderr


def test_no_key_or_no_server_is_an_error(server: Server, tmp_path: Path) -> None:
    path = write_runs(tmp_path, ['{"code": "1"}'])
    env = {k: v for k, v in os.environ.items() if k != "TCI_API_KEY"}
    no_key = subprocess.run([TCI, "batch", path, "--url", server.base_url], env=env,
                            capture_output=True, text=True, timeout=60)
    assert no_key.returncode == 2
    assert "an API key is needed" in no_key.stderr
    nobody = subprocess.run([TCI, "batch", path, "--key", server.key, "--url",
                             f"http://127.0.0.1:{free_port()}/v1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 1
    assert "could not reach the server" in nobody.stderr
    assert "0 of 1 runs" in nobody.stderr


def test_a_terminal_gets_a_progress_bar(server: Server, tmp_path: Path) -> None:
    path = write_runs(tmp_path, [json.dumps({"code": f"print({i})"}) for i in range(3)])
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([TCI, "batch", path, "--url", server.base_url],
                              env={**os.environ, "TCI_API_KEY": server.key},
                              stdout=subprocess.PIPE, stderr=terminal, timeout=300)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 3
    text = shown.decode()
    assert "\r[" in text and "3/3" in text
    assert "tci batch: 3 of 3 runs in " in text and "OK 3" in text
