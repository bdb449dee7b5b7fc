"""Issue 11's creation figures as markdown: fork and bubblewrap side by side, the per-step
profile, and the peers' published figures (quoted, not measured here)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from .creation import FIT_IN, ConfigResult, CreationRun, SustainedResult
from .footprint import HELPER, SANDBOX, WORKER
from .stats import Series, fmt_met, fmt_ratio, fmt_seconds, markdown_table
from .steps import START

MiB = 1024 * 1024
TARGET_RATE = {"egress": 100.0, "none": 200.0}
TARGET_P50 = 10e-3
TARGET_BURST = 1.0
TARGET_PSS = 20 * MiB
TARGET_USS = 12 * MiB
TARGET_WARM = 1.5e-3
# Third-party figures, as issue 11 quotes them: none of these ran on this machine.
PEERS = [
    ("Daytona", "100 simultaneous creations, last answered after 0.90 s",
     "third-party measurement, cloud, 2026"),
    ("E2B", "100 simultaneous creations, last answered after 1.59 s",
     "third-party measurement, cloud, 2026"),
    ("CubeSandbox", "181 creations/s at 25.7 MB per sandbox",
     "its own figure, on a 96-thread host"),
    ("SOCK (USENIX ATC'18)", "Python sandbox starts 45x faster with a package-preloading zygote",
     "paper"),
]
DAYTONA_BURST = 0.90


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MiB:.1f} MB"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}/s"


def _times(a: float | None, b: float | None, larger_is_better: bool) -> str:
    """How fork (a) compares with bwrap (b)."""
    if not a or not b:
        return ""
    ratio = a / b if larger_is_better else b / a
    return f"{fmt_ratio(ratio)} better" if ratio >= 1 else f"{fmt_ratio(1 / ratio)} worse"


def _sustained(result: ConfigResult | None, clients: int) -> SustainedResult | None:
    return result.sustained.get(clients) if result is not None else None


def _p50(series: Series | None) -> float | None:
    return series.p50 if series is not None and series.samples else None


def targets_table(run: CreationRun) -> str:
    """Each target of the issue, fork against bubblewrap; "met" judges the fork path."""
    rows = []
    many = max(run.options.clients)

    def add(label: str, target: str, value: Callable[[ConfigResult | None], float | None],
            show: Callable[[float | None], str], ok: Callable[[float], bool] | None,
            network: str = "egress", larger_is_better: bool = False) -> None:
        fork, bwrap = (value(run.result(start, network)) for start in ("fork", "bwrap"))
        rows.append([label, show(fork), show(bwrap),
                     _times(fork, bwrap, larger_is_better), target,
                     fmt_met(ok(fork) if ok is not None and fork is not None else None)])

    for network in ("egress", "none"):
        target = TARGET_RATE[network]
        add(f"sustained creation, `{network}`, {many} clients: creations/s over "
            f"{run.options.seconds:g} s", f">= {target:g}/s",
            lambda r, n=many: s.rate() if (s := _sustained(r, n)) else None, _rate,
            lambda v, t=target: v >= t, network, larger_is_better=True)
        add(f"sustained creation, `{network}`, 1 client: p50 of create + first call",
            "<= 10 ms", lambda r: _p50(s.latency()) if (s := _sustained(r, 1)) else None,
            fmt_seconds, lambda v: v <= TARGET_P50, network)
    for network in ("egress", "none"):
        burst_label = f"{run.options.burst} creations at once, `{network}`: last answer"
        add(burst_label, "all answered, <= 1 s",
            lambda r: r.burst.wall if r and r.burst and not r.burst.errors else None,
            fmt_seconds, lambda v: v <= TARGET_BURST, network)
    add("idle session with numpy+pandas+matplotlib: PSS of its tree (median)", "<= 20 MB",
        lambda r: r.memory.median("pss") if r and r.memory else None, _mb,
        lambda v: v <= TARGET_PSS)
    add("same: USS of its tree (median)", "<= 12 MB",
        lambda r: r.memory.median("uss") if r and r.memory else None, _mb,
        lambda v: v <= TARGET_USS)
    add("idle sessions in 16 GiB (extrapolated from the median PSS)", "report",
        lambda r: r.memory.fit if r and r.memory else None,
        lambda v: "n/a" if v is None else f"{v:,.0f}", None, larger_is_better=True)
    add("RL-shaped `run_batch`, a fresh session per snippet: snippets/s", "report",
        lambda r: r.batch.rate if r and r.batch and not r.batch.failures else None, _rate,
        None, larger_is_better=True)
    add("warm execute `x += 1`, p50", "<= 1.5 ms", lambda r: _p50(r.warm) if r else None,
        fmt_seconds, lambda v: v <= TARGET_WARM)
    return markdown_table(
        ["figure", "fork", "bwrap", "fork vs bwrap", "target", "met (fork)"], rows)


def sustained_table(run: CreationRun) -> str:
    rows = []
    for result in run.results:
        for clients, s in sorted(result.sustained.items()):
            whole, first, steady = s.latency(), s.latency(0, s.first), s.latency(s.steady)
            rows.append([
                result.config.label, str(clients), _rate(s.rate()), fmt_seconds(_p50(whole)),
                fmt_seconds(whole.p99 if whole.samples else None),
                f"{_rate(s.rate(0, s.first))}, p50 {fmt_seconds(_p50(first))}",
                f"{_rate(s.rate(s.steady))}, p50 {fmt_seconds(_p50(steady))}, "
                f"p99 {fmt_seconds(steady.p99 if steady.samples else None)}",
                fmt_seconds(s.end_p50), _cpu_cell(s), str(len(s.errors)),
            ])
    if not rows:
        return ""
    seconds = run.options.seconds
    first, steady = seconds * 2 / 15, seconds / 3
    return markdown_table(["configuration", "clients", f"creations/s ({seconds:g} s)", "p50", "p99",
                           f"first {first:g} s (pool full)",
                           f"steady state ({steady:g}-{seconds:g} s)", "DELETE p50",
                           "CPU ms per creation: server / template / sessions / bench / whole "
                           "machine",
                           "failed"], rows)


def _cpu_cell(s: SustainedResult) -> str:
    values = [s.cpu_per_creation(part)
              for part in ("server", "template", "sessions", "client", "machine")]
    if None in values:
        return "n/a"
    return " / ".join(f"{value * 1e3:.0f}" for value in values)  # type: ignore[operator]


def burst_table(run: CreationRun) -> str:
    rows = []
    for result in run.results:
        burst = result.burst
        if burst is None:
            continue
        answered = burst.requests - len(burst.errors)
        versus = (f"{fmt_ratio(burst.wall / DAYTONA_BURST)} Daytona's time"
                  if not burst.errors else "")
        rows.append([result.config.label, f"{answered}/{burst.requests}",
                     fmt_seconds(burst.wall), fmt_seconds(_p50(burst.latency)),
                     str(len(burst.errors)) + (f" (first: {burst.errors[0][:80]})"
                                               if burst.errors else ""), versus])
    for peer, wall in (("Daytona", "0.90 s"), ("E2B", "1.59 s")):
        rows.append([f"{peer} (quoted, not measured here)", "100/100", wall, "", "",
                     "third-party measurement, cloud, 2026"])
    return markdown_table(["configuration", "answered", "last answer", "p50 per request", "failed",
                           "vs Daytona / note"], rows)


def memory_table(run: CreationRun) -> str:
    measured = [r for r in run.results if r.memory is not None]
    if not measured:
        return ""
    header = ["idle session, numpy+pandas+matplotlib imported (medians)"]
    header += [f"{r.config.label} ({r.memory.sessions} sessions)" for r in measured]  # type: ignore[union-attr]
    header.append("CubeSandbox (quoted, not measured here)")

    def row(label: str, value: Callable[[ConfigResult], str], peer: str = "") -> list[str]:
        return [label, *(value(r) for r in measured), peer]

    rows = [
        row("PSS of the whole tree", lambda r: _mb(r.memory.median("pss")), "25.7 MB"),
        row("USS of the whole tree", lambda r: _mb(r.memory.median("uss"))),
    ]
    for role in (WORKER, SANDBOX, HELPER):
        rows.append(row(f"{role}: PSS / USS", lambda r, k=role:
                        f"{_mb(r.memory.median('pss', k))} / {_mb(r.memory.median('uss', k))}"))
    rows += [
        row("processes per session", lambda r: f"{r.memory.processes:g}"),
        row("the server and, with fork, its template (PSS, once)",
            lambda r: _mb(r.memory.outside.pss)),
        row(f"idle sessions in {FIT_IN // 1024**3} GiB (extrapolated)",
            lambda r: f"{r.memory.fit:,}" if r.memory.fit else "n/a"),
    ]
    return markdown_table(header, rows)


def batch_table(run: CreationRun) -> str:
    rows = []
    for result in run.results:
        b = result.batch
        if b is None:
            continue
        rows.append([result.config.label, f"{b.snippets:,}", str(b.concurrency),
                     fmt_seconds(b.wall), _rate(b.rate),
                     str(b.failures) + (f" (first: {b.first_error[:80]})" if b.first_error
                                        else "")])
    if not rows:
        return ""
    return markdown_table(
        ["configuration", "snippets", "concurrency", "wall", "snippets/s", "failed"], rows)


def warm_table(run: CreationRun) -> str:
    rows = [[r.config.label, fmt_seconds(r.warm.p50), fmt_seconds(r.warm.p99),
             str(len(r.warm))] for r in run.results if r.warm is not None and r.warm.samples]
    if not rows:
        return ""
    return markdown_table(["configuration", "p50", "p99", "samples"], rows)


def profile_table(run: CreationRun) -> str:
    if not run.profiles:
        return ""
    labels = list(run.profiles)
    steps: list[str] = []
    for profile in run.profiles.values():
        steps += [name for name in profile if name not in steps]
    rows = []
    for name in steps:
        cells = []
        for label in labels:
            samples = run.profiles[label].get(name)
            cells.append(f"{statistics.median(samples) * 1e3:.2f}" if samples else "")
        rows.append([name.replace("->", "→"), *cells])
    rows.append(["creations profiled", *(str(len(run.profiles[label].get(START, [])))
                                          for label in labels)])
    one_client = []
    for label in labels:
        start, network = label.split(", ")
        s = _sustained(run.result(start, network), 1)
        cell = run.profiles[label].get("first cell `print(1)`")
        if s is not None and s.cycles and cell:
            rest = _p50(s.latency()) - statistics.median(cell)  # type: ignore[operator]
            one_client.append(f"{rest * 1e3:.2f}" + (" (within noise)" if rest < 0 else ""))
        else:
            one_client.append("")
    rows.append(["server's part of a 1-client HTTP creation (its p50 minus the first cell)",
                 *one_client])
    return markdown_table(["step (median ms)", *labels], rows)


def largest_steps(run: CreationRun, label: str = "fork, egress", count: int = 4) -> str:
    """The heaviest steps inside a fork's start, where a missed target is held."""
    profile = run.profiles.get(label)
    if not profile:
        return ""
    inner = {name.strip(): statistics.median(v) for name, v in profile.items()
             if v and name.startswith(("  fork:", "network:", "uid's", "cgroup", "nosymfollow",
                                       "first cell", "worker"))}
    top = sorted(inner.items(), key=lambda item: -item[1])[:count]
    if not top:
        return ""
    return (f"Largest steps of a creation on the fork path ({label}): "
            + "; ".join(f"{name} {value * 1e3:.1f} ms" for name, value in top) + ".")


