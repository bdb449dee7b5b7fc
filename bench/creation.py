"""Issue 11's creation figures, for each way a session can start (fork of a template, or
bubblewrap) and each network setting, side by side in one run: sustained creation, a burst,
idle memory, an RL-shaped batch through the SDK, and the warm execute.

Each configuration gets its own `tci serve` (TciServer), with the pool size a user gets by
default; they run one after another so that none takes the cores from another.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

from . import footprint, steps, tci_runs
from .http import AsyncConnection, HttpError
from .server import BenchError, TciServer, _cpu_seconds, check_data, machine_cpu
from .stats import Series
from .tci_runs import BurstResult

T = TypeVar("T")
IMPORTS = "import numpy, pandas, matplotlib.pyplot"
GiB = 1024**3
FIT_IN = 16 * GiB


@dataclass(frozen=True)
class Config:
    start: str  # TCI_SANDBOX_START: fork | bwrap
    network: str  # TCI_NETWORK: egress | none

    @property
    def label(self) -> str:
        return f"{self.start}, {self.network}"

    def env(self, max_sessions: int) -> dict[str, str]:
        return {"TCI_SANDBOX_START": self.start, "TCI_NETWORK": self.network,
                "TCI_MAX_SESSIONS": str(max_sessions)}


CONFIGS = (Config("fork", "egress"), Config("fork", "none"),
           Config("bwrap", "egress"), Config("bwrap", "none"))


@dataclass
class Options:
    seconds: float  # sustained window
    clients: tuple[int, ...]  # sustained client counts
    burst: int
    idle_fork: int
    idle_bwrap: int
    batch_fork: int
    batch_bwrap: int
    batch_concurrency: int
    warm_samples: int
    warmup: int
    profile_fork: int
    profile_bwrap: int

    def idle(self, config: Config) -> int:
        return self.idle_fork if config.start == "fork" else self.idle_bwrap

    def batch(self, config: Config) -> int:
        return self.batch_fork if config.start == "fork" else self.batch_bwrap


# -- sustained creation ---------------------------------------------------------------------------


@dataclass
class Cycle:
    started: float  # seconds after the window opened
    create: float  # POST /v1/tci/execute without session_id, `print(1)`: new session + call
    end: float  # DELETE /v1/tci/sessions/{id}

    @property
    def finished(self) -> float:
        return self.started + self.create + self.end


@dataclass
class SustainedResult:
    clients: int
    seconds: float
    cycles: list[Cycle]
    errors: list[str] = field(default_factory=list)
    # CPU seconds used during the window: "server" (its process, all threads), "template"
    # (its long-lived helpers: with fork, the template and its fork server), "sessions"
    # (their cgroups: every process of every sandbox, pooled ones included), "client" (this
    # bench), "machine" (all cores busy, whoever used them: also slirp4netns, kernel work
    # outside those processes, and other work on the machine)
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_per_creation(self, part: str) -> float | None:
        done = sum(1 for c in self.cycles if c.finished < self.seconds)
        return self.cpu[part] / done if done and part in self.cpu else None

    def rate(self, since: float = 0.0, until: float | None = None) -> float:
        """Cycles (create, call, end) finished in [since, until), per second."""
        until = self.seconds if until is None else until
        done = sum(1 for c in self.cycles if since <= c.finished < until)
        return done / (until - since)

    def latency(self, since: float = 0.0, until: float | None = None) -> Series:
        """Create + first call of the cycles started in [since, until)."""
        until = self.seconds if until is None else until
        return Series(f"{self.clients} client(s)",
                      [c.create for c in self.cycles if since <= c.started < until])

    @property
    def first(self) -> float:
        """The first seconds: what a client meets while the warm pool is still full."""
        return self.seconds * 2 / 15

    @property
    def steady(self) -> float:
        """When the steady state is taken to begin (the pool has drained, if it can)."""
        return self.seconds / 3

    @property
    def end_p50(self) -> float | None:
        return statistics.median(c.end for c in self.cycles) if self.cycles else None


async def _sustained(server: TciServer, clients: int, seconds: float) -> SustainedResult:
    await asyncio.to_thread(server.settle, 180)
    conns = [await AsyncConnection(server.port).open() for _ in range(clients)]
    create = server.execute_request("print(1)")
    result = SustainedResult(clients, seconds, [])
    helpers = await asyncio.to_thread(_long_lived, server)
    sessions = await asyncio.to_thread(_sessions_cpu_file, server)
    before = _cpu_now(server, helpers, sessions)
    origin = perf_counter()
    stop_at = origin + seconds

    async def loop(conn: AsyncConnection) -> None:
        while (start := perf_counter()) < stop_at:
            try:
                data = check_data(*await conn.roundtrip(create), expect_stdout="1\n")
                created = perf_counter()
                status, body = await conn.roundtrip(server.delete_request(data["session_id"]))
                if status != 200:
                    raise BenchError(f"DELETE: HTTP {status}: {body[:200]!r}")
            except (BenchError, HttpError, OSError, KeyError, json.JSONDecodeError) as exc:
                result.errors.append(str(exc) or type(exc).__name__)
                await conn.close()
                await asyncio.sleep(0.05)  # a failing server is not spun on
                continue
            result.cycles.append(Cycle(start - origin, created - start, perf_counter() - created))

    async def window_cpu() -> None:
        await asyncio.sleep(stop_at - perf_counter())
        after = _cpu_now(server, helpers, sessions)
        result.cpu = {part: after[part] - before[part] for part in before}

    try:
        await asyncio.gather(window_cpu(), *(loop(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    return result


def _long_lived(server: TciServer) -> list[int]:
    """The server's descendants that belong to no session (with fork: the template)."""
    helpers = set(footprint.slirp_helpers().values())
    return [pid for pid in server.processes()[1:]
            if pid not in helpers and footprint.session_of(pid) is None]


