"""`python -m bench.volumes`: a session volume's cost, volume.py (mkfs, mount, umount run per
session) against volume_images.py (one template, system calls only), in the same run.

Samples alternate between the two (with --separate: one backend's, then the other's). Each
sample is what a session pays: create (with the default limits), the nosymfollow remount,
destroy. CPU is this process's and its children's (the programs volume.py runs); kernel
threads (loop workers) are not in it. Then each backend runs flat out in a few threads.
Needs root (loop devices, mount).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.stats import Series, fmt_seconds
from tci.config import Settings
from tci.sandbox import volume
from tci.sandbox.volume_images import VolumeImages

STEPS = ("create", "nosymfollow", "destroy", "total wall", "total CPU")


def _cpu() -> float:
    """Seconds of CPU (microsecond resolution; os.times() counts in 10 ms ticks)."""
    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Backend:
    def __init__(self, name: str, create: Callable[[Path], Path],
                 forbid_symlinks: Callable[[Path], bool], destroy: Callable[[Path], None]):
        self.name = name
        self.create, self.forbid_symlinks, self.destroy = create, forbid_symlinks, destroy
        self.series = {step: Series(f"{name} {step}") for step in STEPS}

    def sample(self, root: Path) -> None:
        root.mkdir(mode=0o711)
        cpu, start = _cpu(), time.perf_counter()
        mount_point = self.create(root)
        created = time.perf_counter()
        self.forbid_symlinks(mount_point)
        remounted = time.perf_counter()
        self.destroy(root)
        end = time.perf_counter()
        spent = _cpu() - cpu
        shutil.rmtree(root)
        for step, seconds in zip(STEPS, (created - start, remounted - created, end - remounted,
                                         end - start, spent), strict=True):
            self.series[step].samples.append(seconds)


def sustained(backend: Backend, work: Path, threads: int, seconds: float) -> float:
    """Volumes created, remounted and destroyed per second by `threads` threads at once."""
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(worker: int) -> None:
        while time.perf_counter() < deadline:
            root = work / f"ses_{backend.name}_t{worker}_{counts[worker]}"
            root.mkdir(mode=0o711)
            backend.forbid_symlinks(backend.create(root))
            backend.destroy(root)
            shutil.rmtree(root)
            counts[worker] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return sum(counts) / (time.perf_counter() - started)


def table(backends: list[Backend]) -> str:
    header = ["step", *(f"{b.name} {q}" for b in backends for q in ("p50", "p99"))]
    rows = [[step, *(fmt_seconds(getattr(b.series[step], q)) for b in backends
                     for q in ("p50", "p99"))] for step in STEPS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plot(backends: list[Backend], path: Path) -> None:
    """Distribution of each backend's wall time per volume (create, remount, destroy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 5))
    for backend in backends:
        series = backend.series["total wall"]
        xs = sorted(value * 1e3 for value in series.samples)
        axis.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                  label=f"{backend.name} (p50 {fmt_seconds(series.p50)})")
    axis.set_xscale("log")
    axis.set_xlabel("milliseconds per session volume: create + nosymfollow + destroy (log)")
    axis.set_ylabel("fraction of samples at or below")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.volumes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="per backend (default 200)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of the sustained run (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each backend's sustained run (default 5)")
    parser.add_argument("--separate", action="store_true",
                        help="all samples of one backend, then the other's (default: alternate; "
                             "volume.py's background writes then also land in the other's)")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot there")
    args = parser.parse_args(argv)
    settings = Settings()
    max_bytes, max_files = settings.workspace_max_bytes, settings.workspace_max_files
    work = Path(tempfile.mkdtemp(prefix="tci-bench-volumes-", dir="/var/tmp"))
    work.chmod(0o711)
    images = VolumeImages(work, max_bytes, max_files)
    started = time.perf_counter()
    images.prepare()
    prepare_seconds = time.perf_counter() - started
    backends = [
        Backend("volume.py", lambda root: volume.create(root, max_bytes, max_files),
                volume.forbid_symlinks, volume.destroy),
        Backend("volume_images.py", lambda root: images.create(root, max_bytes, max_files),
                images.forbid_symlinks, images.destroy),
    ]
    try:
        if args.separate:
            for backend in backends:
                for index in range(args.samples):
                    backend.sample(work / f"ses_{backend.name}_{index}")
        else:
            for index in range(args.samples):
                for backend in backends:
                    backend.sample(work / f"ses_{backend.name}_{index}")
        rates = {backend.name: sustained(backend, work, args.threads, args.seconds)
                 for backend in backends}
    finally:
        images.close()
        shutil.rmtree(work, ignore_errors=True)
    order = "one backend after the other" if args.separate else "alternating"
    print(f"Session volume of {max_bytes >> 20} MiB / {max_files} files, {args.samples} samples "
          f"per backend, {order}; {os.cpu_count()} CPUs, Linux {os.uname().release}.")
    print(f"volume_images.py prepare (mkfs of the template, once): "
          f"{fmt_seconds(prepare_seconds)}\n")
    print(table(backends))
    print(f"\nSustained, {args.threads} threads for {args.seconds:g} s each (create, nosymfollow, "
          "destroy):")
    for backend in backends:
        print(f"  {backend.name}: {rates[backend.name]:.0f} volumes/s "
              f"(median CPU {fmt_seconds(backend.series['total CPU'].p50)} per volume)")
    if args.plot is not None:
        plot(backends, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
