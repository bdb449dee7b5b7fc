"""The server's Prometheus metrics: counters and a histogram fed on the hot path, gauges read
from the session manager only when /metrics is scraped (server/routes/metrics.py). What each
key used, for billing, is tci/metering.py's.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tci.hosts.base import EndReason, HostStats
from tci.kernel.ends import kill_labels
from tci.storage.store import KeptState

OUTCOMES = ("ok", "error", "timeout", "died")
# Each way a session ends has its label (values older than EndKind): kernel/ends.py.
KILL_REASONS = kill_labels()
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds; a warm call takes about a millisecond, a busy one up to TCI_EXECUTE_TIMEOUT.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0)


class _PoolHost(Protocol):
    def stats(self) -> HostStats: ...


class Observed(Protocol):
    """What the gauges read of the session manager: its live sessions and its host's pool."""

    @property
    def sessions(self) -> Sized: ...

    @property
    def host(self) -> _PoolHost: ...


class Metrics:
    """One registry per app (never the process-global one), so several apps in one process
    do not collide. The hot path costs a counter increment and a histogram observation; the
    gauges are read only when /metrics is scraped."""

    def __init__(self, manager: Observed) -> None:
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
        # Pauses, resumes and snapshots as they happen; what is kept, read from the store
        # at each scrape (kept_state), as it outlives this process.
        self.pauses = Counter("tci_sessions_paused", "Sessions paused (by a client, idleness "
                              "or a graceful stop)", registry=r)
        self.resumes = Counter("tci_sessions_resumed", "Paused sessions resumed", registry=r)
        self.snapshots_taken = Counter("tci_snapshots_taken", "Snapshots taken", registry=r)
        self._kept = {
            name: Gauge(name, text, registry=r) for name, text in (
                ("tci_paused_sessions", "Paused sessions kept, every key's"),
                ("tci_paused_state_bytes", "Bytes the paused sessions' states take"),
                ("tci_snapshots", "Snapshots kept, every key's"),
                ("tci_snapshot_bytes", "Bytes the snapshots take"))}
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
        self._by_reason[reason.label].inc()

    def kept_state(self, kept: KeptState) -> None:
        for name, value in (("tci_paused_sessions", kept.paused_sessions),
                            ("tci_paused_state_bytes", kept.paused_bytes),
                            ("tci_snapshots", kept.snapshots),
                            ("tci_snapshot_bytes", kept.snapshot_bytes)):
            self._kept[name].set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
