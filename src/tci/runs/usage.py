"""What runs cost, per key and for /metrics: each finished run counted with its verdict and
wall time, in Prometheus metrics at once and in the store's per-key usage (run_usage rows per
key, UTC hour and verdict) in batches; the queue's depth read when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tci.runs.manager import RunManager
from tci.runs.models import RunResult
from tci.runs.verdicts import Verdict
from tci.sessions.execution_log import RunLog
from tci.storage.store import KeyInfo

_WALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0, 60.0, 300.0)


class RunUsage:
    def __init__(self, runs: RunManager, registry: CollectorRegistry, log: RunLog) -> None:
        self.log = log
        self.total = Counter("tci_runs", "One-shot runs finished, by verdict", ["verdict"],
                             registry=registry)
        for verdict in Verdict:
            self.total.labels(verdict.value)
        self.wall = Histogram("tci_run_wall_seconds", "Wall time of one-shot runs (the "
                              "program's, from confined to its end)", buckets=_WALL_BUCKETS,
                              registry=registry)
        self.phases = Histogram("tci_run_phase_seconds", "Where a one-shot run's time goes: "
                                "queue (waiting for a slot), start (to the program running "
                                "confined), program, finish (to the report read and the "
                                "sandbox gone)", ["phase"], buckets=_WALL_BUCKETS,
                                registry=registry)
        # Deterministic evidence of compile-once: runs that ran a compiler, and compiled runs
        # that used a build kept from an earlier run of the same program.
        self.compiles = Counter("tci_run_compiles", "One-shot runs that ran a compiler, by "
                                "language", ["language"], registry=registry)
        self.reused = Counter("tci_run_builds_reused", "Compiled runs that used a build kept "
                              "from an earlier run of the same program (TCI_RUN_COMPILE_"
                              "CACHE_BYTES)", ["language"], registry=registry)
        queued = Gauge("tci_runs_queued", "Runs waiting for a slot (TCI_RUN_QUEUE_SIZE)",
                       registry=registry)
        queued.set_function(lambda: runs.waiting)
        running = Gauge("tci_runs_running", "Runs executing now (TCI_RUN_CONCURRENCY)",
                        registry=registry)
        running.set_function(lambda: runs.running)

    def record(self, key: KeyInfo, result: RunResult) -> None:
        self.total.labels(result.verdict.value).inc()
        self.wall.observe(result.wall_s)
        for phase, seconds in result.phases.items():
            self.phases.labels(phase).observe(seconds)
        if result.compiled:
            self.compiles.labels(result.language).inc()
        elif result.compile is not None:
            self.reused.labels(result.language).inc()
        self.log.add(key.id, result.verdict.value, result.wall_s)