METHOD = """How each figure is measured (every configuration has its own `tci serve` on loopback,
started with `TCI_SANDBOX_START` and `TCI_NETWORK` as shown, `TCI_MAX_SESSIONS=300` and the
default warm pool, the pool full before each figure; the configurations run one after another):

- Sustained creation: {clients} client(s), each on its own keep-alive connection, loop for
  {seconds:g} s: `POST /v1/tci/execute` without `session_id` running `print(1)` (its latency is
  the figure: a new session and its first call), then `DELETE /v1/tci/sessions/{{id}}`.
  Creations/s = cycles finished inside the window / its length; "first" and "steady state"
  are the same counts and latencies over the window's start (the pool still full) and its
  last two thirds (the pool drained, if the start path cannot keep it filled). CPU per
  creation = CPU seconds used during the window / cycles finished in it, for the server's
  process, the template's (fork), the sessions' (their cgroups' CPU counter, pooled
  sessions' starts included), the bench's clients and the whole machine (every busy core:
  also slirp4netns, kernel work, and whatever else runs on this shared machine); on
  {cores} cores, {cores} s / the whole machine's figure is the rate's ceiling.
- Burst: {burst} requests without `session_id` (`print(1)`) sent at once, each on its own
  connection opened beforehand; the time until the last answer, every answer checked.
- Memory: idle sessions made by `{imports}`, then 2 s idle; each session's processes are
  those in its cgroup plus the slirp4netns serving its network namespace; USS
  (Private_Clean + Private_Dirty) and PSS from `/proc/PID/smaps_rollup`, summed over the
  tree, medians over the sessions. Sessions in 16 GiB = (16 GiB - the PSS of the server and
  template) / median PSS: extrapolated, not measured (PSS of shared pages would fall further
  with more sessions sharing them; the worker's own heap would not).
- RL-shaped: `tci.client.Client(...).code_interpreter.run_batch(snippets, concurrency=N)`,
  each snippet `print(i * 2)` in a fresh session that the SDK ends after it; snippets / wall
  time, every stdout checked. Bubblewrap gets fewer snippets (`--batch-snippets-bwrap`): at
  about a CPU-second per start on this machine 1,000 would take many minutes.
- Warm execute: `x += 1` in one live session, back to back on one connection (as in the
  round-trip table above), on the egress servers.
- Per-step profile: `python -m bench.steps` drives the launcher in-process (no server, no
  pool): each host-side step timed around its call, the fork's own marks (CLOCK_MONOTONIC,
  reported by each fork: "a → b" is the time between two marks), then the worker's ready
  message, the pool's preload (which a pooled session has paid before it is handed out),
  the first and a second cell, and the teardown. Bubblewrap has only the coarse steps.
- Peers: published figures, quoted as issue 11 gives them; not measured on this machine."""


