"""POST /v1/tci/batch: one-shot runs in fresh sandboxes, each verdict earned by a program
that deserves it, against a real server."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.conftest import Server


def batch(server: Server, *runs: dict, timeout: float = 180) -> list[dict]:
    """The answer's lines, in input order (each checked to appear exactly once)."""
    with server.client(timeout=timeout) as client:
        response = client.post("/v1/tci/batch", json={"runs": list(runs)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(len(runs)))
    return sorted(lines, key=lambda line: line["index"])


def one(server: Server, code: str, **run) -> dict:
    return batch(server, {"code": code, **run})[0]


def test_a_run_is_a_script_with_its_verdict_and_streams(server: Server) -> None:
    line = one(server, "import sys\nprint(__name__, __file__)\nprint('err', file=sys.stderr)")
    assert line["verdict"] == "OK"
    assert line["exit_code"] == 0
    assert line["stdout"] == "__main__ /workspace/main.py\n"
    assert line["stderr"] == "err\n"
    assert line["truncated"] is False
    assert 0 < line["wall_s"] < 60
    assert set(line) == {"index", "verdict", "exit_code", "stdout", "stderr", "wall_s",
                         "truncated"}


@pytest.mark.parametrize(("code", "exit_code", "verdict", "stderr"), [
    ("import sys; sys.exit(0)", 0, "OK", ""),
    ("import sys; sys.exit()", 0, "OK", ""),
    ("raise SystemExit(None)", 0, "OK", ""),
    ("exit(3)", 3, "RUNTIME_ERROR", ""),
    ("quit()", 0, "OK", ""),
    ("import sys; sys.exit('bad input')", 1, "RUNTIME_ERROR", "bad input\n"),
    ("import sys; sys.exit(300)", 300 & 0xFF, "RUNTIME_ERROR", ""),
])
def test_exits_give_their_codes(server: Server, code: str, exit_code: int, verdict: str,
                                stderr: str) -> None:
    line = one(server, code)
    assert (line["exit_code"], line["verdict"], line["stderr"]) == (exit_code, verdict, stderr)


def test_an_uncaught_exception_is_a_runtime_error_with_its_traceback(server: Server) -> None:
    line = one(server, "def f():\n    raise ValueError('nope')\nf()\n")
    assert line["verdict"] == "RUNTIME_ERROR"
    assert line["exit_code"] == 1
    assert line["stderr"].startswith("Traceback (most recent call last):\n"
                                     '  File "/workspace/main.py", line 3, in <module>\n')
    assert "program.py" not in line["stderr"]  # nothing of the runner's own
    assert line["stderr"].rstrip().endswith("ValueError: nope")


def test_the_program_ends_after_its_threads_and_exit_handlers(server: Server) -> None:
    """As `python3 main.py`: non-daemon threads are joined and atexit handlers run before the
    streams are flushed; a daemon thread is not waited for."""
    code = ("import atexit, threading, time\n"
            "atexit.register(lambda: print('atexit'))\n"
            "def late():\n    time.sleep(0.2)\n    print('thread')\n"
            "threading.Thread(target=late).start()\n"
            "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
            "print('main')\n")
    line = one(server, code, timeout=30)
    assert (line["verdict"], line["stdout"]) == ("OK", "main\nthread\natexit\n")
    assert line["wall_s"] < 30


def test_a_syntax_error_is_a_runtime_error(server: Server) -> None:
    line = one(server, "int a = 1")
    assert line["verdict"] == "RUNTIME_ERROR"
    assert "SyntaxError" in line["stderr"]


def test_stdin_reaches_input_and_sys_stdin(server: Server) -> None:
    code = ("a = int(input())\nimport sys\nrest = sys.stdin.read().split()\n"
            "print(a + sum(map(int, rest)))")
    line = one(server, code, stdin="1\n2 3\n4\n")
    assert (line["verdict"], line["stdout"]) == ("OK", "10\n")
    eof = one(server, "input()")
    assert eof["verdict"] == "RUNTIME_ERROR" and "EOFError" in eof["stderr"]


def test_expected_stdout_ignores_trailing_whitespace_only(server: Server) -> None:
    code = "print('a  \\r')\nprint('b')\nprint()\nprint()"
    lines = batch(server, {"code": code, "expected_stdout": "a\nb"},
                  {"code": code, "expected_stdout": "a\nb\n\n\n\n"},
                  {"code": code, "expected_stdout": "a\n b"},
                  {"code": code, "expected_stdout": "a\n\nb"})
    assert [line["verdict"] for line in lines] == ["OK", "OK", "WRONG_ANSWER", "WRONG_ANSWER"]


def test_time_limit_kills_the_whole_tree(server: Server) -> None:
    code = ("import subprocess, time\n"
            "subprocess.Popen(['sleep', '1000'])\n"
            "print('started', flush=True)\n"
            "time.sleep(1000)")
    line = one(server, code, timeout=1.5)
    assert line["verdict"] == "TIME_LIMIT"
    assert line["exit_code"] is None
    assert line["stdout"] == "started\n"
    assert 1.5 <= line["wall_s"] < 30


def test_memory_limit(server: Server) -> None:
    line = one(server, "x = bytearray(400 * 1024 * 1024)\nx[::4096] = b'1' * len(x[::4096])",
               memory_mb=128)
    assert line["verdict"] == "MEMORY_LIMIT"
    within = one(server, "x = bytearray(50 * 1024 * 1024); print(len(x))", memory_mb=256)
    assert (within["verdict"], within["stdout"]) == ("OK", "52428800\n")


def test_a_caught_memory_error_is_no_failure(server: Server) -> None:
    code = ("try:\n    x = bytearray(1 << 44)\nexcept MemoryError:\n    print('caught')\n")
    line = one(server, code, memory_mb=128)
    assert (line["verdict"], line["stdout"]) == ("OK", "caught\n")


def test_output_past_the_cap_is_truncated_and_judged_on_what_was_kept(
        server_factory) -> None:
    small = server_factory(run_max_output_bytes=1000)
    line = one(small, "import sys\nfor i in range(100000): print(i)\nsys.exit(0)",
               expected_stdout="0")
    assert line["truncated"] is True
    assert len(line["stdout"]) == 1000
    assert line["exit_code"] == 0
    assert line["verdict"] == "WRONG_ANSWER"
    fits = one(small, "print('x' * 10)", expected_stdout="x" * 10)
    assert (fits["truncated"], fits["verdict"]) == (False, "OK")


def test_files_go_in_and_named_ones_come_back(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/tci/batch", json={"runs": [{
            "code": ("print(open('data/in.txt').read().strip())\n"
                     "open('out.txt', 'w').write('result')\n"
                     "open('/tmp/t.bin', 'wb').write(bytes(range(5)))"),
            "files": [{"name": "data/in.txt", "content": "hello"},
                      {"name": "b.bin", "encoding": "base64",
                       "content": base64.b64encode(b"\x00\x01").decode()}],
            "fetch_files": ["out.txt", "/tmp/t.bin", "missing.txt", "/workspace/b.bin"],
        }]})
    line = json.loads(response.text)
    assert (line["verdict"], line["stdout"]) == ("OK", "hello\n")
    files = {path: base64.b64decode(content) for path, content in line["files"].items()}
    assert files == {"out.txt": b"result", "/tmp/t.bin": bytes(range(5)),
                     "/workspace/b.bin": b"\x00\x01"}


