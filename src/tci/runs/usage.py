"""What runs cost, per key and for /metrics: each finished run counted with its verdict and
wall time; the queue's depth read when scraped."""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tci.runs.manager import RunManager
from tci.runs.models import RunResult
from tci.runs.verdicts import Verdict
from tci.storage.store import KeyInfo

_WALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 300.0)


@dataclass
class KeyRuns:
    runs: int = 0
    wall_seconds: float = 0.0
    verdicts: Tally = field(default_factory=Tally)


class RunUsage:
    def __init__(self, runs: RunManager, registry: CollectorRegistry) -> None:
        self.by_key: dict[int, KeyRuns] = {}
        self.total = Counter("tci_runs", "One-shot runs finished, by verdict", ["verdict"],
                             registry=registry)
        for verdict in Verdict:
            self.total.labels(verdict.value)
        self.wall = Histogram("tci_run_wall_seconds", "Wall time of one-shot runs (the "
                              "program's, from confined to its end)", buckets=_WALL_BUCKETS,
                              registry=registry)
        queued = Gauge("tci_runs_queued", "Runs waiting for a slot (TCI_RUN_QUEUE_SIZE)",
                       registry=registry)
        queued.set_function(lambda: runs.waiting)
        running = Gauge("tci_runs_running", "Runs executing now (TCI_RUN_CONCURRENCY)",
                        registry=registry)
        running.set_function(lambda: runs.running)

    def record(self, key: KeyInfo, result: RunResult) -> None:
        self.total.labels(result.verdict.value).inc()
        self.wall.observe(result.wall_s)
        mine = self.by_key.setdefault(key.id, KeyRuns())
        mine.runs += 1
        mine.wall_seconds += result.wall_s
        mine.verdicts[result.verdict.value] += 1
