"""Issue 13's figures: tci on a Ray cluster, on this one machine.

Everything runs inside a network namespace of the benchmark's own, holding only `lo`
(tests/cluster/netns.py): PostgreSQL, a Ray head, host nodes (`ray start`, `tci_host`), a
gateway (`tci serve --ray-address`) and, for comparison, a single-machine `tci serve` with
the same session settings. Measured:

- warm `x += 1` p50/p99 through the gateway and through the single-machine server;
- the hop a gateway adds, two ways: a Ray actor call to a host actor (the data path tci
  uses) and an HTTP request over loopback to a FastAPI endpoint (what a host serving HTTP
  would cost), each timed from a client alone;
- creations/s and executions/s through the gateway with one host node, then two (on one
  machine the two hosts share two cores: the ratio shows overhead, not capacity);
- how long after a host node is killed its session answers 410 "host lost".

`python -m bench.cluster` runs it alone and prints the table; `measure()` returns the
numbers for bench/__main__ (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.cluster.netns import private_network
from tests.cluster.raycluster import Node, RayCluster, descendants, ray_env, release_host
from tests.conftest import TCI, Server, cli, free_port

from bench.http import Connection, encode_json
from bench.stats import Series, fmt_seconds

# The session settings of every host and of the single-machine server: the same, so the
# difference is the gateway's hop.
SESSION_ENV = {"TCI_POOL_SIZE": "0", "TCI_MAX_SESSIONS": "40", "TCI_NETWORK": "none"}


@dataclass
class Options:
    samples: int = 2000  # warm round trips per path
    warmup: int = 100
    hop_samples: int = 2000  # actor calls and HTTP requests timed
    seconds: float = 10.0  # each creations/s and executions/s window
    clients: int = 4  # concurrent clients in those windows
    warm_only: bool = False  # the warm calls alone: no hops, rates or host loss
    profile: Path | None = None  # py-spy profiles of the gateway and host actor go here


@dataclass
class ClusterResult:
    warm_single: Series | None = None
    warm_gateway: Series | None = None
    hop_actor: Series | None = None
    hop_http: Series | None = None
    rates: dict[str, dict[int, float]] = field(default_factory=dict)  # kind -> hosts -> /s
    loss_reported: float | None = None  # seconds from the kill to the first 410
    notes: list[str] = field(default_factory=list)


def _execute_request(port: int, key: str, code: str, session: str | None) -> bytes:
    body: dict[str, Any] = {"language": "python", "code": code}
    if session:
        body["session_id"] = session
    return encode_json("POST", "/v1/tci/execute", port, {"Authorization": f"Bearer {key}"}, body)


def _data(status: int, body: bytes) -> dict:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return json.loads(body)["data"]


def warm(server: Server, samples: int, warmup: int, name: str) -> Series:
    """`x += 1` in one session, back to back on one keep-alive connection."""
    with Connection(server.port) as conn:
        session = _data(*conn.roundtrip(_execute_request(server.port, server.key, "x = 0",
                                                         None)))["session_id"]
        request = _execute_request(server.port, server.key, "x += 1", session)
        for _ in range(warmup):
            _data(*conn.roundtrip(request))
        series = Series(name)
        for _ in range(samples):
            start = time.perf_counter()
            status, body = conn.roundtrip(request)
            series.samples.append(time.perf_counter() - start)
            _data(status, body)
    return series


def _host_actor_pid(node: Node) -> int | None:
    """The host actor's worker process on `node` (Ray titles it ray::HostActor)."""
    for pid in descendants(node.process.pid if node.process else 0):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if cmdline.read().startswith(b"ray::HostActor"):
                    return pid
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _profiled(pids: dict[str, int | None], into: Path | None) -> Iterator[None]:
    """py-spy record of each named process while the block runs, as collapsed stacks
    (into/NAME.txt, for flamegraph.pl or speedscope), idle frames left out."""
    if into is None:
        yield
        return
    into.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    recorders = [subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw",
                                   "--rate", "1000", "--output", str(into / f"{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items() if pid is not None]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for recorder in recorders:
            recorder.wait(timeout=120)


def _actor_hop(address: str, samples: int, warmup: int) -> Series:
    """A Ray actor call from a driver to a host actor, as the gateway makes them (awaited
    in asyncio): its `info()`, which does no work. Run in a child so this process never
    holds a Ray connection."""
    script = f"""
import asyncio, json, logging, time, ray
from tci.cluster import actors
ray.init(address={address!r}, namespace="tci", logging_level=logging.WARNING,
         log_to_driver=False)
node = next(iter(actors.host_nodes().values()))
actor = actors.host_actor(node, "tci")
async def main():
    for _ in range({warmup}):
        await actor.info.remote()
    out = []
    for _ in range({samples}):
        start = time.perf_counter()
        await actor.info.remote()
        out.append(time.perf_counter() - start)
    print(json.dumps(out))
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **ray_env()})
    if done.returncode != 0:
        raise RuntimeError(f"actor hop failed: {done.stderr[-2000:]}")
    return Series("Ray actor call", json.loads(done.stdout.strip().splitlines()[-1]))


def _http_hop(samples: int, warmup: int) -> Series:
    """An HTTP request to a FastAPI JSON endpoint on loopback (uvicorn, httptools), from an
    asyncio httpx client as a gateway would use: the cost of a host that served HTTP."""
    port = free_port()
    script = f"""
import uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.post("/call")
async def call(body: dict) -> dict:
    return {{"value": body}}
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        async def run() -> list[float]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        await client.post("/call", json={})
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)
                body = {"session": "ses_x", "code": "x += 1", "timeout": 120}
                for _ in range(warmup):
                    await client.post("/call", json=body)
                out = []
                for _ in range(samples):
                    start = time.perf_counter()
                    response = await client.post("/call", json=body)
                    out.append(time.perf_counter() - start)
                    response.raise_for_status()
                return out
        return Series("HTTP to a FastAPI endpoint", asyncio.run(run()))
    finally:
        process.terminate()
        process.wait(timeout=30)


def _rate(clients: int, seconds: float, one: Any) -> float:
    """Completed operations per second of `clients` threads each calling `one(conn)` in a
    loop for `seconds`."""
    done = [0] * clients
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            state: dict[str, Any] = {}
            while time.monotonic() < stop:
                one(state)
                done[index] += 1
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / (time.monotonic() - started)


def creations_per_second(gateway: Server, clients: int, seconds: float) -> float:
    """Create a session (its first call), then end it, over and over."""
    def one(state: dict[str, Any]) -> None:
        with Connection(gateway.port) as conn:
            session = _data(*conn.roundtrip(_execute_request(
                gateway.port, gateway.key, "1", None)))["session_id"]
            conn.roundtrip(encode_json("DELETE", f"/v1/tci/sessions/{session}", gateway.port,
                                       {"Authorization": f"Bearer {gateway.key}"}, None))
    return _rate(clients, seconds, one)


def executions_per_second(gateway: Server, clients: int, seconds: float) -> float:
    """`x += 1` in one session per client, back to back."""
    def one(state: dict[str, Any]) -> None:
        if "conn" not in state:
            state["conn"] = Connection(gateway.port)
            state["session"] = _data(*state["conn"].roundtrip(_execute_request(
                gateway.port, gateway.key, "x = 0", None)))["session_id"]
            state["request"] = _execute_request(gateway.port, gateway.key, "x += 1",
                                                state["session"])
        _data(*state["conn"].roundtrip(state["request"]))
    return _rate(clients, seconds, one)


def _host_of(database_url: str, session: str) -> str:
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        row = db.execute("SELECT host FROM sessions WHERE id = %s", (session,)).fetchone()
    assert row is not None
    return str(row[0])


def measure(options: Options, progress: Any = print) -> ClusterResult:
    from tests.pg import Postgres

    result = ClusterResult()
    root = Path(tempfile.mkdtemp(prefix="tci-bench-cluster-"))
    with private_network(), contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, True)
        postgres = Postgres()
        cleanup.callback(postgres.destroy)
        postgres.init()
        postgres.start()
        database_url = postgres.create_database()
        ray = RayCluster(root)
        for name, uid_base in (("host-a", "300000"), ("host-b", "320000")):
            cleanup.callback(release_host, {"TCI_DATA_DIR": str(root / name),
                                            "TCI_SANDBOX_UID_BASE": uid_base})
        cleanup.callback(ray.stop)
        progress("starting the Ray head and one host node")
        ray.start_head()
        hosts = [ray.add_host("host-a", {**SESSION_ENV, "TCI_DATA_DIR": str(root / "host-a"),
                                         "TCI_SANDBOX_UID_BASE": "300000"})]
        created = cli(root, "keys", "create", "--name", "bench",
                      env={"TCI_DATABASE_URL": database_url})
        key = created.stdout.strip().splitlines()[-1]

        single_dir = root / "single"
        single_dir.mkdir()
        single_key = cli(single_dir, "keys", "create", "--name", "bench", env=SESSION_ENV)
        single = Server(single_dir, free_port(), single_key.stdout.strip().splitlines()[-1],
                        dict(SESSION_ENV))
        cleanup.callback(single.stop)
        progress("starting a single-machine tci serve")
        single.start()

        listed = subprocess.run([TCI, "hosts", "--ray-address", ray.address],
                                env={**os.environ, **ray_env()}, capture_output=True,
                                text=True, timeout=600)
        if listed.returncode != 0:
            raise RuntimeError(f"tci hosts failed: {listed.stdout}{listed.stderr}")
        gateway_dir = root / "gateway"
        gateway_dir.mkdir()
        gateway = Server(gateway_dir, free_port(), key, {
            "TCI_RAY_ADDRESS": ray.address, "TCI_DATABASE_URL": database_url,
            "TCI_RAY_DISCOVER_SECONDS": "1", **SESSION_ENV, **ray_env()})
        cleanup.callback(gateway.stop)
        progress("starting a gateway")
        gateway.start()

        progress(f"warm x += 1, {options.samples} samples each")
        result.warm_single = warm(single, options.samples, options.warmup, "single machine")
        gateway_pids = {"gateway": gateway.process.pid if gateway.process else None,
                        "host-actor": _host_actor_pid(hosts[0])}
        with _profiled(gateway_pids, options.profile):
            result.warm_gateway = warm(gateway, options.samples, options.warmup,
                                       "through a gateway")
        single.stop()  # the rest has the machine to itself
        if options.warm_only:
            return result

        progress(f"the gateway's hop, {options.hop_samples} samples each")
        result.hop_actor = _actor_hop(ray.address, options.hop_samples, options.warmup)
        result.hop_http = _http_hop(options.hop_samples, options.warmup)

        for count in (1, 2):
            if count == 2:
                progress("adding a second host node")
                hosts.append(ray.add_host("host-b", {
                    **SESSION_ENV, "TCI_DATA_DIR": str(root / "host-b"),
                    "TCI_SANDBOX_UID_BASE": "320000"}))
                _wait_for_new_host(gateway, database_url, ray.address,
                                   f"tci-host-{hosts[1].node_id()[:16]}")
            progress(f"creations/s and executions/s with {count} host node(s)")
            result.rates.setdefault("creations", {})[count] = creations_per_second(
                gateway, options.clients, options.seconds)
            result.rates.setdefault("executions", {})[count] = executions_per_second(
                gateway, options.clients, options.seconds)

        progress("killing a host node")
        victim = hosts[1]
        victim_name = f"tci-host-{victim.node_id()[:16]}"
        with Connection(gateway.port) as conn:
            session = None
            for _ in range(20):
                session = _data(*conn.roundtrip(_execute_request(
                    gateway.port, key, "1", None)))["session_id"]
                if _host_of(database_url, session) == victim_name:
                    break
            assert session is not None and _host_of(database_url, session) == victim_name
            request = _execute_request(gateway.port, key, "1", session)
            killed = time.monotonic()
            victim.kill()
            while time.monotonic() - killed < 180:
                status, _ = conn.roundtrip(request)
                if status == 410:
                    result.loss_reported = time.monotonic() - killed
                    break
                time.sleep(0.05)
    return result


