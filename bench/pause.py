"""Pause, resume and snapshots (`make bench`, part `pause`; alone: `python -m bench.pause`):
pause and resume p50/p99 of a session holding about 10 MB and 100 MB of Python state (a numpy
array, a DataFrame and a dict of strings, a third each), and a session started from a
snapshot against a fresh one. A resume is timed until a small execute on the paused session
answers; a pause until its answer. Issue 21's targets: resume p50 <= 100 ms at 10 MB, pause
and resume <= 1 s each at 100 MB, a start from a snapshot within 2x a fresh session's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from .server import TciServer, on_own_server, to_stderr
from .stats import Series, fmt_seconds, markdown_table

MB = 1 << 20
SIZES_MB = (10, 100)
# A third each: an array of float64, a DataFrame of two float64 columns, a dict of strings.
STATE_CODE = """
import numpy as np, pandas as pd
_third = {size} // 3
arr = np.random.rand(_third // 8)
df = pd.DataFrame({{"a": np.random.rand(_third // 16), "b": np.random.rand(_third // 16)}})
words = {{f"k{{i}}": "v" * 90 + str(i) for i in range(_third // 100)}}
"""


@dataclass
class PauseResult:
    samples: int
    pause: dict[int, Series] = field(default_factory=dict)  # by size in MB
    resume: dict[int, Series] = field(default_factory=dict)
    state_bytes: dict[int, int] = field(default_factory=dict)
    fresh: Series = field(default_factory=lambda: Series("fresh session"))
    from_snapshot: Series = field(default_factory=lambda: Series("from snapshot"))
    # Each from a snapshot just taken: no restored copy of it is ready (TCI_SNAPSHOT_POOL_SIZE).
    first_start: Series = field(default_factory=lambda: Series("first start from a snapshot"))
    # The same calls back to back, nothing waited for: what a steady client meets while the
    # pools refill on the same two cores.
    pause_steady: dict[int, Series] = field(default_factory=dict)
    resume_steady: dict[int, Series] = field(default_factory=dict)
    fresh_steady: Series = field(default_factory=lambda: Series("fresh, back to back"))
    from_snapshot_steady: Series = field(
        default_factory=lambda: Series("from snapshot, back to back"))


def _timed(action: Callable[[], httpx.Response]) -> float:
    return _timed_answer(action)[0]


def _timed_answer(action: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = action()
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return elapsed, response


def _started(client: httpx.Client, body: dict[str, str], into: Series) -> None:
    """Time a call that starts a new session, then end that session (untimed): each
    reserves its whole volume on the disk, and a bench's worth would commit it all."""
    elapsed, response = _timed_answer(partial(client.post, "/v1/tci/execute", json=body))
    into.samples.append(elapsed)
    client.delete(f"/v1/tci/sessions/{response.json()['data']['session_id']}")


# Latency, not throughput: each timed call first waits (up to this long) until /health shows
# the warm pool full and, once a start from the snapshot made them, its restored copies
# ready, as on a host that is not saturated. Back-to-back starts on two cores would measure
# how fast the pools refill instead.
SETTLE_SECONDS = 10.0


def settled(client: httpx.Client, copies: bool = False) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        pool, kept = health["pool"], health["details"].get("snapshot_pool", {})
        if pool["ready"] >= pool["size"] and (
                not copies or kept.get("ready", 0) >= kept.get("size", 0)):
            return
        time.sleep(0.02)


def measure(server: TciServer, samples: int, progress: Callable[[str], None]) -> PauseResult:
    result = PauseResult(samples)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=300) as client:
        def execute(code: str, **extra: str) -> httpx.Response:
            return client.post("/v1/tci/execute",
                               json={"language": "python", "code": code, **extra})

        for size in SIZES_MB:
            progress(f"pause/resume at {size} MB ({samples} samples)")
            made = execute(STATE_CODE.format(size=size * MB))
            session_id = made.json()["data"]["session_id"]
            pauses, resumes = Series(f"pause {size} MB"), Series(f"resume {size} MB")
            pause_url = f"/v1/tci/sessions/{session_id}/pause"
            resume_body = {"language": "python", "code": "1", "session_id": session_id}
            for _ in range(samples):
                settled(client)
                pauses.samples.append(_timed(partial(client.post, pause_url)))
                settled(client)
                resumes.samples.append(_timed(partial(client.post, "/v1/tci/execute",
                                                      json=resume_body)))
            progress(f"pause/resume at {size} MB, back to back ({samples} samples)")
            steady_pauses = Series(f"pause {size} MB, back to back")
            steady_resumes = Series(f"resume {size} MB, back to back")
            for _ in range(samples):
                steady_pauses.samples.append(_timed(partial(client.post, pause_url)))
                steady_resumes.samples.append(_timed(partial(client.post, "/v1/tci/execute",
                                                             json=resume_body)))
            result.pause_steady[size], result.resume_steady[size] = steady_pauses, steady_resumes
            client.post(pause_url)
            listed = client.get("/v1/tci/sessions").json()["data"]["sessions"]
            result.state_bytes[size] = next(s["state_bytes"] for s in listed
                                            if s["id"] == session_id)
            result.pause[size], result.resume[size] = pauses, resumes
            if size == SIZES_MB[0]:
                execute("1", session_id=session_id)
                snapshot = client.post(f"/v1/tci/sessions/{session_id}/snapshots")
                from_snapshot = {"language": "python", "code": "1",
                                 "snapshot_id": snapshot.json()["data"]["id"]}
                fresh = {"language": "python", "code": "1"}
                progress(f"start from a {size} MB snapshot vs fresh ({samples} samples)")
                for _ in range(samples):
                    settled(client)
                    _started(client, fresh, result.fresh)
                    settled(client, copies=True)
                    _started(client, from_snapshot, result.from_snapshot)
                progress(f"starts from a {size} MB snapshot vs fresh, back to back")
                for _ in range(samples):
                    _started(client, fresh, result.fresh_steady)
                    _started(client, from_snapshot, result.from_snapshot_steady)
                progress(f"first starts from new {size} MB snapshots ({samples} samples)")
                for _ in range(samples):
                    new = client.post(f"/v1/tci/sessions/{session_id}/snapshots")
                    first = {**from_snapshot, "snapshot_id": new.json()["data"]["id"]}
                    settled(client)
                    _started(client, first, result.first_start)
                    client.delete(f"/v1/tci/snapshots/{first['snapshot_id']}")
            client.delete(f"/v1/tci/sessions/{session_id}")
    return result


def table_text(result: PauseResult) -> str:
    rows = []
    for size in SIZES_MB:
        pause, resume = result.pause[size], result.resume[size]
        target = "<= 100 ms p50" if size == 10 else "<= 1 s each"
        for how, (p, r) in (("pools ready", (pause, resume)),
                            ("back to back", (result.pause_steady[size],
                                              result.resume_steady[size]))):
            met = (r.p50 <= 0.1) if size == 10 else (p.p50 <= 1 and r.p50 <= 1)
            rows.append([f"{size} MB", how, f"{result.state_bytes[size] / MB:.0f} MB",
                         fmt_seconds(p.p50), fmt_seconds(p.p99),
                         fmt_seconds(r.p50), fmt_seconds(r.p99), target,
                         "yes" if met else "no"])
    ratio = result.from_snapshot.p50 / result.fresh.p50
    steady = result.from_snapshot_steady.p50 / result.fresh_steady.p50
    return "\n\n".join([
        "## Pause, resume and snapshots (issue 21)",
        f"A session holding a numpy array, a DataFrame and a dict of strings; {result.samples} "
        "pause + resume cycles per size, each way. Resume: until a small execute on the "
        "paused session answers. *Pools ready*: each timed call waits first (up to 10 s) for "
        "the warm pool (and a snapshot's restored copies) to be ready, latency on a host not "
        "saturated. *Back to back*: the calls follow one another with nothing waited for, "
        "what a steady client meets while the pools refill on the same two cores.",
        markdown_table(["state", "how", "kept", "pause p50", "pause p99", "resume p50",
                        "resume p99", "target", "met"], rows),
        "New session answering `1`: fresh (warm pool as configured) vs from a 10 MB "
        "snapshot (target: within 2x), a start from it after the first taking a copy restored "
        "ahead (TCI_SNAPSHOT_POOL_SIZE); and the first start from a snapshot just taken, "
        "which has none (a warm sandbox with the files copied in, then the restore).",
        markdown_table(["start", "pools ready p50", "p99", "back to back p50", "p99"], [
            ["fresh", fmt_seconds(result.fresh.p50), fmt_seconds(result.fresh.p99),
             fmt_seconds(result.fresh_steady.p50), fmt_seconds(result.fresh_steady.p99)],
            ["from snapshot", fmt_seconds(result.from_snapshot.p50),
             fmt_seconds(result.from_snapshot.p99),
             fmt_seconds(result.from_snapshot_steady.p50),
             fmt_seconds(result.from_snapshot_steady.p99)],
            ["ratio (target <= 2x)", f"{ratio:.2f}x ({'met' if ratio <= 2 else 'not met'})",
             "", f"{steady:.2f}x ({'met' if steady <= 2 else 'not met'})", ""],
            ["first start from a new snapshot", fmt_seconds(result.first_start.p50),
             fmt_seconds(result.first_start.p99), "", ""]]),
    ])


def measure_with_server(work: Path, progress: Callable[[str], None],
                        samples: int) -> PauseResult:
    # Room for 100 MB of state and its pickle on each session's volume.
    return on_own_server(work, "tci-server-pause",
                         lambda server: measure(server, samples, progress),
                         env={"TCI_WORKSPACE_MAX_BYTES": str(768 * MB)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pause", description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tci-bench-pause-") as work:
        result = measure_with_server(Path(work), to_stderr, args.samples)
    print(table_text(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TCI_POOL_SIZE", "2")
    sys.exit(main())
