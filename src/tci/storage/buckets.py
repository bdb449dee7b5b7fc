"""Usage as the store counts it: UTC hour and day buckets, and the per-bucket counts its
queries return. Here, below the store, because the SQL groups by these buckets; the usage
arithmetic built on them (windows, series, cost, the wire format) is tci/metering.py's.

Nothing here knows of HTTP, verdict names or settings: verdicts are the store's strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

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


@dataclass
class BucketUsage:
    """What started in one bucket, as counted (the store's rows plus live sessions' CPU), and
    the runs that finished in it."""

    sessions: int = 0
    executions: int = 0
    cpu_seconds: float = 0.0
    runs: RunCounts = field(default_factory=RunCounts)


def as_utc(moment: datetime) -> datetime:
    """`moment` as aware UTC; a naive time is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bucket_floor(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the UTC hour or day holding `moment` (aware UTC)."""
    moment = as_utc(moment)
    if bucket == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)
