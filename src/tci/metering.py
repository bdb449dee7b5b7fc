"""Metering: what each key used (sessions, executions, CPU seconds, cost) and the server's
Prometheus metrics. No HTTP here; the routes in server/routes/usage.py and metrics.py read it.

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
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tci.errors import Unprocessable
from tci.hosts.base import EndKind, EndReason
from tci.runs.verdicts import Verdict

DEFAULT_WINDOW = timedelta(days=30)
OUTCOMES = ("ok", "error", "timeout", "died")
KILL_REASONS = ("expired", "client", "shutdown", "worker_died", "memory_limit", "timeout",
                "host_lost")
# The metric's label for each way a session ends (the label values predate EndKind).
_KILL_LABEL = {
    EndKind.EXPIRED: "expired", EndKind.CLIENT: "client", EndKind.SHUTDOWN: "shutdown",
    EndKind.RESTARTED: "shutdown", EndKind.WORKER_DIED: "worker_died",
    EndKind.PROTOCOL: "worker_died", EndKind.CLIENT_GONE: "worker_died",
    EndKind.OUT_OF_MEMORY: "memory_limit", EndKind.TIMEOUT: "timeout",
    EndKind.HOST_LOST: "host_lost",
}
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds; a warm call takes about a millisecond, a busy one up to TCI_EXECUTE_TIMEOUT.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0)


Bucket = Literal["hour", "day"]
BUCKET_LENGTH: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass
class RunCounts:
    """One-shot runs: how many, by verdict, and their summed wall seconds."""

    count: int = 0
    wall_seconds: float = 0.0
    verdicts: dict[str, int] = field(default_factory=dict)

    def add(self, verdict: str, count: int, wall_seconds: float) -> None:
        self.count += count
        self.wall_seconds += wall_seconds
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + count

    def __iadd__(self, other: RunCounts) -> RunCounts:
        for verdict, count in other.verdicts.items():
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + count
        self.count += other.count
        self.wall_seconds += other.wall_seconds
        return self

    def as_dict(self) -> dict[str, Any]:
        """Every verdict named, at 0 when none had it, so the shape never changes."""
        verdicts = {verdict.value: 0 for verdict in Verdict} | self.verdicts
        return {"count": self.count, "verdicts": verdicts,
                "wall_seconds": round(self.wall_seconds, 6)}


@dataclass
class BucketUsage:
    """What started in one bucket, as counted (the store's rows plus live sessions' CPU), and
    the runs that finished in it."""

    sessions: int = 0
    executions: int = 0
    cpu_seconds: float = 0.0
    runs: RunCounts = field(default_factory=RunCounts)


@dataclass(frozen=True)
class UsageBucket:
    """One hour or day of a usage series: what started in [start, start + length)."""

    start: datetime
    sessions: int
    executions: int
    cpu_seconds: float
    cost_usd: float
    runs: RunCounts = field(default_factory=RunCounts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "sessions": self.sessions,
            "executions": self.executions, "cpu_seconds": round(self.cpu_seconds, 6),
            "runs": self.runs.as_dict(), "cost_usd": round(self.cost_usd, 6),
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

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "sessions": self.sessions, "executions": self.executions,
            "cpu_seconds": round(self.cpu_seconds, 6), "runs": self.runs.as_dict(),
            "cost_usd": round(self.cost_usd, 6),
        }
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
        until = _aware(until) if until is not None else (now or datetime.now(UTC))
        since = _aware(since) if since is not None else until - DEFAULT_WINDOW
    except OverflowError:
        raise Unprocessable("since/until: out of the supported date range") from None
    return since, until


def bucket_floor(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the UTC hour or day holding `moment` (aware UTC)."""
    moment = _aware(moment)
    if bucket == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


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


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Metrics:
    """One registry per app (never the process-global one), so several apps in one process
    do not collide. The hot path costs a counter increment and a histogram observation; the
    gauges are read only when /metrics is scraped."""

    def __init__(self, manager: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("tci_sessions_live", "Sessions currently live", registry=r).set_function(
            lambda: len(manager.sessions))
        Gauge("tci_pool_ready", "Warm sandboxes ready to be handed out",
              registry=r).set_function(lambda: manager.host.stats().pool_ready)
        Gauge("tci_pool_size", "Target size of the warm pool (TCI_POOL_SIZE)",
              registry=r).set_function(lambda: manager.host.stats().pool_size)
        self.sessions_created = Counter("tci_sessions_created", "Sessions created", registry=r)
        self.executions = Counter("tci_executions", "Executions by outcome", ["outcome"],
                                  registry=r)
        self.latency = Histogram("tci_execute_duration_seconds",
                                 "Time to run one execute call's code, in seconds",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.killed = Counter("tci_sandboxes_killed", "Sandboxes ended, by reason", ["reason"],
                              registry=r)
        # Every label value present from the start (at 0), so dashboards see the series.
        self._by_outcome = {o: self.executions.labels(o) for o in OUTCOMES}
        self._by_reason = {k: self.killed.labels(k) for k in KILL_REASONS}

    def session_created(self) -> None:
        self.sessions_created.inc()

    def executed(self, outcome: str, seconds: float) -> None:
        counter = self._by_outcome.get(outcome) or self.executions.labels(outcome)
        counter.inc()
        self.latency.observe(seconds)

    def session_ended(self, reason: EndReason) -> None:
        self._by_reason[_KILL_LABEL[reason.kind]].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
