"""Usage series arithmetic: buckets are UTC-aligned, cover [since, until) exactly, are counted
before they are built (so a huge window is refused cheaply), and never step past the
calendar; the totals of a series are its sums."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tci.errors import Unprocessable
from tci.metering import bucket_starts, runs_dict, usage_series, window
from tci.storage.buckets import BucketUsage, RunCounts, bucket_floor

T = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def test_floor_is_the_utc_boundary():
    assert bucket_floor(T, "hour") == datetime(2026, 3, 14, 15, tzinfo=UTC)
    assert bucket_floor(T, "day") == datetime(2026, 3, 14, tzinfo=UTC)
    plus_two = T.astimezone(timezone(timedelta(hours=2)))  # 17:09 local is still 15:00 UTC
    assert bucket_floor(plus_two, "hour") == datetime(2026, 3, 14, 15, tzinfo=UTC)
    assert bucket_floor(plus_two, "hour").utcoffset() == timedelta(0)


def test_aligned_window_has_exactly_its_buckets():
    start = bucket_floor(T, "hour")
    starts = bucket_starts(start - 23 * HOUR, start + HOUR, "hour", 1000)
    assert len(starts) == 24 and starts[0] == start - 23 * HOUR and starts[-1] == start


def test_unaligned_window_gets_partial_first_and_last_buckets():
    starts = bucket_starts(T - 24 * HOUR, T, "hour", 1000)
    assert len(starts) == 25
    assert starts[0] == bucket_floor(T - 24 * HOUR, "hour") and starts[-1] == bucket_floor(
        T, "hour")
    assert bucket_starts(T, T + timedelta(microseconds=1), "day", 1000) == [
        bucket_floor(T, "day")]


def test_empty_window_has_no_buckets():
    assert bucket_starts(T, T, "hour", 1000) == []


def test_too_many_buckets_are_refused_before_building():
    start = bucket_floor(T, "hour")
    assert len(bucket_starts(start, start + 1000 * HOUR, "hour", 1000)) == 1000
    with pytest.raises(Unprocessable, match="1001 hour buckets"):
        bucket_starts(start, start + 1000 * HOUR + timedelta(seconds=1), "hour", 1000)
    with pytest.raises(Unprocessable, match="TCI_USAGE_MAX_BUCKETS"):
        bucket_starts(datetime(1, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC), "day",
                      1000)


def test_last_bucket_of_the_calendar():
    end = datetime.max.replace(tzinfo=UTC)
    assert bucket_starts(end - 2 * HOUR, end, "hour", 1000)[-1] == datetime(
        9999, 12, 31, 23, tzinfo=UTC)


def test_dates_off_the_calendar_are_refused():
    with pytest.raises(Unprocessable):
        window(None, datetime(1, 1, 2, tzinfo=UTC))
    with pytest.raises(Unprocessable):
        window(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), None)


def test_series_is_zero_filled_and_sums_to_the_totals():
    starts = bucket_starts(T - 2 * DAY, T, "day", 1000)
    counts = {starts[0]: BucketUsage(2, 5, 1.25), starts[2]: BucketUsage(0, 3, 0.5)}
    usage = usage_series(T - 2 * DAY, T, starts, counts, 0.03)
    assert [(b.sessions, b.executions, b.cpu_seconds, b.cost_usd) for b in usage.series] == [
        (2, 5, 1.25, 0.06), (0, 0, 0.0, 0.0), (0, 3, 0.5, 0.0)]
    assert (usage.sessions, usage.executions, usage.cpu_seconds, usage.cost_usd) == (
        2, 8, 1.75, 0.06)
    data = usage.as_dict()
    assert data["series"][1] == {"start": starts[1].isoformat(), "sessions": 0,
                                 "executions": 0, "cpu_seconds": 0.0,
                                 "runs": runs_dict(RunCounts()), "cost_usd": 0.0}
    assert data["runs"]["verdicts"]["SANDBOX_ERROR"] == 0  # every verdict named


def test_runs_are_priced_per_bucket_and_in_the_totals():
    starts = bucket_starts(T - 2 * HOUR, T, "hour", 1000)
    first, second = BucketUsage(1), BucketUsage()
    first.runs.add("OK", 3, 1.5)
    second.runs.add("OK", 1, 0.25)
    second.runs.add("TIME_LIMIT", 2, 2.0)
    usage = usage_series(T - 2 * HOUR, T, starts, {starts[0]: first, starts[1]: second},
                         0.03, 0.001)
    assert [b.cost_usd for b in usage.series] == [0.033, 0.003, 0.0]  # T is unaligned
    assert usage.cost_usd == 0.036
    assert (usage.runs.count, usage.runs.verdicts, usage.runs.wall_seconds) == (
        6, {"OK": 4, "TIME_LIMIT": 2}, 3.75)