def test_state_of_one_run_never_reaches_another(server: Server) -> None:
    code = ("import random, uuid, os, numpy\n"
            "print(random.random(), uuid.uuid4(), numpy.random.rand())\n"
            "print(sorted(os.listdir('/tmp')), os.path.exists('mark'))\n"
            "open('/tmp/left', 'w').write('x'); open('mark', 'w').write('x')")
    lines = batch(server, *[{"code": code} for _ in range(4)])
    assert all(line["verdict"] == "OK" for line in lines), lines
    draws = [line["stdout"].splitlines()[0] for line in lines]
    assert len(set(draws)) == 4
    for line in lines:
        assert line["stdout"].splitlines()[1] == "[] False"


def test_a_fast_runs_line_arrives_while_a_slow_one_runs(server: Server) -> None:
    runs = [{"code": "import time; time.sleep(60)", "timeout": 90}, {"code": "print('fast')"}]
    started = time.monotonic()
    with server.client(timeout=120) as client, client.stream(
            "POST", "/v1/tci/batch", json={"runs": runs}) as response:
        assert response.status_code == 200
        first = json.loads(next(response.iter_lines()))
        waited = time.monotonic() - started
    assert first["index"] == 1 and first["stdout"] == "fast\n"
    assert waited < 55  # the slow run sleeps 60 s; its line had not come


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"runs": []}, 400, "at least one run"),
    ({"runs": [{"code": "1", "language": "cobol"}]}, 400, "supported: python"),
    ({"runs": [{"code": "1", "timeout": 100000}]}, 422, "TCI_RUN_MAX_TIMEOUT"),
    ({"runs": [{"code": "1", "bogus": 1}]}, 400, "bogus"),
    ({"runs": [{"code": "1"}, {"code": "1", "timeout": -1}]}, 400, "runs.1.timeout"),
    ({"runs": [{"code": "1", "files": [{"name": "/etc/x", "content": ""}]}]}, 400,
     "runs[0]: file '/etc/x'"),
])
def test_bad_batches_are_refused_naming_the_problem(server: Server, body: dict, status: int,
                                                    words: str) -> None:
    with server.client() as client:
        response = client.post("/v1/tci/batch", json=body)
    assert response.status_code == status, response.text
    assert words in json.dumps(response.json()["errors"])


