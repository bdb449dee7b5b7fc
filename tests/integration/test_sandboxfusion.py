"""SandboxFusion's API under /sandboxfusion, driven by its official client (PyPI
sandbox-fusion) and by verl's reward client (loaded by path from verl's wheel), unchanged."""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sandbox_fusion
from sandbox_fusion import RunCodeRequest, RunJupyterRequest, RunStatus

from tests.conftest import TCI, Server, make_server

VERL_CLIENT = "verl/utils/reward_score/sandbox_fusion/utils.py"


@pytest.fixture(scope="module")
def fusion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose keyless callers (SandboxFusion's clients send no key) count as the key
    `test` (make_server's)."""
    instance = make_server(tmp_path_factory.mktemp("fusion"), sandboxfusion_key="test")
    yield instance
    instance.stop()


def verl_client():
    """verl's reward client: one file needing only `requests` (the package's __init__ pulls
    torch and ray, so the file is loaded on its own)."""
    spec = importlib.util.find_spec("verl")
    assert spec is not None and spec.submodule_search_locations, "make test installs verl"
    path = Path(next(iter(spec.submodule_search_locations))).parent / VERL_CLIENT
    module_spec = importlib.util.spec_from_file_location("verl_sandbox_fusion", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def post(server: Server, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/sandboxfusion{path}", json=body, headers=headers,
                      timeout=120)


def test_the_official_client_runs_code(fusion: Server) -> None:
    sandbox_fusion.set_endpoint(f"{fusion.url}/sandboxfusion")
    result = sandbox_fusion.run_code(RunCodeRequest(code="print(int(input()) * 2)",
                                                    language="python", stdin="21"))
    assert result.status == RunStatus.Success
    assert result.run_result.stdout == "42\n"
    assert result.run_result.return_code == 0
    assert result.compile_result is None
    assert sandbox_fusion.summary_run_code_result(
        result, sandbox_fusion.SummaryMapping()) == RunStatus.Success


def test_the_official_client_sees_failures_as_failed(fusion: Server) -> None:
    sandbox_fusion.set_endpoint(f"{fusion.url}/sandboxfusion")
    failed = sandbox_fusion.run_code(RunCodeRequest(code="assert 1 == 2", language="python"))
    assert failed.status == RunStatus.Failed
    assert "AssertionError" in failed.run_result.stderr
    timeout = sandbox_fusion.run_code(RunCodeRequest(
        code="import time; time.sleep(5)", language="python", run_timeout=0.1))
    assert timeout.status == RunStatus.Failed
    assert timeout.run_result.status == "TimeLimitExceeded"
    assert timeout.run_result.return_code is None


def test_the_official_client_runs_jupyter_cells(fusion: Server) -> None:
    sandbox_fusion.set_endpoint(f"{fusion.url}/sandboxfusion")
    result = sandbox_fusion.run_jupyter(RunJupyterRequest(cells=[
        "a = 'hello'", "a", "import sys\nsys.stderr.write('oops\\n')", "assert False",
        "print(a)", "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"]))
    assert result.status == RunStatus.Success
    cells = result.cells
    assert cells[0].stdout == ""
    assert cells[1].display[0]["text/plain"] == "'hello'"
    assert cells[2].stderr == "oops\n"
    assert cells[3].error[0]["ename"] == "AssertionError"
    assert cells[4].stdout == "hello\n"  # a cell after one that raised still runs
    assert "image/png" in cells[5].display[0]


def test_run_jupyter_over_its_total_timeout_is_failed(fusion: Server) -> None:
    response = post(fusion, "/run_jupyter", {"cells": ["import time; time.sleep(10)"],
                                             "total_timeout": 1})
    body = response.json()
    assert (response.status_code, body["status"]) == (200, "Failed")
    assert body["driver"]["status"] == "TimeLimitExceeded"
    assert isinstance(body["message"], str)


def test_verls_client_scores_samples(fusion: Server) -> None:
    verl = verl_client()
    url = f"{fusion.url}/sandboxfusion/run_code"
    solution = "a, b = map(int, input().split())\nprint(a + b)"
    cases = {"inputs": ["1 2", "3 4", "10 -10"], "outputs": ["3", "7", "0"]}
    results, metadata = verl.check_correctness(url, cases, solution, timeout=10)
    assert results == [True, True, True], metadata
    wrong, _ = verl.check_correctness(url, cases, "print(3)", timeout=10)
    assert wrong == [True, False, False]
    crash, _ = verl.check_correctness(url, cases, "raise SystemExit(2)", timeout=10)
    assert crash == [-2, -2, -2]
    slow, _ = verl.check_correctness(url, {"inputs": ["1"], "outputs": ["1"]},
                                     "import time; time.sleep(30)", timeout=1)
    assert slow == [-3]


def test_verls_function_call_wrapper_runs_as_main(fusion: Server) -> None:
    verl = verl_client()
    url = f"{fusion.url}/sandboxfusion/run_code"
    cases = {"inputs": ["[1, 2]\n3"], "outputs": ["6"], "fn_name": "total"}
    results, metadata = verl.check_correctness(
        url, cases, "def total(xs, y):\n    return sum(xs) + y", timeout=10)
    assert results == [True], metadata


def test_request_details_its_clients_rely_on(fusion: Server) -> None:
    response = post(fusion, "/run_code", {
        "code": ("print(open('in/x.txt').read() + '|' + open('/tmp/y').read())\n"
                 "open('/tmp/out', 'w').write('o'); open('rel.txt', 'w').write('r')"),
        "language": "python", "stdin": None, "run_timeout": 5.5, "unknown_field": 1,
        "files": {"in/x.txt": base64.b64encode(b"x").decode(), "/tmp/y": None},
        "fetch_files": ["/tmp/out", "rel.txt", "never.txt"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "Success" and body["message"] == ""
    assert body["run_result"]["stdout"] == "x|\n"
    assert {k: base64.b64decode(v) for k, v in body["files"].items()} == {
        "/tmp/out": b"o", "rel.txt": b"r"}


def test_a_language_not_offered_is_a_400_naming_the_offered_ones(fusion: Server) -> None:
    response = post(fusion, "/run_code", {"code": "1", "language": "cobol"})
    assert response.status_code == 400
    assert "python" in response.json()["errors"][0]


def test_ping(fusion: Server) -> None:
    assert httpx.get(f"{fusion.url}/sandboxfusion/v1/ping", timeout=30).text == "pong"


def test_keys_on_sandboxfusion(fusion: Server, server: Server) -> None:
    bearer = post(fusion, "/run_code", {"code": "print(1)", "language": "python"},
                  Authorization=f"Bearer {fusion.key}")
    assert bearer.status_code == 200 and bearer.json()["status"] == "Success"
    wrong = post(fusion, "/run_code", {"code": "print(1)", "language": "python"},
                 Authorization="Bearer tci_" + "x" * 43)
    assert wrong.status_code == 401
    # The shared server sets no TCI_SANDBOXFUSION_KEY: a keyless call is refused, saying how.
    keyless = post(server, "/run_code", {"code": "print(1)", "language": "python"})
    assert keyless.status_code == 401
    assert "TCI_SANDBOXFUSION_KEY" in keyless.json()["errors"][0]


def test_keyless_callers_outside_the_allowed_networks_are_refused(server_factory) -> None:
    elsewhere = server_factory(sandboxfusion_key="test", sandboxfusion_allow='["10.0.0.0/8"]')
    response = post(elsewhere, "/run_code", {"code": "print(1)", "language": "python"})
    assert response.status_code == 401
    assert "TCI_SANDBOXFUSION_ALLOW" in response.json()["errors"][0]


def test_keyless_runs_count_as_the_named_key(fusion: Server) -> None:
    post(fusion, "/run_code", {"code": "print(1)", "language": "python"})
    metrics = httpx.get(f"{fusion.url}/metrics", timeout=30).text
    assert any(line.startswith('tci_runs_total{verdict="OK"}') and float(line.split()[-1]) >= 1
               for line in metrics.splitlines())


def test_a_sandboxfusion_key_that_does_not_exist_stops_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    result = subprocess.run([TCI, "serve", "--port", "1"], capture_output=True, text=True,
                            timeout=120, env={**os.environ,
                                              "TCI_DATA_DIR": str(data_dir),
                                              "TCI_SANDBOXFUSION_KEY": "nobody",
                                              "TCI_POOL_SIZE": "0"})
    assert result.returncode == 1
    assert "TCI_SANDBOXFUSION_KEY" in result.stderr + result.stdout
