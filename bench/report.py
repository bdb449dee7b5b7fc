"""What a run measured, as markdown tables (printed and written to docs/benchmarks.md) and
a plot of the latency distributions."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import creation_report
from .creation import CreationRun
from .peers import QUICKACK_NOTE
from .stats import Series, fmt_met, fmt_ratio, fmt_seconds, markdown_table
from .tci_runs import BurstResult, MemoryResult, ThroughputResult, WarmResult

MiB = 1024 * 1024
TARGET_WARM = 1.5e-3
TARGET_START = 10e-3
TARGET_THROUGHPUT = 1000.0
TARGET_MEMORY = 60 * MiB
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    command: str
    options: dict[str, Any]
    started: datetime
    machine: dict[str, str]
    settings: dict[str, str] = field(default_factory=dict)
    warm: WarmResult | None = None
    new_session: Series | None = None
    memory: MemoryResult | None = None
    throughput: ThroughputResult | None = None
    burst: BurstResult | None = None
    exec_floor: Series | None = None
    ipykernel: Series | None = None
    ipykernel_start: Series | None = None
    gateway: Series | None = None
    gateway_quickack: Series | None = None
    gateway_start: Series | None = None
    creation: CreationRun | None = None  # issue 11's figures, fork vs bubblewrap
    cluster: Any = None  # issue 13's figures (bench/cluster.py's ClusterResult)
    rl: Any = None  # issue 18's figures (bench/rl.py's RLResult)
    languages: Any = None  # issue 20's figures (bench/languages.py's LanguagesResult)
    pause: Any = None  # issue 21's figures (bench/pause.py's PauseResult)
    # issue 20's session start per language (bench/sessions_languages.py's result)
    sessions_languages: Any = None
    errors: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    load_after: str = ""


# -- facts about the machine and the code --------------------------------------------------------


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {
        "cores (nproc)": str(len(os.sched_getaffinity(0))),
        "memory": f"{int(meminfo[1]) / MiB:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "cpu": cpu,
        "python (bench, peers)": platform.python_version(),
        "load average at start": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def code_version() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return f"{commit} (with uncommitted changes in src/)" if dirty else commit


# -- tables -------------------------------------------------------------------------------------


def _versus(series: Series | None, tci: Series | None) -> str:
    """How tci's median compares with `series`'s."""
    if series is None or tci is None:
        return ""
    ratio = series.p50 / tci.p50
    return f"tci {fmt_ratio(ratio)} faster" if ratio >= 1 else f"tci {fmt_ratio(1 / ratio)} slower"


def _memory_headline(memory: MemoryResult | None) -> float | None:
    if memory is None:
        return None
    return memory.marginal if memory.marginal is not None else memory.per_session


def targets_table(run: Run) -> str:
    rows = []
    warm = run.warm.raw if run.warm else None
    rows.append(["warm execute `x += 1` in a live session, p50",
                 fmt_seconds(warm.p50 if warm else None), "<= 1.5 ms",
                 fmt_met(warm.p50 <= TARGET_WARM if warm else None)])
    rows.append(["warm execute `x += 1` in a live session, p99",
                 fmt_seconds(warm.p99 if warm else None), "<= 1.5 ms",
                 fmt_met(warm.p99 <= TARGET_WARM if warm else None)])
    start = run.new_session
    rows.append(["new session, first `print(1)`, p50", fmt_seconds(start.p50 if start else None),
                 "<= 10 ms", fmt_met(start.p50 <= TARGET_START if start else None)])
    tp = run.throughput
    rows.append([f"throughput, {tp.sessions if tp else 32} live sessions doing `x += 1`",
                 f"{tp.rate:,.0f} executions/s" if tp else "n/a", ">= 1000 executions/s",
                 fmt_met(tp.rate >= TARGET_THROUGHPUT and not tp.failures if tp else None)])
    burst = run.burst
    if burst:
        answered = burst.requests - len(burst.errors)
        measured = (f"{answered}/{burst.requests} answered in {fmt_seconds(burst.wall)}, "
                    f"{len(burst.errors)} failed")
    rows.append([f"{burst.requests if burst else 50} session creations at once",
                 measured if burst else "n/a", "all answered, none failed; report the time",
                 fmt_met(not burst.errors if burst else None)])
    memory = _memory_headline(run.memory)
    rows.append(["memory per idle warm session (PSS, numpy+pandas+matplotlib imported)",
                 f"{memory / MiB:.1f} MB" if memory is not None else "n/a", "<= 60 MB",
                 fmt_met(memory <= TARGET_MEMORY if memory is not None else None)])
    return markdown_table(["figure", "measured", "target", "met"], rows)


def round_trip_table(run: Run) -> str:
    tci = run.warm.raw if run.warm else None
    rows = []

    def add(label: str, series: Series | None, versus: bool = True) -> None:
        if series is None:
            return
        rows.append([label, fmt_seconds(series.p50), fmt_seconds(series.p99), str(len(series)),
                     _versus(series, tci) if versus and series is not tci else ""])

    add("**tci**, warm session, bench's raw HTTP/1.1 client", tci)
    if run.warm:
        add("tci, same, through `httpx.Client`", run.warm.httpx, versus=False)
    if run.throughput:
        add(f"tci under load ({run.throughput.sessions} concurrent clients)",
            run.throughput.latency, versus=False)
    add("ipykernel driven by jupyter_client (reply + idle)", run.ipykernel)
    add("Jupyter Kernel Gateway, REST + WebSocket", run.gateway)
    add("Jupyter Kernel Gateway, client with TCP_QUICKACK", run.gateway_quickack)
    add("in-process `exec` (the floor)", run.exec_floor)
    if run.warm:
        add("tci's HTTP floor: `GET /health`", run.warm.health, versus=False)
        add("tci's HTTP floor + key check: `GET /v1/tci/sessions`", run.warm.sessions,
            versus=False)
        if run.warm.run_cell is not None:
            rows.append(["IPython `run_cell('x += 1')` timed inside the worker",
                         fmt_seconds(run.warm.run_cell), "", "", ""])
        for label, cpu in (("server", run.warm.server_cpu),
                           ("sandbox (worker and its init)", run.warm.sandbox_cpu)):
            if cpu is not None:
                rows.append([f"CPU per warm call: {label}", fmt_seconds(cpu), "", "", ""])
    return markdown_table(["round trip of `x += 1`", "p50", "p99", "samples", "p50 vs tci"], rows)


def start_table(run: Run) -> str:
    tci = run.new_session
    rows = []
    for label, series in (
        ("**tci** new session (pool refilled between samples)", tci),
        ("tci, one of the burst of creations at once", run.burst.latency if run.burst else None),
        ("ipykernel cold start (jupyter_client)", run.ipykernel_start),
        ("Jupyter Kernel Gateway: POST /api/kernels + WebSocket", run.gateway_start),
    ):
        if series is None or not series.samples:
            continue
        versus = _versus(series, tci) if series is not tci and "burst" not in label else ""
        rows.append([label, fmt_seconds(series.p50), fmt_seconds(series.p99),
                     fmt_seconds(series.max), str(len(series)), versus])
    return markdown_table(["start, to the output of the first `print(1)`", "p50", "p99", "max",
                           "samples", "p50 vs tci"], rows)


def where_the_time_goes(run: Run) -> str:
    warm = run.warm
    if warm is None:
        return ""
    total, health, keyed = warm.raw.p50, warm.health.p50, warm.sessions.p50
    parts = [f"Of tci's warm p50 of {fmt_seconds(total)}: the HTTP layer alone (`GET /health` on "
             f"the same kind of connection: TCP, uvicorn, FastAPI routing, a JSON answer) takes "
             f"{fmt_seconds(health)} ({health / total:.0%}); the key check adds "
             f"{fmt_seconds(max(keyed - health, 0.0))}"]
    if warm.run_cell is not None:
        rest = total - keyed - warm.run_cell
        parts.append(f"IPython's own `run_cell` inside the worker takes "
                     f"{fmt_seconds(warm.run_cell)} ({warm.run_cell / total:.0%}); the rest, "
                     f"{fmt_seconds(max(rest, 0.0))} ({max(rest, 0.0) / total:.0%}), is the "
                     "execute route itself: body parsing and validation, the session manager, "
                     "the framed round trip over pipes into the sandbox and back, and the "
                     "response model")
    if run.warm and run.warm.httpx.samples:
        parts.append(f"through `httpx.Client` the same call takes {fmt_seconds(warm.httpx.p50)} "
                     f"p50: {fmt_seconds(max(warm.httpx.p50 - total, 0.0))} of client overhead")
    return "; ".join(parts) + "."


def details(run: Run) -> str:
    lines = []
    if run.throughput:
        tp = run.throughput
        lines.append(f"- Throughput: {tp.sessions} sessions, one client connection each, "
                     f"{tp.completed:,} executions completed in {tp.seconds:g} s "
                     f"({tp.rate:,.0f}/s), {tp.failures} failed"
                     + (f" (first: {tp.first_error})" if tp.first_error else "")
                     + "; afterwards each session's `x` equalled the calls it answered."
                     + (f" CPU during the window, in cores: the server process "
                        f"{tp.server_cpu:.2f} (its Python runs on one), the sandboxes' processes "
                        f"{tp.sandbox_cpu:.2f}, the bench's clients {tp.client_cpu:.2f}; the "
                        f"machine's {run.machine['cores (nproc)']} cores were "
                        f"{tp.machine_cpu:.0%} busy (the rest: kernel work such as loopback "
                        "TCP and pipes outside those processes, and anything else running)."
                        if None not in (tp.server_cpu, tp.sandbox_cpu, tp.client_cpu,
                                        tp.machine_cpu) else ""))
    if run.burst:
        burst = run.burst
        lines.append(f"- Burst: {burst.requests} requests without `session_id` sent at once on "
                     f"{burst.requests} connections; all answered after "
                     f"{fmt_seconds(burst.wall)}; per request min "
                     f"{fmt_seconds(min(burst.latency.samples))}, p50 "
                     f"{fmt_seconds(burst.latency.p50)}, max {fmt_seconds(burst.latency.max)}; "
                     f"{len(burst.errors)} failed"
                     + (f" (first: {burst.errors[0]})" if burst.errors else "") + ".")
    if run.memory:
        memory = run.memory

        def mb(value: float | None) -> str:
            return "n/a" if value is None else f"{value / MiB:.1f} MB"

        lines.append(f"- Memory: {memory.sessions} idle sessions added, each with numpy, pandas "
                     f"and matplotlib.pyplot imported. PSS of the server's whole process tree "
                     f"(bwrap, worker, network helper) grew by {mb(memory.marginal)} per added "
                     f"session (the headline figure); averaged over all {memory.workers} "
                     f"workers then alive (pool included) the tree holds "
                     f"{mb(memory.per_session)} per session, of which the worker process alone "
                     f"{mb(memory.worker)}; {memory.processes} processes in all.")
    return "\n".join(lines)


def cluster_section(run: Run) -> str:
    if run.cluster is None:
        return ""
    from . import cluster

    return ("## tci on a Ray cluster (issue 13)\n\nGateways and two host nodes on this one "
            "machine, in a network namespace holding only `lo` (bench/cluster.py; "
            "docs/deploy.md explains the figures). One vs two hosts shows overhead, not "
            "capacity: both share the same two cores.\n\n" + cluster.table(run.cluster))


def rl_section(run: Run) -> str:
    from . import rl

    return rl.table(run.rl) if run.rl is not None else ""


def pause_section(run: Run) -> str:
    from . import pause

    return pause.table_text(run.pause) if run.pause is not None else ""


def languages_section(run: Run) -> str:
    from . import languages

    return languages.table_text(run.languages) if run.languages is not None else ""


def sessions_languages_section(run: Run) -> str:
    from . import sessions_languages

    result = run.sessions_languages
    return sessions_languages.table_text(result) if result is not None else ""


def summary(run: Run) -> str:
    """The tables as printed to the terminal."""
    parts = ["## Against the issue's targets", targets_table(run),
             "## Round trip of `x += 1`", round_trip_table(run), where_the_time_goes(run),
             "## Session start", start_table(run), details(run),
             creation_report.section(run.creation) if run.creation else "",
             cluster_section(run), rl_section(run), languages_section(run),
             sessions_languages_section(run), pause_section(run)]
    if run.errors:
        parts.append("## Parts that failed\n" + "\n".join(
            f"- {name}: {error}" for name, error in run.errors.items()))
    return "\n\n".join(part for part in parts if part) + "\n"


def markdown(run: Run, plot_name: str | None) -> str:
    machine_rows = [[name, value] for name, value in run.machine.items()]
    machine_rows.append(["load average at end", run.load_after])
    settings_rows = [[name, value] for name, value in run.settings.items()]
    options = ", ".join(f"{name}={value}" for name, value in run.options.items())
    sections = [
        "# Benchmarks",
        f"Written by `{run.command}` on {run.started:%Y-%m-%d %H:%M %Z} "
        f"({run.duration:.0f} s); rerun it rather than edit this file.",
        "## Machine\n\n" + markdown_table(["", ""], machine_rows),
        "The machine is shared with other work and noisy: medians move by tens of percent "
        "between runs, and p99s more. Compare figures within one run (every peer below ran in "
        "the same run as tci, one after another on the same 2 cores), not across runs.",
        "## Server under test\n\n" + markdown_table(["", ""], settings_rows),
        summary(run).rstrip(),
    ]
    if plot_name:
        sections.append(f"## Latency distributions\n\n![latency distributions]({plot_name})")
    sections.append(RERUN.format(options=options))
    sections.append(METHOD.format(quickack=QUICKACK_NOTE))
    return "\n\n".join(sections) + "\n"


RERUN = """## How to rerun

