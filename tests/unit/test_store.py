"""The store on both databases it supports: SQLite (the embedded default) and a real
PostgreSQL (tests/pg.py). Every test runs on each, against a fresh database."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from tci.errors import BadRequest, NotFound
from tci.storage.store import ExecutionRow, RunUsageRow, Store

pytest_plugins = ("tests.pg",)  # its fixtures: postgres, postgres_url

T = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)  # half an hour before a UTC day boundary
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tci.db'}"
    else:
        # The database session's time zone is far from UTC: buckets and timestamps must not
        # depend on it.
        url = request.getfixturevalue("postgres_url") + "?options=" + quote(
            "-c TimeZone=America/New_York")
    opened = Store(url)
    yield opened
    opened.engine.dispose()


def add(store: Store, session_id: str, key_id: int, started: datetime,
        host: str | None = None) -> None:
    store.add_session(session_id, key_id, started, started + HOUR, host)


def test_keys_are_created_found_and_revoked(store):
    info, secret = store.create_key("alice")
    assert secret.startswith("tci_") and info.prefix == secret[:10]
    assert store.find_active_key(secret) == info
    assert store.find_active_key(secret + "x") is None
    with pytest.raises(BadRequest, match="already exists"):
        store.create_key("alice")
    store.create_key("bob")
    assert [k.name for k in store.list_keys()] == ["alice", "bob"]
    revoked = store.revoke_key("alice")
    assert revoked.revoked_at is not None and revoked.revoked_at.tzinfo == UTC
    assert store.find_active_key(secret) is None
    with pytest.raises(NotFound):
        store.revoke_key("carol")


def test_timestamps_come_back_as_the_same_instant_in_utc(store):
    key, _ = store.create_key("k")
    plus_five = timezone(timedelta(hours=5, minutes=30))
    started = datetime(2026, 3, 15, 4, 59, 59, 123456, tzinfo=plus_five)  # 23:29:59 UTC
    store.add_session("s", key.id, started, started + HOUR)
    row = store.session_row("s")
    assert row["started_at"] == started
    assert row["started_at"].utcoffset() == timedelta(0)
    assert row["started_at"].hour == 23 and row["started_at"].microsecond == 123456


def test_executions_update_their_session(store):
    key, _ = store.create_key("k")
    add(store, "s", key.id, T)
    assert store.record_executions([ExecutionRow("s", T + timedelta(seconds=i), 0.1, "ok", i + 1)
                                    for i in range(3)]) == 0
    row = store.session_row("s")
    assert row["execute_count"] == 3 and row["last_execute_at"] == T + timedelta(seconds=2)

    # A session whose record was lost (the database was down when it started) does not take
    # the other sessions' executions down with its own.
    assert store.record_executions([ExecutionRow("s", T + HOUR, 0.1, "ok", 4),
                                    ExecutionRow("lost", T + HOUR, 0.1, "ok", 1)]) == 1
    assert store.session_row("s")["execute_count"] == 4
    assert store.usage(T - DAY, T + DAY)[key.id].executions == 4


def test_end_live_ends_only_the_named_hosts_sessions(store):
    key, _ = store.create_key("k")
    add(store, "local", key.id, T)
    add(store, "on-a", key.id, T, host="node-a")
    add(store, "on-a-2", key.id, T, host="node-a")
    add(store, "on-b", key.id, T, host="node-b")
    assert store.live_hosts() == {None, "node-a", "node-b"}

    assert store.end_live("host lost", "node-a") == 2
    assert store.find_ended("on-a").reason == "host lost"
    assert store.find_ended("on-b") is None and store.find_ended("local") is None
    assert store.live_hosts() == {None, "node-b"}

    # A single-machine restart ends its own sessions (no host), never a Ray host's.
    assert store.end_all_live("server restarted") == 1
    assert store.find_ended("local").reason == "server restarted"
    assert store.find_ended("on-b") is None
    assert store.end_live("host lost", "node-a") == 0  # ended sessions keep their reason
    assert store.find_ended("on-a").reason == "host lost"
    assert store.live_hosts() == {"node-b"}


def test_usage_counts_each_key_in_the_window(store):
    alice, _ = store.create_key("alice")
    bob, _ = store.create_key("bob")
    idle, _ = store.create_key("idle")
    add(store, "a1", alice.id, T)
    add(store, "a2", alice.id, T + HOUR)
    add(store, "b1", bob.id, T - 2 * DAY)  # before the window
    store.end_session("a1", "done", cpu_seconds=1.5)
    store.end_session("a2", "done", cpu_seconds=0.25)
    store.record_executions([ExecutionRow("a1", T, 0.1, "ok", 1),
                             ExecutionRow("b1", T, 0.1, "ok", 1)])  # in the window
    usage = store.usage(T - DAY, T + DAY)
    assert (usage[alice.id].sessions, usage[alice.id].executions,
            usage[alice.id].cpu_seconds) == (2, 1, 1.75)
    assert (usage[bob.id].sessions, usage[bob.id].executions) == (0, 1)
    assert (usage[idle.id].sessions, usage[idle.id].executions) == (0, 0)
    assert list(store.usage(T - DAY, T + DAY, key_id=bob.id)) == [bob.id]
    # [since, until): a session starting exactly at `until` is not in the window.
    assert store.usage(T - DAY, T, alice.id)[alice.id].sessions == 0


def test_usage_buckets_follow_utc_boundaries(store):
    key, _ = store.create_key("k")
    before_midnight = T.replace(minute=59, second=59, microsecond=999999)  # 23:59:59.999999
    midnight = T.replace(hour=0, minute=0) + DAY
    add(store, "s1", key.id, T)
    add(store, "s2", key.id, before_midnight)
    add(store, "s3", key.id, midnight)
    store.end_session("s1", "done", cpu_seconds=1.0)
    store.end_session("s3", "done", cpu_seconds=2.0)
    store.record_executions([ExecutionRow("s1", before_midnight, 0.1, "ok", 1),
                             ExecutionRow("s1", midnight, 0.1, "ok", 2),
                             ExecutionRow("s3", midnight + 3 * HOUR, 0.1, "ok", 1)])

    hours = store.usage_by_bucket(T - DAY, T + 2 * DAY, key.id, "hour")
    assert sorted(hours) == [T.replace(minute=0), midnight, midnight + 3 * HOUR]
    assert all(start.tzinfo == UTC for start in hours)
    assert (hours[T.replace(minute=0)].sessions, hours[T.replace(minute=0)].executions,
            hours[T.replace(minute=0)].cpu_seconds) == (2, 1, 1.0)
    assert (hours[midnight].sessions, hours[midnight].executions,
            hours[midnight].cpu_seconds) == (1, 1, 2.0)
    assert (hours[midnight + 3 * HOUR].sessions, hours[midnight + 3 * HOUR].executions) == (0, 1)

    days = store.usage_by_bucket(T - DAY, T + 2 * DAY, key.id, "day")
    assert sorted(days) == [T.replace(hour=0, minute=0), midnight]
    assert (days[midnight].sessions, days[midnight].executions) == (1, 2)
    # The series' sums are the window's totals.
    totals = store.usage(T - DAY, T + 2 * DAY, key.id)[key.id]
    assert sum(d.sessions for d in days.values()) == totals.sessions == 3
    assert sum(d.executions for d in days.values()) == totals.executions == 3


def test_runs_add_up_per_key_hour_and_verdict_from_many_servers(store):
    alice, _ = store.create_key("alice")
    bob, _ = store.create_key("bob")
    late = T.replace(minute=0)  # 23:00, the last hour of the day
    midnight = late + HOUR
    # Four servers (an engine each, as four gateways on one database) add to the same rows
    # at once: no increment may be lost.
    others = [Store(store.engine.url.render_as_string(hide_password=False)) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda other: [other.record_runs([
            RunUsageRow(alice.id, late, "OK", 2, 0.5),
            RunUsageRow(alice.id, late, "TIME_LIMIT", 1, 1.25)]) for _ in range(5)], others))
    for other in others:
        other.engine.dispose()
    store.record_runs([RunUsageRow(alice.id, midnight, "WRONG_ANSWER", 3, 0.75),
                       RunUsageRow(bob.id, late, "OK", 7, 0.25)])

    totals = store.usage(T - DAY, T + DAY)
    assert (totals[alice.id].runs.count, totals[alice.id].runs.verdicts) == (
        63, {"OK": 40, "TIME_LIMIT": 20, "WRONG_ANSWER": 3})
    assert totals[alice.id].runs.wall_seconds == pytest.approx(20 * 0.5 + 20 * 1.25 + 0.75)
    assert (totals[bob.id].runs.count, totals[bob.id].runs.verdicts) == (7, {"OK": 7})
    # Kept per hour: a window counts the hours it touches whole, and none it does not.
    assert store.usage(T, midnight, alice.id)[alice.id].runs.count == 60
    assert store.usage(midnight, midnight + DAY, alice.id)[alice.id].runs.count == 3
    assert store.usage(T - DAY, late, alice.id)[alice.id].runs.count == 0

    days = store.usage_by_bucket(T - DAY, T + DAY, alice.id, "day")
    assert sorted(days) == [late.replace(hour=0), midnight]
    assert (days[late.replace(hour=0)].runs.count, days[midnight].runs.count) == (60, 3)
    hours = store.usage_by_bucket(T - DAY, T + DAY, alice.id, "hour")
    assert hours[late].runs.verdicts == {"OK": 40, "TIME_LIMIT": 20}
    assert hours[midnight].runs.verdicts == {"WRONG_ANSWER": 3}


def test_the_per_key_quota_holds_for_servers_reserving_at_once(store):
    """TCI_MAX_SESSIONS_PER_KEY across gateways: eight servers (one engine each, as eight
    gateways on one database) take places at the same instant; the key's live session counts,
    its ended and expired ones and other keys' do not; exactly the rest of the quota is given."""
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    now = datetime.now(UTC)
    store.add_session("live", key.id, now, now + HOUR)
    store.add_session("ended", key.id, now, now + HOUR)
    store.end_session("ended", "ended by the client")
    store.add_session("expired", key.id, now - 2 * HOUR, now - HOUR)  # not yet reaped
    store.add_session("others", other.id, now, now + HOUR)
    url = store.engine.url.render_as_string(hide_password=False)
    servers = [Store(url) for _ in range(8)]
    start = threading.Barrier(len(servers))

    def take(server: Store) -> str | None:
        start.wait()
        return server.reserve_session(key.id, 3, hold_seconds=60)

    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            taken = list(pool.map(take, servers))
    finally:
        for server in servers:
            server.engine.dispose()
    assert sum(place is not None for place in taken) == 2, taken
    assert store.reserve_session(key.id, 3, hold_seconds=60) is None
    assert store.reserve_session(other.id, 3, hold_seconds=60) is not None


def test_a_reservation_becomes_its_session_or_is_given_back(store):
    key, _ = store.create_key("k")
    now = datetime.now(UTC)
    first = store.reserve_session(key.id, 2, hold_seconds=60)
    second = store.reserve_session(key.id, 2, hold_seconds=60)
    assert first and second and first != second
    assert store.reserve_session(key.id, 2, hold_seconds=60) is None  # starts count
    store.add_session("s", key.id, now, now + HOUR, reservation=first)  # takes its place
    assert store.reserve_session(key.id, 2, hold_seconds=60) is None
    store.release_reservation(second)  # a start that failed
    assert store.reserve_session(key.id, 2, hold_seconds=60) is not None
    assert store.reserve_session(key.id, 2, hold_seconds=60) is None
    store.end_session("s", "ended by the client")
    assert store.reserve_session(key.id, 2, hold_seconds=60) is not None

    # A gateway that died mid-start: its place stops counting once its hold has run out.
    lone, _ = store.create_key("lone")
    assert store.reserve_session(lone.id, 1, hold_seconds=0) is not None
    assert store.reserve_session(lone.id, 1, hold_seconds=60) is not None
