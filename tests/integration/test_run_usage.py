"""One-shot runs in usage and metrics, against a real server on SQLite and on PostgreSQL:
each key's `GET /v1/tci/usage` counts its own runs (keyless SandboxFusion callers' as the
key TCI_SANDBOXFUSION_KEY names), by verdict, with their wall seconds and price, in the
totals and in hour and day series; the counts are the store's (they survive a restart);
`tci usage` prints them; `/metrics` counts runs by verdict, their wall time and phases, and
shows the queue and the running runs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, cli, make_server

pytest_plugins = ("tests.pg",)  # its fixtures: postgres_url

PRICE_PER_RUN = 0.25
VERDICTS = ("OK", "WRONG_ANSWER", "TIME_LIMIT", "MEMORY_LIMIT", "RUNTIME_ERROR",
            "COMPILE_ERROR", "SANDBOX_ERROR")
# Runs whose verdicts are known: (run, its verdict).
ALICE_RUNS = [({"code": "print(6 * 7)", "expected_stdout": "42\n"}, "OK"),
              ({"code": "print(41)", "expected_stdout": "42\n"}, "WRONG_ANSWER"),
              ({"code": "1 / 0"}, "RUNTIME_ERROR")]


@pytest.fixture(params=["sqlite", "postgresql"])
def fusion(request: pytest.FixtureRequest, tmp_path: Path):
    """A server whose keyless SandboxFusion callers count as its key `test`."""
    database = ({} if request.param == "sqlite"
                else {"database_url": request.getfixturevalue("postgres_url")})
    server = make_server(tmp_path, sandboxfusion_key="test",
                         price_per_run_usd=str(PRICE_PER_RUN), **database)
    yield server
    server.stop()


def batch(server: Server, key: str, runs: list[dict]) -> list[str]:
    with server.client(key, timeout=180) as client:
        response = client.post("/v1/tci/batch", json={"runs": runs})
    assert response.status_code == 200, response.text
    lines = sorted((json.loads(line) for line in response.text.splitlines()),
                   key=lambda line: line["index"])
    return [line["verdict"] for line in lines]


def run_code(server: Server, code: str, **extra) -> dict:
    response = httpx.post(f"{server.url}/sandboxfusion/run_code", timeout=180,
                          json={"code": code, "language": "python", **extra})
    assert response.status_code == 200, response.text
    return response.json()


def usage(server: Server, key: str, **params: str) -> dict:
    with server.client(key) as client:
        response = client.get("/v1/tci/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def runs_of(verdicts: dict[str, int]) -> dict[str, int]:
    return {verdict: verdicts.get(verdict, 0) for verdict in VERDICTS}


def assert_runs_sum_to_totals(data: dict) -> None:
    totals = data["runs"]
    series = [bucket["runs"] for bucket in data["series"]]
    assert sum(runs["count"] for runs in series) == totals["count"]
    assert abs(sum(runs["wall_seconds"] for runs in series) - totals["wall_seconds"]) < 1e-5
    for verdict in VERDICTS:
        assert sum(runs["verdicts"][verdict] for runs in series) == totals["verdicts"][verdict]
    assert abs(sum(b["cost_usd"] for b in data["series"]) - data["cost_usd"]) < 1e-5


def metrics(server: Server) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def test_each_key_sees_its_own_runs_in_usage_and_metrics(fusion: Server) -> None:
    alice = fusion.new_key("alice")
    assert usage(fusion, alice)["runs"] == {"count": 0, "wall_seconds": 0,
                                             "verdicts": runs_of({})}
    assert batch(fusion, alice, [run for run, _ in ALICE_RUNS]) == [v for _, v in ALICE_RUNS]
    # Keyless: SandboxFusion's clients send no key; these count as the key `test`.
    assert run_code(fusion, "print(1)")["status"] == "Success"
    slow = run_code(fusion, "import time; time.sleep(30)", run_timeout=1)
    assert slow["run_result"]["status"] == "TimeLimitExceeded"
    assert batch(fusion, fusion.key, [{"code": "print('hi')", "expected_stdout": "hi"}]) == [
        "OK"]

    mine = usage(fusion, alice)
    assert (mine["runs"]["count"], mine["runs"]["verdicts"]) == (
        3, runs_of({"OK": 1, "WRONG_ANSWER": 1, "RUNTIME_ERROR": 1}))
    assert 0 < mine["runs"]["wall_seconds"] < 60
    assert (mine["sessions"], mine["executions"]) == (0, 0)  # runs are not sessions
    assert mine["cost_usd"] == 3 * PRICE_PER_RUN
    theirs = usage(fusion, fusion.key)
    assert (theirs["runs"]["count"], theirs["runs"]["verdicts"]) == (
        3, runs_of({"OK": 2, "TIME_LIMIT": 1}))
    assert theirs["runs"]["wall_seconds"] >= 1  # the run stopped at its 1 s limit
    assert theirs["cost_usd"] == 3 * PRICE_PER_RUN

    # The series: whatever hour or day the runs fell in, its sums are the totals.
    for bucket in ("hour", "day"):
        series = usage(fusion, alice, bucket=bucket)
        assert series["runs"] == mine["runs"]
        assert_runs_sum_to_totals(series)
    # A window of hours before any run counts none.
    assert usage(fusion, alice, until="2020-01-01")["runs"]["count"] == 0

    seen = metrics(fusion)
    expected = {"OK": 3, "WRONG_ANSWER": 1, "RUNTIME_ERROR": 1, "TIME_LIMIT": 1}
    for verdict in VERDICTS:
        assert seen[("tci_runs_total", (("verdict", verdict),))] == expected.get(verdict, 0)
    assert seen[("tci_run_wall_seconds_count", ())] == 6
    assert seen[("tci_run_wall_seconds_sum", ())] >= 1
    phases = {dict(labels)["phase"]: value for (name, labels), value in seen.items()
              if name == "tci_run_phase_seconds_count"}
    assert {"queue", "start", "program", "finish"} <= set(phases)
    assert all(phases[phase] == 6 for phase in ("queue", "start", "program", "finish"))
    assert (seen[("tci_runs_queued", ())], seen[("tci_runs_running", ())]) == (0, 0)

    # The counts are the store's: a restarted server still has them, and so does the CLI.
    fusion.stop()
    fusion.start()
    assert usage(fusion, alice)["runs"] == mine["runs"]
    listed = cli(fusion.data_dir, "usage", env=fusion.env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()[1:]
    columns = header.split()
    by_key = {row.split()[0]: dict(zip(columns, row.split(), strict=True)) for row in rows}
    assert (by_key["alice"]["RUNS"], by_key["test"]["RUNS"]) == ("3", "3")
    assert float(by_key["alice"]["COST_USD"]) == 3 * PRICE_PER_RUN


def test_a_negative_run_price_is_refused(tmp_path: Path) -> None:
    result = cli(tmp_path / "data", "usage", env={"TCI_PRICE_PER_RUN_USD": "-1"})
    assert result.returncode != 0
    assert "price_per_run_usd" in (result.stderr + result.stdout).lower()