```
make bench                        # full run, rewrites this file and bench_latency.png
.venv/bin/python -m bench --quick # smoke run of a few minutes; writes to a temp dir
.venv/bin/python -m bench --help  # sample counts, durations, --skip, --out
```

The run starts its own `tci serve` on a free loopback port with a temporary data dir (every
`TCI_` setting in the environment, such as `TCI_POOL_SIZE` or `TCI_NETWORK`, reaches it) and
its own Kernel Gateway, and stops both at the end, also on error or Ctrl-C. This run's
options: {options}."""

METHOD = """## How it is measured

- Everything goes over HTTP on 127.0.0.1, one keep-alive connection per client. The timed
  tci calls use the bench's own minimal HTTP/1.1 client (`bench/http.py`: pre-encoded
  requests, `Content-Length` bodies), so that the client costs the 2 cores as little as
  possible; the same call through `httpx.Client` is shown beside it.
- Every response is checked (HTTP 200, no `error` output, the expected stdout), and after
  each series the session's `x` is compared with the number of calls made.
- Warm round trip: one session, warm-up calls first, then the samples back to back.
- New session: the server's warm pool (if `/health` reports one) is full before each
  sample, which is then one request without `session_id` running `print(1)`; the session
  is then ended (`os._exit(0)` in it: the API has no end call) so sessions do not pile up.
