"""Runs under load, as verl sends them: 64 callers each posting one run at a time, back to
back, to SandboxFusion's run_code (keyless) and to /v1/tci/batch, programs whose verdicts are
known. Nothing is lost: every answer is a 200 with the verdict its program deserves (no
SANDBOX_ERROR), the server's memory stays flat; with a queue too small for the callers, the
overflow is refused the way each client expects (SandboxFusion's 504, the one status verl
retries; batch's 429 with Retry-After) and nothing else goes wrong. bench/rl_load.py is the
same load at full size (2,000 runs), with its figures."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.rl_load import CALLERS, WARMUP, jobs, load, rss_bytes

from tests.conftest import Server, make_server

# Runs in the main test: a few hundred, a few minutes at most on 2 busy cores.
RUNS = 320
# The server's RSS after the runs may exceed its RSS after the warm-up by this much (the
# allocator's slack and caches; a leak of even 100 KiB a run would pass it by far).
RSS_GROWTH_LIMIT = 50 * 2**20


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Keyless SandboxFusion callers count as the key `test` (make_server's)."""
    server = make_server(tmp_path_factory.mktemp("load"), sandboxfusion_key="test")
    yield server
    server.stop()


def metric(server: Server, line_start: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_64_callers_back_to_back_lose_nothing(loaded: Server) -> None:
    assert loaded.process is not None
    warm = load(loaded.url, loaded.key, jobs(WARMUP, start=RUNS), CALLERS)
    assert [a.problem for a in warm if a.problem] == []
    rss_warm = rss_bytes(loaded.process.pid)

    depths: list[tuple[float, float]] = []  # (queued, running) as /metrics said, during load
    loading = threading.Event()
    loading.set()

    def watch() -> None:
        while loading.is_set():
            depths.append((metric(loaded, "tci_runs_queued "),
                           metric(loaded, "tci_runs_running ")))
            time.sleep(0.1)  # a sample every 0.1 s, not a scrape loop competing for the CPU

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = load(loaded.url, loaded.key, jobs(RUNS), CALLERS)
    finally:
        loading.clear()
        watcher.join()

    assert len(answers) == RUNS
    assert Counter(a.status for a in answers) == {200: RUNS}
    assert [f"#{a.job.index} {a.job.endpoint} {a.job.kind}: {a.problem}"
            for a in answers if a.problem] == []
    verdicts = Counter(a.verdict for a in answers)
    assert "SANDBOX_ERROR" not in verdicts
    assert {"OK", "WRONG_ANSWER", "RUNTIME_ERROR", "TIME_LIMIT"} <= set(verdicts)
    assert metric(loaded, 'tci_runs_total{verdict="SANDBOX_ERROR"}') == 0
    assert metric(loaded, "tci_runs_total") == RUNS + WARMUP
    # The gauges followed the load: 64 callers against TCI_RUN_CONCURRENCY (2 per CPU) slots.
    slots = 2 * (os.cpu_count() or 1)
    assert max(queued for queued, _ in depths) > 0
    assert 0 < max(running for _, running in depths) <= slots
    assert metric(loaded, "tci_runs_queued ") == metric(loaded, "tci_runs_running ") == 0
    rss_after = rss_bytes(loaded.process.pid)
    assert rss_after - rss_warm < RSS_GROWTH_LIMIT, (rss_warm, rss_after)
    assert "Traceback" not in loaded.log()


def test_beyond_a_tiny_queue_callers_get_504_or_429_and_nothing_else(tmp_path: Path) -> None:
    server = make_server(tmp_path, sandboxfusion_key="test", run_concurrency="1",
                         run_queue_size="2")
    try:
        answers = load(server.url, server.key, jobs(2 * CALLERS), CALLERS, overflow=True)
        assert [f"#{a.job.index} {a.job.endpoint}: {a.problem}"
                for a in answers if a.problem] == []
        statuses = Counter((a.job.endpoint, a.status) for a in answers)
        assert set(statuses) <= {("sandboxfusion", 200), ("sandboxfusion", 504),
                                 ("batch", 200), ("batch", 429)}
        # 64 callers at once against 1 slot and 2 places: most are refused, some served.
        assert statuses[("sandboxfusion", 504)] + statuses[("batch", 429)] > 0
        assert statuses[("sandboxfusion", 200)] + statuses[("batch", 200)] > 0
        assert metric(server, 'tci_runs_total{verdict="SANDBOX_ERROR"}') == 0
        assert "Traceback" not in server.log()  # e.g. a refusal raised inside a 200's body
    finally:
        server.stop()
