"""Usage, metrics and logs: `GET /v1/tci/usage` counts exactly the caller's sessions and
executions, its CPU seconds come from the sessions' cgroups (live ones read now, ended ones
stored), cost = sessions x TCI_PRICE_PER_SESSION_USD, keys are kept apart and since/until
filter, and `bucket=hour|day` adds a zero-filled series per UTC hour or day whose sums are
the totals (a bad bucket or too many buckets is a 422); `tci usage` prints every key; an old
database gains the new column; a paused and resumed session's CPU counts every sandbox it
had, and `kept_state` is the storage a key's paused sessions and snapshots take; `/metrics`
is Prometheus text whose counters move with real executions, ended sessions, pauses,
resumes and snapshots, and whose gauges say what paused sessions and snapshots keep;
log lines about a session carry its id, in text (key=value) and JSON formats."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import cli

_names = itertools.count()

# A key's runs (one-shot: batch, /sandboxfusion) when it made none: every verdict named.
NO_RUNS = {"count": 0, "wall_seconds": 0, "verdicts": {
    verdict: 0 for verdict in ("OK", "WRONG_ANSWER", "TIME_LIMIT", "MEMORY_LIMIT",
                               "RUNTIME_ERROR", "COMPILE_ERROR", "SANDBOX_ERROR")}}

# A key's paused sessions and snapshots when it has none.
NOTHING_KEPT = {"paused_sessions": 0, "paused_bytes": 0, "snapshots": 0, "snapshot_bytes": 0}

BUSY = """
import time
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
print("busy done")
"""


def fresh_key(server, label: str) -> str:
    return server.new_key(f"{label}-{next(_names)}-{datetime.now(UTC):%H%M%S%f}")


def run(server, key: str, code: str, session_id: str | None = None) -> dict:
    response = server.execute(code, session_id, key=key)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def usage(server, key: str, **params) -> dict:
    with server.client(key) as client:
        response = client.get("/v1/tci/usage", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is None
    return body["data"]


def delete(server, key: str, session_id: str) -> None:
    with server.client(key) as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200


def metrics(server, key: str | None = None) -> dict[tuple[str, tuple], float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# -- usage -------------------------------------------------------------------------------------


def test_usage_counts_sessions_executions_cpu_and_cost(server):
    key = fresh_key(server, "usage")
    assert usage(server, key) | {"since": None, "until": None} == {
        "since": None, "until": None, "sessions": 0, "executions": 0,
        "cpu_seconds": 0, "runs": NO_RUNS, "cost_usd": 0, "kept_state": NOTHING_KEPT}
    first = run(server, key, "x = 1")["session_id"]
    assert "busy done" in "".join(
        o["data"] for o in run(server, key, BUSY, first)["outputs"] if o["type"] == "stdout")
    run(server, key, "x + 1", first)
    second = run(server, key, "1 / 0")["session_id"]
    assert second != first

    live = usage(server, key)
    assert (live["sessions"], live["executions"]) == (2, 4)
    assert live["cost_usd"] == 0.06  # 2 sessions x the default $0.03
    assert live["cpu_seconds"] >= 0.5  # the busy loop, read from the live session's cgroup
    since, until = datetime.fromisoformat(live["since"]), datetime.fromisoformat(live["until"])
    assert until - since == timedelta(days=30)

    delete(server, key, first)
    delete(server, key, second)
    ended = usage(server, key)
    assert (ended["sessions"], ended["executions"], ended["cost_usd"]) == (2, 4, 0.06)
    assert ended["cpu_seconds"] >= 0.5  # now the values stored when the sessions ended


def test_usage_keeps_the_cpu_of_every_sandbox_a_paused_session_had(server):
    """A pause ends the session's sandbox and its CPU counter; a resume starts a new one.
    The CPU of each counts, while paused, after the resume and once it ended."""
    key = fresh_key(server, "usage-pause")
    session = run(server, key, BUSY)["session_id"]
    run(server, key, "blob = b'x' * 2_000_000", session)
    with server.client(key) as client:
        assert client.post(f"/v1/tci/sessions/{session}/pause").status_code == 200
        taken = client.post(f"/v1/tci/sessions/{session}/snapshots")  # resumes it to take one
        assert taken.status_code == 200, taken.text
        assert client.post(f"/v1/tci/sessions/{session}/pause").status_code == 200
    paused = usage(server, key)
    assert paused["cpu_seconds"] >= 0.5  # the first sandbox's, kept while paused
    kept = paused["kept_state"]  # the storage its state and the snapshot take now
    assert (kept["paused_sessions"], kept["snapshots"]) == (1, 1)
    assert kept["paused_bytes"] >= 2_000_000 and kept["snapshot_bytes"] >= 2_000_000
    assert usage(server, fresh_key(server, "usage-other"))["kept_state"] == NOTHING_KEPT
    run(server, key, BUSY, session)  # resumes it in a new sandbox, which burns as much again
    assert usage(server, key)["cpu_seconds"] >= 1.0
    delete(server, key, session)
    with server.client(key) as client:
        snapshot = taken.json()["data"]["id"]
        assert client.delete(f"/v1/tci/snapshots/{snapshot}").status_code == 200
    ended = usage(server, key, bucket="day")
    assert (ended["sessions"], ended["executions"]) == (1, 3)
    assert ended["cpu_seconds"] >= 1.0
    assert ended["kept_state"] == NOTHING_KEPT


def test_usage_does_not_bill_warm_up(server):
    key = fresh_key(server, "warm")
    session = run(server, key, "1 + 1")["session_id"]
    # The worker's start (and the pool's numpy/pandas preload) took seconds of CPU before the
    # client got it; only what ran afterwards is counted.
    assert usage(server, key)["cpu_seconds"] < 0.5
    delete(server, key, session)


def test_usage_is_per_key(server):
    alice, bob = fresh_key(server, "alice"), fresh_key(server, "bob")
    run(server, alice, "1")
    run(server, alice, "2")
    assert usage(server, bob)["sessions"] == 0
    session = run(server, bob, "3")["session_id"]
    run(server, bob, "4", session)
    run(server, bob, "5", session)
    assert (usage(server, bob)["sessions"], usage(server, bob)["executions"]) == (1, 3)
    assert (usage(server, alice)["sessions"], usage(server, alice)["executions"]) == (2, 2)


def test_usage_since_until_filter(server):
    key = fresh_key(server, "window")
    run(server, key, "1")
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    inside = usage(server, key, since=(now - hour).isoformat(), until=(now + hour).isoformat())
    assert (inside["sessions"], inside["executions"]) == (1, 1)
    assert datetime.fromisoformat(inside["since"]) == now - hour
    future = usage(server, key, since=(now + hour).isoformat(),
                   until=(now + 2 * hour).isoformat())
    assert (future["sessions"], future["executions"], future["cost_usd"]) == (0, 0, 0)
    past = usage(server, key, until="2020-01-01")
    assert (past["sessions"], past["executions"]) == (0, 0)
    assert past["since"] == "2019-12-02T00:00:00+00:00"  # 30 days before until, in UTC


def test_usage_bad_dates_are_422(server):
    with server.client() as client:
        for params in ({"since": "yesterday"}, {"until": "2026-13-40"},
                       {"since": "2026-02-01", "until": "2026-01-01"}):
            response = client.get("/v1/tci/usage", params=params)
            assert response.status_code == 422, (params, response.text)
            body = response.json()
            assert body["data"] is None and body["errors"], body
        unauthenticated = httpx.get(f"{server.url}/tci/usage", timeout=30)
        assert unauthenticated.status_code == 401


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def assert_series_sums_to_totals(data: dict) -> None:
    series = data["series"]
    assert sum(b["sessions"] for b in series) == data["sessions"]
    assert sum(b["executions"] for b in series) == data["executions"]
    assert abs(sum(b["cpu_seconds"] for b in series) - data["cpu_seconds"]) < 1e-5
    assert abs(sum(b["cost_usd"] for b in series) - data["cost_usd"]) < 1e-5


def test_usage_series_by_hour(server):
    key = fresh_key(server, "series")
    now = datetime.now(UTC)
    left = hour_start(now) + timedelta(hours=1) - now
    if left < timedelta(minutes=3):  # the calls below take seconds, a minute on a busy box
        time.sleep(left.total_seconds() + 1)  # so they and the question share one UTC hour
    current = hour_start(datetime.now(UTC))
    first = run(server, key, BUSY)["session_id"]
    run(server, key, "1", first)
    second = run(server, key, "2")["session_id"]
    delete(server, key, second)  # ended: its CPU now comes from the store, not its cgroup

    since, until = current - timedelta(hours=23), current + timedelta(hours=1)
    data = usage(server, key, since=since.isoformat(), until=until.isoformat(), bucket="hour")
    assert (data["sessions"], data["executions"], data["cost_usd"]) == (2, 3, 0.06)
    series = data["series"]
    assert [datetime.fromisoformat(b["start"]) for b in series] == [
        since + timedelta(hours=i) for i in range(24)]
    assert_series_sums_to_totals(data)
    assert series[-1]["start"] == current.isoformat()
    assert (series[-1]["sessions"], series[-1]["executions"], series[-1]["cost_usd"]) == (
        2, 3, 0.06)
    assert series[-1]["cpu_seconds"] >= 0.5  # the busy loop, read from the live session
    assert all(b == {"start": b["start"], "sessions": 0, "executions": 0, "cpu_seconds": 0,
                     "runs": NO_RUNS, "cost_usd": 0} for b in series[:-1])

    # The totals are the same as without a bucket (the behaviour kept for other callers).
    plain = usage(server, key, since=since.isoformat(), until=until.isoformat())
    assert "series" not in plain
    assert (plain["sessions"], plain["executions"]) == (data["sessions"], data["executions"])
    delete(server, key, first)


def test_usage_series_unaligned_and_default_windows(server):
    key = fresh_key(server, "series-days")
    run(server, key, "1")
    # The default window (the last 30 days, ending now) by day: 31 UTC days, the first and
    # last partial, today's the last.
    data = usage(server, key, bucket="day")
    until = datetime.fromisoformat(data["until"])
    starts = [datetime.fromisoformat(b["start"]) for b in data["series"]]
    assert len(starts) == 31 and starts[-1] == until.replace(hour=0, minute=0, second=0,
                                                             microsecond=0)
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(starts))
    assert starts[0] <= datetime.fromisoformat(data["since"]) < starts[1]
    assert_series_sums_to_totals(data)
    assert (data["series"][-1]["sessions"], data["series"][-1]["executions"]) == (1, 1)

    # An empty window has no buckets; a window before any use has zero-filled ones.
    empty = usage(server, key, since="2026-01-01T10:30", until="2026-01-01T10:30",
                  bucket="hour")
    assert empty["series"] == [] and empty["sessions"] == 0
    past = usage(server, key, since="2020-01-01T10:30", until="2020-01-01T12:00",
                 bucket="hour")
    assert [b["start"] for b in past["series"]] == [
        "2020-01-01T10:00:00+00:00", "2020-01-01T11:00:00+00:00"]
    assert past["sessions"] == 0


def test_usage_series_refuses_bad_buckets_and_too_many(server):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    allowed = usage(server, server.key, since=start.isoformat(),
                    until=(start + timedelta(hours=1000)).isoformat(), bucket="hour")
    assert len(allowed["series"]) == 1000  # TCI_USAGE_MAX_BUCKETS
    with server.client() as client:
        for params in ({"bucket": "week"}, {"bucket": ""},
                       {"bucket": "hour", "since": start.isoformat(),
                        "until": (start + timedelta(hours=1000, seconds=1)).isoformat()},
                       {"bucket": "day", "since": "2000-01-01"},
                       {"bucket": "hour", "since": "0001-01-01T00:00:00+01:00"}):
            response = client.get("/v1/tci/usage", params=params)
            assert response.status_code == 422, (params, response.text)
            body = response.json()
            assert body["data"] is None and len(body["errors"]) == 1, body
        too_many = client.get("/tci/usage", params={"bucket": "day", "since": "2000-01-01"})
        assert "TCI_USAGE_MAX_BUCKETS" in too_many.json()["errors"][0]


def test_cli_usage_lists_every_key(server):
    key_name = f"cli-usage-{next(_names)}-{datetime.now(UTC):%H%M%S%f}"
    key = server.new_key(key_name)
    session = run(server, key, "1")["session_id"]
    run(server, key, "2", session)
    delete(server, key, session)
    usage(server, key)  # the server's buffered execution records are written by now

    result = cli(server.data_dir, "usage", env=server.env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["NAME", "SESSIONS", "EXECUTIONS", "CPU_SECONDS", "RUNS",
                                "RUN_WALL_SECONDS", "COST_USD"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert "test" in rows  # the server's own key, listed whatever its use
    sessions, executions, cpu, runs, run_wall, cost = rows[key_name]
    assert (sessions, executions, runs, run_wall, cost) == ("1", "2", "0", "0.00", "0.0300")
    assert float(cpu) >= 0

    later = cli(server.data_dir, "usage", "--since", "2999-01-01", "--until", "2999-02-01",
                env=server.env)
    assert later.returncode == 0, later.stderr
    assert {line.split()[0]: line.split()[1] for line in later.stdout.splitlines()[2:]}[
        key_name] == "0"
    bad = cli(server.data_dir, "usage", "--since", "soon", env=server.env)
    assert bad.returncode != 0 and "bad date" in bad.stderr


def test_old_database_gains_cpu_column(tmp_path):
    data_dir = tmp_path / "old"
    assert cli(data_dir, "keys", "create", "--name", "k").returncode == 0
    with sqlite3.connect(data_dir / "tci.db") as db:  # as made before migrations existed
        db.execute("DROP TABLE alembic_version")
        db.execute("DROP TABLE session_reservations")  # tables of later revisions
        db.execute("DROP TABLE run_usage")
        db.execute("DROP TABLE snapshots")
        for column in ("paused_at", "seconds_left", "state_bytes"):
            db.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
        db.execute("ALTER TABLE sessions DROP COLUMN host")
        db.execute("ALTER TABLE sessions DROP COLUMN cpu_seconds")
    result = cli(data_dir, "usage")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split()[:3] == ["k", "0", "0"]
    with sqlite3.connect(data_dir / "tci.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(sessions)")]
    assert "cpu_seconds" in columns


# -- metrics and logs --------------------------------------------------------------------------


def test_metrics_move_with_executions_and_json_logs(server_factory):
    # 3 s: the trivial cells below end well within it on a loaded machine, the sleep does not.
    server = server_factory(execute_timeout="3", log_format="json")
    before = metrics(server)
    for outcome in ("ok", "error", "timeout", "died"):
        assert before[("tci_executions_total", (("outcome", outcome),))] == 0
    assert before[("tci_sessions_live", ())] == 0
    assert before[("tci_execute_duration_seconds_count", ())] == 0

    session = run(server, server.key, "1")["session_id"]
    run(server, server.key, "1 / 0", session)
    timed_out = run(server, server.key, "import time; time.sleep(30)", session)
    assert timed_out["outputs"][-1]["data"].startswith("TimeoutError")
    other = run(server, server.key, "import os; os._exit(3)")["session_id"]
    third = run(server, server.key, "2")["session_id"]

    after = metrics(server)
    assert after[("tci_executions_total", (("outcome", "ok"),))] == 2
    assert after[("tci_executions_total", (("outcome", "error"),))] == 1
    assert after[("tci_executions_total", (("outcome", "timeout"),))] == 1
    assert after[("tci_executions_total", (("outcome", "died"),))] == 1
    assert after[("tci_execute_duration_seconds_count", ())] == 5
    assert after[("tci_execute_duration_seconds_sum", ())] >= 1  # the timed-out call
    assert after[("tci_sessions_created_total", ())] == 3
    assert after[("tci_sessions_live", ())] == 2
    assert after[("tci_sandboxes_killed_total", (("reason", "worker_died"),))] == 1
    assert ("tci_pool_ready", ()) in after and ("tci_pool_size", ()) in after

    delete(server, server.key, third)
    last = metrics(server)
    assert last[("tci_sandboxes_killed_total", (("reason", "client"),))] == 1
    assert last[("tci_sessions_live", ())] == 1

    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    by_session = {}
    for record in records:
        if "session" in record:
            by_session.setdefault(record["session"], []).append(record["msg"])
    assert by_session[session] == ["session started", "execution timeout"]
    assert by_session[other] == ["session started", "execution died", "session ended"]
    assert by_session[third] == ["session started", "session ended"]
    ended = next(r for r in records if r.get("session") == third and r["msg"] == "session ended")
    assert ended["reason"] == "ended by the client" and ended["cpu_seconds"] >= 0


def test_metrics_count_pauses_resumes_snapshots_and_what_they_keep(server_factory):
    server = server_factory()
    before = metrics(server)
    for name in ("tci_sessions_paused_total", "tci_sessions_resumed_total",
                 "tci_snapshots_taken_total", "tci_paused_sessions", "tci_paused_state_bytes",
                 "tci_snapshots", "tci_snapshot_bytes"):
        assert before[(name, ())] == 0, name
    big = "blob = b'x' * 3_000_000"
    paused = run(server, server.key, big)["session_id"]
    running = run(server, server.key, big)["session_id"]
    with server.client() as client:
        assert client.post(f"/v1/tci/sessions/{paused}/pause").status_code == 200
        taken = client.post(f"/v1/tci/sessions/{running}/snapshots")
        assert taken.status_code == 200, taken.text
    kept = metrics(server)
    assert kept[("tci_sessions_paused_total", ())] == 1
    assert kept[("tci_snapshots_taken_total", ())] == 1
    assert kept[("tci_paused_sessions", ())] == 1
    assert kept[("tci_snapshots", ())] == 1
    assert kept[("tci_paused_state_bytes", ())] >= 3_000_000  # the blob, saved
    assert kept[("tci_snapshot_bytes", ())] >= 3_000_000

    run(server, server.key, "len(blob)", paused)  # resumes it
    with server.client() as client:
        snapshot = taken.json()["data"]["id"]
        assert client.delete(f"/v1/tci/snapshots/{snapshot}").status_code == 200
    after = metrics(server)
    assert after[("tci_sessions_resumed_total", ())] == 1
    assert after[("tci_paused_sessions", ())] == 0 and after[("tci_paused_state_bytes", ())] == 0
    assert after[("tci_snapshots", ())] == 0 and after[("tci_snapshot_bytes", ())] == 0


def test_metrics_can_require_a_key(server_factory):
    server = server_factory(metrics_require_key="true")
    assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{server.url}/metrics", timeout=30,
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    assert ("tci_sessions_live", ()) in metrics(server, server.key)


def test_metrics_open_by_default(server):
    assert ("tci_sessions_created_total", ()) in metrics(server)


def test_text_log_lines_carry_the_session_id(server):
    session = run(server, server.key, "1")["session_id"]
    delete(server, server.key, session)
    lines = [line for line in server.log().splitlines() if f"session={session}" in line]
    assert len(lines) == 2, lines
    assert 'msg="session started"' in lines[0] and "level=INFO" in lines[0]
    assert 'msg="session ended"' in lines[1] and 'reason="ended by the client"' in lines[1]
    assert all(line.startswith("ts=") for line in lines)
