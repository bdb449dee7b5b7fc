"""From what a run did to the verdict an RL pipeline scores.

Outputs are compared as judges do: trailing whitespace (\\r included) of each line and
trailing blank lines do not count; everything else does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    OK = "OK"
    WRONG_ANSWER = "WRONG_ANSWER"
    TIME_LIMIT = "TIME_LIMIT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    COMPILE_ERROR = "COMPILE_ERROR"
    SANDBOX_ERROR = "SANDBOX_ERROR"


@dataclass(frozen=True)
class Outcome:
    """What the sandbox saw of one run (the system itself worked)."""

    exit_code: int | None  # None: killed by a signal
    timed_out: bool
    out_of_memory: bool
    stdout: str
    stderr: str
    compile_failed: bool = False


def normalized(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    return normalized(actual) == normalized(expected)


def _ran_out_of_memory(outcome: Outcome) -> bool:
    if outcome.out_of_memory:
        return True
    # An allocation the kernel refused outright (not killed later): Python's MemoryError.
    last = outcome.stderr.rstrip().rpartition("\n")[2]
    return outcome.exit_code == 1 and last.startswith("MemoryError")


def judge(outcome: Outcome, expected_stdout: str | None) -> Verdict:
    if outcome.compile_failed:
        return Verdict.COMPILE_ERROR
    if outcome.timed_out:
        return Verdict.TIME_LIMIT
    if _ran_out_of_memory(outcome):
        return Verdict.MEMORY_LIMIT
    if outcome.exit_code != 0:
        return Verdict.RUNTIME_ERROR
    if expected_stdout is not None and not outputs_match(outcome.stdout, expected_stdout):
        return Verdict.WRONG_ANSWER
    return Verdict.OK