def _sessions_cpu_file(server: TciServer) -> tuple[Path, float] | None:
    """The CPU counter of the cgroup parent of the server's sessions (it keeps counting the
    CPU of sessions whose own cgroups are gone): (file, its unit in seconds)."""
    for pid in server.processes()[1:]:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            parent, _, name = path.rstrip("/").rpartition("/")
            if not name.startswith("ses_"):
                continue
            if not controllers:  # v2: one hierarchy
                return Path("/sys/fs/cgroup" + parent) / "cpu.stat", 1e-6
            if "cpuacct" in controllers.split(","):
                return Path("/sys/fs/cgroup", controllers + parent) / "cpuacct.usage", 1e-9
    return None


def _read_cpu_file(found: tuple[Path, float] | None) -> float | None:
    if found is None:
        return None
    path, unit = found
    try:
        text = path.read_text()
    except OSError:
        return None
    if path.name == "cpu.stat":
        text = next((line.split()[1] for line in text.splitlines()
                     if line.startswith("usage_usec")), "0")
    return int(text) * unit


def _cpu_now(server: TciServer, helpers: list[int], sessions: tuple[Path, float] | None
             ) -> dict[str, float]:
    assert server.process is not None
    busy, _ = machine_cpu()
    now = {"server": _cpu_seconds(server.process.pid),
           "template": sum(map(_cpu_seconds, helpers)),
           "client": time.process_time(), "machine": busy / os.sysconf("SC_CLK_TCK")}
    if (used := _read_cpu_file(sessions)) is not None:
        now["sessions"] = used
    return now


def sustained(server: TciServer, clients: int, seconds: float) -> SustainedResult:
    """`clients` clients, each creating a session, running `print(1)` in it and ending it,
    back to back for `seconds`, from a full warm pool."""
    return tci_runs._run(_sustained(server, clients, seconds))


# -- idle memory ----------------------------------------------------------------------------------