def _wait_for_new_host(gateway: Server, database_url: str, address: str, new: str) -> None:
    """Until the gateway places a session on host `new` (it looks for hosts every
    TCI_RAY_DISCOVER_SECONDS; `tci hosts` has started the new host's actor already)."""
    listed = subprocess.run([TCI, "hosts", "--ray-address", address],
                            env={**os.environ, **ray_env()}, capture_output=True, text=True,
                            timeout=600)
    if listed.returncode != 0:
        raise RuntimeError(f"tci hosts failed: {listed.stdout}{listed.stderr}")
    deadline = time.monotonic() + 120
    with Connection(gateway.port) as conn:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway placed no session on {new}")
            session = _data(*conn.roundtrip(_execute_request(
                gateway.port, gateway.key, "1", None)))["session_id"]
            placed = _host_of(database_url, session)
            conn.roundtrip(encode_json("DELETE", f"/v1/tci/sessions/{session}", gateway.port,
                                       {"Authorization": f"Bearer {gateway.key}"}, None))
            if placed == new:
                return
            time.sleep(0.2)


def table(result: ClusterResult) -> str:
    lines = ["| measure | p50 | p99 |", "|---|---|---|"]
    for series in (result.warm_single, result.warm_gateway, result.hop_actor, result.hop_http):
        if series is not None:
            lines.append(f"| {series.name} | {fmt_seconds(series.p50)} | "
                         f"{fmt_seconds(series.p99)} |")
    if result.warm_single and result.warm_gateway:
        lines.append(f"| gateway's cost over single machine | "
                     f"{fmt_seconds(result.warm_gateway.p50 - result.warm_single.p50)} | "
                     f"{fmt_seconds(result.warm_gateway.p99 - result.warm_single.p99)} |")
    if result.warm_single and result.warm_gateway:
        lines.append(f"| gateway / single machine (p50) | "
                     f"{result.warm_gateway.p50 / result.warm_single.p50:.2f}x | |")
    if not result.rates:
        return "\n".join(lines)
    lines += ["", "| through the gateway | 1 host node | 2 host nodes |", "|---|---|---|"]
    for kind, by_hosts in result.rates.items():
        lines.append(f"| {kind}/s | {by_hosts.get(1, 0):.1f} | {by_hosts.get(2, 0):.1f} |")
    lines += ["", f"host loss reported (kill -> first 410): "
              f"{fmt_seconds(result.loss_reported)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few samples, short windows")
    parser.add_argument("--warm-only", action="store_true",
                        help="measure the warm calls only (no hops, rates or host loss)")
    parser.add_argument("--samples", type=int, help="warm round trips per path")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the gateway and the host actor during the gateway's "
                             "warm calls; collapsed stacks go to DIR")
    args = parser.parse_args(argv)
    options = Options(200, 20, 300, 3.0, 2) if args.quick else Options()
    options.warm_only, options.profile = args.warm_only, args.profile
    if args.samples is not None:
        options.samples = args.samples
    started = time.monotonic()
    result = measure(options, lambda m: print(f"[{time.monotonic() - started:6.1f} s] {m}",
                                              file=sys.stderr, flush=True))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
