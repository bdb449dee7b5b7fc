"""RL load (`python -m bench.rl_load`): 64 callers each posting one run at a time, back to
back, as verl's reward workers do, half to SandboxFusion's `run_code` (keyless, counted as the
server's key) and half to `/v1/tci/batch` (one run per request), 2,000 runs by default.

Every program's verdict is known (OK with its expected stdout, WRONG_ANSWER, RUNTIME_ERROR,
TIME_LIMIT under a short limit), so a figure never counts a wrong verdict: every answer is
judged, and any status but 200 (or, when the queue is meant to overflow, SandboxFusion's
504 and batch's 429 with Retry-After) is a failure. Prints the latency per call (p50, p99),
runs/s, the verdicts, the failures and the server's RSS after a warm-up and after the load.
tests/integration/test_runs_load.py runs the same load, smaller.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .server import TciServer
from .stats import Series, fmt_seconds

CALLERS = 64
RUNS = 2000
WARMUP = 64
TIME_LIMIT_SECONDS = 0.5  # the TIME_LIMIT program sleeps far longer
# The verdicts of the mix, in turn (OK twice: what most samples of a trained policy score).
KINDS = ("OK", "WRONG_ANSWER", "OK", "RUNTIME_ERROR", "TIME_LIMIT")
ENDPOINTS = ("sandboxfusion", "batch")
SUM_PROGRAM = "n = int(input())\nprint(sum(range(n)))\n"


@dataclass(frozen=True)
class Job:
    """One run whose answer is known: `kind` is the verdict it deserves."""

    index: int
    endpoint: str
    kind: str

    @property
    def n(self) -> int:
        return 1000 + self.index

    @property
    def answer(self) -> str:
        return f"{sum(range(self.n))}\n"

    def run(self) -> dict:
        """The run as batch takes it."""
        if self.kind in ("OK", "WRONG_ANSWER"):
            claimed = self.answer if self.kind == "OK" else f"{sum(range(self.n)) + 1}\n"
            return {"code": SUM_PROGRAM, "stdin": str(self.n), "expected_stdout": claimed}
        if self.kind == "RUNTIME_ERROR":
            return {"code": f"raise ValueError({self.n})"}
        return {"code": "import time\ntime.sleep(60)\n", "timeout": TIME_LIMIT_SECONDS}

    def request(self) -> tuple[str, dict]:
        """(path, body) of the call."""
        run = self.run()
        if self.endpoint == "batch":
            return "/v1/tci/batch", {"runs": [run]}
        body = {"code": run["code"], "language": "python", "stdin": run.get("stdin", "")}
        if "timeout" in run:
            body["run_timeout"] = run["timeout"]
        return "/sandboxfusion/run_code", body


def jobs(count: int, start: int = 0) -> list[Job]:
    return [Job(i, ENDPOINTS[i % 2], KINDS[(i // 2) % len(KINDS)])
            for i in range(start, start + count)]


@dataclass
class Answer:
    job: Job
    status: int
    seconds: float
    verdict: str | None = None  # what the answer says (SandboxFusion's mapped to ours)
    problem: str | None = None  # why the answer is wrong, if it is


def _sandboxfusion_verdict(job: Job, body: dict) -> str:
    """SandboxFusion's answer as a verdict, as its clients read it (verl compares stdout)."""
    if body["status"] == "SandboxError":
        return "SANDBOX_ERROR"
    result = body["run_result"]
    if result["status"] == "TimeLimitExceeded":
        return "TIME_LIMIT"
    if body["status"] == "Failed":
        return "RUNTIME_ERROR" if "ValueError" in result["stderr"] else "FAILED"
    return "OK" if result["stdout"] == job.answer else "STDOUT_MISMATCH"


def judge(job: Job, status: int, body: bytes, headers: httpx.Headers, seconds: float,
          overflow: bool) -> Answer:
    """The answer, with a problem unless it is exactly what this job deserves."""
    answer = Answer(job, status, seconds)
    refusal = 504 if job.endpoint == "sandboxfusion" else 429
    if status == refusal and overflow:
        if status == 429 and not headers.get("retry-after"):
            answer.problem = "429 without Retry-After"
        return answer
    if status != 200:
        answer.problem = f"HTTP {status}: {body[:200]!r}"
        return answer
    if job.endpoint == "batch":
        lines = [json.loads(line) for line in body.splitlines()]
        answer.verdict = lines[0]["verdict"] if len(lines) == 1 else f"{len(lines)} lines"
        expected = job.kind
    else:
        answer.verdict = _sandboxfusion_verdict(job, json.loads(body))
        # SandboxFusion has no expected output: a wrong answer runs fine, its caller judges.
        expected = "OK" if job.kind == "WRONG_ANSWER" else job.kind
    if answer.verdict != expected:
        answer.problem = f"verdict {answer.verdict}, deserved {expected}"
    return answer