def test_too_many_runs_is_413(server_factory) -> None:
    small = server_factory(batch_max_runs=3)
    with small.client() as client:
        response = client.post("/v1/tci/batch", json={"runs": [{"code": "1"}] * 4})
    assert response.status_code == 413
    assert "TCI_BATCH_MAX_RUNS" in response.json()["errors"][0]


def test_a_full_queue_answers_429_with_retry_after(server_factory) -> None:
    tight = server_factory(run_concurrency=1, run_queue_size=1)
    slow = {"code": "import time; time.sleep(30)", "timeout": 60}
    with tight.client(timeout=120) as client, client.stream(
            "POST", "/v1/tci/batch", json={"runs": [slow, slow]}) as holding:
        assert holding.status_code == 200
        refused = httpx.post(f"{tight.url}/v1/tci/batch", json={"runs": [{"code": "1"}]},
                             headers={"Authorization": f"Bearer {tight.key}"}, timeout=30)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "TCI_RUN_QUEUE_SIZE" in refused.json()["errors"][0]


def test_batch_needs_a_key(server: Server) -> None:
    response = httpx.post(f"{server.url}/v1/tci/batch", json={"runs": [{"code": "1"}]})
    assert response.status_code == 401


HOSTILE = {
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n"
                  "    except OSError:\n        pass"),
    "kill everything": "import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(2)",
    "fill /tmp": ("with open('/tmp/f', 'wb') as f:\n    while True:\n"
                  "        f.write(b'x' * (1 << 20))"),
    "10 GB": "x = bytearray(10 * 1024 ** 3)\nx[::4096] = b'1' * len(x[::4096])",
}


