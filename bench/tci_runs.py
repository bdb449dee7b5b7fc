"""The issue's figures for tci, each measured over HTTP on loopback against a running server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TypeVar

import httpx

from .http import AsyncConnection, Connection, HttpError
from .server import END_SESSION_CODE, BenchError, TciServer, check_data, machine_cpu
from .stats import Series

T = TypeVar("T")

# IPython's own cost of the cell, timed inside the session: what is left of the HTTP round
# trip is server, pipes and protocol.
_RUN_CELL_PROBE = """\
import time as _time
_shell, _times = get_ipython(), []
for _ in range({n}):
    _start = _time.perf_counter()
    _shell.run_cell("x += 1", store_history=True)
    _times.append(_time.perf_counter() - _start)
_times.sort()
print(_times[len(_times) // 2])
"""
_MEMORY_CODE = "import numpy, pandas, matplotlib, matplotlib.pyplot\nx = 1"


@dataclass
class WarmResult:
    raw: Series
    httpx: Series
    health: Series
    sessions: Series
    run_cell: float | None  # median seconds of IPython's run_cell inside the worker
    # CPU seconds per call of the raw series: the server process, and the sandboxes'
    # processes. Robust where wall time is not: other work on the cores inflates a p50
    # far more than the CPU each call costs.
    server_cpu: float | None = None
    sandbox_cpu: float | None = None


@dataclass
class ThroughputResult:
    sessions: int
    seconds: float
    completed: int
    failures: int
    latency: Series
    first_error: str | None = None
    server_cpu: float | None = None  # the server process's CPU in the window, in cores
    machine_cpu: float | None = None  # share of all cores busy in the window
    client_cpu: float | None = None  # the bench's own CPU (the 32 clients) in the window, in cores
    sandbox_cpu: float | None = None  # the sandboxes' processes (workers ...), in cores

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


@dataclass
class BurstResult:
    requests: int
    wall: float
    latency: Series
    errors: list[str] = field(default_factory=list)


@dataclass
class MemoryResult:
    sessions: int  # sessions added for the measurement
    marginal: float | None  # bytes of PSS each added session cost the whole process tree
    per_session: float | None  # PSS of all session processes / number of workers
    worker: float | None  # mean PSS of one worker process alone
    workers: int
    processes: int


def _timed(conn: Connection, request: bytes, samples: int, series: Series) -> None:
    for _ in range(samples):
        start = perf_counter()
        status, body = conn.roundtrip(request)
        series.samples.append(perf_counter() - start)
        if status != 200:
            raise BenchError(f"HTTP {status}: {body[:200]!r}")


def warm_round_trip(server: TciServer, samples: int, warmup: int) -> WarmResult:
    """`x += 1` in one live session, back to back on one keep-alive connection."""
    server.settle()
    with Connection(server.port) as conn:
        session_id = server.execute(conn, "x = 0")["session_id"]
        request = server.execute_request("x += 1", session_id)
        for _ in range(warmup):
            check_data(*conn.roundtrip(request))
        raw = Series("tci warm execute")
        server_before, sandboxes_before = server.cpu_seconds()
        for _ in range(samples):
            start = perf_counter()
            status, body = conn.roundtrip(request)
            raw.samples.append(perf_counter() - start)
            check_data(status, body)
        server_after, sandboxes_after = server.cpu_seconds()
        server_cpu = (server_after - server_before) / samples
        sandbox_cpu = (sandboxes_after - sandboxes_before) / samples

        via_httpx = Series("tci warm execute, httpx client")
        body = {"language": "python", "code": "x += 1", "session_id": session_id}
        httpx_samples = max(1, samples // 3)
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
            for index in range(warmup + httpx_samples):
                start = perf_counter()
                response = client.post("/v1/tci/execute", json=body)
                elapsed = perf_counter() - start
                check_data(response.status_code, response.content)
                if index >= warmup:
                    via_httpx.samples.append(elapsed)
        total = 2 * warmup + samples + httpx_samples
        server.execute(conn, "print(x)", session_id, expect_stdout=f"{total}\n")

        health = Series("GET /health")
        sessions = Series("GET /v1/tci/sessions")
        for series, request in ((health, server.get_request("/health", authorized=False)),
                                (sessions, server.get_request("/v1/tci/sessions"))):
            _timed(conn, request, warmup, Series(""))
            _timed(conn, request, samples, series)

        data = server.execute(conn, _RUN_CELL_PROBE.format(n=max(50, samples // 10)), session_id)
        stdout = "".join(o["data"] for o in data["outputs"] if o["type"] == "stdout")
        try:
            run_cell: float | None = float(stdout.strip())
        except ValueError:
            run_cell = None
        server.end_session(conn, session_id)
    return WarmResult(raw, via_httpx, health, sessions, run_cell, server_cpu, sandbox_cpu)


def new_session(server: TciServer, samples: int) -> Series:
    """A call without session_id: session start + first `print(1)`. The pool refills
    between samples, so each one meets the server as a new client would."""
    series = Series("tci new session, first print(1)")
    request = server.execute_request("print(1)")
    with Connection(server.port) as conn:
        for _ in range(samples):
            server.settle()
            start = perf_counter()
            status, body = conn.roundtrip(request)
            series.samples.append(perf_counter() - start)
            data = check_data(status, body, expect_stdout="1\n")
            server.end_session(conn, data["session_id"])
    return series


def memory(server: TciServer, sessions: int) -> MemoryResult:
    """PSS of the server's whole process tree (bwrap, worker, network helper) before and
    after adding `sessions` idle sessions with numpy, pandas and matplotlib imported."""
    server.settle()
    time.sleep(0.5)
    before = server.session_processes()
    with Connection(server.port) as conn:
        ids = [server.execute(conn, _MEMORY_CODE)["session_id"] for _ in range(sessions)]
        server.settle()
        time.sleep(1.0)  # idle: let the allocator and the kernel settle
        after = server.session_processes()
        for session_id in ids:
            server.end_session(conn, session_id)

    def total(snapshot: dict[int, tuple[int | None, bool]]) -> int | None:
        values = [pss for pss, _ in snapshot.values()]
        return None if not values or None in values else sum(values)  # type: ignore[arg-type]

    workers = [pss for pss, is_worker in after.values() if is_worker]
    added = len(workers) - sum(1 for _, is_worker in before.values() if is_worker)
    total_before, total_after = total(before), total(after)
    if total_after is None or total_before is None or not workers or None in workers:
        return MemoryResult(sessions, None, None, None, len(workers), len(after))
    return MemoryResult(
        sessions=sessions,
        marginal=(total_after - total_before) / added if added > 0 else None,
        per_session=total_after / len(workers),
        worker=sum(workers) / len(workers),  # type: ignore[arg-type]
        workers=len(workers),
        processes=len(after),
    )


# -- concurrent figures ------------------------------------------------------------------------


async def _bounded(jobs: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


async def _end_all(server: TciServer, session_ids: list[str]) -> None:
    async def end(session_id: str) -> None:  # best effort: the server's stop ends the rest
        conn = AsyncConnection(server.port)
        try:
            await conn.roundtrip(server.execute_request(END_SESSION_CODE, session_id))
        except (HttpError, OSError):
            pass
        finally:
            await conn.close()

    await _bounded([lambda s=s: end(s) for s in session_ids], 8)


async def _throughput(
    server: TciServer, n_sessions: int, seconds: float, warmup: float
) -> ThroughputResult:
    conns = [AsyncConnection(server.port) for _ in range(n_sessions)]

    async def create(conn: AsyncConnection) -> str:
        return check_data(*await conn.roundtrip(server.execute_request("x = 0")))["session_id"]

    ids = await _bounded([lambda c=c: create(c) for c in conns], 4)
    try:
        await asyncio.to_thread(server.settle)
        latency = Series("tci execute under load")
        errors: list[str] = []
        window_start = perf_counter() + warmup
        stop_at = window_start + seconds
        completed = failures = 0

        async def drive(conn: AsyncConnection, session_id: str) -> int:
            nonlocal completed, failures
            request = server.execute_request("x += 1", session_id)
            sent = 0
            while (start := perf_counter()) < stop_at:
                sent += 1
                try:
                    check_data(*await conn.roundtrip(request))
                except (BenchError, HttpError, OSError) as exc:
                    failures += 1
                    errors.append(str(exc))
                    if not isinstance(exc, BenchError):
                        await conn.close()  # reconnect for the next call
                    continue
                end = perf_counter()
                if window_start <= end <= stop_at:
                    completed += 1
                if start >= window_start:
                    latency.samples.append(end - start)
            return sent

        async def watch() -> tuple[float, ...]:
            """Where the CPU went during the window, in cores: the server, its sandboxes, the
            clients; and the share of the machine's cores that was busy."""
            await asyncio.sleep(window_start - perf_counter())
            (server_before, sandboxes_before), client_before = (server.cpu_seconds(),
                                                                time.process_time())
            busy_before, total_before = machine_cpu()
            await asyncio.sleep(stop_at - perf_counter())
            (server_after, sandboxes_after), busy_total = server.cpu_seconds(), machine_cpu()
            return ((server_after - server_before) / seconds,
                    (sandboxes_after - sandboxes_before) / seconds,
                    (time.process_time() - client_before) / seconds,
                    (busy_total[0] - busy_before) / max(busy_total[1] - total_before, 1))

        watcher = asyncio.create_task(watch())
        sent = await asyncio.gather(*(drive(c, s) for c, s in zip(conns, ids, strict=True)))
        server_cpu, sandbox_cpu, client_cpu, machine_share = await watcher
        if not failures:  # every call ran exactly once, in its own session
            for conn, session_id, count in zip(conns, ids, sent, strict=True):
                request = server.execute_request("print(x)", session_id)
                check_data(*await conn.roundtrip(request), expect_stdout=f"{count}\n")
        return ThroughputResult(n_sessions, seconds, completed, failures, latency,
                                errors[0] if errors else None, server_cpu, machine_share,
                                client_cpu, sandbox_cpu)
    finally:
        for conn in conns:
            await conn.close()
        await _end_all(server, ids)


async def _burst(server: TciServer, requests: int, timeout: float) -> BurstResult:
    await asyncio.to_thread(server.settle)
    conns = [await AsyncConnection(server.port).open() for _ in range(requests)]
    request = server.execute_request("print(1)")
    latency = Series("tci creation in a burst")
    errors: list[str] = []
    ids: list[str] = []

    async def one(conn: AsyncConnection) -> None:
        start = perf_counter()
        try:
            reply = await asyncio.wait_for(conn.roundtrip(request), timeout)
            ids.append(check_data(*reply, expect_stdout="1\n")["session_id"])
        except (BenchError, HttpError, OSError, TimeoutError, json.JSONDecodeError) as exc:
            errors.append(str(exc) or type(exc).__name__)
        latency.samples.append(perf_counter() - start)

    start = perf_counter()
    try:
        await asyncio.gather(*(one(c) for c in conns))
        wall = perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()
        await _end_all(server, ids)
    return BurstResult(requests, wall, latency, errors)


def _run(coroutine: Awaitable[T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


def throughput(server: TciServer, sessions: int, seconds: float, warmup: float) -> ThroughputResult:
    """`sessions` clients, each looping `x += 1` in its own live session, for `seconds`."""
    return _run(_throughput(server, sessions, seconds, warmup))


def burst(server: TciServer, requests: int, timeout: float = 180.0) -> BurstResult:
    """`requests` session creations sent at once, each on its own connection."""
    return _run(_burst(server, requests, timeout))
