"""`python -m bench`: the issue's figures for tci and its peers, in one run, on this machine.

Starts its own tci server (and Kernel Gateway) on free loopback ports, measures, stops them
whatever happens, prints the tables and writes docs/benchmarks.md and docs/bench_latency.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from . import creation, peers, report, tci_runs
from .server import TciServer

T = TypeVar("T")
PARTS = ("warm", "start", "memory", "throughput", "burst", "creation", "cluster", "rl",
         "languages", "sessions_languages", "pause", "ipykernel", "gateway")
PLOT_NAME = "bench_latency.png"

# name: (full run, --quick)
DEFAULTS: dict[str, tuple[float, float]] = {
    "samples": (3000, 200),
    "warmup": (200, 20),
    "start_samples": (20, 3),
    "peer_samples": (1000, 100),
    "peer_start_samples": (5, 1),
    "peer_seconds": (15.0, 3.0),
    "throughput_sessions": (32, 8),
    "throughput_seconds": (10.0, 2.0),
    "burst": (50, 10),
    "memory_sessions": (8, 2),
    # issue 11's creation figures, per start path and network (bench/creation.py)
    "creation_seconds": (15.0, 3.0),
    "creation_clients": (16, 4),
    "creation_burst": (100, 20),
    "idle_sessions": (200, 6),
    "idle_sessions_bwrap": (20, 2),
    "batch_snippets": (1000, 40),
    "batch_snippets_bwrap": (100, 8),
    "batch_concurrency": (16, 4),
    "config_warm_samples": (1000, 100),
    "profile_samples": (20, 3),
    "profile_samples_bwrap": (5, 1),
    # issue 20's runs in each language (bench/languages.py)
    "language_runs": (64, 16),
    "compile_samples": (5, 2),
    # issue 20's session start per language (bench/sessions_languages.py)
    "session_language_samples": (10, 3),
    # issue 21's pause/resume cycles per state size and snapshot starts (bench/pause.py)
    "pause_samples": (20, 3),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="few samples, for a smoke run; writes to a temp dir unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="where benchmarks.md and the plot go (default: docs/)")
    parser.add_argument("--skip", action="append", choices=PARTS, default=[],
                        help="leave a part out (repeatable)")
    helps = {
        "samples": "tci warm round trips timed",
        "warmup": "untimed calls before each round-trip series",
        "start_samples": "tci new sessions timed",
        "peer_samples": "ipykernel and Kernel Gateway round trips timed",
        "peer_start_samples": "ipykernel and Kernel Gateway kernel starts timed",
        "peer_seconds": "at most this long for one peer's round-trip series",
        "throughput_sessions": "live sessions (one client each) in the throughput test",
        "throughput_seconds": "measured seconds of the throughput test",
        "burst": "session creations sent at once",
        "memory_sessions": "idle sessions added for the memory figure",
        "creation_seconds": "window of the sustained-creation test, per configuration",
        "creation_clients": "clients of the sustained-creation test besides the single one",
        "creation_burst": "creations at once, per configuration",
        "idle_sessions": "idle sessions measured for memory on the fork path",
        "idle_sessions_bwrap": "idle sessions measured for memory on bubblewrap",
        "batch_snippets": "run_batch snippets on the fork path",
        "batch_snippets_bwrap": "run_batch snippets on bubblewrap",
        "batch_concurrency": "run_batch's concurrency",
        "config_warm_samples": "warm round trips timed per start path",
        "profile_samples": "creations profiled step by step on the fork path",
        "profile_samples_bwrap": "creations profiled step by step on bubblewrap",
        "language_runs": "hello-world runs per language, through tci and locally",
        "compile_samples": "C++ compiles + runs of a new program timed, tci and local",
        "session_language_samples": "new sessions per language timed, and local starts",
        "pause_samples": "pause + resume cycles per state size, and snapshot starts",
    }
    for name, (full, quick) in DEFAULTS.items():
        kind = float if isinstance(full, float) else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"{helps[name]} (default {kind(full)}, --quick {kind(quick)})")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            kind = float if isinstance(full, float) else int
            setattr(args, name, kind(quick if args.quick else full))
    return args


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup below


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress()
    run = report.Run(
        command=" ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        options={name: getattr(args, name) for name in DEFAULTS},
        started=datetime.now().astimezone(),
        machine=report.machine(),
    )

    with contextlib.ExitStack() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="tci-bench-"))
        cleanup.callback(shutil.rmtree, work, True)
        # Kernels' connection files and IPython's profile stay inside the run's own dir.
        os.environ["JUPYTER_RUNTIME_DIR"] = str(work / "jupyter-runtime")
        os.environ["IPYTHONDIR"] = str(work / "ipython")

        def part(name: str, label: str, action: Callable[[], T]) -> T | None:
            if name in args.skip:
                return None
            progress(label)
            try:
                return action()
            except Exception as exc:
                run.errors[label] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                return None

        run.exec_floor = peers.exec_floor(max(args.samples, 10_000))

        server = TciServer(work)
        cleanup.callback(server.stop)
        tci_parts = ("warm", "start", "memory", "throughput", "burst")
        if not set(tci_parts) <= set(args.skip):
            progress(f"starting tci serve on 127.0.0.1:{server.port}")
            try:
                server.start()
            except Exception:
                _show_log(server.log_path)
                raise
            run.settings = _settings(server)
            progress("waiting for the warm pool to fill" if server.pool_state() else "ready")
            server.settle(timeout=120)
            run.warm = part("warm", f"tci warm round trip ({args.samples} samples)",
                            lambda: tci_runs.warm_round_trip(server, args.samples, args.warmup))
            run.new_session = part(
                "start", f"tci new session ({args.start_samples} samples)",
                lambda: tci_runs.new_session(server, args.start_samples))
            run.memory = part("memory", f"memory ({args.memory_sessions} idle sessions)",
                              lambda: tci_runs.memory(server, args.memory_sessions))
            run.throughput = part(
                "throughput",
                f"throughput ({args.throughput_sessions} sessions, {args.throughput_seconds:g} s)",
                lambda: tci_runs.throughput(server, args.throughput_sessions,
                                            args.throughput_seconds, warmup=1.0))
            run.burst = part("burst", f"{args.burst} session creations at once",
                             lambda: tci_runs.burst(server, args.burst))
            if run.errors:
                _show_log(server.log_path)
            progress("stopping tci serve")
            server.stop()  # the peers get the machine to themselves

        if "creation" not in args.skip:
            run.creation = creation.measure(
                work, _creation_options(args),
                lambda label, action: part("creation", label, action), progress)

        if "rl" not in args.skip:  # issue 18: HumanEval through runs, vs bare python -c
            from . import rl

            run.rl = part("rl", "RL scoring: HumanEval runs vs local python -c",
                          lambda: rl.measure_with_server(work, progress))

        if "languages" not in args.skip:  # issue 20: runs in each language vs local
            from . import languages

            run.languages = part(
                "languages", "runs in each language vs local",
                lambda: languages.measure_with_server(work, progress, args.language_runs,
                                                      args.compile_samples))

        if "sessions_languages" not in args.skip:  # issue 20: session start per language
            from . import sessions_languages

            run.sessions_languages = part(
                "sessions_languages", "session start per language vs its plain runtime",
                lambda: sessions_languages.measure_with_server(
                    work, progress, args.session_language_samples))

        if "pause" not in args.skip:  # issue 21: pause, resume, start from a snapshot
            from . import pause

            run.pause = part("pause", "pause, resume and snapshots",
                             lambda: pause.measure_with_server(work, progress,
                                                               args.pause_samples))

        if "cluster" not in args.skip:  # issue 13: a Ray cluster in a private netns
            from . import cluster

            run.cluster = part("cluster", "tci on a Ray cluster (gateways, two hosts)",
                               lambda: cluster.measure(cluster.Options(), progress))

        run.ipykernel = part("ipykernel", f"ipykernel round trip ({args.peer_samples} samples)",
                             lambda: peers.ipykernel_round_trip(args.peer_samples, args.warmup,
                                                               args.peer_seconds))
        run.ipykernel_start = part(
            "ipykernel", f"ipykernel cold start ({args.peer_start_samples} samples)",
            lambda: peers.ipykernel_cold_start(args.peer_start_samples))

        if "gateway" not in args.skip:
            gateway = peers.KernelGateway(work)
            cleanup.callback(gateway.stop)
            started = part("gateway", "starting Jupyter Kernel Gateway",
                           lambda: gateway.start() or True)
            if not started:
                _show_log(gateway.log_path)
            else:
                run.gateway = part(
                    "gateway", f"Kernel Gateway round trip ({args.peer_samples} samples)",
                    lambda: peers.gateway_round_trip(gateway, args.peer_samples, args.warmup,
                                                     args.peer_seconds))
                run.gateway_quickack = part(
                    "gateway", "Kernel Gateway round trip, TCP_QUICKACK client",
                    lambda: peers.gateway_round_trip(gateway, args.peer_samples, args.warmup,
                                                     args.peer_seconds, quickack=True))
                run.gateway_start = part(
                    "gateway", f"Kernel Gateway kernel start ({args.peer_start_samples} samples)",
                    lambda: peers.gateway_kernel_start(gateway, args.peer_start_samples))
            gateway.stop()

    run.duration = time.monotonic() - progress.start
    run.load_after = report.load_average()
    print(report.summary(run))
    out = args.out or (Path(tempfile.mkdtemp(prefix="tci-bench-out-")) if args.quick
                       else report.REPO / "docs")
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / PLOT_NAME
    plotted = part("plot", "plotting", lambda: report.plot(run, plot_path) or True)
    (out / "benchmarks.md").write_text(report.markdown(run, PLOT_NAME if plotted else None))
    progress(f"wrote {out / 'benchmarks.md'} and {plot_path}")
    if run.errors:
        print(f"{len(run.errors)} part(s) failed: " + "; ".join(run.errors), file=sys.stderr)
        return 1
    return 0


def _creation_options(args: argparse.Namespace) -> creation.Options:
    return creation.Options(
        seconds=args.creation_seconds, clients=(1, args.creation_clients),
        burst=args.creation_burst, idle_fork=args.idle_sessions,
        idle_bwrap=args.idle_sessions_bwrap, batch_fork=args.batch_snippets,
        batch_bwrap=args.batch_snippets_bwrap, batch_concurrency=args.batch_concurrency,
        warm_samples=args.config_warm_samples, warmup=args.warmup,
        profile_fork=args.profile_samples, profile_bwrap=args.profile_samples_bwrap,
    )


def _settings(server: TciServer) -> dict[str, str]:
    pool = server.pool_state()
    env = server.env
    return {
        "code": report.code_version(),
        "warm pool (from /health)": f"{pool[1]} sessions" if pool else "not reported",
        "TCI_NETWORK": env.get("TCI_NETWORK", "egress (default)"),
        "TCI_MAX_SESSIONS": env["TCI_MAX_SESSIONS"],
        "other TCI_ settings": ", ".join(
            f"{name}={value}" for name, value in sorted(env.items())
            if name.startswith("TCI_") and name not in
            ("TCI_DATA_DIR", "TCI_NETWORK", "TCI_MAX_SESSIONS")) or "defaults",
    }


def _show_log(path: Path, lines: int = 40) -> None:
    with contextlib.suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last lines of {path.name} ---\n" + "\n".join(tail), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