def section(run: CreationRun) -> str:
    o = run.options
    memory_note = (f"Memory: {o.idle_fork} idle sessions on the fork path, {o.idle_bwrap} on "
                   "bubblewrap (each bubblewrap session costs about a CPU-second to start on "
                   "this machine and its full interpreter; that many are enough for a median). "
                   f"RL batch: {o.batch_fork:,} snippets on fork, {o.batch_bwrap:,} on "
                   "bubblewrap; on `none`, bubblewrap's batch is left out for time.")
    parts = [
        "## Session creation: fork from a template vs bubblewrap (issue 11)",
        targets_table(run),
        memory_note,
        "### Sustained creation (create, `print(1)`, DELETE, back to back)",
        sustained_table(run),
        "### Burst of simultaneous creations",
        burst_table(run),
        "### Idle sessions' memory",
        memory_table(run),
        "### RL-shaped batch through the SDK",
        batch_table(run),
        "### Warm execute per start path",
        warm_table(run),
        "### Where a creation's milliseconds go",
        profile_table(run),
        largest_steps(run),
        "### Peers' published figures (quoted, not measured here)",
        markdown_table(["peer", "figure", "source"], [list(p) for p in PEERS]),
        METHOD.format(clients=" and ".join(str(c) for c in o.clients), seconds=o.seconds,
                      burst=o.burst, cores=os.cpu_count(),
                      imports="import numpy, pandas, matplotlib.pyplot"),
    ]
    return "\n\n".join(part for part in parts if part)