- Throughput: live sessions (32 unless `--throughput-sessions`), each driven by its own
  asyncio client in a loop for a fixed time after a 1 s warm-up; executions completed
  inside the window divided by its length. The pool is full before the window opens.
- Memory: PSS (`/proc/PID/smaps_rollup`) of every descendant of the server process, before
  and after adding idle sessions with numpy, pandas and matplotlib imported, the pool full
  both times.
- ipykernel: `jupyter_client.KernelManager` + `BlockingKernelClient`; a call ends when the
  `execute_reply` and the `idle` status have both arrived, as a notebook front end waits.
  Cold start: kernel process start to the first `print(1)` output.
- Kernel Gateway: `jupyter kernelgateway` on loopback; kernels created with
  `POST /api/kernels` and driven over `/api/kernels/<id>/channels` with Jupyter messages.
  {quickack}
- In-process `exec`: `exec("x += 1", namespace)` in the bench's own process (compiling the
  source each time, as a server must): what no round trip can beat."""


# -- the plot -------------------------------------------------------------------------------------


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5))
    round_trips = [
        run.warm.raw if run.warm else None,
        run.warm.httpx if run.warm else None,
        run.throughput.latency if run.throughput else None,
        run.ipykernel, run.gateway, run.gateway_quickack, run.exec_floor,
    ]
    starts = [run.new_session, run.burst.latency if run.burst else None,
              run.ipykernel_start, run.gateway_start]
    for axis, group, target, title in (
        (left, round_trips, TARGET_WARM, "round trip of `x += 1`"),
        (right, starts, TARGET_START, "start to the first print(1)"),
    ):
        for series in group:
            if series is None or not series.samples:
                continue
            xs = sorted(value * 1e3 for value in series.samples)
            ys = [(index + 1) / len(xs) for index in range(len(xs))]
            axis.step(xs, ys, where="post",
                      label=f"{series.name} (p50 {fmt_seconds(series.p50)})")
        axis.axvline(target * 1e3, color="black", linestyle="--", linewidth=1,
                     label=f"target {fmt_seconds(target)}")
        axis.set_xscale("log")
        axis.set_xlabel("milliseconds (log scale)")
        axis.set_ylabel("fraction of samples at or below")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(f"tci benchmark, {run.started:%Y-%m-%d}, {run.machine['cores (nproc)']} cores "
                 "(shared, noisy machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
