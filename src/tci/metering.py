"""Metering: what each key used (sessions, executions, CPU seconds, runs, cost). No HTTP here;
the route in server/routes/usage.py reads it. The server's Prometheus metrics are
tci/metrics.py's; the buckets the store counts in are storage/buckets.py's.

Usage comes from the store (ended sessions carry their CPU seconds, as their host measured
them when they ended: a local host reads the session's cgroup) plus the live sessions' CPU
asked of their hosts at the time of the question. CPU is counted from the moment a client
got the session: the warm pool's preloading is not billed.
A usage series counts each session (with its CPU and cost) in the UTC hour or day it started
and each execution in the one it started, so the totals are exactly the series' sums.
One-shot runs are kept per key and UTC hour (the hour each finished in; storage/models.py
RunUsageRecord): a window counts the runs of every hour it touches, whole, so hour and day
buckets are exact and a window's unaligned edges count their hours' runs whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tci.errors import Unprocessable
from tci.runs.verdicts import Verdict

# Re-exported: the usage API's vocabulary (callers name `metering.Bucket`), defined beside
# the SQL that groups by it.
from tci.storage.buckets import BUCKET_LENGTH, BucketUsage, RunCounts, as_utc
from tci.storage.buckets import Bucket as Bucket
from tci.storage.buckets import bucket_floor as bucket_floor

DEFAULT_WINDOW = timedelta(days=30)


def runs_dict(runs: RunCounts) -> dict[str, Any]:
    """Runs as the wire has them: every verdict named, at 0 when none had it, so the shape
    never changes."""
    verdicts = {verdict.value: 0 for verdict in Verdict} | runs.verdicts
    return {"count": runs.count, "verdicts": verdicts,
            "wall_seconds": round(runs.wall_seconds, 6)}


@dataclass(frozen=True)
class UsageBucket:
    """One hour or day of a usage series: what started in [start, start + length)."""

    start: datetime
    sessions: int
    executions: int
    cpu_seconds: float
    cost_usd: float
    runs: RunCounts = field(default_factory=RunCounts)
    # What the key's paused sessions and snapshots keep now (storage, not windowed).
    kept_state: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "sessions": self.sessions,
            "executions": self.executions, "cpu_seconds": round(self.cpu_seconds, 6),
            "runs": runs_dict(self.runs), "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class Usage:
    since: datetime
    until: datetime
    sessions: int
    executions: int
    cpu_seconds: float
    cost_usd: float
    series: list[UsageBucket] | None = None  # only when a bucket was asked for
    runs: RunCounts = field(default_factory=RunCounts)
    # What the key's paused sessions and snapshots keep now (storage, not windowed).
    kept_state: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "sessions": self.sessions, "executions": self.executions,
            "cpu_seconds": round(self.cpu_seconds, 6), "runs": runs_dict(self.runs),
            "cost_usd": round(self.cost_usd, 6),
        }
        if self.kept_state is not None:
            data["kept_state"] = self.kept_state
        if self.series is not None:
            data["series"] = [bucket.as_dict() for bucket in self.series]
        return data


def cost(sessions: int, price_per_session: float, runs: int = 0,
         price_per_run: float = 0.0) -> float:
    return round(sessions * price_per_session + runs * price_per_run, 6)


def window(since: datetime | None, until: datetime | None,
           now: datetime | None = None) -> tuple[datetime, datetime]:
    """[since, until), both aware UTC; by default the last 30 days. Naive times are UTC.
    A date so close to year 1 that the window or the conversion to UTC leaves the calendar
    is refused (Unprocessable) rather than failing deep inside."""
    try:
        until = as_utc(until) if until is not None else (now or datetime.now(UTC))
        since = as_utc(since) if since is not None else until - DEFAULT_WINDOW
    except OverflowError:
        raise Unprocessable("since/until: out of the supported date range") from None
    return since, until


def bucket_starts(since: datetime, until: datetime, bucket: Bucket,
                  max_buckets: int) -> list[datetime]:
    """Starts of the consecutive UTC-aligned buckets covering [since, until), oldest first
    (an unaligned since or until makes the first or last bucket partial; an empty window has
    none). Counted before any is built, so a huge window is refused (Unprocessable) cheaply;
    the last start is before `until`, so no date past the calendar's end is computed."""
    if since >= until:
        return []
    first, length = bucket_floor(since, bucket), BUCKET_LENGTH[bucket]
    count = -((first - until) // length)  # ceil((until - first) / length)
    if count > max_buckets:
        raise Unprocessable(
            f"bucket: [since, until) would make {count} {bucket} buckets, more than "
            f"{max_buckets} (TCI_USAGE_MAX_BUCKETS); narrow the window or use a larger bucket"
        )
    return [first + i * length for i in range(count)]


def usage_series(since: datetime, until: datetime, starts: list[datetime],
                 counts: Mapping[datetime, BucketUsage], price_per_session: float,
                 price_per_run: float = 0.0) -> Usage:
    """The series over `starts`, zero-filled from the per-bucket `counts` (keyed by bucket
    start), and totals that are its sums, so the two can never disagree."""
    series = []
    runs = RunCounts()
    for start in starts:
        used = counts.get(start) or BucketUsage()
        series.append(UsageBucket(start, used.sessions, used.executions, used.cpu_seconds,
                                  cost(used.sessions, price_per_session, used.runs.count,
                                       price_per_run), used.runs))
        runs += used.runs
    sessions = sum(b.sessions for b in series)
    return Usage(since, until, sessions, sum(b.executions for b in series),
                 sum(b.cpu_seconds for b in series),
                 cost(sessions, price_per_session, runs.count, price_per_run), series, runs)