@dataclass
class IdleMemory:
    sessions: int  # live idle sessions measured
    trees: list[footprint.Tree]
    outside: footprint.Usage  # the server (and the template) apart from any session

    def median(self, attribute: str, role: str | None = None) -> float | None:
        values = [getattr(tree.roles.get(role, footprint.Usage()) if role else tree.total,
                          attribute) for tree in self.trees]
        return statistics.median(values) if values else None

    @property
    def processes(self) -> float | None:
        return statistics.median(len(tree.pids) for tree in self.trees) if self.trees else None

    @property
    def fit(self) -> int | None:
        """Idle sessions in 16 GiB, extrapolated from the median PSS, after the server's own."""
        pss = self.median("pss")
        return int((FIT_IN - self.outside.pss) // pss) if pss else None


async def _idle_memory(server: TciServer, sessions: int, concurrency: int = 8) -> IdleMemory:
    await asyncio.to_thread(server.settle, 180)
    ids: list[str] = []

    async def create(conn: AsyncConnection) -> None:
        ids.append(check_data(*await conn.roundtrip(server.execute_request(IMPORTS)))
                   ["session_id"])

    conns = [await AsyncConnection(server.port).open() for _ in range(concurrency)]
    try:
        async def worker(conn: AsyncConnection, count: int) -> None:
            for _ in range(count):
                await create(conn)

        shares = [sessions // concurrency + (i < sessions % concurrency)
                  for i in range(concurrency)]
        await asyncio.gather(*(worker(c, n) for c, n in zip(conns, shares, strict=True)))
        await asyncio.to_thread(server.settle, 180)
        await asyncio.sleep(2.0)  # idle: let the allocator and the kernel settle
        trees = await asyncio.to_thread(footprint.session_trees, set(ids))
        outside = await asyncio.to_thread(footprint.outside_sessions, server.processes())
        if len(trees) != len(ids):
            raise BenchError(f"found the processes of {len(trees)} of {len(ids)} sessions")
        return IdleMemory(len(ids), list(trees.values()), outside)
    finally:
        async def end(conn: AsyncConnection, share: list[str]) -> None:
            for session_id in share:
                try:
                    await conn.roundtrip(server.delete_request(session_id))
                except (HttpError, OSError):
                    await conn.close()

        await asyncio.gather(*(end(conn, ids[i::concurrency]) for i, conn in enumerate(conns)))
        for conn in conns:
            await conn.close()


def idle_memory(server: TciServer, sessions: int) -> IdleMemory:
    """`sessions` live idle sessions, each having imported numpy, pandas and matplotlib:
    USS and PSS of each one's whole tree (its cgroup's processes and its slirp4netns)."""
    return tci_runs._run(_idle_memory(server, sessions))


# -- RL-shaped batch ------------------------------------------------------------------------------


@dataclass
class BatchResult:
    snippets: int
    concurrency: int
    wall: float
    failures: int
    first_error: str | None

    @property
    def rate(self) -> float:
        return self.snippets / self.wall


def batch(server: TciServer, snippets: int, concurrency: int) -> BatchResult:
    """The SDK's run_batch: each snippet in a fresh session, ended after it."""
    from tci.client import Client

    server.settle(180)
    codes = [f"print({i} * 2)" for i in range(snippets)]
    with Client(base_url=f"{server.url}/v1", api_key=server.key, timeout=300) as client:
        start = perf_counter()
        results = client.code_interpreter.run_batch(codes, concurrency=concurrency,
                                                    return_exceptions=True)
        wall = perf_counter() - start
    problems = [str(r) if isinstance(r, BaseException) else f"snippet {i}: stdout {r.stdout!r}"
                for i, r in enumerate(results)
                if isinstance(r, BaseException) or r.stdout != f"{i * 2}\n"]
    return BatchResult(snippets, concurrency, wall, len(problems),
                       problems[0] if problems else None)


# -- one configuration, then all -------------------------------------------------------------------


@dataclass
class ConfigResult:
    config: Config
    pool: str = "not reported"
    warm: Series | None = None
    sustained: dict[int, SustainedResult] = field(default_factory=dict)
    burst: BurstResult | None = None
    memory: IdleMemory | None = None
    batch: BatchResult | None = None


@dataclass
class CreationRun:
    options: Options
    results: list[ConfigResult] = field(default_factory=list)
    # configuration label -> step -> samples in seconds (steps.py)
    profiles: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def result(self, start: str, network: str) -> ConfigResult | None:
        return next((r for r in self.results
                     if r.config == Config(start, network)), None)


Step = Callable[[str, Callable[[], Any]], Any]  # (label, action) -> its result or None


def measure(work: Path, options: Options, step: Step, progress: Callable[[str], None]
            ) -> CreationRun:
    run = CreationRun(options)
    for config in CONFIGS:
        result = step(f"[{config.label}] server",
                      lambda c=config: _measure_config(work, options, c, step, progress))
        if result is not None:
            run.results.append(result)
    for config, samples in ((Config("fork", "egress"), options.profile_fork),
                            (Config("fork", "none"), options.profile_fork),
                            (Config("bwrap", "egress"), options.profile_bwrap)):
        profile = step(f"per-step profile of a creation, {config.label} ({samples} samples)",
                       lambda c=config, n=samples: steps.run(c.start, c.network, n, work))
        if profile is not None:
            run.profiles[config.label] = profile
    return run


def _measure_config(work: Path, options: Options, config: Config, step: Step,
                    progress: Callable[[str], None]) -> ConfigResult:
    result = ConfigResult(config)
    max_sessions = max(300, options.idle(config) + options.burst + 50)
    server = TciServer(work, config.env(max_sessions),
                       name=f"tci-server-{config.start}-{config.network}")
    try:
        progress(f"[{config.label}] starting tci serve on 127.0.0.1:{server.port}")
        try:
            server.start()
        except Exception:
            _tail(server.log_path)
            raise
        pool = server.pool_state()
        result.pool = f"{pool[1]} sessions" if pool else "not reported"
        if not server.settle(timeout=180):
            progress(f"[{config.label}] the warm pool did not fill in 180 s; measuring anyway")
        label = f"[{config.label}]"
        if config.network == "egress":
            warm = step(f"{label} warm execute ({options.warm_samples} samples)",
                        lambda: tci_runs.warm_round_trip(server, options.warm_samples,
                                                         options.warmup))
            result.warm = warm.raw if warm is not None else None
        for clients in options.clients:
            sustained_result = step(
                f"{label} sustained creation, {clients} client(s), {options.seconds:g} s",
                lambda n=clients: sustained(server, n, options.seconds))
            if sustained_result is not None:
                result.sustained[clients] = sustained_result
        result.burst = step(f"{label} {options.burst} creations at once",
                            lambda: tci_runs.burst(server, options.burst))
        if config.network == "egress" or config.start == "fork":
            snippets = options.batch(config)
            result.batch = step(
                f"{label} run_batch of {snippets} snippets, concurrency "
                f"{options.batch_concurrency}",
                lambda: batch(server, snippets, options.batch_concurrency))
        if config.network == "egress":
            result.memory = step(f"{label} memory of {options.idle(config)} idle sessions",
                                 lambda: idle_memory(server, options.idle(config)))
    finally:
        progress(f"[{config.label}] stopping tci serve")
        server.stop()
    return result


def _tail(path: Path, lines: int = 40) -> None:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print(f"--- last lines of {path.name} ---\n" + "\n".join(tail), file=sys.stderr)
