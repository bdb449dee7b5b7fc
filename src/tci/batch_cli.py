"""`tci batch RUNS.jsonl`: one-shot runs from a JSONL file through the SDK's ``client.runs``.

Every line is checked before anything is sent (a bad line is named by its number and nothing
runs); results go to stdout as JSONL, one per run, each as the server's line with the run's
``index`` (its position among the runs) and ``line`` (its line number in the input); progress
and a summary of verdict counts go to stderr. Exit status: 0 when every run got a verdict
(WRONG_ANSWER included), 1 when the server refused or the connection failed, 2 for bad input.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from typing import IO, Any

from pydantic import ValidationError

from tci.client import BadRequestError, Client, RunResult, RunsIncompleteError, TCIClientError
from tci.runs.models import RunRequest

# Ten redraws a second look live; more would spend the terminal's time on the bar.
_PROGRESS_EVERY_SECONDS = 0.1


class BadInput(Exception):
    """A line of the input that is no run."""


def read_runs(source: IO[str], name: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The runs of a JSONL input and the line number of each (blank lines are skipped)."""
    runs, numbers = [], []
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        runs.append(parse_run(line, f"{name}, line {number}"))
        numbers.append(number)
    if not runs:
        raise BadInput(f"{name}: no runs (one JSON object a line)")
    return runs, numbers


def parse_run(line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{where}: a run is a JSON object such as "
                       f'{{"code": "print(1)"}}, not {type(value).__name__}')
    try:  # the server's own model, so that a bad field is named before anything runs
        RunRequest.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise BadInput(f"{where}: {field}: {error['msg']}" if field
                       else f"{where}: {error['msg']}") from None
    return value


class Progress:
    """A one-line bar on a terminal, redrawn at most every 0.1 s; elsewhere (a file, a CI
    log) a plain count at each tenth of the way, so logs stay short."""

    def __init__(self, total: int, out: IO[str]) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.done = 0
        self.verdicts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._tenths = 0

    def add(self, result: RunResult) -> None:
        self.done += 1
        self.verdicts[result.verdict] += 1
        if self.tty:
            now = time.monotonic()
            if now - self._drawn >= _PROGRESS_EVERY_SECONDS or self.done == self.total:
                self._drawn = now
                self._draw()
        elif self.done * 10 // self.total > self._tenths:
            self._tenths = self.done * 10 // self.total
            print(f"tci batch: {self.done}/{self.total} runs done", file=self.out, flush=True)

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        not_ok = self.done - self.verdicts["OK"]
        self.out.write(f"\r[{bar}] {self.done}/{self.total}  OK {self.verdicts['OK']}"
                       f"  other {not_ok}  {time.monotonic() - self.started:.1f}s")
        self.out.flush()

    def finish(self) -> None:
        """The summary line (after the bar's own line, on a terminal)."""
        if self.tty and self.done:
            self.out.write("\n")
        counts = ", ".join(f"{verdict} {count}" for verdict, count
                           in sorted(self.verdicts.items(), key=lambda item: -item[1]))
        print(f"tci batch: {self.done} of {self.total} runs in "
              f"{time.monotonic() - self.started:.1f} s: {counts or 'no results'}",
              file=self.out, flush=True)


def run_batch_file(path: str, url: str, key: str, *, ordered: bool, chunk_size: int,
                   max_in_flight: int) -> int:
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            runs, numbers = read_runs(sys.stdin, name)
        else:
            with open(path, encoding="utf-8") as source:
                runs, numbers = read_runs(source, name)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tci batch: cannot read {name}: {exc}", file=sys.stderr)
        return 2
    except BadInput as exc:
        print(f"tci batch: {exc}", file=sys.stderr)
        return 2
    progress = Progress(len(runs), sys.stderr)
    try:
        with Client(base_url=url, api_key=key) as client, client.runs.stream(
                runs, ordered=ordered, chunk_size=chunk_size,
                max_in_flight=max_in_flight) as results:
            for result in results:
                line = {**result.to_json(), "line": numbers[result.index]}
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                progress.add(result)
    except (TCIClientError, ValueError) as exc:
        progress.finish()
        print(f"tci batch: {_described(exc, numbers, name)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.finish()
        return 130
    progress.finish()
    return 0


def _described(exc: Exception, numbers: list[int], name: str) -> str:
    """The error, a run the server named (``runs[3]``, ``runs.3.timeout``) by its line."""
    text = str(exc)
    if isinstance(exc, BadRequestError):
        found = re.search(r"\bruns[\[.](\d+)", text)
        if found and int(found[1]) < len(numbers):
            text = f"{name}, line {numbers[int(found[1])]}: {text}"
    elif isinstance(exc, RunsIncompleteError):
        text += f"; the {len(exc.results)} results received were written"
    return text