def load(url: str, key: str, work: list[Job], callers: int = CALLERS,
         overflow: bool = False) -> list[Answer]:
    """`callers` threads, each posting one run at a time back to back until `work` is done.
    SandboxFusion's calls go without a key (its clients send none); batch's with `key`."""
    todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in work:
        todo.put(job)
    answers: list[Answer] = []
    lock = threading.Lock()

    def caller() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                path, body = job.request()
                headers = {"Authorization": f"Bearer {key}"} if job.endpoint == "batch" else {}
                started = time.perf_counter()
                try:
                    response = client.post(path, json=body, headers=headers)
                    answer = judge(job, response.status_code, response.content,
                                   response.headers, time.perf_counter() - started, overflow)
                except Exception as exc:  # a lost connection, a body not as promised
                    answer = Answer(job, 0, time.perf_counter() - started,
                                    problem=f"{type(exc).__name__}: {exc}")
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=caller, name=f"caller-{i}") for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class LoadResult:
    answers: list[Answer]
    seconds: float
    rss_warm: int
    rss_after: int
    latency: Series = field(init=False)

    def __post_init__(self) -> None:
        self.latency = Series("run latency", [a.seconds for a in self.answers
                                              if a.status == 200])

    @property
    def problems(self) -> list[str]:
        return [f"#{a.job.index} {a.job.endpoint} {a.job.kind}: {a.problem}"
                for a in self.answers if a.problem]

    @property
    def verdicts(self) -> Counter[str]:
        return Counter(f"{a.job.endpoint} {a.verdict}" for a in self.answers if a.verdict)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


def measure(server: TciServer, runs: int = RUNS, callers: int = CALLERS) -> LoadResult:
    """A warm-up (its own runs, judged too), the server's RSS, the load, the RSS again."""
    assert server.process is not None
    warm = load(server.url, server.key, jobs(WARMUP, start=runs), callers)
    rss_warm = rss_bytes(server.process.pid)
    started = time.perf_counter()
    answers = load(server.url, server.key, jobs(runs), callers)
    seconds = time.perf_counter() - started
    result = LoadResult(answers, seconds, rss_warm, rss_bytes(server.process.pid))
    result.answers += [a for a in warm if a.problem]  # a warm-up failure is a failure too
    return result


def report(result: LoadResult, callers: int) -> str:
    count = sum(1 for a in result.answers if a.status == 200)
    lat = result.latency
    lines = [f"RL load: {len(result.answers)} runs, {callers} callers back to back, "
             f"half /sandboxfusion/run_code (keyless), half /v1/tci/batch (one run each)",
             f"  {count / result.seconds:.1f} runs/s over {result.seconds:.1f} s",
             f"  latency per call: p50 {fmt_seconds(lat.p50) if lat.samples else 'n/a'}, "
             f"p99 {fmt_seconds(lat.p99) if lat.samples else 'n/a'}",
             f"  statuses: {dict(sorted(result.statuses.items()))}",
             f"  verdicts: {dict(sorted(result.verdicts.items()))}",
             f"  server RSS: {result.rss_warm / 2**20:.1f} MiB after the warm-up, "
             f"{result.rss_after / 2**20:.1f} MiB after the load "
             f"({(result.rss_after - result.rss_warm) / 2**20:+.1f} MiB)",
             f"  wrong answers: {len(result.problems)}"]
    lines += [f"    {problem}" for problem in result.problems[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rl_load", description=__doc__)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--callers", type=int, default=CALLERS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tci-bench-rl-load-") as work:
        # Keyless SandboxFusion callers count as the key TciServer creates ("bench").
        server = TciServer(Path(work), env={"TCI_SANDBOXFUSION_KEY": "bench",
                                            "TCI_POOL_SIZE": "0"})
        try:
            server.start(timeout=180)
            result = measure(server, args.runs, args.callers)
            phases = _phases(server)
        finally:
            server.stop()
        log = server.log_path.read_text(errors="replace")
    print(report(result, args.callers))
    # Runs that failed for the system's reasons were tried again (runs/manager.py): none
    # was scored by it, but each is a sandbox failure to look into.
    print(f"  runs retried after a system failure: {log.count('failed for a system reason')}"
          f"; errors in the server log: {log.count('level=ERROR')}")
    print("  mean phase seconds: " + ", ".join(f"{name} {fmt_seconds(value)}"
                                               for name, value in phases.items()))
    return 1 if result.problems else 0


def _phases(server: TciServer) -> dict[str, float]:
    from .rl import phases

    return {name: value for name, value in phases(server).items() if ":" not in name}


if __name__ == "__main__":
    sys.exit(main())
