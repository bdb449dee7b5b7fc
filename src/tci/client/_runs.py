"""What ``client.runs`` (sync, _sync.py) and ``AsyncClient.runs`` (_async.py) share: the plan
(runs split into requests of at most ``chunk_size``), reading one request's NDJSON answer, the
429 retry policy, and the consumer's bookkeeping (results as they come or in input order, and
what was lost when a connection drops). The clients only do the I/O and the concurrency."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tci.client._base import (
    CONNECT_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    RequestSpec,
    Timeout,
)
from tci.client._calls import batch_runs, run_body
from tci.client._errors import (
    APIConnectionError,
    APIError,
    BadRequestError,
    RateLimitError,
    RunsIncompleteError,
)
from tci.client._types import Run, RunResult

RunArg = Run | Mapping[str, Any]

# The server's TCI_BATCH_MAX_RUNS default: one request per 1000 runs.
DEFAULT_CHUNK_SIZE = 1000
# Two requests in flight keep the server's run slots fed across a request's boundary (its
# last runs still running while the next request's start); more would only wait in its queue.
DEFAULT_MAX_IN_FLIGHT = 2
# 429 (the run queue is full) is answered before any run starts, so a retry never runs a
# program twice: honour Retry-After this many times, then raise RateLimitError.
DEFAULT_MAX_RETRIES = 5
# No read timeout: the server writes nothing between two results, and a request's runs may
# wait behind others in its queue for longer than any fixed bound. Each run is bounded by its
# own time limit on the server. Connecting and sending keep bounds.
DEFAULT_RUNS_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS,
                                     read=None)
# Without a Retry-After, the first retry waits this long and each next one twice as long, up
# to _MAX_BACKOFF_SECONDS: a full queue drains in seconds, not minutes.
_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Chunk:
    """The runs of one request: ``offset`` is the input index of its first run."""

    offset: int
    bodies: list[dict[str, Any]]

    def request(self, timeout: Timeout | None) -> RequestSpec:
        return batch_runs(self.bodies, timeout)


@dataclass(frozen=True)
class RunPlan:
    """Checked arguments of ``runs.stream``/``runs.batch``."""

    chunks: list[Chunk]
    total: int
    ordered: bool
    max_in_flight: int
    max_retries: int
    timeout: Timeout | None


def plan(runs: Iterable[RunArg], *, ordered: bool, chunk_size: int, max_in_flight: int,
         max_retries: int, timeout: Timeout | None) -> RunPlan:
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    if max_retries < 0:
        raise ValueError("max_retries must be at least 0")
    bodies = [run_body(run) for run in runs]
    chunks = [Chunk(start, bodies[start:start + chunk_size])
              for start in range(0, len(bodies), chunk_size)]
    return RunPlan(chunks, len(bodies), ordered, max_in_flight, max_retries,
                   DEFAULT_RUNS_TIMEOUT if timeout is None else timeout)


def retry_delay(exc: RateLimitError, attempt: int, max_retries: int) -> float | None:
    """Seconds to wait before retry number ``attempt + 1`` of a refused request, or None
    when the retries are spent. The server's Retry-After, else exponential backoff; a little
    jitter so that requests refused together do not all come back together."""
    if attempt >= max_retries:
        return None
    base = exc.retry_after if exc.retry_after is not None else _FIRST_BACKOFF_SECONDS * 2 ** attempt
    return min(base, _MAX_BACKOFF_SECONDS) * random.uniform(1.0, 1.25)


_RUN_INDEX = re.compile(r"\bruns(\[|\.)(\d+)")


def located(exc: BadRequestError, chunk: Chunk) -> BadRequestError:
    """A refused request's error, naming runs by their input index rather than their index
    in this request (the server says ``runs[3]`` or ``runs.3.timeout``), and saying which
    chunk_size fits when the request held more runs than TCI_BATCH_MAX_RUNS."""

    def shift(text: str) -> str:
        return _RUN_INDEX.sub(lambda m: f"runs{m[1]}{int(m[2]) + chunk.offset}", text)

    message = shift(exc.message)
    if exc.status_code == 413 and "TCI_BATCH_MAX_RUNS" in message:
        message += ": pass a smaller chunk_size"
    errors = [shift(e) if isinstance(e, str) else e for e in exc.errors]
    located_exc = BadRequestError(message, status_code=exc.status_code, errors=errors,
                                  body=exc.body, headers=exc.headers)
    located_exc.__cause__ = exc
    return located_exc


class ChunkReader:
    """Reads one request's NDJSON answer: each line a result, exactly one per run of the
    chunk, in any order. ``feed`` turns a line into its RunResult (input index); ``end``
    raises APIConnectionError if the answer ended before every run's line."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self._seen: set[int] = set()

    def feed(self, line: str) -> RunResult | None:
        line = line.strip()
        if not line:  # blank lines carry nothing (room for a keep-alive)
            return None
        try:
            raw = json.loads(line)
            index = raw["index"]
            if not isinstance(index, int) or not 0 <= index < len(self.chunk.bodies):
                raise ValueError(f"index {index!r} is not one of this request's")
            if index in self._seen:
                raise ValueError(f"a second result for run {index}")
            result = RunResult.from_json(raw, self.chunk.offset + index)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise APIError(f"the server sent a line that is not a run's result ({exc}): "
                           f"{line[:200]!r}", status_code=None) from exc
        self._seen.add(index)
        return result

    def end(self) -> None:
        if len(self._seen) < len(self.chunk.bodies):
            raise APIConnectionError(
                f"the answer ended after {len(self._seen)} of its {len(self.chunk.bodies)} "
                "results")


@dataclass
class Tally:
    """The consumer's side of a stream: what came, what to hand out next (as received, or
    in input order as soon as the next index is there), what is missing."""

    total: int
    ordered: bool
    received: dict[int, RunResult] = field(default_factory=dict)
    _next: int = 0

    @property
    def done(self) -> bool:
        return len(self.received) == self.total

    def add(self, result: RunResult) -> list[RunResult]:
        """The results to hand out now that ``result`` came."""
        self.received[result.index] = result
        if not self.ordered:
            return [result]
        ready = []
        while self._next in self.received:
            ready.append(self.received[self._next])
            self._next += 1
        return ready

    def results(self) -> list[RunResult]:
        return [self.received[index] for index in sorted(self.received)]

    def failure(self, exc: BaseException) -> BaseException:
        """What to raise for a request's failure: a connection's, as RunsIncompleteError
        holding every result received; any other (a 4xx, a 429 after the retries, a line
        that is no result) as it is."""
        if not isinstance(exc, APIConnectionError) or isinstance(exc, RunsIncompleteError):
            return exc
        missing = [index for index in range(self.total) if index not in self.received]
        incomplete = RunsIncompleteError(
            f"{exc.message}: {len(self.received)} of {self.total} runs have their result "
            f"(.results); {len(missing)} have none (.missing)",
            results=self.results(), missing=missing)
        incomplete.__cause__ = exc
        return incomplete