def test_hostile_runs_beside_innocent_ones_leave_every_verdict_right(server: Server) -> None:
    innocent = {"code": "import sys\nn = int(sys.stdin.read())\nprint(sum(range(n)))",
                "stdin": "1000", "expected_stdout": "499500", "timeout": 60}
    hostile = [{"code": code, "timeout": 5, "memory_mb": 256} for code in HOSTILE.values()]
    runs = [innocent, *hostile, innocent, innocent, innocent]
    lines = batch(server, *runs)
    innocents = [lines[0], *lines[-3:]]
    assert all(line["verdict"] == "OK" for line in innocents), innocents
    verdicts = {name: line["verdict"] for name, line in zip(HOSTILE, lines[1:], strict=False)}
    assert verdicts["fork bomb"] == "TIME_LIMIT"
    assert verdicts["kill everything"] in ("OK", "RUNTIME_ERROR")  # it kills its own only
    # ENOSPC at TCI_TMP_MAX_BYTES, or its memory limit first (tmpfs pages are its memory)
    assert verdicts["fill /tmp"] in ("RUNTIME_ERROR", "MEMORY_LIMIT")
    assert verdicts["10 GB"] == "MEMORY_LIMIT"
    assert "SANDBOX_ERROR" not in verdicts.values()


def test_processes_a_run_leaves_behind_end_with_it(server: Server) -> None:
    code = ("import subprocess, os\n"
            "subprocess.Popen(['sh', '-c', 'sleep 1000 & sleep 1000'],\n"
            "                 start_new_session=True)\n"
            "print(os.getuid())")
    line = one(server, code)
    assert line["verdict"] == "OK"
    from tests.host import all_pids

    def sleepers() -> list[int]:
        found = []
        for pid in all_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if cmdline.read() == b"sleep\x001000\x00":
                        found.append(pid)
            except OSError:
                continue
        return found

    from tests.conftest import wait_for

    wait_for(lambda: not sleepers(), "the run's background processes to be gone")


def test_a_run_cannot_cut_its_tie_to_the_server(server: Server) -> None:
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.prctl(1, 0, 0, 0, 0), ctypes.get_errno())")
    line = one(server, code)
    assert line["stdout"] == "-1 1\n"  # PR_SET_PDEATHSIG: EPERM


def test_a_client_that_leaves_cancels_the_runs_not_started(server_factory) -> None:
    single = server_factory(run_concurrency=1)
    marker = "tci-cancel-marker"
    slow = {"code": f"import time\nprint('{marker}', flush=True)\ntime.sleep(5)", "timeout": 30}
    with single.client(timeout=120) as client, client.stream(
            "POST", "/v1/tci/batch", json={"runs": [slow] * 20}) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first run finished: the client leaves now
    metrics = httpx.get(f"{single.url}/metrics", timeout=30).text

    def value(name: str) -> float:
        return sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    from tests.conftest import wait_for

    def settled() -> bool:
        nonlocal metrics
        metrics = httpx.get(f"{single.url}/metrics", timeout=30).text
        return value("tci_runs_queued") == 0 and value("tci_runs_running") == 0

    wait_for(settled, "the batch's runs to stop after the client left", timeout=60)
    assert value("tci_runs_total") <= 3  # 20 were asked; the rest never started


def test_a_port_a_run_left_in_time_wait_is_free_for_the_next(server_factory) -> None:
    """Runs without a network reuse empty network namespaces; one where a run left a TCP
    connection in TIME_WAIT is not reused, so the next run's bind() of that port (without
    SO_REUSEADDR) works, as it would on a fresh machine. One slot: every run follows the last."""
    single = server_factory(run_concurrency=1)
    code = ("import socket\n"
            "server = socket.socket()\nserver.bind(('127.0.0.1', 8000))\nserver.listen()\n"
            "client = socket.create_connection(('127.0.0.1', 8000))\n"
            "accepted, _ = server.accept()\naccepted.close()\nclient.close()\nprint('bound')")
    for _ in range(3):
        line = one(single, code)
        assert (line["verdict"], line["stdout"]) == ("OK", "bound\n"), line["stderr"]
