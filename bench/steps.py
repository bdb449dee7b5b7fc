"""Where the milliseconds of one creation go: the launcher driven in-process, each step timed.

Runs in a process of its own (`python -m bench.steps`, started by `run`), so that the template,
the cgroups and the mounts it makes are gone with it. Timed on the host side: the volume and
directories, the cgroup, the spawn, nosymfollow, the network (filter and slirp4netns), the
worker's ready message, the pool's preload, the first cell, the teardown. On the fork path the
spawn is cut further by the marks each fork reports (`ForkStarter.last_steps`,
CLOCK_MONOTONIC, shared by every process): "a -> b" is the time from mark a to mark b.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPAWN = "spawn (the sandbox's processes, until its init is known)"
START = "start total (launcher.start)"


def run(start: str, network: str, samples: int, work: Path) -> dict[str, list[float]]:
    """The profile of `samples` creations: step -> seconds each."""
    with tempfile.TemporaryDirectory(prefix="tci-steps-", dir=work) as data_dir:
        done = subprocess.run(
            [sys.executable, "-m", "bench.steps", "--start", start, "--network", network,
             "--samples", str(samples), "--data-dir", data_dir],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
    if done.returncode != 0:
        raise RuntimeError(f"bench.steps failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(function):
            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self.add(name, time.perf_counter() - start)
            return timed_async

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return timed


async def _profile(start: str, network: str, samples: int, data_dir: Path) -> Timer:
    from tci.config import Settings
    from tci.kernel.driver import WorkerConnection
    from tci.kernel.output_limits import OutputLimits
    from tci.sandbox import launcher as launcher_module
    from tci.sandbox import network as network_module
    from tci.sandbox.factory import make_launcher

    settings = Settings(data_dir=data_dir, network=network, sandbox_start=start)
    launcher = make_launcher(settings)
    timer = Timer()
    launcher._make_dirs = timer.wrap("uid's directories and volume", launcher._make_dirs)
    launcher._make_cgroup = timer.wrap("cgroup (made, limits written)", launcher._make_cgroup)
    starter = launcher.starter
    starter.start = timer.wrap(SPAWN, starter.start)  # type: ignore[method-assign]
    launcher_module.volume.forbid_symlinks = timer.wrap(
        "nosymfollow on the host's view of the volume", launcher_module.volume.forbid_symlinks)
    launcher_module.start_egress = timer.wrap("network: slirp4netns started",
                                              launcher_module.start_egress)
    if launcher.egress_filter is not None:
        launcher.egress_filter.attach = timer.wrap("network: egress filter loaded",
                                                   launcher.egress_filter.attach)
        if start == "fork":  # networks made ahead, off the creation's path, then taken
            _wrap_network_pool(timer, launcher)
    launcher._remove_dirs = timer.wrap("destroy: directories and volume", launcher._remove_dirs)
    launcher_module._remove_cgroup = timer.wrap("destroy: cgroup emptied and removed",
                                                launcher_module._remove_cgroup)
    network_module.Egress.stop = timer.wrap("destroy: slirp4netns stopped",
                                            network_module.Egress.stop)
    launcher.prepare()
    await launcher.warm_up()
    networks = getattr(starter, "networks", None)
    if networks is not None:  # made at warm_up
        networks.take = timer.wrap("network: taken from those made ahead", networks.take)
    preload = list(settings.pool_preload)
    try:
        for index in range(samples):
            began = time.perf_counter()
            sandbox = await launcher.start(f"ses_steps{index}")
            started = time.perf_counter() - began
            marks = getattr(starter, "last_steps", {})
            names = list(marks)
            for first, then in itertools.pairwise(names):
                timer.add(f"  fork: {first} -> {then}", marks[then] - marks[first])
            timer.add(START, started)
            worker = WorkerConnection(sandbox, OutputLimits.of(settings))
            await _timed(timer, "worker ready", worker.wait_ready(60))
            await _timed(timer, f"pool's preload ({', '.join(preload)})", worker.request(
                {"op": "preload", "modules": preload}, timeout=120, grace=1))
            await _timed(timer, "first cell `print(1)`", worker.request(
                {"op": "execute", "code": "print(1)"}, timeout=60, grace=1))
            await _timed(timer, "second cell `print(1)`", worker.request(
                {"op": "execute", "code": "print(1)"}, timeout=60, grace=1))
            worker.close()
            await _timed(timer, "destroy total", launcher.destroy(sandbox))
    finally:
        launcher.cleanup()
    return timer


def _wrap_network_pool(timer: Timer, launcher: Any) -> None:
    from tci.sandbox.fork import pools

    ahead = "network made ahead (off the path)"
    for row in (f"{ahead}: total", f"  {ahead}: namespace", f"  {ahead}: egress filter loaded",
                f"  {ahead}: slirp4netns started"):
        timer.samples[row] = []  # the table's rows in this order
    pools.NetworkPool.make = timer.wrap(f"{ahead}: total", pools.NetworkPool.make)
    pools.new_network_namespace = timer.wrap(f"  {ahead}: namespace",
                                             pools.new_network_namespace)
    launcher.egress_filter.attach_fd = timer.wrap(f"  {ahead}: egress filter loaded",
                                                  launcher.egress_filter.attach_fd)
    pools.start_egress = timer.wrap(f"  {ahead}: slirp4netns started", pools.start_egress)


async def _timed(timer: Timer, name: str, awaitable: Any) -> Any:
    start = time.perf_counter()
    try:
        return await awaitable
    finally:
        timer.add(name, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__)
    parser.add_argument("--start", choices=("fork", "bwrap"), default="fork")
    parser.add_argument("--network", choices=("egress", "none"), default="none")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    timer = asyncio.run(_profile(args.start, args.network, args.samples, args.data_dir))
    print(json.dumps(timer.samples))


if __name__ == "__main__":
    main()
